//! Prometheus metrics, labelled by tenant and error category, never by error text.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use ft_core::access;
use ft_core::api::FranceTravailTenant;
use jiff::Timestamp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
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
    pub control_result: Arc<ControlResults>,
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
    /// Unix time at which the tenant's first grant in force lapses; no series without one.
    /// Per tenant, never per subject: subjects are people, and must not become labels.
    pub grant_earliest_expiry: Family<TenantLabels, Gauge>,
    /// Grants in force that lapse within 30 days (`ft_core::access::EXPIRY_WARNING`).
    pub grants_expiring: Family<TenantLabels, Gauge>,
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
        let control_result = Arc::new(ControlResults::default());
        let last_evaluation = Family::<TenantLabels, Gauge>::default();
        let last_success = Gauge::default();
        let watch_restarts = Family::<ResourceLabels, Counter>::default();
        let watch_synced = Family::<ResourceLabels, Gauge>::default();
        let since_progress = Gauge::default();
        let grant_earliest_expiry = Family::<TenantLabels, Gauge>::default();
        let grants_expiring = Family::<TenantLabels, Gauge>::default();
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
        registry.register_collector(Box::new(control_result.clone()));
        registry.register_collector(Box::new(Allocator));
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
        registry.register(
            "access_grant_earliest_expiry_timestamp_seconds",
            "When the tenant's first access grant in force expires",
            grant_earliest_expiry.clone(),
        );
        registry.register(
            "access_grants_expiring",
            "Access grants in force that expire within 30 days, by tenant",
            grants_expiring.clone(),
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
            grant_earliest_expiry,
            grants_expiring,
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
        self.control_result.set(tenant, control, passed);
    }

    /// Drops every series of a deleted tenant.
    pub fn forget_tenant(&self, tenant: &str) {
        self.control_result.forget(tenant);
        let labels = TenantLabels {
            tenant: tenant.into(),
        };
        self.reconciliations.remove(&labels);
        self.drift_repairs.remove(&labels);
        self.last_evaluation.remove(&labels);
        self.grant_earliest_expiry.remove(&labels);
        self.grants_expiring.remove(&labels);
    }

    /// Publishes when the tenant's grants in force lapse: the earliest expiry, and how many
    /// lapse within 30 days. Counts and instants only: no subject reaches a label.
    pub fn grants(&self, tenant: &FranceTravailTenant, now: Timestamp) {
        let labels = TenantLabels {
            tenant: tenant.metadata.name.clone().unwrap_or_default(),
        };
        let earliest = access::in_force(tenant, now)
            .iter()
            .map(|g| g.expires.0)
            .min();
        match earliest {
            Some(at) => {
                self.grant_earliest_expiry
                    .get_or_create(&labels)
                    .set(at.as_second());
            }
            None => {
                self.grant_earliest_expiry.remove(&labels);
            }
        }
        let expiring = access::expiring_soon(tenant, now).len();
        self.grants_expiring
            .get_or_create(&labels)
            .set(i64::try_from(expiring).unwrap_or(i64::MAX));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail: fmt::Write for String is infallible.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `ft_control_result`: every tenant's control results, a few bytes each. As a family of
/// gauges, each would hold its own copy of the tenant's and the control's names, a hash slot
/// and an atomic: a tenant has a dozen controls, and a cluster thousands of tenants.
#[derive(Debug, Default)]
pub struct ControlResults(RwLock<Results>);

#[derive(Debug, Default)]
struct Results {
    /// Per tenant, its controls that pass or fail, sorted by control.
    tenants: BTreeMap<String, Vec<(Arc<str>, bool)>>,
    /// Each control's name, held once.
    controls: BTreeSet<Arc<str>>,
}

impl ControlResults {
    fn set(&self, tenant: &str, control: &str, passed: Option<bool>) {
        let mut results = self.0.write().unwrap_or_else(|e| e.into_inner());
        let Results { tenants, controls } = &mut *results;
        match passed {
            Some(passed) => {
                let id = match controls.get(control) {
                    Some(id) => id.clone(),
                    None => {
                        let id: Arc<str> = control.into();
                        controls.insert(id.clone());
                        id
                    }
                };
                let own = match tenants.get_mut(tenant) {
                    Some(own) => own,
                    None => tenants.entry(tenant.to_string()).or_default(),
                };
                match own.binary_search_by(|(c, _)| (**c).cmp(control)) {
                    Ok(at) => own[at].1 = passed,
                    Err(at) => own.insert(at, (id, passed)),
                }
            }
            None => {
                if let Some(own) = tenants.get_mut(tenant) {
                    own.retain(|(c, _)| &**c != control);
                    if own.is_empty() {
                        tenants.remove(tenant);
                    }
                }
            }
        }
    }

    fn forget(&self, tenant: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .tenants
            .remove(tenant);
    }
}

impl Collector for ControlResults {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let results = self.0.read().unwrap_or_else(|e| e.into_inner());
        // Declared even without a sample, for the alert rules to find.
        let mut family = encoder.encode_descriptor(
            "control_result",
            "Result of a control for a tenant: 1 pass, 0 fail",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, controls) in &results.tenants {
            for (control, passed) in controls {
                let labels = [("tenant", tenant.as_str()), ("control", &**control)];
                ConstGauge::new(i64::from(*passed)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `ft_memory_allocated_bytes` and `ft_memory_resident_bytes`, read from jemalloc at each
/// scrape: what the operator's objects take, and the memory the allocator holds for them,
/// whose difference is its fragmentation. Where jemalloc is not the process's allocator (in
/// tests), they count only what jemalloc itself took.
#[derive(Debug)]
struct Allocator;

impl Collector for Allocator {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are a snapshot, taken again at each new epoch.
        if epoch::advance().is_err() {
            return Ok(());
        }
        let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read())
        else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "memory_allocated_bytes",
                "Bytes the operator's objects take, as its allocator counts them",
                allocated,
            ),
            (
                "memory_resident_bytes",
                "Bytes of physical memory the allocator holds, fragmentation included",
                resident,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example tenant: a group's grant expiring 2027-06-30, an admin's 2027-03-31.
    fn tenant() -> FranceTravailTenant {
        serde_saphyr::from_str(include_str!("../../examples/tenant.yaml")).expect("the example")
    }

    fn gauges(metrics: &Metrics) -> (Option<i64>, Option<i64>) {
        let labels = TenantLabels {
            tenant: "offres-emploi".into(),
        };
        (
            metrics.grant_earliest_expiry.get(&labels).map(|g| g.get()),
            metrics.grants_expiring.get(&labels).map(|g| g.get()),
        )
    }

    #[test]
    fn grants_publish_the_earliest_expiry_and_how_many_lapse_within_30_days() {
        let metrics = Metrics::default();
        let tenant = tenant();
        assert_eq!(tenant.metadata.name.as_deref(), Some("offres-emploi"));
        // 2027-03-31T00:00:00Z
        let admin_expiry = 1_806_451_200;

        metrics.grants(&tenant, "2026-11-30T00:00:00Z".parse().unwrap());
        assert_eq!(gauges(&metrics), (Some(admin_expiry), Some(0)));

        metrics.grants(&tenant, "2027-03-15T00:00:00Z".parse().unwrap());
        assert_eq!(gauges(&metrics), (Some(admin_expiry), Some(1)));

        // The admin's grant has lapsed: the group's is the first to go, within 30 days.
        metrics.grants(&tenant, "2027-06-10T00:00:00Z".parse().unwrap());
        assert_eq!(gauges(&metrics), (Some(1_814_313_600), Some(1)));

        // Nothing in force: no expiry to wait for.
        metrics.grants(&tenant, "2027-07-01T00:00:00Z".parse().unwrap());
        assert_eq!(gauges(&metrics), (None, Some(0)));
    }

    #[test]
    fn no_subject_reaches_the_grant_series() {
        let metrics = Metrics::default();
        metrics.grants(&tenant(), "2027-03-15T00:00:00Z".parse().unwrap());
        let text = metrics.encode();
        assert!(text.contains("ft_access_grants_expiring{tenant=\"offres-emploi\"} 1"));
        assert!(!text.contains("claire.martin"), "{text}");
        assert!(!text.contains("offres-emploi-developpeurs"), "{text}");
    }

    #[test]
    fn control_results_are_one_gauge_per_tenant_and_control_until_forgotten() {
        let metrics = Metrics::default();
        metrics.control("b", "NET-1", Some(true));
        metrics.control("a", "NET-1", Some(false));
        metrics.control("a", "CLD-74", Some(true));
        metrics.control("a", "ENC-1", Some(true));
        // A control that no longer applies has no series; a result that changes, one.
        metrics.control("a", "ENC-1", None);
        metrics.control("b", "NET-1", Some(false));
        let lines = |metrics: &Metrics| -> Vec<String> {
            metrics
                .encode()
                .lines()
                .filter(|l| l.starts_with("ft_control_result{"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            lines(&metrics),
            [
                r#"ft_control_result{tenant="a",control="CLD-74"} 1"#,
                r#"ft_control_result{tenant="a",control="NET-1"} 0"#,
                r#"ft_control_result{tenant="b",control="NET-1"} 0"#,
            ]
        );
        assert!(metrics.encode().contains("# TYPE ft_control_result gauge"));
        metrics.forget_tenant("a");
        assert_eq!(
            lines(&metrics),
            [r#"ft_control_result{tenant="b",control="NET-1"} 0"#]
        );
        metrics.forget_tenant("b");
        assert!(lines(&metrics).is_empty());
    }

    #[test]
    fn the_allocator_s_figures_are_published() {
        let text = Metrics::default().encode();
        for name in ["ft_memory_allocated_bytes", "ft_memory_resident_bytes"] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .parse()
                .unwrap();
            assert!(value > 0.0, "{name} {value}");
        }
    }

    #[test]
    fn a_forgotten_tenant_loses_its_series() {
        let metrics = Metrics::default();
        metrics.grants(&tenant(), "2027-03-15T00:00:00Z".parse().unwrap());
        metrics.reconciled("offres-emploi", Duration::from_millis(10));
        metrics
            .drift_repairs
            .get_or_create(&TenantLabels {
                tenant: "offres-emploi".into(),
            })
            .inc();
        assert!(metrics.encode().contains("tenant=\"offres-emploi\""));
        metrics.forget_tenant("offres-emploi");
        assert_eq!(gauges(&metrics), (None, None));
        assert!(
            !metrics.encode().contains("offres-emploi"),
            "{}",
            metrics.encode()
        );
    }
}
