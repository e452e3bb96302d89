//! Carries out a confirmed deletion (CLD-47, CLD-76), one `ft_core::shredding` step per
//! pass, each recorded before the next begins; holds one nobody confirmed.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use ft_core::api::{DeletionPolicy, FINALIZER, FranceTravailTenant, ShreddingStatus};
use ft_core::backup::{self};
use ft_core::meta::owned_by;
use ft_core::shredding::backups::{BackupsDeletion, DeleteBackupRequest, backups_deletion};
use ft_core::shredding::{self, Consent, DELETION_HELD, Step};
use ft_core::status::condition;

use crate::apply::Applier;
use crate::context::Context;
use crate::error::{Error, Result};

/// A deletion nobody confirmed (one admission did not see, such as the CustomResourceDefinition's
/// deletion): the tenant is enforced exactly as a live one, its status says why it stays and
/// how to confirm, and its key is kept. `None` when the deletion may be carried out.
pub(super) async fn held(tenant: &FranceTravailTenant, ctx: &Context) -> Option<Result<Action>> {
    if tenant.metadata.deletion_timestamp.is_none()
        || !tenant.finalizers().iter().any(|f| f == FINALIZER)
    {
        return None;
    }
    let Consent::Held { message } = shredding::consent(tenant) else {
        return None;
    };
    // Once per hold: the condition it leaves in the status says it was announced.
    if condition(tenant.status.as_ref(), DELETION_HELD).is_none_or(|c| c.status != "True") {
        warn!(tenant = %tenant.name_any(), control = "CLD-47", "{message}");
        ctx.publish(tenant, EventType::Warning, "DeletionHeld", message)
            .await;
    }
    Some(super::apply(tenant, ctx).await)
}

/// Runs while the tenant is being deleted, once the deletion is confirmed; the finalizer stays
/// until this returns Ok.
pub(super) async fn cleanup(tenant: &FranceTravailTenant, ctx: &Context) -> Result<Action> {
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
    ctx.metrics.forget_tenant(&name);
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
            Step::DeleteBackups => {
                let view = ctx
                    .observed
                    .velero_view(tenant, &ctx.settings.velero_namespace);
                match backups_deletion(tenant, &view, ctx.compliance.backup_engine()) {
                    BackupsDeletion::Done { none } => {
                        if progress.backups_deleted.is_empty() {
                            progress.backups_deleted.extend(none);
                        }
                        crate::crash_point!("shred-DeleteBackups", &name);
                        progress.backups_deleted_at = Some(now());
                        progress.message.clear();
                        write_shredding(tenant, &progress, ctx).await?;
                        info!(tenant = %name, backups = ?progress.backups_deleted, control = "CLD-47", "the tenant's backups are deleted");
                        ctx.publish(
                            tenant,
                            EventType::Normal,
                            "BackupsDeleted",
                            format!(
                                "no Velero backup of the tenant is left: {}",
                                progress.backups_deleted.join(", ")
                            ),
                        )
                        .await;
                    }
                    BackupsDeletion::Waiting {
                        requests,
                        deleting,
                        message,
                    } => {
                        request_deletions(&requests, ctx).await?;
                        let mut changed = progress.message != message;
                        for backup in deleting {
                            if !progress.backups_deleted.contains(&backup) {
                                progress.backups_deleted.push(backup);
                                changed = true;
                            }
                        }
                        if changed {
                            progress.message = message.clone();
                            write_shredding(tenant, &progress, ctx).await?;
                        }
                        return Err(Error::ShreddingBlocked(message));
                    }
                }
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
                    "tenant shredded: key {} destroyed, then {} namespace(s), {} other object(s) and {} backup(s); record in {}",
                    progress.key_fingerprint.as_deref().unwrap_or_default(),
                    tenant.status.as_ref().map_or(0, |s| s.namespaces.len()),
                    progress.deleted.len(),
                    progress
                        .backups_deleted
                        .iter()
                        .filter(|b| b.starts_with("Backup "))
                        .count(),
                    progress.record.as_deref().unwrap_or_default()
                );
                info!(tenant = %name, record = ?progress.record, control = "CLD-76", "{note}");
                ctx.publish_record(
                    tenant,
                    &ctx.settings.key_namespace,
                    &record_name,
                    "Shredded",
                    note,
                )
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
    if let Some(blocked) = shredding::final_export_blocked(tenant, ctx.compliance.backup_engine()) {
        return Ok(Err(blocked));
    }
    let namespace = &ctx.settings.velero_namespace;
    let wanted = backup::export_backups(tenant, backup::FINAL_EXPORT, namespace);
    let created = super::backup::create_export(&wanted, ctx).await?;
    if !created.is_empty() {
        info!(tenant = %tenant.name_any(), backups = ?created, control = "CLD-73", "final export started");
    }
    let velero = ctx.observed.velero_view(tenant, namespace);
    let progress = backup::export_progress(&wanted, &velero.backups);
    Ok(shredding::final_export_outcome(&progress, &velero))
}

/// Asks Velero to delete backups. A request already there (made by an earlier pass) stands.
async fn request_deletions(requests: &[DeleteBackupRequest], ctx: &Context) -> Result<()> {
    let api: Api<DeleteBackupRequest> =
        Api::namespaced(ctx.client.clone(), &ctx.settings.velero_namespace);
    for request in requests {
        match api.create(&PostParams::default(), request).await {
            Ok(_) => {
                ctx.metrics.write("DeleteBackupRequest", "create");
                info!(request = %request.name_any(), backup = %request.spec.backup_name, control = "CLD-47", "backup deletion requested");
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error::kube(
                    "create",
                    format!("DeleteBackupRequest/{}", request.name_any()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Records the shredding's progress in the tenant's status. A merge patch: the conditions and
/// the rest of the status stay as they are.
async fn write_shredding(
    tenant: &FranceTravailTenant,
    progress: &ShreddingStatus,
    ctx: &Context,
) -> Result<()> {
    let api: Api<FranceTravailTenant> = Api::all(ctx.client.clone());
    let mut patch = json!({ "status": { "shredding": progress } });
    // Confirmed after a hold: the hold no longer stands.
    if let Some(status) = &tenant.status
        && condition(Some(status), DELETION_HELD).is_some()
    {
        let kept: Vec<_> = status
            .conditions
            .iter()
            .filter(|c| c.type_ != DELETION_HELD)
            .collect();
        patch["status"]["conditions"] = json!(kept);
    }
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
        .of_tenant(&name)
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
