//! Prometheus metrics, labelled by tenant and error category, never by error text.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControlLabels {
    pub tenant: String,
    pub control: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub operation: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Family<TenantLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Every write the operator makes to the API server: at steady state this stays flat.
    pub writes: Family<WriteLabels, Counter>,
    pub drift_repairs: Family<TenantLabels, Counter>,
    /// 1 while this replica holds the Lease and reconciles, 0 while it stands by.
    pub leader: Gauge,
    /// 1 for a control that passes, 0 for one that fails (CLD-61): `== 0` is the alert. A
    /// control that does not apply or cannot be evaluated has no series.
    pub control_result: Family<ControlLabels, Gauge>,
    /// Unix time of the tenant's latest evaluation: its report is only rewritten on change.
    pub last_evaluation: Family<TenantLabels, Gauge>,
    /// Unix time of the latest reconcile pass that succeeded, whatever the tenant.
    pub last_success: Gauge,
    /// Errors of each watch: every one is followed by a retry with backoff (a 410 Gone by a
    /// fresh list).
    pub watch_restarts: Family<ResourceLabels, Counter>,
    /// 1 while a watch is listed and not failing.
    pub watch_synced: Family<ResourceLabels, Gauge>,
    /// Seconds the controller has had work and finished no pass; 0 while it moves.
    pub since_progress: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ft");
        let reconciliations = Family::<TenantLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let writes = Family::<WriteLabels, Counter>::default();
        let drift_repairs = Family::<TenantLabels, Counter>::default();
        let leader = Gauge::default();
        let control_result = Family::<ControlLabels, Gauge>::default();
        let last_evaluation = Family::<TenantLabels, Gauge>::default();
        let last_success = Gauge::default();
        let watch_restarts = Family::<ResourceLabels, Counter>::default();
        let watch_synced = Family::<ResourceLabels, Gauge>::default();
        let since_progress = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciliations completed, by tenant",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent reconciling one tenant",
            duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes made to the API server, by kind and operation",
            writes.clone(),
        );
        registry.register(
            "drift_repairs",
            "Children restored after being changed or deleted by hand, by tenant",
            drift_repairs.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "control_result",
            "Result of a control for a tenant: 1 pass, 0 fail",
            control_result.clone(),
        );
        registry.register(
            "compliance_last_evaluation_timestamp_seconds",
            "When the tenant's controls were last evaluated",
            last_evaluation.clone(),
        );
        registry.register(
            "last_successful_reconcile_timestamp_seconds",
            "When a reconcile pass last succeeded",
            last_success.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch errors, each followed by a retry, by resource",
            watch_restarts.clone(),
        );
        registry.register(
            "watch_synced",
            "Whether a watch is listed and not failing, by resource",
            watch_synced.clone(),
        );
        registry.register(
            "seconds_since_progress",
            "How long the controller has had work and finished no reconcile pass",
            since_progress.clone(),
        );
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            writes,
            drift_repairs,
            leader,
            control_result,
            last_evaluation,
            last_success,
            watch_restarts,
            watch_synced,
            since_progress,
        }
    }
}

impl Metrics {
    pub fn write(&self, kind: &str, operation: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                operation: operation.into(),
            })
            .inc();
    }

    pub fn reconciled(&self, tenant: &str, took: Duration) {
        self.reconciliations
            .get_or_create(&TenantLabels {
                tenant: tenant.into(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn watch_restarted(&self, resource: &str) {
        self.watch_restarts
            .get_or_create(&ResourceLabels {
                resource: resource.into(),
            })
            .inc();
    }

    pub fn watch_synced(&self, resource: &str, synced: bool) {
        self.watch_synced
            .get_or_create(&ResourceLabels {
                resource: resource.into(),
            })
            .set(i64::from(synced));
    }

    pub fn failed(&self, category: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                category: category.into(),
            })
            .inc();
    }

    /// Publishes a control's result: 1 pass, 0 fail, no series otherwise.
    pub fn control(&self, tenant: &str, control: &str, passed: Option<bool>) {
        let labels = ControlLabels {
            tenant: tenant.into(),
            control: control.into(),
        };
        match passed {
            Some(passed) => {
                self.control_result
                    .get_or_create(&labels)
                    .set(i64::from(passed));
            }
            None => {
                self.control_result.remove(&labels);
            }
        }
    }

    /// Drops every series of a deleted tenant.
    pub fn forget_tenant(&self, tenant: &str, controls: impl IntoIterator<Item = String>) {
        for control in controls {
            self.control(tenant, &control, None);
        }
        self.last_evaluation.remove(&TenantLabels {
            tenant: tenant.into(),
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
