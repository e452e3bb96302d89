//! Carries out the removal of environments gone from the spec (CLD-47, CLD-73, CLD-76), one
//! `ft_core::removal` step after another, each recorded in `status.removals` before the next
//! begins: held until confirmed, then exported, deleted and recorded.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use ft_core::api::{EnvironmentRemoval, FranceTravailTenant, annotations};
use ft_core::backup;
use ft_core::removal::{self, Step};

use crate::apply::owned_namespaces;
use crate::context::Context;
use crate::error::{Error, Result};

/// Moves every removal as far as it can go in this pass. Returns the removals as they now
/// stand, for the status, and the first error met. What waits (an export, a namespace going)
/// is woken by the watches of those objects.
pub(super) async fn run(
    tenant: &FranceTravailTenant,
    engine: Option<bool>,
    ctx: &Context,
) -> (Vec<EnvironmentRemoval>, Result<()>) {
    let name = tenant.name_any();
    let previous = tenant
        .status
        .as_ref()
        .map(|s| s.removals.clone())
        .unwrap_or_default();
    let owned = owned_namespaces(&ctx.observed, &name);
    let mut removals = removal::removals(tenant, &owned, &now());
    if removals.is_empty() && previous.is_empty() {
        return (removals, Ok(()));
    }
    announce(tenant, &previous, &removals, ctx).await;
    if removals != previous
        && let Err(e) = journal(tenant, &removals, ctx).await
    {
        return (previous, Err(e));
    }
    let mut result = Ok(());
    let mut done = BTreeSet::new();
    for i in 0..removals.len() {
        match advance(tenant, &mut removals, i, engine, ctx).await {
            Ok(true) => {
                done.insert(removals[i].environment.clone());
            }
            Ok(false) => {}
            Err(e) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    if !done.is_empty() {
        // The confirmations are used up before the removals are forgotten: a crash between
        // the two finds the record written and does this again.
        if let Err(e) = use_confirmations(tenant, &done, ctx).await {
            return (removals, Err(e));
        }
        removals.retain(|r| !done.contains(&r.environment));
        if let Err(e) = journal(tenant, &removals, ctx).await {
            return (removals, Err(e));
        }
    }
    (removals, result)
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// One Event per hold and per confirmation.
async fn announce(
    tenant: &FranceTravailTenant,
    previous: &[EnvironmentRemoval],
    removals: &[EnvironmentRemoval],
    ctx: &Context,
) {
    let name = tenant.name_any();
    for r in removal::newly_held(tenant, removals) {
        info!(tenant = %name, environment = %r.environment, namespace = %r.namespace, control = "CLD-47", "environment removed from the spec: namespace held");
        ctx.publish(
            tenant,
            EventType::Warning,
            removal::HELD,
            format!(
                "environment {} is no longer declared: its namespace {} is held, nothing in it is deleted, until its removal is confirmed: {}",
                r.environment,
                r.namespace,
                removal::confirm_command(&name, &[&r.environment])
            ),
        )
        .await;
    }
    for r in removals.iter().filter(|r| {
        r.confirmed_at.is_some()
            && previous
                .iter()
                .any(|p| p.namespace == r.namespace && p.confirmed_at.is_none())
    }) {
        info!(tenant = %name, environment = %r.environment, confirmed_by = %r.confirmed_by, control = "CLD-47", "environment removal confirmed");
        ctx.publish(
            tenant,
            EventType::Normal,
            "EnvironmentRemovalConfirmed",
            format!(
                "removal of environment {} confirmed by {}: namespace {} is {}deleted, then recorded",
                r.environment,
                r.confirmed_by,
                r.namespace,
                if tenant.spec.deletion.final_export {
                    "exported, then "
                } else {
                    ""
                }
            ),
        )
        .await;
    }
}

/// Carries out the steps of `removals[i]` until one waits. Returns whether it is done.
async fn advance(
    tenant: &FranceTravailTenant,
    removals: &mut [EnvironmentRemoval],
    i: usize,
    engine: Option<bool>,
    ctx: &Context,
) -> Result<bool> {
    let name = tenant.name_any();
    loop {
        let step = removal::next_step(tenant, &removals[i]);
        if removals[i].step != step.as_str() {
            removals[i].step = step.as_str().into();
            removals[i].message.clear();
            journal(tenant, removals, ctx).await?;
        }
        let (environment, namespace) = (
            removals[i].environment.clone(),
            removals[i].namespace.clone(),
        );
        match step {
            Step::Held => return Ok(false),
            Step::FinalExport => match final_export(tenant, &removals[i], engine, ctx).await? {
                Ok(exports) => {
                    crate::crash_point!("removal-FinalExport", &name);
                    let r = &mut removals[i];
                    r.final_export_at = Some(now());
                    r.exports = exports;
                    r.message.clear();
                    let note = format!(
                        "environment {environment} is exported before its namespace {namespace} is deleted: {}",
                        r.exports.join(", ")
                    );
                    journal(tenant, removals, ctx).await?;
                    info!(tenant = %name, environment = %environment, control = "CLD-73", "final export of a removed environment completed");
                    ctx.publish(tenant, EventType::Normal, "EnvironmentExported", note)
                        .await;
                }
                Err(waiting) => {
                    if removals[i].message != waiting {
                        removals[i].message = waiting;
                        journal(tenant, removals, ctx).await?;
                    }
                    return Ok(false);
                }
            },
            Step::DeleteNamespace => {
                if let Some(waiting) = delete_namespace(&name, &namespace, ctx).await? {
                    if removals[i].message != waiting {
                        removals[i].message = waiting;
                        journal(tenant, removals, ctx).await?;
                    }
                    return Ok(false);
                }
                crate::crash_point!("removal-DeleteNamespace", &name);
                removals[i].namespace_deleted_at = Some(now());
                journal(tenant, removals, ctx).await?;
                ctx.publish(
                    tenant,
                    EventType::Normal,
                    "EnvironmentNamespaceDeleted",
                    format!(
                        "namespace {namespace} of the removed environment {environment} is gone, with everything in it (CLD-47)"
                    ),
                )
                .await;
            }
            Step::WriteRecord => {
                let record_ns = &ctx.settings.key_namespace;
                let record = removal::record(
                    tenant,
                    &removals[i],
                    ctx.keys.location(&name),
                    record_ns,
                    &now(),
                )
                .map_err(|e| Error::KeyStore(format!("rendering the removal record: {e}")))?;
                let record_name = record.name_any();
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), record_ns);
                match api.create(&PostParams::default(), &record).await {
                    Ok(_) => ctx.metrics.write("ConfigMap", "create"),
                    // Written by a pass that could not record it: that one stands.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        return Err(Error::kube(
                            "create",
                            format!("ConfigMap/{record_ns}/{record_name}"),
                            e,
                        ));
                    }
                }
                crate::crash_point!("removal-WriteRecord", &name);
                removals[i].record = Some(format!("ConfigMap {record_ns}/{record_name}"));
                journal(tenant, removals, ctx).await?;
                let note = format!(
                    "environment {environment} removed: namespace {namespace} deleted; the tenant key is kept for the other environments; record in ConfigMap {record_ns}/{record_name}"
                );
                info!(tenant = %name, environment = %environment, record = %record_name, control = "CLD-76", "{note}");
                ctx.publish_record(tenant, record_ns, &record_name, "EnvironmentRemoved", note)
                    .await;
            }
            Step::Done => return Ok(true),
        }
    }
}

/// The final export of a removed environment's namespace (CLD-73): its Backup, once completed,
/// or what it waits for. The namespace stays until it is done.
async fn final_export(
    tenant: &FranceTravailTenant,
    entry: &EnvironmentRemoval,
    engine: Option<bool>,
    ctx: &Context,
) -> Result<std::result::Result<Vec<String>, String>> {
    if let Some(blocked) = removal::final_export_blocked(tenant, engine) {
        return Ok(Err(blocked));
    }
    let namespace = &ctx.settings.velero_namespace;
    let wanted = removal::export_backups(tenant, entry, namespace);
    let created = super::backup::create_export(&wanted, ctx).await?;
    if !created.is_empty() {
        info!(tenant = %tenant.name_any(), environment = %entry.environment, backups = ?created, control = "CLD-73", "final export of a removed environment started");
    }
    let velero = ctx.observed.velero_view(tenant, namespace);
    let progress = backup::export_progress(&wanted, &velero.backups);
    Ok(removal::final_export_outcome(&progress, &velero))
}

/// Deletes the namespace; `None` once it is gone, else what is waited for.
async fn delete_namespace(tenant: &str, namespace: &str, ctx: &Context) -> Result<Option<String>> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let key = format!("Namespace/{namespace}");
    let observed = ctx.observed.namespaces.get(&ObjectRef::new(namespace));
    let present = match &observed {
        Some(ns) => Some(ns.metadata.deletion_timestamp.is_some()),
        // The store may lag behind a namespace just made: the server says.
        None => api
            .get_opt(namespace)
            .await
            .map_err(|e| Error::kube("read", &key, e))?
            .map(|ns| ns.metadata.deletion_timestamp.is_some()),
    };
    match present {
        None => Ok(None),
        Some(true) => Ok(Some(format!(
            "waiting for namespace {namespace} to disappear"
        ))),
        Some(false) => {
            match api.delete(namespace, &Default::default()).await {
                Ok(_) => {
                    ctx.metrics.write("Namespace", "delete");
                    info!(tenant = %tenant, namespace = %namespace, control = "CLD-47", "namespace of a removed environment deleted");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(Error::kube("delete", &key, e)),
            }
            Ok(Some(format!(
                "waiting for namespace {namespace} to disappear"
            )))
        }
    }
}

/// Takes the environments whose removal is recorded out of the confirmation annotation.
async fn use_confirmations(
    tenant: &FranceTravailTenant,
    done: &BTreeSet<String>,
    ctx: &Context,
) -> Result<()> {
    if removal::confirmations(tenant).is_disjoint(done) {
        return Ok(());
    }
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let patch = json!({ "metadata": { "annotations": {
        annotations::CONFIRM_ENVIRONMENT_REMOVAL: removal::confirmations_after(tenant, done),
    } } });
    api.patch(
        &tenant.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube("patch", tenant.name_any(), e))?;
    ctx.metrics.write("FranceTravailTenant", "patch");
    Ok(())
}

/// Records the removals' progress in the tenant's status. A merge patch: the rest of the status
/// stays as it is. The list is written whole, empty too: it replaces whatever was there.
async fn journal(
    tenant: &FranceTravailTenant,
    removals: &[EnvironmentRemoval],
    ctx: &Context,
) -> Result<()> {
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let patch = json!({ "status": { "removals": removals } });
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
