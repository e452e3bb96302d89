//! The checks of deletion (DEL-1, REV-1; CLD-47, CLD-73, CLD-76): crypto-shredding on
//! confirmed deletion, and the final export.

use super::backup::{backup_engine, location_problems};
use super::finding::*;
use super::view::*;
use crate::api::{ControlResult, DeletionPolicy};

pub(super) fn crypto_shredding(inputs: &Inputs) -> Finding {
    if inputs.tenant.spec.deletion.policy == DeletionPolicy::Retain {
        return finding(
            ControlResult::Fail,
            "RetainOnDeletion",
            "spec.deletion.policy is Retain: deleting the tenant would leave its data in place (CLD-47)",
        );
    }
    // A KMS profile: the disks are encrypted with the provider's key, which the operator
    // cannot reach, so deleting the tenant destroys nothing that makes them unreadable.
    if let Some(reference) = inputs
        .tenant
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.key_reference.as_deref())
    {
        return finding(
            ControlResult::Fail,
            "ExternalKey",
            format!(
                "the tenant's volumes are encrypted with the key {reference} in the provider's KMS, which the operator cannot destroy: deleting the tenant would not make its data unreadable by itself (CLD-47). The platform team must schedule the destruction of that KMS key as part of the tenant's deletion; the shredding record names the key"
            ),
        );
    }
    match &inputs.observed.key_fingerprint {
        None => finding(
            ControlResult::Fail,
            "NoTenantKey",
            "the tenant has no key in the key store: deleting it could not make its data unreadable first",
        ),
        Some(fingerprint) => pass(
            "ShreddableKey",
            format!(
                "deleting the tenant destroys its key {fingerprint} before its namespaces, once the deletion is confirmed; a record of each step is kept"
            ),
        ),
    }
}

/// Deleting the tenant would export every environment first: the backup location it would go
/// to is there and valid (CLD-73).
pub(super) fn final_export(inputs: &Inputs) -> Finding {
    if !inputs.tenant.spec.deletion.final_export {
        return not_applicable(
            "NoFinalExport",
            "the tenant asks for no final export (spec.deletion.finalExport)",
        );
    }
    let backup = match backup_engine(inputs) {
        Ok(backup) => backup,
        Err(why) => {
            return finding(
                why.result,
                "NoExportPath",
                format!("a final export could not be taken: {}", why.message),
            );
        }
    };
    let problems = location_problems(inputs);
    if !problems.is_empty() {
        return finding(
            ControlResult::Fail,
            "NoExportPath",
            format!(
                "a final export could not be trusted: {}",
                listing(&problems)
            ),
        );
    }
    pass(
        "ExportPathReady",
        format!(
            "on deletion, every environment is exported to {}/{} before the tenant key is destroyed",
            inputs.observed.velero.namespace, backup.storage_location
        ),
    )
}
