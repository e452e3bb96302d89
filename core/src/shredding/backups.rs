//! The shredding step that deletes the tenant's Velero backups and exports (CLD-47, CLD-76).
//! Destroying the key does not reach them: Velero's resource tarballs hold the tenant's Secrets
//! in clear, and its file-system backups are encrypted with Velero's repository key. Velero
//! deletes a backup, in its object store too, when asked with a `DeleteBackupRequest`. The
//! final export is the tenant's reversibility deliverable (CLD-73): it goes last, once handed
//! over. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::api::{
    FranceTravailTenant, annotations,
    labels::{EXPORT, MANAGED_BY, MANAGED_BY_VALUE, TENANT},
};
use crate::backup::velero::{Backup, is_finished};
use crate::backup::{self, VeleroView};
use crate::digest::sha256_hex;

/// Asks Velero to delete a backup: its data in the object store, then the Backup object.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "DeleteBackupRequest",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct DeleteBackupRequestSpec {
    pub backup_name: String,
}

/// Where the step stands.
#[derive(Clone, Debug, PartialEq)]
pub enum BackupsDeletion {
    /// Nothing of the tenant is left in Velero. `none` says why, for a tenant none of whose
    /// backups had to be deleted.
    Done { none: Option<String> },
    /// The requests to create (each named after its backup: creating one again is a no-op),
    /// the backups they delete (`Backup <namespace>/<name>`), and what the step waits for.
    Waiting {
        requests: Vec<DeleteBackupRequest>,
        deleting: Vec<String>,
        message: String,
    },
}

/// `<backup>-ft-delete`, or a digest of the backup's name when that would be too long for a
/// name: the same backup always gets the same request.
pub fn request_name(backup: &str) -> String {
    let name = format!("{backup}-ft-delete");
    if name.len() <= 253 {
        name
    } else {
        format!("ft-delete-{}", sha256_hex(backup.as_bytes(), 32))
    }
}

/// Whether the operator may ask for the backup's deletion: one of its Schedules' backups
/// (`ft-<tenant>-…`) or one of its exports (`ft-export-…`). The `ft-operator-limits` policy
/// holds it to those.
pub fn deletable(tenant: &str, backup: &str) -> bool {
    backup.starts_with(&format!("ft-{tenant}-")) || backup.starts_with("ft-export-")
}

fn request(tenant: &str, backup: &Backup, namespace: &str) -> DeleteBackupRequest {
    DeleteBackupRequest {
        metadata: ObjectMeta {
            name: Some(request_name(&backup.name_any())),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (TENANT.into(), tenant.into()),
                (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
            ])),
            ..Default::default()
        },
        spec: DeleteBackupRequestSpec {
            backup_name: backup.name_any(),
        },
    }
}

fn listing(backups: &[&Arc<Backup>], namespace: &str) -> String {
    backups
        .iter()
        .map(|b| format!("{namespace}/{}", b.name_any()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What deleting the tenant's backups needs now. `view` holds the Backups labelled with the
/// tenant in Velero's namespace; `engine` whether the cluster serves Velero (None: not known
/// yet).
pub fn backups_deletion(
    tenant: &FranceTravailTenant,
    view: &VeleroView,
    engine: Option<bool>,
) -> BackupsDeletion {
    let waiting = |message: String| BackupsDeletion::Waiting {
        requests: Vec::new(),
        deleting: Vec::new(),
        message,
    };
    match engine {
        None => {
            return waiting(
                "the deletion of the tenant's backups waits to tell whether the cluster serves Velero"
                    .into(),
            );
        }
        Some(false) => {
            return BackupsDeletion::Done {
                none: Some(format!(
                    "none: {}, so it holds no backup of the tenant",
                    backup::NO_ENGINE
                )),
            };
        }
        Some(true) => {}
    }
    if view.backups.is_empty() {
        return BackupsDeletion::Done {
            none: Some("none: Velero holds no backup of the tenant".into()),
        };
    }
    let name = tenant.name_any();
    let namespace = view.namespace.as_str();
    let final_id = backup::export_id(tenant, backup::FINAL_EXPORT);
    let is_final = |b: &Arc<Backup>| b.labels().get(EXPORT) == Some(&final_id);
    let handed_over = tenant
        .annotations()
        .get(annotations::FINAL_EXPORT_HANDED_OVER)
        == Some(&name);

    let mut messages = Vec::new();
    let final_export: Vec<&Arc<Backup>> = view.backups.iter().filter(|b| is_final(b)).collect();
    if !final_export.is_empty() && !handed_over {
        messages.push(format!(
            "the final export ({}) is the tenant's reversibility deliverable (CLD-73): it is deleted once handed over to France Travail; then: kubectl annotate francetravailtenant {name} {}={name}",
            listing(&final_export, namespace),
            annotations::FINAL_EXPORT_HANDED_OVER
        ));
    }
    let candidates: Vec<&Arc<Backup>> = view
        .backups
        .iter()
        .filter(|b| handed_over || !is_final(b))
        .collect();
    let (ours, foreign): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|b| deletable(&name, &b.name_any()));
    if !foreign.is_empty() {
        messages.push(format!(
            "{} labelled with the tenant but not named as the operator's backups: the operator may not delete them (ft-operator-limits); delete them with `velero backup delete`",
            listing(&foreign, namespace)
        ));
    }
    // Velero refuses to delete a backup still being taken; one it is deleting is asked for.
    let (finished, running): (Vec<_>, Vec<_>) = ours.into_iter().partition(|b| {
        let phase = b.status.as_ref().and_then(|s| s.phase.as_deref());
        is_finished(phase) || phase == Some("Deleting")
    });
    if !running.is_empty() {
        messages.push(format!(
            "{} still in progress: Velero deletes a backup once it is finished",
            listing(&running, namespace)
        ));
    }
    if !finished.is_empty() {
        messages.insert(
            0,
            format!(
                "waiting for Velero to delete {} (a DeleteBackupRequest named <backup>-ft-delete each; one that Velero could not carry out keeps its errors in its status: delete it to ask again)",
                listing(&finished, namespace)
            ),
        );
    }
    BackupsDeletion::Waiting {
        requests: finished
            .iter()
            .map(|b| request(&name, b, namespace))
            .collect(),
        deleting: finished
            .iter()
            .map(|b| format!("Backup {namespace}/{}", b.name_any()))
            .collect(),
        message: messages.join("; "),
    }
}
