//! The tenant controller: fetch → validate → build → apply → status, on every change of a
//! tenant or of one of its children, and on a short period.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, Node, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, Pod, PodSpec, ResourceQuota,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PartialObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::access;
use crate::admission::Confinement;
use crate::api::{
    ComplianceReport, DeletionPolicy, FIELD_MANAGER, FINALIZER, FranceTravailTenant, GROUP,
    ShreddingStatus, TenantStatus, labels,
};
use crate::apply::{AppliedMemo, Applier, ApplyReport, owned_by};
use crate::build::{
    BuildSettings, build, namespace_name, tenant_namespaces, with_access, with_placement,
};
use crate::compliance::Compliance;
use crate::error::{Error, Result};
use crate::keystore::{KeyStore, MemoryKeyStore, SecretKeyStore};
use crate::metrics::{Metrics, TenantLabels};
use crate::observe::{Observed, empty_stores};
use crate::placement::{PlacementIndex, allowed_regions, placements};
use crate::shredding::{self, Step};
use crate::status::{self, Outcome, next_status};
use crate::validate::validate_for_cluster;

/// How often a tenant is re-checked when nothing happens: its report is never older.
pub const RESYNC: Duration = Duration::from_secs(60);

/// How soon a tenant is looked at again after a pass that wrote children or did not see them
/// all in the reflectors, in case the watch events that would wake it are slow to come.
pub const SETTLING: Duration = Duration::from_secs(1);

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
    pub compliance: Compliance,
    /// Each tenant namespace's placement, for the webhook.
    pub placements: PlacementIndex,
    /// Where tenant keys are kept: a Secret per tenant in the operator's namespace when
    /// running, in memory in tests.
    pub keys: Arc<dyn KeyStore>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        observed: Observed,
        metrics: Arc<Metrics>,
        settings: BuildSettings,
        compliance: Compliance,
        reporter: Reporter,
    ) -> Self {
        Self {
            compliance,
            placements: PlacementIndex::default(),
            keys: Arc::new(MemoryKeyStore::default()),
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

    /// Applies and prunes the children of one tenant.
    pub fn applier<'a>(&'a self, tenant: &'a str) -> Applier<'a> {
        Applier {
            client: &self.client,
            observed: &self.observed,
            memo: &self.memo,
            metrics: &self.metrics,
            tenant,
        }
    }

    async fn publish(
        &self,
        tenant: &FranceTravailTenant,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_on(&tenant.object_ref(&()), type_, reason, note)
            .await;
    }

    pub async fn publish_on(
        &self,
        target: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_related(target, None, type_, reason, note)
            .await;
    }

    /// An Event about `target` concerning `related` too. Events with the same reason on the
    /// same objects are folded into one series, so a distinct `related` keeps them apart.
    pub async fn publish_related(
        &self,
        target: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: reason.into(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&event, target).await {
            warn!(object = ?target.name, reason, error = %e, "could not publish event");
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

    // The tenant's key exists before anything is built that would use it (CLD-21, CLD-40).
    let key_fingerprint = ctx.keys.ensure(&name).await?;
    let known = tenant
        .status
        .as_ref()
        .and_then(|s| s.key_fingerprint.as_deref());
    if let Some(lost) = known.filter(|k| *k != key_fingerprint) {
        // The key was destroyed outside the operator: what it encrypted is unreadable now.
        warn!(tenant = %name, lost, key = %key_fingerprint, control = "CLD-40", "tenant key replaced: the previous one was deleted outside the operator");
        ctx.publish(
            tenant,
            EventType::Warning,
            "KeyReplaced",
            format!(
                "the tenant key {lost} was deleted outside the operator ({}); volumes encrypted with it can no longer be read. New volumes are encrypted with a new key {key_fingerprint} (CLD-40)",
                ctx.keys.location(&name)
            ),
        )
        .await;
    }

    // Rights are judged at one instant for the whole pass: what is bound, journalled and
    // listed in the status all agree.
    let now = jiff::Timestamp::now();
    let namespaces = tenant_namespaces(tenant);
    let bindings_before: Vec<Arc<RoleBinding>> = ctx
        .observed
        .role_bindings
        .state()
        .into_iter()
        .filter(|b| {
            b.metadata
                .namespace
                .as_ref()
                .is_some_and(|ns| namespaces.contains(ns))
        })
        .collect();

    let validated = validate_for_cluster(tenant, &ctx.settings).map(|()| {
        let regions = allowed_regions(
            tenant,
            &ctx.observed.nodes.state(),
            &ctx.compliance.regions,
            ctx.compliance.provider.as_deref(),
        );
        for placement in placements(tenant, &regions) {
            ctx.placements
                .set(namespace_name(&name, &placement.environment), placement);
        }
        let desired = with_placement(
            build(tenant, &ctx.settings),
            tenant,
            &regions,
            ctx.settings.confinement,
        );
        with_access(desired, tenant, now)
    });
    let applier = ctx.applier(&name);
    let wanted_bindings = match &validated {
        Ok(desired) => desired.role_bindings.clone(),
        Err(_) => access::role_bindings(tenant, now),
    };
    let applied = match &validated {
        // A refused spec gets nothing new, but its lapsed rights still go on time.
        Err(invalid) => match applier.revoke(&wanted_bindings).await {
            Ok(report) => {
                journal_access(
                    tenant,
                    now,
                    &report,
                    &wanted_bindings,
                    &bindings_before,
                    ctx,
                )
                .await;
                Err(Error::InvalidTenant(invalid.clone()))
            }
            Err(e) => Err(e),
        },
        Ok(desired) => {
            let mut applied = applier.apply(desired).await;
            if let Ok(report) = &mut applied
                && tenant.spec.access.prune_undeclared
                && let Err(e) = applier
                    .remove_undeclared(&desired.role_bindings, &namespaces, report)
                    .await
            {
                applied = Err(e);
            }
            applied
        }
    };
    if let Ok(report) = &applied {
        journal(tenant, report, ctx).await;
        journal_access(tenant, now, report, &wanted_bindings, &bindings_before, ctx).await;
    }

    // The controls judge what the reflectors show. After a pass that wrote children they
    // would judge the cluster as it was before: the evaluation waits for the watch events of
    // those writes, which wake the tenant again, and the report keeps its results meanwhile.
    let mut deferred = false;
    let report = match (&applied, &validated) {
        (Ok(report), Ok(desired)) if report.is_quiet() => {
            ctx.compliance
                .assess(tenant, Ok(desired), &key_fingerprint, ctx)
                .await?
        }
        (Err(Error::InvalidTenant(invalid)), _) => {
            let why = invalid.to_string();
            ctx.compliance
                .assess(tenant, Err(&why), &key_fingerprint, ctx)
                .await?
        }
        _ => {
            deferred = applied.is_ok();
            ctx.compliance.current(&name, &ctx.observed)
        }
    };

    let outcome = match &applied {
        Ok(_) => Outcome::Applied,
        Err(e) => Outcome::Failed(e),
    };
    let mut status = next_status(
        tenant,
        outcome,
        report.as_ref(),
        &Time(jiff::Timestamp::now()),
    );
    status.key_fingerprint = Some(key_fingerprint);
    let changed = tenant.status.as_ref() != Some(&status);
    if changed {
        write_status(tenant, &status, ctx).await?;
        announce_transitions(tenant, &status, ctx).await;
    }

    // A right lapses at its instant, not at the next resync (2.4.c): wake up then.
    let wake = |period: Duration| {
        Action::requeue(access::wake_after(tenant, jiff::Timestamp::now(), period))
    };
    match applied {
        Ok(_) if deferred => Ok(wake(SETTLING)),
        Ok(_) => Ok(wake(RESYNC)),
        // A bad spec is not retried, but its report is kept as fresh as any other.
        Err(Error::InvalidTenant(invalid)) => {
            if changed {
                warn!(tenant = %name, error = %invalid, "tenant refused");
            }
            Ok(wake(RESYNC))
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

/// One Event and one log line per right granted, changed, restored, expired, suspended or
/// revoked (CLD-28), with the subject, the role, the environment and the rule.
async fn journal_access(
    tenant: &FranceTravailTenant,
    now: jiff::Timestamp,
    report: &ApplyReport,
    wanted: &[RoleBinding],
    before: &[Arc<RoleBinding>],
    ctx: &Context,
) {
    let name = tenant.name_any();
    for change in access::journal(tenant, now, report, wanted, before) {
        let type_ = if change.warning {
            warn!(tenant = %name, subject = %change.subject, role = %change.role, environment = %change.environment, rule = change.rule, reason = change.reason, "{}", change.note);
            EventType::Warning
        } else {
            info!(tenant = %name, subject = %change.subject, role = %change.role, environment = %change.environment, rule = change.rule, reason = change.reason, "{}", change.note);
            EventType::Normal
        };
        let (namespace, binding) = change.binding;
        let related = ObjectReference {
            api_version: Some("rbac.authorization.k8s.io/v1".into()),
            kind: Some("RoleBinding".into()),
            namespace: Some(namespace),
            name: Some(binding),
            ..Default::default()
        };
        ctx.publish_related(
            &tenant.object_ref(&()),
            Some(related),
            type_,
            change.reason,
            format!("{} ({})", change.note, change.rule),
        )
        .await;
    }
}

/// One Event and one log line per kind of change (CLD-28): what was created, restored, pruned.
/// RoleBindings are journalled one by one, by `journal_access`.
async fn journal(tenant: &FranceTravailTenant, report: &ApplyReport, ctx: &Context) {
    let name = tenant.name_any();
    let not_binding = |keys: &[String]| -> Vec<String> {
        keys.iter()
            .filter(|k| !k.starts_with("RoleBinding/"))
            .cloned()
            .collect()
    };
    let report = &ApplyReport {
        created: not_binding(&report.created),
        restored: not_binding(&report.restored),
        pruned: not_binding(&report.pruned),
        unseen: report.unseen,
    };
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
    let applier = ctx.applier(&name);
    if tenant.spec.deletion.policy == DeletionPolicy::Retain {
        // The namespaces, their data and the key stay; the operator's own objects go.
        let removed = applier.remove_own_objects().await?;
        if let Some(left) = applier.own_objects_left().first() {
            return Err(Error::CleanupPending(left.clone()));
        }
        info!(tenant = %name, removed = ?removed.pruned, "deletion policy Retain: namespaces, data and key are left in place");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Retained",
            format!(
                "deletion policy Retain: namespaces, their data and the tenant key ({}) are left in place; the operator's own objects are removed",
                ctx.keys.location(&name)
            ),
        )
        .await;
    } else {
        shred(tenant, &applier, ctx).await?;
    }
    let forgotten = ctx.index.forget(&name);
    for ns in &forgotten {
        ctx.placements.remove(ns);
    }
    ctx.memo.forget_tenant(&name, &forgotten);
    ctx.compliance.forget(&name);
    ctx.metrics.forget_tenant(
        &name,
        ctx.compliance
            .catalogue
            .controls
            .iter()
            .map(|c| c.id.clone()),
    );
    Ok(Action::await_change())
}

/// Crypto-shredding, one step per pass, each recorded in `status.shredding` before the next
/// begins: the key first, then the namespaces, then the cluster objects, then the record. A
/// pass that finds a step unfinished returns a waiting error and is retried.
async fn shred(tenant: &FranceTravailTenant, applier: &Applier<'_>, ctx: &Context) -> Result<()> {
    let name = tenant.name_any();
    let now = || Time(jiff::Timestamp::now());
    let mut progress = tenant
        .status
        .as_ref()
        .and_then(|s| s.shredding.clone())
        .unwrap_or_else(|| ShreddingStatus {
            started_at: Some(now()),
            ..Default::default()
        });
    loop {
        let step = shredding::next_step(tenant, &progress);
        if progress.step != step.as_str() {
            progress.step = step.as_str().into();
            progress.message.clear();
            write_shredding(tenant, &progress, ctx).await?;
        }
        match step {
            Step::FinalExport => {
                progress.message = shredding::NO_EXPORT_ENGINE.into();
                write_shredding(tenant, &progress, ctx).await?;
                return Err(Error::ShreddingBlocked(shredding::NO_EXPORT_ENGINE.into()));
            }
            Step::DestroyKey => {
                let destroyed = ctx.keys.destroy(&name).await?;
                // Destroyed by an earlier pass that could not record it: the status knew it.
                progress.key_fingerprint = destroyed
                    .or_else(|| tenant.status.as_ref()?.key_fingerprint.clone())
                    .or_else(|| Some("none: the tenant had no key".into()));
                progress.key_destroyed_at = Some(now());
                write_shredding(tenant, &progress, ctx).await?;
                info!(tenant = %name, fingerprint = ?progress.key_fingerprint, control = "CLD-47", "tenant key destroyed");
                ctx.publish(
                    tenant,
                    EventType::Normal,
                    "KeyDestroyed",
                    format!(
                        "destroyed the tenant key {} ({}): its volumes and backups are unreadable from now on (CLD-47)",
                        progress.key_fingerprint.as_deref().unwrap_or_default(),
                        ctx.keys.location(&name)
                    ),
                )
                .await;
            }
            Step::DeleteNamespaces => {
                delete_namespaces(tenant, ctx).await?;
                progress.namespaces_deleted_at = Some(now());
                write_shredding(tenant, &progress, ctx).await?;
                ctx.publish(
                    tenant,
                    EventType::Normal,
                    "Deleted",
                    "every namespace of the tenant is gone".into(),
                )
                .await;
            }
            Step::DeleteClusterObjects => {
                let removed = applier.remove_own_objects().await?;
                for key in removed.pruned {
                    if !progress.deleted.contains(&key) {
                        progress.deleted.push(key);
                    }
                }
                if let Some(left) = applier.own_objects_left().first() {
                    write_shredding(tenant, &progress, ctx).await?;
                    return Err(Error::CleanupPending(left.clone()));
                }
                progress.cluster_objects_deleted_at = Some(now());
                write_shredding(tenant, &progress, ctx).await?;
            }
            Step::WriteRecord => {
                let record = shredding::record(
                    tenant,
                    &progress,
                    ctx.keys.location(&name),
                    &ctx.settings.key_namespace,
                    &now(),
                )
                .map_err(|e| Error::KeyStore(format!("rendering the shredding record: {e}")))?;
                let record_name = record.name_any();
                let api: Api<ConfigMap> =
                    Api::namespaced(ctx.client.clone(), &ctx.settings.key_namespace);
                match api.create(&PostParams::default(), &record).await {
                    Ok(_) => ctx.metrics.write("ConfigMap", "create"),
                    // Written by a pass that could not record it: that one stands.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(Error::kube("create", &record_name, e)),
                }
                progress.record = Some(format!(
                    "ConfigMap {}/{record_name}",
                    ctx.settings.key_namespace
                ));
                write_shredding(tenant, &progress, ctx).await?;
                let note = format!(
                    "tenant shredded: key {} destroyed, then {} namespace(s) and {} other object(s); record in {}",
                    progress.key_fingerprint.as_deref().unwrap_or_default(),
                    tenant.status.as_ref().map_or(0, |s| s.namespaces.len()),
                    progress.deleted.len(),
                    progress.record.as_deref().unwrap_or_default()
                );
                info!(tenant = %name, record = ?progress.record, control = "CLD-76", "{note}");
                let related = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("ConfigMap".into()),
                    namespace: Some(ctx.settings.key_namespace.clone()),
                    name: Some(record_name),
                    ..Default::default()
                };
                ctx.publish_related(
                    &tenant.object_ref(&()),
                    Some(related.clone()),
                    EventType::Normal,
                    "Shredded",
                    note.clone(),
                )
                .await;
                ctx.publish_on(&related, EventType::Normal, "Shredded", note)
                    .await;
            }
            Step::Done => return Ok(()),
        }
    }
}

/// Records the shredding's progress in the tenant's status. A merge patch: the conditions and
/// the rest of the status stay as they are.
async fn write_shredding(
    tenant: &FranceTravailTenant,
    progress: &ShreddingStatus,
    ctx: &Context,
) -> Result<()> {
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let patch = json!({ "status": { "shredding": progress } });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube("write status of", tenant.name_any(), e))?;
    ctx.metrics.write("FranceTravailTenant", "status");
    Ok(())
}

/// Deletes the tenant's namespaces and returns once none is left.
async fn delete_namespaces(tenant: &FranceTravailTenant, ctx: &Context) -> Result<()> {
    let name = tenant.name_any();
    let namespaces: Vec<_> = ctx
        .observed
        .namespaces
        .state()
        .into_iter()
        .filter(|ns| owned_by(&ns.metadata, &name))
        .collect();
    let Some(remaining) = namespaces.first() else {
        return Ok(());
    };
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
    Err(Error::CleanupPending(format!(
        "Namespace/{}",
        remaining.name_any()
    )))
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

/// Maps a child to its tenant, for `watches_stream`.
fn by_owner<K: Resource>(
    index: &NamespaceIndex,
) -> impl Fn(K) -> Option<ObjectRef<FranceTravailTenant>> + Send + Sync + 'static {
    let index = index.clone();
    move |o| tenant_of(o.meta(), &index)
}

/// Maps an object of a tenant namespace (pod, claim, binding) to the tenant.
fn by_namespace<K: Resource>(
    index: &NamespaceIndex,
) -> impl Fn(K) -> Option<ObjectRef<FranceTravailTenant>> + Send + Sync + 'static {
    let index = index.clone();
    move |o| {
        let ns = o.meta().namespace.as_deref()?;
        index.tenant_of(ns).map(|t| ObjectRef::new(&t))
    }
}

/// Whether the API server serves MutatingAdmissionPolicies, by discovery, not by version.
pub async fn discover_confinement(client: &Client) -> Confinement {
    match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => Confinement::from_resources(list.resources.iter().map(|r| r.name.as_str())),
        Err(e) => {
            warn!(error = %e, "cannot discover admissionregistration.k8s.io/v1; pods are confined by the webhook");
            Confinement::Webhook
        }
    }
}

/// Runs the controller until `shutdown` resolves. `placements` is shared with the webhook.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: BuildSettings,
    compliance: Compliance,
    placements: PlacementIndex,
    reporter: Reporter,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (observed, mut writers) = empty_stores();
    let mut ctx = Context::new(
        client.clone(),
        observed,
        metrics,
        settings,
        compliance,
        reporter,
    );
    ctx.placements = placements;
    ctx.keys = Arc::new(SecretKeyStore::new(
        client.clone(),
        ctx.settings.key_namespace.clone(),
    ));
    let ctx = Arc::new(ctx);
    let ours = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let everything = watcher::Config::default;

    // Namespaces and NetworkPolicies are watched unfiltered: a label removed by hand, or a
    // policy made by hand in a tenant namespace, must be seen. Namespaces as metadata only.
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        everything(),
    )
    .modify(|o| managers_only(o.meta_mut()))
    .reflect(writers.namespaces);
    let network_policies = watcher(Api::<NetworkPolicy>::all(client.clone()), everything())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.network_policies);
    let resource_quotas = watcher(Api::<ResourceQuota>::all(client.clone()), ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.resource_quotas);
    let limit_ranges = watcher(Api::<LimitRange>::all(client.clone()), ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.limit_ranges);
    let compliance_reports = watcher(Api::<ComplianceReport>::all(client.clone()), ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.compliance_reports);
    // What the controls judge, trimmed before it is stored: a cluster may hold many pods.
    let pods = watcher(Api::<Pod>::all(client.clone()), everything())
        .modify(trim_pod)
        .reflect(writers.pods);
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        everything(),
    )
    .modify(|o| trim_meta(&mut o.metadata))
    .reflect(writers.persistent_volume_claims);
    let role_bindings = watcher(Api::<RoleBinding>::all(client.clone()), everything())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.role_bindings);
    let volumes = watcher(Api::<PersistentVolume>::all(client.clone()), everything())
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.persistent_volumes);
    let nodes = watcher(Api::<Node>::all(client.clone()), everything())
        .modify(trim_node)
        .reflect(writers.nodes);
    let storage_classes = watcher(Api::<StorageClass>::all(client.clone()), everything())
        .reflect(writers.storage_classes);
    let validating_policies = watcher(
        Api::<ValidatingAdmissionPolicy>::all(client.clone()),
        ours(),
    )
    .modify(|o| managers_only(o.meta_mut()))
    .reflect(writers.validating_admission_policies);
    let validating_bindings = watcher(
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()),
        ours(),
    )
    .modify(|o| managers_only(o.meta_mut()))
    .reflect(writers.validating_admission_policy_bindings);
    // A cluster that does not serve MutatingAdmissionPolicies has none to watch.
    let native = ctx.settings.confinement == Confinement::Native;
    let mutating_policies = if native {
        watcher(Api::<MutatingAdmissionPolicy>::all(client.clone()), ours())
            .modify(|o| managers_only(o.meta_mut()))
            .reflect(writers.mutating_admission_policies)
            .default_backoff()
            .touched_objects()
            .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policies);
        futures::stream::pending().boxed()
    };
    let mutating_bindings = if native {
        watcher(
            Api::<MutatingAdmissionPolicyBinding>::all(client.clone()),
            ours(),
        )
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.mutating_admission_policy_bindings)
        .default_backoff()
        .touched_objects()
        .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policy_bindings);
        futures::stream::pending().boxed()
    };

    let controller = Controller::new(
        Api::<FranceTravailTenant>::all(client),
        watcher::Config::default(),
    )
    .with_config(
        ControllerConfig::default()
            .concurrency(16)
            .debounce(Duration::from_millis(50)),
    );
    let tenants = controller.store();
    // A change to a node or a storage class may concern any tenant.
    let all_tenants = move || {
        tenants
            .state()
            .iter()
            .map(|t| ObjectRef::from_obj(&**t))
            .collect::<Vec<_>>()
    };
    let index = &ctx.index;
    let a1 = all_tenants.clone();
    controller
        .watches_stream(
            namespaces.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            network_policies.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            resource_quotas.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            limit_ranges.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            compliance_reports.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            validating_policies.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(
            validating_bindings.default_backoff().touched_objects(),
            by_owner(index),
        )
        .watches_stream(mutating_policies, by_owner(index))
        .watches_stream(mutating_bindings, by_owner(index))
        .watches_stream(
            pods.default_backoff().touched_objects(),
            by_namespace(index),
        )
        .watches_stream(
            claims.default_backoff().touched_objects(),
            by_namespace(index),
        )
        .watches_stream(
            role_bindings.default_backoff().touched_objects(),
            by_namespace(index),
        )
        .watches_stream(volumes.default_backoff().touched_objects(), {
            // A volume concerns the tenant whose namespace claims it.
            let index = index.clone();
            move |o| {
                let ns = o.spec.as_ref()?.claim_ref.as_ref()?.namespace.as_deref()?;
                index.tenant_of(ns).map(|t| ObjectRef::new(&t))
            }
        })
        // Nodes report their status every few seconds; only what placement reads matters.
        .watches_stream(
            nodes
                .default_backoff()
                .touched_objects()
                .predicate_filter(node_placement, Default::default()),
            move |_| a1(),
        )
        // A tenant's own class concerns that tenant only; any other class (a new default, a
        // class changed by hand) may concern every tenant's claims.
        .watches_stream(
            storage_classes.default_backoff().touched_objects(),
            move |class: StorageClass| match class.labels().get(labels::TENANT) {
                Some(tenant) => vec![ObjectRef::new(tenant)],
                None => all_tenants(),
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// A store whose kind the cluster does not serve: empty, and listed.
fn mark_listed<K>(writer: &mut reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// Keeps who manages an object, which ownership needs, and drops the field sets, the bulk of
/// a cached object's metadata.
fn managers_only(meta: &mut ObjectMeta) {
    for entry in meta.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
    }
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// A pod as the controls see it: where it is bound, nothing else.
fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    pod.status = None;
}

/// A node as the controls see it: its labels, provider id and whether it takes pods.
fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata);
    node.status = None;
    if let Some(spec) = &mut node.spec {
        spec.taints = None;
        spec.pod_cidr = None;
        spec.pod_cidrs = None;
    }
}

fn node_placement(node: &Node) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    node.metadata.labels.hash(&mut hasher);
    node.spec
        .as_ref()
        .map(|s| (&s.provider_id, s.unschedulable))
        .hash(&mut hasher);
    Some(hasher.finish())
}
