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
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::access;
use crate::admission::Confinement;
use crate::api::{
    ComplianceReport, DeletionPolicy, Environment, ExportStatus, FIELD_MANAGER, FINALIZER,
    FranceTravailTenant, GROUP, ShreddingStatus, TenantStatus, annotations, labels,
};
use crate::apply::{AppliedMemo, Applier, ApplyReport, owned_by};
use crate::backup::{self, RestoreTest, VeleroView};
use crate::build::{
    BuildSettings, build, namespace_name, tenant_namespaces, with_access, with_backups,
    with_placement,
};
use crate::compliance::Compliance;
use crate::error::{Error, Result};
use crate::health::{Liveness, WatchSignal};
use crate::keystore::{KeyStore, MemoryKeyStore, SecretKeyStore};
use crate::metrics::{Metrics, TenantLabels};
use crate::observe::{Observed, empty_stores};
use crate::placement::{PlacementIndex, allowed_regions, placements};
use crate::shredding::{self, Step};
use crate::status::{self, Outcome, next_status};
use crate::validate::validate_for_cluster;
use crate::velero::{self, Backup as VeleroBackup, BackupStorageLocation, Restore, Schedule};

/// How often a tenant is re-checked when nothing happens: its report is never older.
pub const RESYNC: Duration = Duration::from_secs(60);

/// The longest a pass may take. A pass makes a few dozen calls; one that runs this long waits
/// on a call the API server does not answer, and would hold one of the controller's 16 slots:
/// sixteen such passes and no tenant is reconciled any more.
pub const PASS_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Whether the controller moves: every pass marks its start and end.
    pub liveness: Liveness,
    /// False while the leader cannot confirm it holds its Lease: passes wait, so that it never
    /// acts beside the next leader.
    pub acting: tokio::sync::watch::Receiver<bool>,
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
            liveness: Liveness::new(metrics.clone()),
            acting: tokio::sync::watch::channel(true).1,
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
    let name = tenant.name_any();
    if ctx.acting.clone().wait_for(|acting| *acting).await.is_err() {
        // The leader is stepping down: this pass is not its to make.
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    ctx.liveness.pass_started(&name);
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let pass = async {
        ctx.observed.wait_until_ready().await;
        finalizer(&api, FINALIZER, tenant, |event| async {
            match event {
                Finalizer::Apply(tenant) => apply_tenant(&tenant, &ctx).await,
                Finalizer::Cleanup(tenant) => cleanup(&tenant, &ctx).await,
            }
        })
        .await
    };
    // Every step resumes from what the cluster holds, so a pass can be dropped midway.
    let result = match tokio::time::timeout(PASS_TIMEOUT, pass).await {
        Ok(result) => result.map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }),
        Err(_) => Err(Error::PassTimedOut(PASS_TIMEOUT)),
    };
    ctx.metrics.reconciled(&name, started.elapsed());
    ctx.liveness.pass_finished(&name, result.is_ok());
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
    // Exponential backoff per tenant, capped at the resync period: a failing tenant is retried
    // at least as often as a healthy one is checked. Recovery from an API-server outage wakes
    // every tenant at once (`wake_on_recovery`), whatever its backoff.
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let count = failures.entry(tenant.name_any()).or_default();
    *count = count.saturating_add(1);
    Action::requeue(Duration::from_secs(2u64.saturating_pow(*count)).min(RESYNC))
}

async fn apply_tenant(tenant: &FranceTravailTenant, ctx: &Context) -> Result<Action> {
    let name = tenant.name_any();
    // Rights and restore tests are judged at one instant for the whole pass: what is bound,
    // journalled and listed in the status all agree.
    let now = jiff::Timestamp::now();
    let engine = ctx.compliance.backup_engine();
    let velero = ctx
        .observed
        .velero_view(tenant, &ctx.settings.velero_namespace);
    let tests: Vec<(&Environment, RestoreTest)> = match engine {
        Some(true) => tenant
            .spec
            .environments
            .iter()
            .map(|env| (env, backup::restore_test(tenant, &env.name, &velero, now)))
            .collect(),
        _ => Vec::new(),
    };
    // A restore test in progress has its scratch environment, built like any other.
    let scratch: BTreeSet<String> = tests
        .iter()
        .filter(|(_, test)| !matches!(test, RestoreTest::Idle { .. }))
        .map(|(env, _)| env.name.clone())
        .collect();
    let effective = backup::with_scratch(tenant, &scratch);
    ctx.index.record(
        &name,
        effective
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
            &effective,
            &ctx.observed.nodes.state(),
            &ctx.compliance.regions,
            ctx.compliance.provider.as_deref(),
        );
        for placement in placements(&effective, &regions) {
            ctx.placements
                .set(namespace_name(&name, &placement.environment), placement);
        }
        let desired = with_placement(
            build(&effective, &ctx.settings),
            &effective,
            &regions,
            ctx.settings.confinement,
        );
        let desired = with_access(desired, tenant, now);
        with_backups(desired, tenant, &ctx.settings, engine)
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
    // Restore tests and exports start once every child, the scratch namespaces included, is
    // in place.
    let applied = match applied {
        Ok(report) => start_backup_work(tenant, &tests, &velero, ctx)
            .await
            .map(|()| report),
        Err(e) => Err(e),
    };
    let export = export_status(tenant, engine, &velero, ctx).await;

    // The controls judge what the reflectors show. After a pass that wrote children they
    // would judge the cluster as it was before: the evaluation waits for the watch events of
    // those writes, which wake the tenant again, and the report keeps its results meanwhile.
    let mut deferred = false;
    let report = match (&applied, &validated) {
        (Ok(report), Ok(desired)) if report.is_quiet() => {
            ctx.compliance
                .assess(tenant, Ok(desired), &key_fingerprint, &velero, ctx)
                .await?
        }
        (Err(Error::InvalidTenant(invalid)), _) => {
            let why = invalid.to_string();
            ctx.compliance
                .assess(tenant, Err(&why), &key_fingerprint, &velero, ctx)
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
    if export.is_some() {
        status.export = export;
    }
    let changed = tenant.status.as_ref() != Some(&status);
    if changed {
        write_status(tenant, &status, ctx).await?;
        announce_transitions(tenant, &status, ctx).await;
    }

    // A right lapses at its instant, not at the next resync (2.4.c), and a restore test starts
    // on time: wake up then.
    let next_test = tests
        .iter()
        .filter_map(|(_, test)| match test {
            RestoreTest::Idle { next } => *next,
            _ => None,
        })
        .min();
    let wake = |period: Duration| {
        let now = jiff::Timestamp::now();
        let mut after = access::wake_after(tenant, now, period);
        if let Some(test) = next_test {
            let until = test.duration_since(now).max(jiff::SignedDuration::ZERO);
            after = after.min(until.try_into().unwrap_or(period));
        }
        Action::requeue(after)
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

/// Starts the restore tests that are due, once their scratch namespace is in place, and
/// deletes the oldest ones beyond what is kept (CLD-26).
async fn start_backup_work(
    tenant: &FranceTravailTenant,
    tests: &[(&Environment, RestoreTest)],
    velero: &VeleroView,
    ctx: &Context,
) -> Result<()> {
    let name = tenant.name_any();
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &velero.namespace);
    for (env, test) in tests {
        let RestoreTest::Due { backup, at } = test else {
            continue;
        };
        let restore = backup::restore(tenant, env, backup, *at, &velero.namespace);
        let key = format!("Restore/{}/{}", velero.namespace, restore.name_any());
        // The scratch namespace is in place, the Restore not made yet.
        crate::crash_point!("restore-test-due", &name);
        match api.create(&PostParams::default(), &restore).await {
            Ok(_) => {
                ctx.metrics.write("Restore", "create");
                crate::crash_point!("restore-test-created", &name);
                let scratch = backup::scratch_namespace(&name, env);
                info!(tenant = %name, environment = %env.name, backup = %backup, restore = %key, scratch = %scratch, control = "CLD-26", "restore test started");
                ctx.publish(
                    tenant,
                    EventType::Normal,
                    "RestoreTestStarted",
                    format!(
                        "restoring backup {backup} of {} into the scratch namespace {scratch}, isolated and placed like its source ({key})",
                        env.name
                    ),
                )
                .await;
            }
            // Made by an earlier pass that could not see it yet.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube("create", &key, e)),
        }
    }
    for stale in backup::stale_restore_tests(tenant, velero) {
        match api.delete(&stale, &Default::default()).await {
            Ok(_) => ctx.metrics.write("Restore", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    "delete",
                    format!("Restore/{}/{stale}", velero.namespace),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Creates the Backups of an export that do not exist yet; returns those it created.
async fn create_export(wanted: &[VeleroBackup], ctx: &Context) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for backup in wanted {
        let namespace = backup.namespace().unwrap_or_default();
        let key = format!("Backup/{namespace}/{}", backup.name_any());
        let api: Api<VeleroBackup> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.create(&PostParams::default(), backup).await {
            Ok(_) => {
                ctx.metrics.write("Backup", "create");
                created.push(key);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube("create", &key, e)),
        }
    }
    Ok(created)
}

/// Where the export an export annotation asks for stands, starting it if needed (CLD-73).
/// `None` when none was asked for.
async fn export_status(
    tenant: &FranceTravailTenant,
    engine: Option<bool>,
    velero: &VeleroView,
    ctx: &Context,
) -> Option<ExportStatus> {
    let token = tenant.annotations().get(annotations::EXPORT_REQUEST)?;
    let previous = tenant.status.as_ref().and_then(|s| s.export.as_ref());
    let mut status = ExportStatus {
        requested: token.clone(),
        ..Default::default()
    };
    let blocked = |message: &str| ExportStatus {
        requested: token.clone(),
        phase: "Blocked".into(),
        message: message.into(),
        ..Default::default()
    };
    if tenant.spec.backup.is_none() {
        return Some(blocked(
            "the tenant declares no backup location (spec.backup) to export to",
        ));
    }
    match engine {
        Some(true) => {}
        Some(false) => return Some(blocked(backup::NO_ENGINE)),
        None => return previous.cloned(),
    }
    let wanted = backup::export_backups(tenant, token, &velero.namespace);
    // Once an export has finished, its Backups are Velero's: one deleted by retention is not
    // made again.
    let finished = previous.is_some_and(|p| {
        p.requested == *token && matches!(p.phase.as_str(), "Completed" | "Failed")
    });
    if !finished {
        match create_export(&wanted, ctx).await {
            Ok(created) if !created.is_empty() => {
                info!(tenant = %tenant.name_any(), request = %token, backups = ?created, control = "CLD-73", "export started");
                ctx.publish(
                    tenant,
                    EventType::Normal,
                    "ExportStarted",
                    format!(
                        "exporting every environment to {}/{} as requested ({token}): {}",
                        velero.namespace,
                        tenant
                            .spec
                            .backup
                            .as_ref()
                            .map(|b| b.storage_location.as_str())
                            .unwrap_or_default(),
                        created.join(", ")
                    ),
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(tenant = %tenant.name_any(), error = %e, "could not start the export");
                return Some(blocked(&e.to_string()));
            }
        }
    }
    let progress = backup::export_progress(&wanted, &velero.backups);
    status.location = velero.location_description();
    status.backups = progress
        .backups
        .iter()
        .map(|(name, phase)| format!("{}/{name}: {phase}", velero.namespace))
        .collect();
    status.phase = if !progress.failed.is_empty() {
        status.message = format!("failed: {}", progress.failed.join(", "));
        "Failed"
    } else if progress.completed {
        "Completed"
    } else {
        "InProgress"
    }
    .into();
    if status.phase == "Completed"
        && previous.is_none_or(|p| p.phase != "Completed" || p.requested != *token)
    {
        info!(tenant = %tenant.name_any(), request = %token, location = %status.location, control = "CLD-73", "export completed");
        ctx.publish(
            tenant,
            EventType::Normal,
            "ExportCompleted",
            format!(
                "every environment is exported to {}: {}",
                status.location,
                status.backups.join(", ")
            ),
        )
        .await;
    }
    Some(status)
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
            Step::FinalExport => match final_export(tenant, ctx).await? {
                Ok(exports) => {
                    crate::crash_point!("shred-FinalExport", &name);
                    progress.final_export_at = Some(now());
                    progress.exports = exports;
                    progress.message.clear();
                    write_shredding(tenant, &progress, ctx).await?;
                    info!(tenant = %name, exports = ?progress.exports, control = "CLD-73", "final export completed");
                    ctx.publish(
                        tenant,
                        EventType::Normal,
                        "FinalExported",
                        format!(
                            "every environment is exported before shredding: {}",
                            progress.exports.join(", ")
                        ),
                    )
                    .await;
                }
                Err(waiting) => {
                    if progress.message != waiting {
                        progress.message = waiting.clone();
                        write_shredding(tenant, &progress, ctx).await?;
                    }
                    return Err(Error::ShreddingBlocked(waiting));
                }
            },
            Step::DestroyKey => {
                let destroyed = ctx.keys.destroy(&name).await?;
                crate::crash_point!("shred-DestroyKey", &name);
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
                crate::crash_point!("shred-DeleteNamespaces", &name);
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
                crate::crash_point!("shred-DeleteClusterObjects", &name);
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
                crate::crash_point!("shred-WriteRecord", &name);
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
            Step::Done => {
                crate::crash_point!("shred-Done", &name);
                return Ok(());
            }
        }
    }
}

/// The final export before shredding (CLD-73): its Backups, once all completed, or what it
/// waits for. Nothing is destroyed until it is done.
async fn final_export(
    tenant: &FranceTravailTenant,
    ctx: &Context,
) -> Result<std::result::Result<Vec<String>, String>> {
    const NOTHING_DESTROYED: &str = "nothing has been destroyed. To shred without an export, set spec.deletion.finalExport to false";
    if tenant.spec.backup.is_none() {
        return Ok(Err(format!(
            "spec.deletion.finalExport is set, but the tenant declares no backup location (spec.backup) to export to: {NOTHING_DESTROYED}"
        )));
    }
    match ctx.compliance.backup_engine() {
        Some(true) => {}
        Some(false) => {
            return Ok(Err(format!(
                "the final export waits: {}; {NOTHING_DESTROYED}",
                backup::NO_ENGINE
            )));
        }
        None => {
            return Ok(Err(
                "the final export waits to tell whether the cluster serves Velero".into(),
            ));
        }
    }
    let namespace = &ctx.settings.velero_namespace;
    let wanted = backup::export_backups(tenant, backup::FINAL_EXPORT, namespace);
    let created = create_export(&wanted, ctx).await?;
    if !created.is_empty() {
        info!(tenant = %tenant.name_any(), backups = ?created, control = "CLD-73", "final export started");
    }
    let velero = ctx.observed.velero_view(tenant, namespace);
    let progress = backup::export_progress(&wanted, &velero.backups);
    if !progress.failed.is_empty() {
        return Ok(Err(format!(
            "the final export failed: {}; {NOTHING_DESTROYED}. Delete the failed Backups to take it again",
            progress.failed.join(", ")
        )));
    }
    if !progress.completed {
        let done = progress
            .backups
            .iter()
            .filter(|(_, phase)| phase == "Completed")
            .count();
        return Ok(Err(format!(
            "the final export is in progress: {done} of {} environment(s) exported",
            progress.backups.len()
        )));
    }
    let location = velero.location_description();
    Ok(Ok(progress
        .backups
        .iter()
        .map(|(name, _)| format!("Backup {namespace}/{name} in {location}"))
        .collect()))
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

/// What one term of leadership gives the controller besides the cluster.
pub struct Term {
    /// Who acts, in Events.
    pub reporter: Reporter,
    /// Where the controller reports its watches and passes.
    pub liveness: Liveness,
    /// False while the leader cannot confirm it holds its Lease.
    pub acting: tokio::sync::watch::Receiver<bool>,
}

/// Runs the controller until `shutdown` resolves. `placements` is shared with the webhook.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: BuildSettings,
    compliance: Compliance,
    placements: PlacementIndex,
    term: Term,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Term {
        reporter,
        liveness,
        acting,
    } = term;
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
    ctx.liveness = liveness.clone();
    ctx.acting = acting;
    ctx.keys = Arc::new(SecretKeyStore::new(
        client.clone(),
        ctx.settings.key_namespace.clone(),
    ));
    let ctx = Arc::new(ctx);
    let ours = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let everything = watcher::Config::default;
    let watch = |resource| Watch {
        client: &client,
        liveness: &liveness,
        resource,
    };

    // Namespaces and NetworkPolicies are watched unfiltered: a label removed by hand, or a
    // policy made by hand in a tenant namespace, must be seen. Namespaces as metadata only.
    let namespaces = watch("namespaces")
        .all::<PartialObjectMeta<Namespace>>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.namespaces);
    let network_policies = watch("networkpolicies")
        .all::<NetworkPolicy>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.network_policies);
    let resource_quotas = watch("resourcequotas")
        .all::<ResourceQuota>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.resource_quotas);
    let limit_ranges = watch("limitranges")
        .all::<LimitRange>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.limit_ranges);
    let compliance_reports = watch("compliancereports")
        .all::<ComplianceReport>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.compliance_reports);
    // What the controls judge, trimmed before it is stored: a cluster may hold many pods.
    let pods = watch("pods")
        .all::<Pod>(everything())
        .modify(trim_pod)
        .reflect(writers.pods);
    let claims = watch("persistentvolumeclaims")
        .all::<PersistentVolumeClaim>(everything())
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.persistent_volume_claims);
    let role_bindings = watch("rolebindings")
        .all::<RoleBinding>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.role_bindings);
    let volumes = watch("persistentvolumes")
        .all::<PersistentVolume>(everything())
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.persistent_volumes);
    let nodes = watch("nodes")
        .all::<Node>(everything())
        .modify(trim_node)
        .reflect(writers.nodes);
    let storage_classes = watch("storageclasses")
        .all::<StorageClass>(everything())
        .reflect(writers.storage_classes);
    let validating_policies = watch("validatingadmissionpolicies")
        .all::<ValidatingAdmissionPolicy>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.validating_admission_policies);
    let validating_bindings = watch("validatingadmissionpolicybindings")
        .all::<ValidatingAdmissionPolicyBinding>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.validating_admission_policy_bindings);
    mark_listed(&mut writers.schedules);
    mark_listed(&mut writers.backups);
    mark_listed(&mut writers.restores);
    mark_listed(&mut writers.backup_storage_locations);
    // A cluster that does not serve MutatingAdmissionPolicies has none to watch.
    let native = ctx.settings.confinement == Confinement::Native;
    let mutating_policies = if native {
        watch("mutatingadmissionpolicies")
            .all::<MutatingAdmissionPolicy>(ours())
            .modify(|o| managers_only(o.meta_mut()))
            .reflect(writers.mutating_admission_policies)
            .touched_objects()
            .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policies);
        futures::stream::pending().boxed()
    };
    let mutating_bindings = if native {
        watch("mutatingadmissionpolicybindings")
            .all::<MutatingAdmissionPolicyBinding>(ours())
            .modify(|o| managers_only(o.meta_mut()))
            .reflect(writers.mutating_admission_policy_bindings)
            .touched_objects()
            .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policy_bindings);
        futures::stream::pending().boxed()
    };

    // Velero may come after the operator, or never: its stores start empty and listed, and a
    // task fills them once the cluster serves its API, waking the tenants it concerns.
    let velero_writers = VeleroWriters {
        schedules: writers.schedules,
        backups: writers.backups,
        restores: writers.restores,
        locations: writers.backup_storage_locations,
    };
    let (wake, woken) = futures::channel::mpsc::unbounded();

    let (tenants, tenant_writer) = reflector::store();
    let (unreadable_tx, unreadable) = futures::channel::mpsc::unbounded();
    let tenant_stream = tenant_watch(
        watch("francetravailtenants").of(
            Api::<DynamicObject>::all_with(
                client.clone(),
                &ApiResource::erase::<FranceTravailTenant>(&()),
            ),
            everything(),
        ),
        tenants.clone(),
        unreadable_tx,
    )
    .reflect(tenant_writer)
    .applied_objects();
    let controller = Controller::for_stream(tenant_stream, tenants.clone())
        .with_config(
            ControllerConfig::default()
                .concurrency(16)
                .debounce(Duration::from_millis(50)),
        )
        .trigger_backoff(NoPause);
    let background = [
        tokio::spawn(report_unreadable(ctx.clone(), unreadable)),
        tokio::spawn(follow_velero(
            client.clone(),
            ctx.clone(),
            velero_writers,
            tenants.clone(),
            wake.clone(),
        )),
        tokio::spawn(wake_on_recovery(
            client.clone(),
            liveness.clone(),
            tenants.clone(),
            wake,
        )),
    ];
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
        .watches_stream(namespaces.touched_objects(), by_owner(index))
        .watches_stream(network_policies.touched_objects(), by_owner(index))
        .watches_stream(resource_quotas.touched_objects(), by_owner(index))
        .watches_stream(limit_ranges.touched_objects(), by_owner(index))
        .watches_stream(compliance_reports.touched_objects(), by_owner(index))
        .watches_stream(validating_policies.touched_objects(), by_owner(index))
        .watches_stream(validating_bindings.touched_objects(), by_owner(index))
        .watches_stream(mutating_policies, by_owner(index))
        .watches_stream(mutating_bindings, by_owner(index))
        .watches_stream(pods.touched_objects(), by_namespace(index))
        .watches_stream(claims.touched_objects(), by_namespace(index))
        .watches_stream(role_bindings.touched_objects(), by_namespace(index))
        .watches_stream(volumes.touched_objects(), {
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
                .touched_objects()
                .predicate_filter(node_placement, Default::default()),
            move |_| a1(),
        )
        // A tenant's own class concerns that tenant only; any other class (a new default, a
        // class changed by hand) may concern every tenant's claims.
        .watches_stream(
            storage_classes.touched_objects(),
            move |class: StorageClass| match class.labels().get(labels::TENANT) {
                Some(tenant) => vec![ObjectRef::new(tenant)],
                None => all_tenants(),
            },
        )
        .reconcile_on(woken)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller event");
            }
        })
        .await;
    for task in background {
        task.abort();
    }
}

/// How a watch retries: quickly, so that enforcement resumes within seconds of the API server
/// coming back (client-go's 30 s cap would leave drift unrepaired that long), with jitter so
/// the watches do not retry in step. A dozen watches at this pace are no burden.
fn watch_backoff() -> impl Backoff {
    ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(60),
    )
}

/// The controller's own pause after an error of any of its watches: none. kube-runtime merges
/// every watch into one stream and, by default, suspends that whole stream after an error of
/// any of them, for a pause that doubles with each error up to 30 s and resets only after two
/// quiet minutes. After an API-server restart every watch fails once or twice (connection
/// reset, then 410 Gone), so the caches stayed frozen for many minutes: drift went unseen, new
/// tenants unread. Each watch backs off on its own instead (`watch_backoff`), and an error of
/// one never holds up the others.
pub struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoPause {
    fn reset(&mut self) {}
}

/// One watch of the controller, reporting what it says to the liveness.
struct Watch<'a> {
    client: &'a Client,
    liveness: &'a Liveness,
    resource: &'static str,
}

impl Watch<'_> {
    fn all<K>(
        self,
        config: watcher::Config,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let api = Api::all_with(self.client.clone(), &Default::default());
        self.of(api, config)
    }

    fn of<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let (liveness, resource) = (self.liveness.clone(), self.resource);
        liveness.watch(resource, WatchSignal::Listing);
        watcher(api, config)
            .inspect(move |item| liveness.watch(resource, signal_of(item)))
            // A 410 Gone only means "list again", which the watcher does when next polled: no
            // pause, even right after an outage has drawn the backoff out.
            .filter(move |item| {
                let expired = expired(item);
                if let (true, Err(e)) = (expired, item) {
                    debug!(resource, error = %e, "watch expired: listing again");
                }
                futures::future::ready(!expired)
            })
            .backoff(watch_backoff())
    }
}

/// Whether a watch was told its resourceVersion is too old (etcd compacted, API server
/// restarted).
fn expired<K>(item: &watcher::Result<watcher::Event<K>>) -> bool {
    matches!(item, Err(watcher::Error::WatchError(status)) if status.code == 410)
}

fn signal_of<K>(item: &watcher::Result<watcher::Event<K>>) -> WatchSignal {
    match item {
        Ok(watcher::Event::Init) => WatchSignal::Listing,
        Ok(watcher::Event::InitDone) => WatchSignal::Listed,
        Ok(_) => WatchSignal::Event,
        Err(_) => WatchSignal::Error,
    }
}

/// The tenants as the controller sees them. A tenant the API server holds but these types
/// cannot read (a value another version's schema let in) is reported on its own status and
/// kept as last read, if it ever was: every other tenant goes on being reconciled.
fn tenant_watch(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Send,
    known: reflector::Store<FranceTravailTenant>,
    unreadable: futures::channel::mpsc::UnboundedSender<Unreadable>,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<FranceTravailTenant>>> + Send {
    events.filter_map(move |event| {
        let read = |object: DynamicObject| match read_tenant(&object) {
            Ok(tenant) => Some(tenant),
            Err(error) => {
                let _ = unreadable.unbounded_send(Unreadable { object, error });
                None
            }
        };
        let last_read = |object: &DynamicObject| {
            known
                .get(&ObjectRef::new(&object.name_any()))
                .map(|t| (*t).clone())
        };
        futures::future::ready(match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => Some(Ok(watcher::Event::Init)),
            Ok(watcher::Event::InitDone) => Some(Ok(watcher::Event::InitDone)),
            // An unreadable update leaves the store as it was.
            Ok(watcher::Event::Apply(o)) => read(o).map(|t| Ok(watcher::Event::Apply(t))),
            // A relist keeps the last version read of an unreadable tenant.
            Ok(watcher::Event::InitApply(o)) => {
                let fallback = last_read(&o);
                read(o)
                    .or(fallback)
                    .map(|t| Ok(watcher::Event::InitApply(t)))
            }
            Ok(watcher::Event::Delete(o)) => {
                let fallback = last_read(&o);
                read_tenant(&o)
                    .ok()
                    .or(fallback)
                    .map(|t| Ok(watcher::Event::Delete(t)))
            }
        })
    })
}

/// A tenant these types cannot read, and why, naming the field.
pub struct Unreadable {
    pub object: DynamicObject,
    pub error: String,
}

/// Reads a tenant, or says which field is in the way.
pub fn read_tenant(object: &DynamicObject) -> std::result::Result<FranceTravailTenant, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// Reports each unreadable tenant once per version: a Warning Event, a log line, and the
/// conditions Ready False and Degraded True on its status, naming the field.
async fn report_unreadable(
    ctx: Arc<Context>,
    mut unreadable: futures::channel::mpsc::UnboundedReceiver<Unreadable>,
) {
    let mut reported: HashMap<String, String> = HashMap::new();
    let api: Api<DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &ApiResource::erase::<FranceTravailTenant>(&()),
    );
    while let Some(Unreadable { object, error }) = unreadable.next().await {
        let name = object.name_any();
        let version = object.resource_version().unwrap_or_default();
        if reported.get(&name) == Some(&version) {
            continue;
        }
        ctx.metrics.failed("unreadable");
        warn!(tenant = %name, %error, "tenant unreadable: it keeps what was last applied, and is not reconciled until fixed");
        let message = format!(
            "the operator cannot read this tenant ({error}); what was last applied stays in place and nothing else is done for it until the field is fixed"
        );
        let conditions = unreadable_conditions(&object, &message, &Time(jiff::Timestamp::now()));
        let patch = json!({ "status": { "conditions": conditions } });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                ctx.metrics.write("FranceTravailTenant", "status");
                reported.insert(name, version);
            }
            Err(e) => warn!(tenant = %name, error = %e, "cannot report the tenant unreadable"),
        }
        let target = ObjectReference {
            api_version: Some(FranceTravailTenant::api_version(&()).into()),
            kind: Some(FranceTravailTenant::kind(&()).into()),
            name: Some(object.name_any()),
            uid: object.uid(),
            ..Default::default()
        };
        ctx.publish_on(&target, EventType::Warning, "Unreadable", message)
            .await;
    }
}

/// The conditions of a tenant the operator cannot read: Ready False and Degraded True, the
/// others as they were.
pub fn unreadable_conditions(
    object: &DynamicObject,
    message: &str,
    now: &Time,
) -> Vec<serde_json::Value> {
    let mut conditions: Vec<serde_json::Value> = object.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (type_, status) in [(status::READY, "False"), (status::DEGRADED, "True")] {
        let previous = conditions
            .iter()
            .position(|c| c["type"] == type_)
            .map(|i| conditions.remove(i));
        let since = previous
            .filter(|c| c["status"] == status)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now));
        conditions.push(json!({
            "type": type_,
            "status": status,
            "reason": "Unreadable",
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": object.metadata.generation,
        }));
    }
    conditions
}

/// How often the API server is asked whether it is back, once a watch has failed.
const RECOVERY_PROBE: Duration = Duration::from_millis(250);

/// Wakes every tenant the moment the API server answers again after an outage, whatever
/// their backoff: a right that lapsed meanwhile is revoked then (2.4.c), drift repaired.
/// Also tells the liveness whether there are tenants, so that it expects passes.
async fn wake_on_recovery(
    client: Client,
    liveness: Liveness,
    tenants: reflector::Store<FranceTravailTenant>,
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<FranceTravailTenant>>,
) {
    let mut outage = false;
    loop {
        tokio::time::sleep(RECOVERY_PROBE).await;
        liveness.has_work(!tenants.is_empty());
        if !outage && !liveness.take_watch_failure() {
            continue;
        }
        let probe = client.request_text(
            http::Request::get("/readyz")
                .body(Vec::new())
                .unwrap_or_default(),
        );
        let answered = matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        );
        match (outage, answered) {
            (false, false) => {
                warn!("the API server does not answer: waiting for it");
                outage = true;
            }
            (true, true) => {
                info!("the API server answers again: every tenant is looked at now");
                outage = false;
                for tenant in tenants.state() {
                    let _ = wake.unbounded_send(ObjectRef::from_obj(&*tenant));
                }
            }
            _ => {}
        }
    }
}

/// The resources of Velero's watches, as the liveness names them.
const VELERO_WATCHES: [&str; 4] = [
    "schedules.velero.io",
    "backups.velero.io",
    "restores.velero.io",
    "backupstoragelocations.velero.io",
];

struct VeleroWriters {
    schedules: reflector::store::Writer<Schedule>,
    backups: reflector::store::Writer<VeleroBackup>,
    restores: reflector::store::Writer<Restore>,
    locations: reflector::store::Writer<BackupStorageLocation>,
}

/// Whether the cluster serves every Velero resource the operator uses; `None` when discovery
/// failed.
async fn discover_velero(client: &Client) -> Option<bool> {
    match client.list_api_group_resources(velero::API_VERSION).await {
        Ok(list) => Some(
            velero::RESOURCES
                .iter()
                .all(|wanted| list.resources.iter().any(|r| r.name == *wanted)),
        ),
        Err(kube::Error::Api(s)) if s.code == 404 => Some(false),
        Err(e) => {
            warn!(error = %e, "could not tell whether the cluster serves velero.io/v1");
            None
        }
    }
}

/// What a Velero watch event asks of the controller.
enum VeleroEvent {
    /// The kind's objects have all been listed.
    Listed,
    /// These tenants are concerned.
    Wake(Vec<String>),
}

/// Follows Velero's API: asks every minute whether the cluster serves it, and from the first
/// time it does, watches its objects in Velero's namespace into the stores, waking the tenants
/// they concern. The backup engine counts as present once every kind has been listed.
async fn follow_velero(
    client: Client,
    ctx: Arc<Context>,
    writers: VeleroWriters,
    tenants: reflector::Store<FranceTravailTenant>,
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<FranceTravailTenant>>,
) {
    const KINDS: usize = 4;
    let namespace = ctx.settings.velero_namespace.clone();
    let mut writers = Some(writers);
    let listed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let wake_all = {
        let (tenants, wake) = (tenants.clone(), wake.clone());
        move || {
            for tenant in tenants.state() {
                let _ = wake.unbounded_send(ObjectRef::from_obj(&*tenant));
            }
        }
    };
    loop {
        let served = discover_velero(&client).await;
        let synced = listed.load(std::sync::atomic::Ordering::SeqCst) >= KINDS;
        let engine = match served {
            Some(true) if synced => Some(true),
            // Listing, or discovery failed while the watches run: not known yet.
            Some(true) | None => None,
            Some(false) => Some(false),
        };
        // Velero's watches count for readiness only while the cluster serves its API.
        if writers.is_none() && served.is_some() {
            for resource in VELERO_WATCHES {
                ctx.liveness.watch_needed(resource, served == Some(true));
            }
        }
        let before = ctx.compliance.backup_engine();
        // A watch that runs keeps the engine present through a failed discovery.
        if !(served.is_none() && before == Some(true)) && before != engine {
            info!(engine = ?engine, namespace = %namespace, "backup engine (Velero)");
            ctx.compliance.set_backup_engine(engine);
            wake_all();
        }
        if served == Some(true)
            && let Some(writers) = writers.take()
        {
            info!(namespace = %namespace, "the cluster serves Velero: following its objects");
            let events = velero_events(
                &client,
                &ctx.liveness,
                &namespace,
                writers,
                &ctx.index,
                &tenants,
            );
            let (ctx, listed, wake, wake_all) =
                (ctx.clone(), listed.clone(), wake.clone(), wake_all.clone());
            tokio::spawn(events.for_each(move |event| {
                match event {
                    VeleroEvent::Listed => {
                        let n = listed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if n == KINDS {
                            info!("Velero's objects are listed: the backup engine is present");
                            ctx.compliance.set_backup_engine(Some(true));
                            wake_all();
                        }
                    }
                    VeleroEvent::Wake(names) => {
                        for name in names {
                            let _ = wake.unbounded_send(ObjectRef::new(&name));
                        }
                    }
                }
                futures::future::ready(())
            }));
        }
        tokio::time::sleep(RESYNC).await;
    }
}

/// The watches of Velero's objects, reflected into the stores, as one stream of events.
fn velero_events(
    client: &Client,
    liveness: &Liveness,
    namespace: &str,
    writers: VeleroWriters,
    index: &NamespaceIndex,
    tenants: &reflector::Store<FranceTravailTenant>,
) -> futures::stream::BoxStream<'static, VeleroEvent> {
    fn events<K>(
        stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        concerns: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> futures::stream::BoxStream<'static, VeleroEvent>
    where
        K: Send + 'static,
    {
        stream
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Ok(watcher::Event::InitDone) => Some(VeleroEvent::Listed),
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                        Some(VeleroEvent::Wake(concerns(&o)))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        debug!(error = %e, "Velero watch");
                        None
                    }
                })
            })
            .boxed()
    }
    let labelled = |meta: &ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(labels::TENANT))
            .cloned()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let ours = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let watch = |resource| Watch {
        client,
        liveness,
        resource,
    };
    let schedules = watch(VELERO_WATCHES[0])
        .of(
            Api::<Schedule>::namespaced(client.clone(), namespace),
            ours(),
        )
        .modify(|o| managers_only(o.meta_mut()))
        .reflect(writers.schedules);
    let backups = watch(VELERO_WATCHES[1])
        .of(
            Api::<VeleroBackup>::namespaced(client.clone(), namespace),
            ours(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.backups);
    // Every Restore: one made by hand may take a tenant's production elsewhere (CLD-54).
    let restores = watch(VELERO_WATCHES[2])
        .of(
            Api::<Restore>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.restores);
    let locations = watch(VELERO_WATCHES[3])
        .of(
            Api::<BackupStorageLocation>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .reflect(writers.locations);
    let index = index.clone();
    let tenants = tenants.clone();
    // Velero revalidates each location every minute: only a change of phase matters.
    let phases: Mutex<HashMap<String, Option<String>>> = Mutex::default();
    futures::stream::select_all([
        events(schedules, move |o: &Schedule| labelled(&o.metadata)),
        events(backups, move |o: &VeleroBackup| labelled(&o.metadata)),
        events(restores, move |o: &Restore| {
            let mut concerned = labelled(&o.metadata);
            concerned.extend(
                o.spec
                    .included_namespaces
                    .iter()
                    .chain(o.spec.namespace_mapping.keys())
                    .filter_map(|ns| index.tenant_of(ns)),
            );
            concerned
        }),
        events(locations, move |o: &BackupStorageLocation| {
            let name = o.name_any();
            let phase = o.status.as_ref().and_then(|s| s.phase.clone());
            let changed = phases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), phase.clone())
                != Some(phase);
            if !changed {
                return Vec::new();
            }
            tenants
                .state()
                .iter()
                .filter(|t| {
                    t.spec
                        .backup
                        .as_ref()
                        .is_some_and(|b| b.storage_location == name)
                })
                .map(|t| t.name_any())
                .collect()
        }),
    ])
    .boxed()
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
