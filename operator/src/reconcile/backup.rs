//! Carries out the backup decisions of `ft_core::backup` (CLD-26, CLD-73): starts the
//! restore tests that are due and the exports that are asked for.

use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use ft_core::api::{Environment, ExportStatus, FranceTravailTenant};
use ft_core::backup::ExportStep;
use ft_core::backup::velero::{Backup as VeleroBackup, Restore};
use ft_core::backup::{self, RestoreTest, VeleroView};

use crate::context::Context;
use crate::error::{Error, Result};

/// Starts the restore tests that are due, once their scratch namespace is in place, and
/// deletes the oldest ones beyond what is kept (CLD-26).
pub(super) async fn start_restore_tests(
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
pub(super) async fn create_export(wanted: &[VeleroBackup], ctx: &Context) -> Result<Vec<String>> {
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
pub(super) async fn export(
    tenant: &FranceTravailTenant,
    engine: Option<bool>,
    velero: &VeleroView,
    ctx: &Context,
) -> Option<ExportStatus> {
    let (token, wanted, create) = match backup::export_step(tenant, engine, &velero.namespace) {
        ExportStep::None => return None,
        ExportStep::Show(status) => return status,
        ExportStep::Run {
            token,
            wanted,
            create,
        } => (token, wanted, create),
    };
    if create {
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
                return Some(backup::export_blocked(&token, &e.to_string()));
            }
        }
    }
    let status = backup::export_status(
        &token,
        &backup::export_progress(&wanted, &velero.backups),
        velero,
    );
    let previous = tenant.status.as_ref().and_then(|s| s.export.as_ref());
    if backup::export_completed(previous, &status) {
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
