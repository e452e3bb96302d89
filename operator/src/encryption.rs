//! Encryption at rest with the tenant's own key (CLD-21, CLD-40) and protection against an
//! accidental deletion (CLD-47): the tenant's StorageClass, rendered from an encryption profile;
//! a ValidatingAdmissionPolicy that refuses, in the tenant's namespaces, a claim on any other
//! class; and one cluster-wide policy that refuses to delete a tenant whose deletion was not
//! confirmed. Pure builders; the controller applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchCondition, MatchResources, MutatingAdmissionPolicy,
    MutatingAdmissionPolicyBinding, MutatingAdmissionPolicyBindingSpec,
    MutatingAdmissionPolicySpec, Mutation, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::api::{FranceTravailTenant, GROUP, annotations, labels};
use crate::keystore::secret_name;

/// The encryption profiles compiled into the binary.
pub const PROFILES_YAML: &str = include_str!("../../policies/encryption-profiles.yaml");

/// The cluster-wide policy refusing unconfirmed tenant deletions, and its binding.
pub const DELETION_PROTECTION: &str = "ft-tenant-deletion-protection";

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// The CSI driver.
    pub provisioner: String,
    pub key_reference: KeyReference,
    /// Values may hold `{keySecret}`, `{keyNamespace}` and `{keyReference}`.
    pub parameters: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeyReference {
    /// The key is the operator's, in its key store.
    None,
    /// The key is in the provider's KMS; the tenant names it.
    Required,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    pub profiles: Vec<Profile>,
}

impl Profiles {
    pub fn embedded() -> Result<Self, String> {
        Self::parse(PROFILES_YAML)
    }

    /// Parses a catalogue, refusing duplicate names and placeholders it does not know.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let profiles: Profiles = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &profiles.profiles {
            if !seen.insert(&p.name) {
                return Err(format!("encryption profile {} is listed twice", p.name));
            }
            for (key, value) in &p.parameters {
                let rest = ["{keySecret}", "{keyNamespace}", "{keyReference}"]
                    .iter()
                    .fold(value.clone(), |v, known| v.replace(known, ""));
                if rest.contains('{') {
                    return Err(format!(
                        "encryption profile {}: parameter {key} holds an unknown placeholder: {value}",
                        p.name
                    ));
                }
            }
            if (p.key_reference == KeyReference::Required)
                != p.parameters.values().any(|v| v.contains("{keyReference}"))
            {
                return Err(format!(
                    "encryption profile {}: keyReference: required exactly when a parameter uses {{keyReference}}",
                    p.name
                ));
            }
        }
        Ok(profiles)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.profiles.iter().map(|p| p.name.as_str()).collect()
    }
}

/// `ft-<tenant>-encrypted`: the only class the tenant's claims may use.
pub fn class_name(tenant: &str) -> String {
    format!("ft-{tenant}-encrypted")
}

/// The tenant's StorageClass, or `None` when it declares no storage. The tenant must have been
/// validated: its profile exists and has the key reference it needs.
pub fn storage_class(
    tenant: &FranceTravailTenant,
    profiles: &Profiles,
    key_namespace: &str,
) -> Option<StorageClass> {
    let storage = tenant.spec.storage.as_ref()?;
    let profile = profiles.get(&storage.profile)?;
    let name = tenant.name_any();
    let render = |value: &str| {
        value
            .replace("{keySecret}", &secret_name(&name))
            .replace("{keyNamespace}", key_namespace)
            .replace(
                "{keyReference}",
                storage.key_reference.as_deref().unwrap_or_default(),
            )
    };
    // The tenant's parameters first, so the profile's, which carry the encryption, win.
    let mut parameters = storage.parameters.clone();
    for (key, value) in &profile.parameters {
        parameters.insert(key.clone(), render(value));
    }
    Some(StorageClass {
        metadata: ObjectMeta {
            name: Some(class_name(&name)),
            labels: Some(tenant_labels(tenant)),
            annotations: Some(BTreeMap::from([
                (annotations::CONTROL.into(), "CLD-21,CLD-40".into()),
                (
                    "hosting.francetravail.fr/encryption-profile".into(),
                    profile.name.clone(),
                ),
            ])),
            owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        provisioner: profile.provisioner.clone(),
        parameters: Some(parameters),
        reclaim_policy: Some("Delete".into()),
        allow_volume_expansion: Some(true),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        mount_options: None,
        allowed_topologies: None,
    })
}

fn tenant_labels(tenant: &FranceTravailTenant) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::TENANT.into(), tenant.name_any()),
        (
            labels::DATA_CLASSIFICATION.into(),
            tenant.spec.data_classification.as_str().into(),
        ),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
    ])
}

/// `ft-claims-<tenant>`: the claims policy of a tenant and its binding.
pub fn claims_policy_name(tenant: &str) -> String {
    format!("ft-claims-{tenant}")
}

/// Refuses, in every namespace of the tenant, a PersistentVolumeClaim on any class but the
/// tenant's, or on none (CLD-21). A tenant without `spec.storage` has no class: every claim is
/// refused, saying so.
pub fn claims_policy(
    tenant: &FranceTravailTenant,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = tenant.name_any();
    let policy_name = claims_policy_name(&name);
    let class = class_name(&name);
    let validation = if tenant.spec.storage.is_some() {
        Validation {
            expression: format!(
                "has(object.spec.storageClassName) && object.spec.storageClassName == '{class}'"
            ),
            message: Some(format!(
                "tenant {name}: volumes must be encrypted with the tenant's own key: set spec.storageClassName: {class} (CLD-21)"
            )),
            reason: Some("Forbidden".into()),
            ..Default::default()
        }
    } else {
        Validation {
            expression: "false".into(),
            message: Some(format!(
                "tenant {name} declares no spec.storage, so it has no encrypted storage class and may claim no volume (CLD-21)"
            )),
            reason: Some("Forbidden".into()),
            ..Default::default()
        }
    };
    let meta = |n: &str| ObjectMeta {
        name: Some(n.into()),
        labels: Some(tenant_labels(tenant)),
        owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    };
    (
        ValidatingAdmissionPolicy {
            metadata: meta(&policy_name),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec![String::new()]),
                        api_versions: Some(vec!["v1".into()]),
                        operations: Some(vec!["CREATE".into()]),
                        resources: Some(vec!["persistentvolumeclaims".into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                validations: Some(vec![validation]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: meta(&policy_name),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: policy_name.clone(),
                match_resources: Some(MatchResources {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(labels::TENANT.into(), name)])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}

/// Refuses `DELETE` of a tenant that does not carry the annotation
/// `hosting.francetravail.fr/confirm-deletion: <its name>`, with the command to run. Deleting a
/// tenant shreds its data: it must never happen by accident (CLD-47).
pub fn deletion_protection() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let key = annotations::CONFIRM_DELETION;
    let by = annotations::DELETION_CONFIRMED_BY;
    (
        ValidatingAdmissionPolicy {
            metadata: protection_meta(),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(tenant_requests(&["DELETE", "UPDATE"])),
                validations: Some(vec![
                    Validation {
                        expression: format!(
                            "request.operation != 'DELETE' || (has(oldObject.metadata.annotations) && '{key}' in oldObject.metadata.annotations && oldObject.metadata.annotations['{key}'] == oldObject.metadata.name)"
                        ),
                        message_expression: Some(format!(
                            "'deleting tenant ' + oldObject.metadata.name + ' destroys its key and every namespace and volume it owns (CLD-47). If that is meant, first run: kubectl annotate francetravailtenant ' + oldObject.metadata.name + ' {key}=' + oldObject.metadata.name"
                        )),
                        reason: Some("Forbidden".into()),
                        ..Default::default()
                    },
                    // Who confirmed is written at admission only: never set or changed by hand.
                    Validation {
                        expression: format!(
                            "request.operation != 'UPDATE' || object.metadata.?annotations[?'{by}'] == oldObject.metadata.?annotations[?'{by}'] || object.metadata.?annotations[?'{key}'] != oldObject.metadata.?annotations[?'{key}']"
                        ),
                        message: Some(format!(
                            "{by} records who confirmed the deletion; it is written by the API server's admission, not by hand"
                        )),
                        reason: Some("Forbidden".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: protection_meta(),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: DELETION_PROTECTION.into(),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}

/// Records who confirms a tenant's deletion: when `CONFIRM_DELETION` is set or changed, writes
/// the authenticated user into `DELETION_CONFIRMED_BY`, for the shredding record. Needs
/// MutatingAdmissionPolicies; where they are not served the record names the field manager.
pub fn deletion_confirmation_recorder() -> (MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding)
{
    let key = annotations::CONFIRM_DELETION;
    let by = annotations::DELETION_CONFIRMED_BY;
    (
        MutatingAdmissionPolicy {
            metadata: protection_meta(),
            spec: Some(MutatingAdmissionPolicySpec {
                // Should it fail, the record falls back to the field manager.
                failure_policy: Some("Ignore".into()),
                match_constraints: Some(tenant_requests(&["CREATE", "UPDATE"])),
                match_conditions: Some(vec![MatchCondition {
                    name: "confirmation-set".into(),
                    expression: format!(
                        "object.metadata.?annotations[?'{key}'].hasValue() && (oldObject == null || object.metadata.?annotations[?'{key}'] != oldObject.metadata.?annotations[?'{key}'])"
                    ),
                }]),
                reinvocation_policy: Some("Never".into()),
                mutations: Some(vec![Mutation {
                    patch_type: "JSONPatch".into(),
                    json_patch: Some(JSONPatch {
                        expression: Some(format!(
                            "[JSONPatch{{op: 'add', path: '/metadata/annotations/' + jsonpatch.escapeKey('{by}'), value: request.userInfo.username}}]"
                        )),
                    }),
                    apply_configuration: None,
                }]),
                ..Default::default()
            }),
        },
        MutatingAdmissionPolicyBinding {
            metadata: protection_meta(),
            spec: Some(MutatingAdmissionPolicyBindingSpec {
                policy_name: Some(DELETION_PROTECTION.into()),
                ..Default::default()
            }),
        },
    )
}

fn protection_meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(DELETION_PROTECTION.into()),
        labels: Some(BTreeMap::from([(
            labels::MANAGED_BY.into(),
            labels::MANAGED_BY_VALUE.into(),
        )])),
        ..Default::default()
    }
}

/// Requests on tenants, of any version, with these operations.
fn tenant_requests(operations: &[&str]) -> MatchResources {
    MatchResources {
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![GROUP.into()]),
            api_versions: Some(vec!["*".into()]),
            operations: Some(operations.iter().map(|o| o.to_string()).collect()),
            resources: Some(vec!["francetravailtenants".into()]),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
