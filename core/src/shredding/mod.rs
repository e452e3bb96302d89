//! Crypto-shredding (CLD-47, CLD-76, CLD-73): the steps of a tenant's deletion, in order, each
//! idempotent. The tenant's `status.shredding` is the journal: a step is done once its time is
//! set there, so after a crash or a restart the operator resumes at the first step without one.
//! Pure.
//!
//! Carried out by the operator's `reconcile/shred.rs`; checked by `controls/shredding.rs`
//! (DEL-1, REV-1).

pub mod backups;
pub mod protection;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    FranceTravailTenant, ShreddingStatus, annotations,
    labels::{MANAGED_BY, MANAGED_BY_VALUE, TENANT},
};
use crate::backup::{self, ExportProgress, VeleroView};
use crate::meta::annotation_set_by;

/// Marks the ConfigMaps that are shredding records.
pub const RECORD_LABEL: &str = "hosting.francetravail.fr/shredding-record";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Export every environment first, when the tenant asks for it (CLD-73).
    FinalExport,
    /// Destroy the key: from then on every volume and backup of the tenant is unreadable.
    DestroyKey,
    /// Delete every namespace of the tenant and wait until they are gone.
    DeleteNamespaces,
    /// Delete the cluster-scoped objects the tenant owned, and wait until they are gone.
    DeleteClusterObjects,
    /// Have Velero delete the tenant's backups and exports, and wait until they are gone:
    /// resource tarballs hold its Secrets in clear, and file-system backups are encrypted with
    /// Velero's repository key, not the tenant's.
    DeleteBackups,
    /// Write the record that outlives the tenant.
    WriteRecord,
    /// Release the tenant.
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FinalExport => "FinalExport",
            Self::DestroyKey => "DestroyKey",
            Self::DeleteNamespaces => "DeleteNamespaces",
            Self::DeleteClusterObjects => "DeleteClusterObjects",
            Self::DeleteBackups => "DeleteBackups",
            Self::WriteRecord => "WriteRecord",
            Self::Done => "Done",
        }
    }
}

/// The first step not done yet. The final export, when asked for, comes before anything is
/// destroyed.
pub fn next_step(tenant: &FranceTravailTenant, progress: &ShreddingStatus) -> Step {
    if progress.key_destroyed_at.is_none() {
        if tenant.spec.deletion.final_export && progress.final_export_at.is_none() {
            return Step::FinalExport;
        }
        return Step::DestroyKey;
    }
    if progress.namespaces_deleted_at.is_none() {
        return Step::DeleteNamespaces;
    }
    if progress.cluster_objects_deleted_at.is_none() {
        return Step::DeleteClusterObjects;
    }
    if progress.backups_deleted_at.is_none() {
        return Step::DeleteBackups;
    }
    if progress.record.is_none() {
        return Step::WriteRecord;
    }
    Step::Done
}

/// Whether the operator may carry out a tenant's deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// The deletion is confirmed, or a shredding already under way resumes.
    Confirmed,
    /// Nobody confirmed it (a deletion that admission did not see, such as the deletion of the
    /// CustomResourceDefinition): the tenant stays enforced as a live one and its key is kept.
    Held { message: String },
}

/// The condition a held deletion puts in the tenant's status.
pub const DELETION_HELD: &str = "DeletionHeld";
pub const DELETION_NOT_CONFIRMED: &str = "DeletionNotConfirmed";

/// The deletion of a tenant is carried out only when its `confirm-deletion` annotation names it
/// (CLD-47, CLD-76): whatever path the deletion came by, nothing is destroyed, and nothing is
/// left unprotected, unless it was meant. A shredding that has begun (past the final export,
/// or its key already destroyed) resumes regardless: stopping halfway would protect nothing.
pub fn consent(tenant: &FranceTravailTenant) -> Consent {
    let name = tenant.name_any();
    let started = tenant
        .status
        .as_ref()
        .and_then(|s| s.shredding.as_ref())
        .is_some_and(|p| {
            p.key_destroyed_at.is_some()
                || !(p.step.is_empty() || p.step == Step::FinalExport.as_str())
        });
    let given = tenant.annotations().get(annotations::CONFIRM_DELETION);
    if started || given == Some(&name) {
        return Consent::Confirmed;
    }
    let found = match given {
        None => "it does not carry the annotation".to_string(),
        Some(other) => format!("its annotation names {other:?}, not the tenant"),
    };
    Consent::Held {
        message: format!(
            "deletion held: the deletion of tenant {name} was not confirmed ({found} {}={name}), so nothing is shredded: the tenant stays enforced and its key is kept (CLD-47, CLD-76). To carry the deletion out: kubectl annotate francetravailtenant {name} {}={name}",
            annotations::CONFIRM_DELETION,
            annotations::CONFIRM_DELETION,
        ),
    }
}

/// `ft-shredding-<tenant>-<first 8 characters of its uid>`: unique even when a tenant of the
/// same name is made and shredded again.
pub fn record_name(tenant: &FranceTravailTenant) -> String {
    let uid = tenant.metadata.uid.as_deref().unwrap_or("nouid");
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("ft-shredding-{}-{short}", tenant.name_any())
}

/// Who confirmed the deletion, as the API server recorded it: the authenticated user written at
/// admission, else the field manager that set the confirmation annotation, and when.
pub fn confirmed_by(tenant: &FranceTravailTenant) -> String {
    if let Some(user) = tenant
        .annotations()
        .get(annotations::DELETION_CONFIRMED_BY)
        .filter(|u| !u.is_empty())
    {
        return format!("user {user}");
    }
    annotation_set_by(tenant, annotations::CONFIRM_DELETION)
}

/// What the shredding record says, as YAML.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    pub tenant: String,
    pub uid: String,
    pub rules: Vec<&'static str>,
    pub deletion_requested_at: Option<String>,
    pub deletion_confirmed_by: String,
    pub key_store: String,
    pub key_fingerprint: Option<&'a str>,
    /// For profiles whose key is in the provider's KMS: destroying it is the provider's step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_key: Option<String>,
    pub started_at: Option<String>,
    /// The final export (CLD-73), taken before the key was destroyed, and where it is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_export_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub final_export: Vec<String>,
    pub key_destroyed_at: Option<String>,
    pub namespaces_deleted_at: Option<String>,
    pub cluster_objects_deleted_at: Option<String>,
    pub backups_deleted_at: Option<String>,
    pub recorded_at: String,
    pub namespaces_deleted: Vec<String>,
    pub cluster_objects_deleted: Vec<String>,
    /// The Velero backups and exports deleted, or why there was none.
    pub backups_deleted: Vec<String>,
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

/// The record of a finished shredding, in the operator's namespace, with no owner: it outlives
/// the tenant. It holds the key's fingerprint, never the key.
pub fn record(
    tenant: &FranceTravailTenant,
    progress: &ShreddingStatus,
    key_store: String,
    namespace: &str,
    now: &Time,
) -> Result<ConfigMap, serde_saphyr::ser::Error> {
    let name = tenant.name_any();
    let external_key = tenant
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.key_reference.as_ref())
        .map(|r| {
            format!(
                "{r}: held by the provider's KMS, not by the operator; schedule its destruction there"
            )
        });
    let body = Record {
        tenant: name.clone(),
        uid: tenant.metadata.uid.clone().unwrap_or_default(),
        rules: if progress.final_export_at.is_some() {
            vec!["CLD-47", "CLD-76", "CLD-73"]
        } else {
            vec!["CLD-47", "CLD-76"]
        },
        deletion_requested_at: time(&tenant.metadata.deletion_timestamp),
        deletion_confirmed_by: confirmed_by(tenant),
        key_store,
        key_fingerprint: progress.key_fingerprint.as_deref(),
        external_key,
        started_at: time(&progress.started_at),
        final_export_at: time(&progress.final_export_at),
        final_export: progress.exports.clone(),
        key_destroyed_at: time(&progress.key_destroyed_at),
        namespaces_deleted_at: time(&progress.namespaces_deleted_at),
        cluster_objects_deleted_at: time(&progress.cluster_objects_deleted_at),
        backups_deleted_at: time(&progress.backups_deleted_at),
        recorded_at: now.0.to_string(),
        namespaces_deleted: tenant
            .status
            .as_ref()
            .map(|s| s.namespaces.clone())
            .unwrap_or_default(),
        cluster_objects_deleted: progress.deleted.clone(),
        backups_deleted: progress.backups_deleted.clone(),
    };
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(tenant)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (TENANT.into(), name),
                (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
                (RECORD_LABEL.into(), "true".into()),
            ])),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            "record.yaml".to_string(),
            serde_saphyr::to_string(&body)?,
        )])),
        ..Default::default()
    })
}

const NOTHING_DESTROYED: &str = "nothing has been destroyed. To shred without an export, set spec.deletion.finalExport to false";

/// Why the final export before shredding (CLD-73) cannot start, if it cannot.
pub fn final_export_blocked(tenant: &FranceTravailTenant, engine: Option<bool>) -> Option<String> {
    export_blocked(tenant, engine, NOTHING_DESTROYED)
}

/// The final export's Backups once all completed, or what it waits for. Nothing is destroyed
/// until it is done.
pub fn final_export_outcome(
    progress: &ExportProgress,
    view: &VeleroView,
) -> Result<Vec<String>, String> {
    export_outcome(progress, view, NOTHING_DESTROYED)
}

/// Why an export taken before something is destroyed (a tenant, or one of its environments)
/// cannot start, if it cannot; `unchanged` says what is kept meanwhile.
pub fn export_blocked(
    tenant: &FranceTravailTenant,
    engine: Option<bool>,
    unchanged: &str,
) -> Option<String> {
    if tenant.spec.backup.is_none() {
        return Some(format!(
            "spec.deletion.finalExport is set, but the tenant declares no backup location (spec.backup) to export to: {unchanged}"
        ));
    }
    match engine {
        Some(true) => None,
        Some(false) => Some(format!(
            "the final export waits: {}; {unchanged}",
            backup::NO_ENGINE
        )),
        None => Some("the final export waits to tell whether the cluster serves Velero".into()),
    }
}

/// Such an export's Backups once all completed, or what it waits for.
pub fn export_outcome(
    progress: &ExportProgress,
    view: &VeleroView,
    unchanged: &str,
) -> Result<Vec<String>, String> {
    if !progress.failed.is_empty() {
        return Err(format!(
            "the final export failed: {}; {unchanged}. Delete the failed Backups to take it again",
            progress.failed.join(", ")
        ));
    }
    if !progress.completed {
        let done = progress
            .backups
            .iter()
            .filter(|(_, phase)| phase == "Completed")
            .count();
        return Err(format!(
            "the final export is in progress: {done} of {} environment(s) exported",
            progress.backups.len()
        ));
    }
    let location = view.location_description();
    Ok(progress
        .backups
        .iter()
        .map(|(name, _)| format!("Backup {}/{name} in {location}", view.namespace))
        .collect())
}
