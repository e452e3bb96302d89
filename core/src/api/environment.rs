//! `EnvironmentPolicy`: one per tenant namespace, named [`ENVIRONMENT_POLICY`], written by the
//! operator only. It is the parameter of the cluster-wide admission policies: what they enforce
//! in that namespace (allowed regions, production pool, storage class). `kubectl get
//! environmentpolicy -A` shows, per namespace, exactly what is enforced there.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::EnvironmentKind;

/// The name of the one EnvironmentPolicy of each tenant namespace, the admission policies'
/// `paramRef`.
pub const ENVIRONMENT_POLICY: &str = "ft-environment";

/// What the cluster-wide admission policies enforce in one tenant namespace.
// Printer columns repeat `type_ = "string"`, which is not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "hosting.francetravail.fr",
    version = "v1alpha1",
    kind = "EnvironmentPolicy",
    plural = "environmentpolicies",
    singular = "environmentpolicy",
    shortname = "envpolicy",
    category = "francetravail",
    namespaced,
    doc = "What the cluster-wide admission policies enforce in one namespace of a France Travail tenant, written by ft-operator.",
    derive = "PartialEq",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment"
    ),
    printcolumn(name = "Placement", type_ = "string", json_path = ".spec.placement"),
    printcolumn(
        name = "Storage Class",
        type_ = "string",
        json_path = ".spec.storageClass"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentPolicySpec {
    /// The FranceTravailTenant the namespace belongs to.
    #[schemars(length(max = 63))]
    pub tenant: String,
    /// The tenant's environment the namespace holds.
    #[schemars(length(max = 63))]
    pub environment: String,
    pub kind: EnvironmentKind,
    /// The region label values of the cluster's nodes in the tenant's allowed countries
    /// (CLD-74). Empty: no node is, and every pod is refused.
    #[schemars(length(max = 64))]
    pub regions: Vec<String>,
    /// The node selector terms a pod is confined to: each of its required terms must hold one
    /// of them, all of their requirements (regions, and the production pool to use or the
    /// pools to avoid, CLD-25).
    #[schemars(length(max = 16))]
    pub terms: Vec<Vec<Requirement>>,
    /// The placement in words, for the policies' messages.
    #[schemars(length(max = 1024))]
    pub placement: String,
    /// The rules the placement enforces, for the policies' messages.
    #[schemars(length(max = 64))]
    pub rules: String,
    /// The tenant's own encrypted StorageClass, the only class a claim may use (CLD-21).
    /// Absent when the tenant declares no storage: every claim is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class: Option<String>,
    /// The Services that may be of type LoadBalancer or NodePort here, each declared by an
    /// ingress flow (`expose`); any other is refused (CLD-36).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exposed_services: Vec<ExposedService>,
}

/// A Service the flow matrix exposes outside the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ExposedService {
    #[schemars(length(max = 63))]
    pub name: String,
    /// `LoadBalancer` or `NodePort`.
    #[serde(rename = "type")]
    #[schemars(length(max = 16))]
    pub type_: String,
    /// The ingress flow that declares it.
    #[schemars(length(max = 63))]
    pub flow: String,
}

/// One node selector requirement: `key` `In` or `NotIn` `values`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    #[schemars(length(max = 317))]
    pub key: String,
    /// `In` or `NotIn`.
    #[schemars(length(max = 8))]
    pub operator: String,
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}
