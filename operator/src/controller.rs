//! The tenant controller: fetch → validate → build → apply → status, on every change of a
//! tenant or of one of its children, and on a short period.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PartialObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::api::{
    DeletionPolicy, FIELD_MANAGER, FINALIZER, FranceTravailTenant, GROUP, TenantStatus, labels,
};
use crate::apply::{AppliedMemo, Applier, ApplyReport, Observed, owned_by};
use crate::build::{BuildSettings, build, namespace_name};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, TenantLabels};
use crate::status::{self, Outcome, next_status};
use crate::validate::validate_for_cluster;

/// How often a tenant is re-checked when nothing happens.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Maps a namespace to the tenant that owns it, so a child whose labels were removed by hand
/// still wakes its tenant.
#[derive(Clone, Default)]
pub struct NamespaceIndex(Arc<RwLock<HashMap<String, String>>>);

impl NamespaceIndex {
    pub fn tenant_of(&self, namespace: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .cloned()
    }

    fn record(&self, tenant: &str, namespaces: impl IntoIterator<Item = String>) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        for ns in namespaces {
            index.insert(ns, tenant.to_string());
        }
    }

    fn forget(&self, tenant: &str) -> BTreeSet<String> {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        let gone: BTreeSet<String> = index
            .iter()
            .filter(|(_, t)| t.as_str() == tenant)
            .map(|(ns, _)| ns.clone())
            .collect();
        index.retain(|_, t| t != tenant);
        gone
    }
}

pub struct Context {
    pub client: Client,
    pub observed: Observed,
    pub memo: AppliedMemo,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub settings: BuildSettings,
    pub index: NamespaceIndex,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        observed: Observed,
        metrics: Arc<Metrics>,
        settings: BuildSettings,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            observed,
            memo: AppliedMemo::default(),
            metrics,
            settings,
            index: NamespaceIndex::default(),
            failures: Mutex::default(),
        }
    }

    async fn publish(
        &self,
        tenant: &FranceTravailTenant,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &tenant.object_ref(&())).await {
            warn!(tenant = %tenant.name_any(), reason, error = %e, "could not publish event");
        } else {
            self.metrics.write("Event", "create");
        }
    }
}

#[instrument(skip_all, fields(tenant = %tenant.name_any()))]
pub async fn reconcile(tenant: Arc<FranceTravailTenant>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = tenant.name_any();
    ctx.observed.wait_until_ready().await;
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(tenant) => apply_tenant(&tenant, &ctx).await,
            Finalizer::Cleanup(tenant) => cleanup(&tenant, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.reconciled(&name, started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
    }
    result
}

pub fn error_policy(tenant: Arc<FranceTravailTenant>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        debug!(tenant = %tenant.name_any(), %error, "waiting");
        return Action::requeue(Duration::from_secs(2));
    }
    ctx.metrics.failed(error.category());
    warn!(tenant = %tenant.name_any(), category = error.category(), %error, "reconcile failed");
    // Exponential backoff per tenant, capped at five minutes.
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let count = failures.entry(tenant.name_any()).or_default();
    *count = count.saturating_add(1);
    Action::requeue(Duration::from_secs(2u64.saturating_pow(*count).min(300)))
}

async fn apply_tenant(tenant: &FranceTravailTenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    ctx.index.record(
        &name,
        tenant
            .spec
            .environments
            .iter()
            .map(|e| namespace_name(&name, &e.name)),
    );

    let applied = match validate_for_cluster(tenant, &ctx.settings) {
        Err(invalid) => Err(Error::InvalidTenant(invalid)),
        Ok(()) => {
            let desired = build(tenant, &ctx.settings);
            let applier = Applier {
                client: &ctx.client,
                observed: &ctx.observed,
                memo: &ctx.memo,
                metrics: &ctx.metrics,
                tenant: &name,
            };
            applier.apply(&desired).await
        }
    };
    if let Ok(report) = &applied {
        journal(tenant, report, ctx).await;
    }

    let outcome = match &applied {
        Ok(_) => Outcome::Applied,
        Err(e) => Outcome::Failed(e),
    };
    let status = next_status(tenant, outcome, &Time(jiff::Timestamp::now()));
    if tenant.status.as_ref() != Some(&status) {
        write_status(tenant, &status, ctx).await?;
        announce_transitions(tenant, &status, ctx).await;
    }

    match applied {
        Ok(_) => Ok(Action::requeue(RESYNC)),
        // A bad spec waits for the next change of the tenant.
        Err(Error::InvalidTenant(invalid)) => {
            warn!(tenant = %name, error = %invalid, "tenant refused");
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

async fn write_status(
    tenant: &FranceTravailTenant,
    status: &TenantStatus,
    ctx: &Context,
) -> Result<()> {
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "FranceTravailTenant",
        "status": status,
    });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube("write status of", tenant.name_any(), e))?;
    ctx.metrics.write("FranceTravailTenant", "status");
    Ok(())
}

/// One Event and one log line per kind of change (CLD-28): what was created, restored, pruned.
async fn journal(tenant: &FranceTravailTenant, report: &ApplyReport, ctx: &Context) {
    let name = tenant.name_any();
    if !report.created.is_empty() {
        info!(tenant = %name, objects = ?report.created, "created");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Created",
            format!("created {}", report.created.join(", ")),
        )
        .await;
    }
    if !report.restored.is_empty() {
        warn!(tenant = %name, objects = ?report.restored, control = "CLD-20", "reverted changes made by hand");
        ctx.metrics
            .drift_repairs
            .get_or_create(&TenantLabels {
                tenant: name.clone(),
            })
            .inc_by(report.restored.len() as u64);
        ctx.publish(
            tenant,
            EventType::Warning,
            "DriftReverted",
            format!(
                "restored what was changed or deleted by hand: {}",
                report.restored.join(", ")
            ),
        )
        .await;
    }
    if !report.pruned.is_empty() {
        info!(tenant = %name, objects = ?report.pruned, "pruned");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Pruned",
            format!(
                "deleted what the tenant no longer declares: {}",
                report.pruned.join(", ")
            ),
        )
        .await;
    }
}

/// An Event on each transition, not on each pass. Degraded only ever moves with Ready, so
/// Ready alone is announced: one state change, one Event.
async fn announce_transitions(tenant: &FranceTravailTenant, next: &TenantStatus, ctx: &Context) {
    let before = status::condition(tenant.status.as_ref(), status::READY);
    let Some(after) = status::condition(Some(next), status::READY) else {
        return;
    };
    if before.map(|b| (&b.status, &b.reason)) == Some((&after.status, &after.reason)) {
        return;
    }
    let event_type = if after.status == "True" {
        EventType::Normal
    } else {
        EventType::Warning
    };
    info!(tenant = %tenant.name_any(), ready = %after.status, reason = %after.reason, "tenant state changed");
    ctx.publish(
        tenant,
        event_type,
        &after.reason,
        format!("Ready is {}: {}", after.status, after.message),
    )
    .await;
}

/// Runs while the tenant is being deleted; the finalizer stays until this returns Ok.
async fn cleanup(tenant: &FranceTravailTenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    if tenant.spec.deletion.policy == DeletionPolicy::Retain {
        info!(tenant = %name, "deletion policy Retain: namespaces and data are left in place");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Retained",
            "deletion policy Retain: namespaces and their data are left in place".into(),
        )
        .await;
    } else {
        let namespaces: Vec<_> = ctx
            .observed
            .namespaces
            .state()
            .into_iter()
            .filter(|ns| owned_by(&ns.metadata, &name))
            .collect();
        if let Some(remaining) = namespaces.first() {
            let api: Api<Namespace> = Api::all(ctx.client.clone());
            for ns in namespaces
                .iter()
                .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            {
                match api.delete(&ns.name_any(), &Default::default()).await {
                    Ok(_) => {
                        ctx.metrics.write("Namespace", "delete");
                        info!(tenant = %name, namespace = %ns.name_any(), control = "CLD-47", "namespace deleted");
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(Error::kube(
                            "delete",
                            format!("Namespace/{}", ns.name_any()),
                            e,
                        ));
                    }
                }
            }
            return Err(Error::CleanupPending(format!(
                "Namespace/{}",
                remaining.name_any()
            )));
        }
        ctx.publish(
            tenant,
            EventType::Normal,
            "Deleted",
            "every namespace of the tenant is gone".into(),
        )
        .await;
    }
    let forgotten = ctx.index.forget(&name);
    ctx.memo.forget_tenant(&forgotten);
    Ok(Action::await_change())
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl Observed {
    async fn wait_until_ready(&self) {
        // Errors only mean the writer was dropped, i.e. the controller is shutting down.
        let _ = futures::join!(
            self.namespaces.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.resource_quotas.wait_until_ready(),
            self.limit_ranges.wait_until_ready(),
        );
    }
}

/// The tenant a child belongs to: from its label, or from the namespace it lives in.
fn tenant_of(meta: &ObjectMeta, index: &NamespaceIndex) -> Option<ObjectRef<FranceTravailTenant>> {
    let from_label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::TENANT))
        .cloned();
    // A namespaced child lives in `namespace`; a Namespace has none and is its own name.
    let from_namespace = || {
        meta.namespace
            .as_deref()
            .or(meta.name.as_deref())
            .and_then(|ns| index.tenant_of(ns))
    };
    from_label
        .or_else(from_namespace)
        .map(|t| ObjectRef::new(&t))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: BuildSettings,
    reporter: Reporter,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let children = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let (observed, writers) = empty_stores();
    let ctx = Arc::new(Context::new(
        client.clone(),
        observed,
        metrics,
        settings,
        reporter,
    ));

    // Namespaces are watched unfiltered (metadata only) so that removing the tenant label by
    // hand is seen; every other child is watched by the operator's label.
    let namespace_events = reflector::reflector(
        writers.namespaces,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let network_policy_events = reflector::reflector(
        writers.network_policies,
        watcher(Api::<NetworkPolicy>::all(client.clone()), children.clone()),
    )
    .default_backoff()
    .touched_objects();
    let resource_quota_events = reflector::reflector(
        writers.resource_quotas,
        watcher(Api::<ResourceQuota>::all(client.clone()), children.clone()),
    )
    .default_backoff()
    .touched_objects();
    let limit_range_events = reflector::reflector(
        writers.limit_ranges,
        watcher(Api::<LimitRange>::all(client.clone()), children),
    )
    .default_backoff()
    .touched_objects();

    let index = ctx.index.clone();
    let map = move |meta: &ObjectMeta| tenant_of(meta, &index);
    let (m1, m2, m3, m4) = (map.clone(), map.clone(), map.clone(), map);

    Controller::new(
        Api::<FranceTravailTenant>::all(client),
        watcher::Config::default(),
    )
    .with_config(
        ControllerConfig::default()
            .concurrency(16)
            .debounce(Duration::from_millis(50)),
    )
    .watches_stream(namespace_events, move |o| m1(&o.metadata))
    .watches_stream(network_policy_events, move |o| m2(o.meta()))
    .watches_stream(resource_quota_events, move |o| m3(o.meta()))
    .watches_stream(limit_range_events, move |o| m4(o.meta()))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            debug!(error = %e, "controller event");
        }
    })
    .await;
}

/// Empty stores and their writers: `run` feeds them from watches, tests by hand.
pub fn empty_stores() -> (Observed, ObservedWriters) {
    let (namespaces, namespaces_writer) = reflector::store();
    let (network_policies, network_policies_writer) = reflector::store();
    let (resource_quotas, resource_quotas_writer) = reflector::store();
    let (limit_ranges, limit_ranges_writer) = reflector::store();
    (
        Observed {
            namespaces,
            network_policies,
            resource_quotas,
            limit_ranges,
        },
        ObservedWriters {
            namespaces: namespaces_writer,
            network_policies: network_policies_writer,
            resource_quotas: resource_quotas_writer,
            limit_ranges: limit_ranges_writer,
        },
    )
}

pub struct ObservedWriters {
    pub namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    pub network_policies: reflector::store::Writer<NetworkPolicy>,
    pub resource_quotas: reflector::store::Writer<ResourceQuota>,
    pub limit_ranges: reflector::store::Writer<LimitRange>,
}
