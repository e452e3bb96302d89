//! What the evaluator sees: the tenant, what was built for it, what the cluster shows, and the
//! cluster facts; and what it says of each control.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::PartialObjectMeta;

use crate::api::{ControlResult, EnvironmentPolicy, FranceTravailTenant};
use crate::backup::VeleroView;
use crate::desired::Desired;
use crate::placement::Confinement;
use crate::placement::regions::RegionCatalogue;

/// The reason of a control whose capability this version of the operator does not have yet.
/// Such a control is `Unknown`, never `Pass`, and does not by itself make a tenant `Unknown`.
pub const NOT_IN_THIS_VERSION: &str = "NotInThisVersion";

/// The reason of a control, and of the tenant's Degraded condition, when a cluster-wide
/// admission policy the tenant relies on is missing or was changed.
pub const ADMISSION_POLICY_MISSING: &str = "AdmissionPolicyMissing";

/// What the cluster holds in and for one tenant's namespaces.
#[derive(Clone, Debug, Default)]
pub struct TenantView {
    /// The tenant's namespaces that exist.
    pub namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    /// Every NetworkPolicy in those namespaces, the operator's and any other.
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub resource_quotas: Vec<Arc<ResourceQuota>>,
    pub limit_ranges: Vec<Arc<LimitRange>>,
    pub pods: Vec<Arc<Pod>>,
    /// Pods of other namespaces bound to a node of one of the tenant's production pools,
    /// the platform's namespaces excepted (CLD-25).
    pub pool_pods: Vec<Arc<Pod>>,
    pub persistent_volume_claims: Vec<Arc<PersistentVolumeClaim>>,
    /// The volumes bound to those claims.
    pub persistent_volumes: Vec<Arc<PersistentVolume>>,
    pub role_bindings: Vec<Arc<RoleBinding>>,
    /// Every node of the cluster.
    pub nodes: Vec<Arc<Node>>,
    /// The StorageClasses the controls look up: the tenant's own, those its claims name, and
    /// the cluster's default one.
    pub storage_classes: Vec<Arc<StorageClass>>,
    /// The EnvironmentPolicies in the tenant's namespaces.
    pub environment_policies: Vec<Arc<EnvironmentPolicy>>,
    /// The cluster's fixed admission objects (`crate::admission::fixed`), as they are.
    pub validating_admission_policies: Vec<Arc<ValidatingAdmissionPolicy>>,
    pub validating_admission_policy_bindings: Vec<Arc<ValidatingAdmissionPolicyBinding>>,
    pub mutating_admission_policies: Vec<Arc<MutatingAdmissionPolicy>>,
    pub mutating_admission_policy_bindings: Vec<Arc<MutatingAdmissionPolicyBinding>>,
    /// The fingerprint of the tenant's key in the key store, if it has one.
    pub key_fingerprint: Option<String>,
    /// What Velero holds for the tenant.
    pub velero: VeleroView,
}

/// Facts about the cluster as a whole.
#[derive(Clone, Debug)]
pub struct ClusterFacts {
    pub regions: Arc<RegionCatalogue>,
    /// The cloud provider named by the platform team, for region codes several providers use.
    pub provider: Option<String>,
    /// Whether the cluster serves Velero's API; `None` when it could not be told.
    pub backup_engine: Option<bool>,
    /// How new pods are confined: with `Native`, the fixed MutatingAdmissionPolicy must be in
    /// place too.
    pub confinement: Confinement,
}

pub struct Inputs<'a> {
    pub tenant: &'a FranceTravailTenant,
    /// What `desired` made of the tenant, or why it could not: the spec is invalid.
    pub desired: Result<&'a Desired, &'a str>,
    pub observed: &'a TenantView,
    pub facts: &'a ClusterFacts,
    pub now: Timestamp,
}

/// The result of one control, with a reason and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub result: ControlResult,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub id: &'static str,
    pub finding: Finding,
}

/// Judges one control.
pub type Judge = fn(&Inputs) -> Finding;
