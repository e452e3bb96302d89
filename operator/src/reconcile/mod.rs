//! The reconcile pass, as named steps: fetch (the watched caches) → validate → build
//! (`ft_core::desired`) → apply → evaluate → status. Every decision is `ft_core`'s; this
//! module and its executors ([`backup`], [`removal`], [`shred`]) carry them out.

mod backup;
mod evaluate;
mod journal;
mod removal;
mod shred;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{debug, instrument, warn};

use ft_core::api::{
    Environment, EnvironmentRemoval, ExportStatus, FIELD_MANAGER, FINALIZER, FranceTravailTenant,
    GROUP, ReportStatus, TenantStatus, labels,
};
use ft_core::applied::ApplyReport;
use ft_core::backup::{RestoreTest, VeleroView};
use ft_core::desired::{Desired, Facts, desired};
use ft_core::meta::tenant_namespaces;
use ft_core::pass::{self, Applied, Judge};
use ft_core::placement::admission::Confinement;
use ft_core::status::{Outcome, after_pass};
use ft_core::validate::{InvalidTenant, validate_for_cluster};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::observe::TenantMeta;

pub use ft_core::pass::{RESYNC, SETTLING};

/// The longest a pass may run. Every step resumes from what the cluster holds, so a pass cut
/// short loses nothing; one the API server never answers must not hold a slot for ever.
pub const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a pass waits for its tenant to reach the cache: it is there already unless the
/// tenants are being listed again.
const TENANT_WAIT: Duration = Duration::from_secs(30);

/// The controller's pass: it schedules tenants by their metadata, and the pass reads the
/// tenant itself from the cache, where it is packed.
pub async fn reconcile_named(tenant: Arc<TenantMeta>, ctx: Arc<Context>) -> Result<Action> {
    match ctx.observed.tenant(&tenant.name_any(), TENANT_WAIT).await {
        Some(tenant) => reconcile(tenant, ctx).await,
        // Gone: nothing is left to enforce, and its deletion was its last pass.
        None => Ok(Action::await_change()),
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
        // Before the finalizer: a deletion nobody confirmed never reaches its cleanup.
        if let Some(held) = shred::held(&tenant, &ctx).await {
            return held.map_err(kube::runtime::finalizer::Error::CleanupFailed);
        }
        finalizer(&api, FINALIZER, tenant, |event| async {
            match event {
                Finalizer::Apply(tenant) => apply(&tenant, &ctx).await,
                Finalizer::Cleanup(tenant) => shred::cleanup(&tenant, &ctx).await,
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
        ctx.forget_failures(&name);
    }
    result
}

pub fn error_policy(tenant: Arc<TenantMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        debug!(tenant = %tenant.name_any(), %error, "waiting");
        return Action::requeue(Duration::from_secs(2));
    }
    ctx.metrics.failed(error.category());
    warn!(tenant = %tenant.name_any(), category = error.category(), %error, "reconcile failed");
    // Exponential backoff per tenant, capped at the resync period: a failing tenant is retried
    // at least as often as a healthy one is checked. Recovery from an API-server outage wakes
    // every tenant at once (`wake_on_recovery`), whatever its backoff.
    let count = ctx.count_failure(&tenant.name_any());
    Action::requeue(Duration::from_secs(2u64.saturating_pow(count)).min(RESYNC))
}

/// One pass over a tenant that is not being deleted, step by step.
async fn apply(tenant: &FranceTravailTenant, ctx: &Context) -> Result<Action> {
    let mut fetched = fetch(tenant, ctx).await?;
    let built = build(tenant, &fetched, ctx);
    let (applied, export) = apply_all(tenant, &fetched, &built, ctx).await;
    // Environments gone from the spec: held, or removed once confirmed.
    let (removals, removing) = removal::run(tenant, fetched.engine, ctx).await;
    // The controls judge what the caches show: once they show this pass's writes.
    let seen = match &applied {
        Ok(report) if built.is_ok() && !report.is_quiet() && report.unversioned == 0 => {
            ctx.observed.show(&report.awaited, ctx.show_writes).await
        }
        _ => false,
    };
    if seen {
        // Judged as the caches now show it: with the Schedules just applied, say.
        fetched.velero = ctx
            .observed
            .velero_view(tenant, &ctx.settings.velero_namespace);
    }
    let judge = pass::judge(match (&applied, &built) {
        (Ok(_), Ok(_)) if seen => Applied::Seen,
        (Ok(report), Ok(_)) => Applied::Done(report),
        (Err(Error::InvalidTenant(_)), _) => Applied::Refused,
        _ => Applied::Failed,
    });
    let report = evaluate_step(tenant, &fetched, &built, &judge, ctx).await?;
    let changed = update_status(
        tenant,
        &applied,
        report,
        fetched.key.clone(),
        export,
        removals,
        ctx,
    )
    .await?;
    let wake = Action::requeue(pass::wake_after(
        tenant,
        &fetched.tests,
        jiff::Timestamp::now(),
        pass::next_look(&judge),
    ));
    match applied {
        Ok(_) => removing.map(|()| wake),
        // A bad spec is not retried, but its report is kept as fresh as any other.
        Err(Error::InvalidTenant(invalid)) => {
            if changed {
                warn!(tenant = %tenant.name_any(), error = %invalid, "tenant refused");
            }
            Ok(wake)
        }
        Err(e) => Err(e),
    }
}

/// What a pass judges by, read at one instant: what is bound, journalled and listed in the
/// status all agree.
struct Fetched<'a> {
    now: jiff::Timestamp,
    engine: Option<bool>,
    velero: VeleroView,
    tests: Vec<(&'a Environment, RestoreTest)>,
    bindings_before: Vec<Arc<RoleBinding>>,
    key: String,
    production_pools: Arc<Vec<std::collections::BTreeMap<String, String>>>,
}

/// fetch: the stores, and the tenant's key, which exists before anything is built that would
/// use it (CLD-21, CLD-40).
async fn fetch<'a>(tenant: &'a FranceTravailTenant, ctx: &Context) -> Result<Fetched<'a>> {
    let name = tenant.name_any();
    let now = jiff::Timestamp::now();
    let engine = ctx.compliance.backup_engine();
    let velero = ctx
        .observed
        .velero_view(tenant, &ctx.settings.velero_namespace);
    let tests = pass::restore_tests(tenant, &velero, engine, now);
    let bindings_before = ctx.observed.bindings_in(&tenant_namespaces(tenant));
    let production_pools = ctx.pools.all().await;
    let key = ctx.keys.ensure(&name).await?;
    if let Some(lost) = pass::replaced_key(tenant, &key) {
        journal::key_replaced(tenant, lost, &key, ctx).await;
    }
    Ok(Fetched {
        now,
        engine,
        velero,
        tests,
        bindings_before,
        key,
        production_pools,
    })
}

/// validate, then build, with the cluster's facts; the tenant owns its namespaces, and the
/// webhook knows their placement, from now on.
fn build(
    tenant: &FranceTravailTenant,
    fetched: &Fetched<'_>,
    ctx: &Context,
) -> std::result::Result<Desired, InvalidTenant> {
    let restoring = pass::restoring(&fetched.tests);
    let owner_of = |ns: &str| {
        ctx.observed
            .namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.as_ref()?.get(labels::TENANT).cloned())
    };
    let claimed = pass::claim_namespaces(tenant, &restoring, owner_of)?;
    ctx.index.record(&tenant.name_any(), claimed);
    let nodes = ctx.observed.nodes.state();
    let facts = Facts {
        settings: &ctx.settings,
        nodes: &nodes,
        catalogue: &ctx.compliance.regions,
        provider: ctx.compliance.provider.as_deref(),
        velero: fetched.engine,
        restoring: &restoring,
        production_pools: &fetched.production_pools,
    };
    let built = validate_for_cluster(tenant, &ctx.settings)
        .map(|valid| desired(valid, &facts, fetched.now));
    // Read by the placement webhook only, where it serves.
    if let Ok(desired) = &built
        && ctx.settings.confinement == Confinement::Webhook
    {
        ctx.placements
            .extend(&tenant.name_any(), &desired.placements);
    }
    built
}

/// apply, journal what changed, then the backup work that needs every child in place: the
/// restore tests that are due, and the export asked for.
async fn apply_all(
    tenant: &FranceTravailTenant,
    fetched: &Fetched<'_>,
    built: &std::result::Result<Desired, InvalidTenant>,
    ctx: &Context,
) -> (Result<ApplyReport>, Option<ExportStatus>) {
    let wanted_bindings = pass::wanted_bindings(tenant, built.as_ref().ok(), fetched.now);
    let applied = apply_children(tenant, built, &wanted_bindings, ctx).await;
    if let Ok(report) = &applied {
        if built.is_ok() {
            journal::changes(tenant, report, ctx).await;
        }
        journal::access(
            tenant,
            fetched.now,
            report,
            &wanted_bindings,
            &fetched.bindings_before,
            ctx,
        )
        .await;
    }
    let applied = match (applied, built) {
        (Ok(report), Ok(_)) => {
            backup::start_restore_tests(tenant, &fetched.tests, &fetched.velero, ctx)
                .await
                .map(|()| report)
        }
        (Ok(_), Err(invalid)) => Err(Error::InvalidTenant(invalid.clone())),
        (Err(e), _) => Err(e),
    };
    let export = backup::export(tenant, fetched.engine, &fetched.velero, ctx).await;
    (applied, export)
}

/// evaluate: the controls judge what the stores show, when it is the cluster as it is;
/// otherwise the report keeps its results.
async fn evaluate_step(
    tenant: &FranceTravailTenant,
    fetched: &Fetched<'_>,
    built: &std::result::Result<Desired, InvalidTenant>,
    judge: &Judge,
    ctx: &Context,
) -> Result<Option<ReportStatus>> {
    let (key, velero) = (&fetched.key, &fetched.velero);
    match (judge, built) {
        (Judge::Now, Ok(desired)) => {
            evaluate::evaluate(tenant, Ok(desired), key, velero, ctx).await
        }
        (Judge::Refused, Err(invalid)) => {
            let why = invalid.to_string();
            evaluate::evaluate(tenant, Err(&why), key, velero, ctx).await
        }
        _ => Ok(ctx.compliance.current(&tenant.name_any(), &ctx.observed)),
    }
}

/// status: written, and its transition announced, only when it changes. Returns whether it did.
async fn update_status(
    tenant: &FranceTravailTenant,
    applied: &Result<ApplyReport>,
    report: Option<ReportStatus>,
    key: String,
    export: Option<ExportStatus>,
    removals: Vec<EnvironmentRemoval>,
    ctx: &Context,
) -> Result<bool> {
    let now = Time(jiff::Timestamp::now());
    let mut status = after_pass(tenant, outcome(applied), report.as_ref(), key, export, &now);
    ft_core::removal::into_status(tenant, &mut status, removals, &now);
    let changed = tenant.status.as_ref() != Some(&status);
    if changed {
        write_status(tenant, &status, ctx).await?;
        journal::transition(tenant, &status, ctx).await;
    }
    Ok(changed)
}

/// Applies what was built; a refused spec gets nothing new, but its lapsed rights still go
/// on time.
async fn apply_children(
    tenant: &FranceTravailTenant,
    built: &std::result::Result<Desired, InvalidTenant>,
    wanted_bindings: &[RoleBinding],
    ctx: &Context,
) -> Result<ApplyReport> {
    let name = tenant.name_any();
    let applier = ctx.applier(&name);
    match built {
        Err(_) => applier.revoke(wanted_bindings).await,
        Ok(desired) => {
            let mut report = applier.apply(desired).await?;
            if tenant.spec.access.prune_undeclared {
                applier
                    .remove_undeclared(
                        &desired.role_bindings,
                        &tenant_namespaces(tenant),
                        &mut report,
                    )
                    .await?;
            }
            Ok(report)
        }
    }
}

fn outcome(applied: &Result<ApplyReport>) -> Outcome<'_> {
    match applied {
        Ok(_) => Outcome::Applied,
        Err(Error::InvalidTenant(invalid)) => Outcome::Invalid(invalid),
        Err(e) => Outcome::Failed {
            category: e.category(),
            waiting: e.is_waiting(),
            message: e.to_string(),
        },
    }
}

pub(crate) async fn write_status(
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
    let written = api
        .patch_status(
            &tenant.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube("write status of", tenant.name_any(), e))?;
    ctx.metrics.write("FranceTravailTenant", "status");
    // Its watch event brings nothing this pass does not know.
    if let Some(version) = written.resource_version() {
        ctx.observed
            .echoes
            .expect(ft_core::meta::object_key(&written), version);
    }
    Ok(())
}
