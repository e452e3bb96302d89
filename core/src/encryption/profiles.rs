//! Encryption at rest with the tenant's own key (CLD-21, CLD-40): the tenant's StorageClass,
//! rendered from an encryption profile, and a ValidatingAdmissionPolicy that refuses, in the
//! tenant's namespaces, a claim on any other class. Pure builders; the operator applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use super::key::secret_name;
use crate::api::{FranceTravailTenant, annotations, labels};
use crate::meta::{
    environment_policy_kind, environment_policy_ref, fixed_meta, refuse_for_tenant,
    tenant_namespace_selector,
};

/// The encryption profiles compiled into the binary.
pub const PROFILES_YAML: &str = include_str!("../../../policies/encryption-profiles.yaml");

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

/// The claims policy and its binding.
pub const CLAIMS_POLICY: &str = "ft-claims";

/// The annotation that, where set, picks a claim's class in provisioning over
/// `spec.storageClassName`.
pub const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// Refuses, in every tenant namespace, a PersistentVolumeClaim that would not be encrypted with
/// the tenant's key (CLD-21): on any class but the tenant's, as its namespace's EnvironmentPolicy
/// names it, or on none, or carrying the beta class annotation, which wins over
/// `spec.storageClassName` in provisioning. A tenant without `spec.storage` has no class: every
/// claim is refused, saying so. Cluster-wide and fixed, like the placement policies.
pub fn claims_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let beta = format!("'{BETA_STORAGE_CLASS}'");
    storage_policy(
        CLAIMS_POLICY,
        "persistentvolumeclaims",
        vec![
            refuse_for_tenant(
                "has(params.spec.storageClass)",
                "' declares no spec.storage, so it has no encrypted storage class and may claim no volume (CLD-21)'",
            ),
            refuse_for_tenant(
                "!has(params.spec.storageClass) || (has(object.spec.storageClassName) && object.spec.storageClassName == params.spec.storageClass)",
                "\": volumes must be encrypted with the tenant's own key: set spec.storageClassName: \" + params.spec.storageClass + ' (CLD-21)'",
            ),
            refuse_for_tenant(
                format!(
                    "!has(object.metadata.annotations) || !({beta} in object.metadata.annotations)"
                ),
                &format!(
                    "\": the annotation {BETA_STORAGE_CLASS} overrides spec.storageClassName in provisioning and is refused; volumes must be encrypted with the tenant's own key (CLD-21)\""
                ),
            ),
        ],
    )
}

/// The pod volumes policy and its binding.
pub const POD_VOLUMES_POLICY: &str = "ft-pod-volumes";

/// Refuses, in every tenant namespace, a pod whose storage would escape the claims policy
/// (CLD-21): a generic ephemeral volume whose claim template names any class but the tenant's
/// (or carries the beta class annotation), refused here rather than leaving the pod Pending on
/// a refused claim, and an inline CSI volume, which no claim and no class governs.
pub fn pod_volumes_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let beta = format!("'{BETA_STORAGE_CLASS}'");
    let claimed = "v.ephemeral.volumeClaimTemplate";
    let volumes = "!has(object.spec.volumes) || ";
    storage_policy(
        POD_VOLUMES_POLICY,
        "pods",
        vec![
            refuse_for_tenant(
                format!("{volumes}object.spec.volumes.all(v, !has(v.csi))"),
                "\": inline CSI volumes (spec.volumes[].csi) are storage no claim and no encrypted class governs; use a PersistentVolumeClaim on the tenant's class (CLD-21)\"",
            ),
            refuse_for_tenant(
                format!(
                    "{volumes}object.spec.volumes.all(v, !has(v.ephemeral) || (has(params.spec.storageClass) && has({claimed}.spec.storageClassName) && {claimed}.spec.storageClassName == params.spec.storageClass && !(has({claimed}.metadata) && has({claimed}.metadata.annotations) && {beta} in {claimed}.metadata.annotations)))"
                ),
                &format!(
                    "\": a generic ephemeral volume (spec.volumes[].ephemeral) must claim the tenant's own encrypted class, \" + (has(params.spec.storageClass) ? params.spec.storageClass : 'which it does not have: it declares no spec.storage') + \", in spec.storageClassName and without the annotation {BETA_STORAGE_CLASS} (CLD-21)\""
                ),
            ),
        ],
    )
}

/// A policy on the creation of `resource` in every tenant namespace, reading the namespace's
/// EnvironmentPolicy, and its binding.
fn storage_policy(
    name: &str,
    resource: &str,
    validations: Vec<Validation>,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    (
        ValidatingAdmissionPolicy {
            metadata: fixed_meta(name),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                param_kind: Some(environment_policy_kind()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec![String::new()]),
                        api_versions: Some(vec!["v1".into()]),
                        operations: Some(vec!["CREATE".into()]),
                        resources: Some(vec![resource.into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                validations: Some(validations),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: fixed_meta(name),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: name.into(),
                param_ref: Some(environment_policy_ref()),
                match_resources: Some(tenant_namespace_selector()),
                validation_actions: vec!["Deny".into()],
            },
        },
    )
}
