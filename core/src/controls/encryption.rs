//! The checks of encryption (ENC-1, ENC-2; CLD-21, CLD-40): volumes on the tenant's encrypted
//! class, with the tenant's own key.

use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use serde_json::json;

use super::finding::*;

use super::view::*;
use crate::api::ControlResult;
use crate::applied::differs;
use crate::encryption::{CLAIMS_POLICY, class_name};
use crate::meta::object_key;

/// The default StorageClass is marked by this annotation.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Whether a StorageClass turns encryption on, by the parameters of the common drivers:
/// Longhorn, Ceph RBD and AWS EBS `encrypted`, GCE PD `disk-encryption-kms-key`, Azure Disk
/// `diskEncryptionSetID`. Drivers read their parameters case-insensitively.
pub fn encrypts(class: &StorageClass) -> bool {
    class.parameters.iter().flatten().any(|(k, v)| {
        let k = k.to_ascii_lowercase();
        (k == "encrypted" && v.eq_ignore_ascii_case("true"))
            || ((k == "disk-encryption-kms-key" || k == "diskencryptionsetid") && !v.is_empty())
    })
}

pub(super) fn encrypted_volumes(inputs: &Inputs) -> Finding {
    let claims = &inputs.observed.persistent_volume_claims;
    if claims.is_empty() {
        return not_applicable("NoVolumes", "the tenant has no volume claim");
    }
    let default_class = inputs
        .observed
        .storage_classes
        .iter()
        .find(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"));
    let mut problems = Vec::new();
    for pvc in claims {
        let class = match pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
        {
            Some("") => {
                problems.push(format!(
                    "{} uses no StorageClass, so nothing shows its volume is encrypted",
                    object_key(&**pvc)
                ));
                continue;
            }
            Some(name) => name.to_string(),
            None => match default_class {
                Some(c) => c.name_any(),
                None => {
                    problems.push(format!(
                        "{} names no StorageClass and the cluster has no default one",
                        object_key(&**pvc)
                    ));
                    continue;
                }
            },
        };
        let found = inputs
            .observed
            .storage_classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(class.as_str()));
        match found {
            None => problems.push(format!(
                "{} uses StorageClass/{class}, which is not in the cluster",
                object_key(&**pvc)
            )),
            Some(c) if !encrypts(c) => problems.push(format!(
                "{} uses StorageClass/{class}, which does not encrypt",
                object_key(&**pvc)
            )),
            Some(_) => {}
        }
    }
    judge(
        problems,
        "UnencryptedVolumes",
        "Encrypted",
        "every volume claim uses a StorageClass that encrypts".into(),
    )
}

/// The tenant's key is in the key store, its class is in place as built, and every volume of
/// the tenant was provisioned by that class (CLD-21, CLD-40).
pub(super) fn tenant_key(inputs: &Inputs) -> Finding {
    let name = inputs.tenant.name_any();
    let Some(storage) = &inputs.tenant.spec.storage else {
        return finding(
            ControlResult::Fail,
            "NoStorageDeclared",
            "the tenant declares no spec.storage: it has no encrypted class of its own, so none of its volumes can be shown to be encrypted with its key",
        );
    };
    let Some(fingerprint) = &inputs.observed.key_fingerprint else {
        return finding(
            ControlResult::Fail,
            "NoTenantKey",
            format!("tenant {name} has no key in the key store"),
        );
    };
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(unknown) => return unknown,
    };
    let own = class_name(&name);
    let mut problems = Vec::new();
    let want = desired
        .storage_classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(own.as_str()));
    let have = inputs
        .observed
        .storage_classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(own.as_str()));
    match (want, have) {
        (_, None) => problems.push(format!("StorageClass/{own} is missing")),
        (Some(want), Some(have)) => {
            let (w, h) = (json!(want), json!(&**have));
            if differs(&w, &h) {
                problems.push(format!(
                    "StorageClass/{own} differs from the {} profile's",
                    storage.profile
                ));
            }
        }
        (None, Some(_)) => {}
    }
    let unprotected = fixed_drift(inputs, CLAIMS_POLICY, false);
    if !unprotected.is_empty() {
        // Claims are no longer checked at admission: that comes first.
        problems.extend(unprotected);
        return finding(
            ControlResult::Fail,
            ADMISSION_POLICY_MISSING,
            listing(&problems),
        );
    }
    for policy in &inputs.observed.environment_policies {
        if policy.spec.storage_class.as_deref() != Some(own.as_str()) {
            problems.push(format!(
                "{} admits claims on {} instead of {own}",
                object_key(&**policy),
                policy.spec.storage_class.as_deref().unwrap_or("no class")
            ));
        }
    }
    for pv in &inputs.observed.persistent_volumes {
        let class = pv
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or_default();
        if class != own {
            let claim = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .map(|c| {
                    format!(
                        ", bound to {}/{}",
                        c.namespace.as_deref().unwrap_or_default(),
                        c.name.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            problems.push(format!(
                "{}{claim} was provisioned by {}, not by the tenant's {own}",
                object_key(&**pv),
                if class.is_empty() { "no class" } else { class }
            ));
        }
    }
    judge(
        problems,
        "NotEncryptedWithTenantKey",
        "OwnKey",
        format!(
            "the tenant key {fingerprint} is in the key store; StorageClass/{own} ({}) encrypts every volume of the tenant",
            storage.profile
        ),
    )
}
