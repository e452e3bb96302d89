//! The cluster-wide admission objects, fixed whatever the tenants: the placement policies
//! (CLD-74, CLD-25), the claims and pod volumes policies (CLD-21), the services policy (CLD-36), namespace
//! ownership (CLD-20), and the deletion protection of tenants and of the operator's
//! definitions (CLD-47). Each
//! reads what to enforce in a tenant namespace from its `EnvironmentPolicy`. They are
//! generated into `admission/` (a test fails when stale), installed by the chart or with
//! `kubectl apply -f admission/`; the operator only reads them and reports one missing or
//! changed.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use serde::Serialize;

use crate::encryption::{claims_policy, pod_volumes_policy};
use crate::isolation::namespace_ownership;
use crate::network::services_policy;
use crate::placement::{placement_mutation, placement_validation};
use crate::shredding::protection::{
    crd_protection, deletion_confirmation_recorder, deletion_protection,
};

/// Every fixed admission object, by kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Fixed {
    pub validating_admission_policies: Vec<ValidatingAdmissionPolicy>,
    pub validating_admission_policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    /// Only on API servers that serve them (Kubernetes 1.36+).
    pub mutating_admission_policies: Vec<MutatingAdmissionPolicy>,
    pub mutating_admission_policy_bindings: Vec<MutatingAdmissionPolicyBinding>,
}

pub fn fixed() -> Fixed {
    let (placement, placement_binding) = placement_validation();
    let (claims, claims_binding) = claims_policy();
    let (volumes, volumes_binding) = pod_volumes_policy();
    let (protection, protection_binding) = deletion_protection();
    let (crds, crds_binding) = crd_protection();
    let (ownership, ownership_binding) = namespace_ownership();
    let (services, services_binding) = services_policy();
    let (confine, confine_binding) = placement_mutation();
    let (recorder, recorder_binding) = deletion_confirmation_recorder();
    Fixed {
        validating_admission_policies: vec![
            placement, claims, volumes, services, ownership, protection, crds,
        ],
        validating_admission_policy_bindings: vec![
            placement_binding,
            claims_binding,
            volumes_binding,
            services_binding,
            ownership_binding,
            protection_binding,
            crds_binding,
        ],
        mutating_admission_policies: vec![confine, recorder],
        mutating_admission_policy_bindings: vec![confine_binding, recorder_binding],
    }
}

/// The files of `admission/`: the validating objects in one, the mutating ones (which only
/// API servers of Kubernetes 1.36 and later serve) in another, each starting with `---`.
pub fn files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    fn yaml<T: Serialize>(items: &[T]) -> Result<String, serde_saphyr::SerializeError> {
        items
            .iter()
            .map(|item| Ok(format!("---\n{}", serde_saphyr::to_string(item)?)))
            .collect()
    }
    let Fixed {
        validating_admission_policies,
        validating_admission_policy_bindings,
        mutating_admission_policies,
        mutating_admission_policy_bindings,
    } = fixed();
    Ok(vec![
        (
            "validating.yaml".into(),
            yaml(&validating_admission_policies)? + &yaml(&validating_admission_policy_bindings)?,
        ),
        (
            "mutating.yaml".into(),
            yaml(&mutating_admission_policies)? + &yaml(&mutating_admission_policy_bindings)?,
        ),
    ])
}
