//! `FranceTravailTenant`: one per France Travail service hosted on the cluster.
//!
//! Everything the API server can judge by itself is in the schema and its CEL rules, so a bad
//! manifest is refused at `kubectl apply` with the field named. `crate::validate` repeats the
//! checks that need the whole tenant, for the offline `plan` and as a guard in the reconciler.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, LabelSelector, Time},
};
use kube::core::{Message, Reason, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Country;

/// Declares one France Travail service hosted on this cluster: its environments, where its data
/// may live, which flows it may use, who may access it, and how it is shredded.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hosting.francetravail.fr",
    version = "v1alpha1",
    kind = "FranceTravailTenant",
    plural = "francetravailtenants",
    singular = "francetravailtenant",
    shortname = "ftt",
    category = "francetravail",
    doc = "A France Travail service hosted on this cluster, kept isolated, encrypted, EU-pinned and backed up by ft-operator.",
    status = "TenantStatus",
    printcolumn(name = "Environments", type_ = "string", json_path = ".status.environments"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Compliant", type_ = "string", json_path = ".status.conditions[?(@.type==\"Compliant\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Shredding", type_ = "string", json_path = ".status.shredding.step", priority = "1"),
    validation = Rule::new("size(self.metadata.name) <= 42 && !self.metadata.name.contains('.')")
        .message("metadata.name must be a DNS label of at most 42 characters: it prefixes every namespace of the tenant")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.network) || \
     ((!has(self.network.ingress) || self.network.ingress.all(f, !has(f.environments) || f.environments.all(n, self.environments.exists(e, e.name == n)))) && \
      (!has(self.network.egress) || self.network.egress.all(f, !has(f.environments) || f.environments.all(n, self.environments.exists(e, e.name == n)))))"
).message("every environment a flow names must be declared in spec.environments").field_path(".network"))]
#[x_kube(validation = Rule::new(
    "!has(self.access) || !has(self.access.grants) || self.access.grants.all(g, g.environments.all(n, self.environments.exists(e, e.name == n)))"
).message("every environment an access grant names must be declared in spec.environments").field_path(".access.grants"))]
pub struct TenantSpec {
    /// Human-readable name of the service.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// Sensitivity of the data the service handles (CLD-11, CLD-12); carried as a label on
    /// every object of the tenant.
    pub data_classification: DataClassification,

    /// Who receives security incident notices for this service (CLD-61), an e-mail address.
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub security_contact: String,

    /// The environments, each in its own namespace `<tenant>-<name>` (CLD-20, CLD-25).
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub environments: Vec<Environment>,

    /// Where the tenant's data may be stored and processed (CLD-74).
    #[serde(default)]
    pub placement: Placement,

    /// The authorised flow matrix (CLD-20, CLD-36). Everything not declared is denied.
    #[serde(default)]
    pub network: Network,

    /// How the tenant's volumes are encrypted (CLD-21, CLD-40).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// Backups and restore tests (CLD-26).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,

    /// Personal, expiring access rights (CLD-14, CLD-16, CLD-17, general rules 2.4.a and 2.4.c).
    #[serde(default)]
    pub access: Access,

    /// What happens when the tenant is deleted (CLD-47, CLD-73, CLD-76).
    #[serde(default)]
    pub deletion: Deletion,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataClassification {
    Public,
    Internal,
    Personal,
    Sensitive,
}

impl DataClassification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Personal => "personal",
            Self::Sensitive => "sensitive",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'production' || has(self.nodePool)")
    .message("a production environment must run on a dedicated node pool (CLD-25)")
    .field_path(".nodePool")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!self.name.matches('(^|-)restore(-|$)')")
    .message("environment names may not hold the word restore (restore, x-restore, restore-x, x-restore-y): it is kept for the scratch namespaces of restore tests, which must never be another environment's namespace")
    .field_path(".name"))]
pub struct Environment {
    /// DNS label; the namespace is `<tenant>-<name>`.
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    pub kind: EnvironmentKind,

    /// Nodes this environment's pods must run on. Required for production, which must run
    /// apart from development and test (CLD-25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_pool: Option<NodePool>,

    /// Ceiling on what the environment may consume, so one tenant cannot starve another (CLD-20).
    #[serde(default)]
    pub quota: Quota,

    /// Requests and limits given to containers that declare none, so that quotas can apply.
    #[serde(default)]
    pub container_defaults: ContainerDefaults,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EnvironmentKind {
    Production,
    Preproduction,
    Development,
    Test,
}

impl EnvironmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Preproduction => "preproduction",
            Self::Development => "development",
            Self::Test => "test",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodePool {
    /// Labels a node must carry to belong to the pool.
    #[schemars(length(min = 1, max = 8))]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Total CPU requests (and limits) of the environment, a Kubernetes quantity.
    #[serde(default = "default_quota_cpu")]
    #[x_kube(validation = quantity_rule())]
    pub cpu: Quantity,
    /// Total memory requests (and limits) of the environment, a Kubernetes quantity.
    #[serde(default = "default_quota_memory")]
    #[x_kube(validation = quantity_rule())]
    pub memory: Quantity,
    /// Total storage requested by the environment's volumes, a Kubernetes quantity.
    #[serde(default = "default_quota_storage")]
    #[x_kube(validation = quantity_rule())]
    pub storage: Quantity,
    #[serde(default = "default_quota_pods")]
    #[schemars(range(min = 1, max = 100000))]
    pub pods: i32,
    #[serde(default = "default_quota_pvcs")]
    #[schemars(range(min = 0, max = 10000))]
    pub persistent_volume_claims: i32,
}

/// A quantity the API server can read, and not below zero. k8s-openapi's `Quantity` is
/// int-or-string, so a bare number reaches the rule as an int.
fn quantity_rule() -> Rule {
    Rule::new("type(self) == int ? self >= 0 : isQuantity(self) && !quantity(self).isLessThan(quantity('0'))")
        .message("must be a non-negative Kubernetes quantity, such as 500m, 2 or 8Gi")
}

fn default_quota_cpu() -> Quantity {
    Quantity("4".into())
}
fn default_quota_memory() -> Quantity {
    Quantity("8Gi".into())
}
fn default_quota_storage() -> Quantity {
    Quantity("100Gi".into())
}
fn default_quota_pods() -> i32 {
    50
}
fn default_quota_pvcs() -> i32 {
    10
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            cpu: default_quota_cpu(),
            memory: default_quota_memory(),
            storage: default_quota_storage(),
            pods: default_quota_pods(),
            persistent_volume_claims: default_quota_pvcs(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefaults {
    #[serde(default = "default_request_cpu")]
    #[x_kube(validation = quantity_rule())]
    pub request_cpu: Quantity,
    #[serde(default = "default_request_memory")]
    #[x_kube(validation = quantity_rule())]
    pub request_memory: Quantity,
    #[serde(default = "default_limit_cpu")]
    #[x_kube(validation = quantity_rule())]
    pub limit_cpu: Quantity,
    #[serde(default = "default_limit_memory")]
    #[x_kube(validation = quantity_rule())]
    pub limit_memory: Quantity,
}

fn default_request_cpu() -> Quantity {
    Quantity("100m".into())
}
fn default_request_memory() -> Quantity {
    Quantity("128Mi".into())
}
fn default_limit_cpu() -> Quantity {
    Quantity("500m".into())
}
fn default_limit_memory() -> Quantity {
    Quantity("512Mi".into())
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        Self {
            request_cpu: default_request_cpu(),
            request_memory: default_request_memory(),
            limit_cpu: default_limit_cpu(),
            limit_memory: default_limit_memory(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Countries where the tenant's pods, volumes and backups may be. Defaults to the 27 EU
    /// member states; a country with an EU adequacy decision is allowed only when listed here.
    #[serde(default = "Country::eu_members")]
    #[schemars(length(min = 1, max = 64))]
    pub allowed_countries: Vec<Country>,

    /// Optional `topology.kubernetes.io/region` values narrowing the countries further.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub regions: Vec<String>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            allowed_countries: Country::eu_members(),
            regions: Vec::new(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Flows allowed into the tenant's environments.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub ingress: Vec<IngressFlow>,

    /// Flows allowed out of the tenant's environments. DNS is always allowed.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub egress: Vec<EgressFlow>,
}

/// What a flow carries, so production, administration and supervision flows stay apart (CLD-36).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowNature {
    Production,
    Administration,
    Supervision,
}

impl FlowNature {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Administration => "administration",
            Self::Supervision => "supervision",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressFlow {
    /// DNS label naming the flow; its policy is `ft-ingress-<name>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    pub nature: FlowNature,
    /// Environments the flow applies to; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub environments: Vec<String>,
    /// Pods of the environment that receive the flow; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Where the flow comes from.
    #[schemars(length(min = 1, max = 16))]
    pub from: Vec<Peer>,
    /// Ports it may reach; any port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<FlowPort>,
    /// The Service that carries the flow from outside the cluster, when it needs one of type
    /// LoadBalancer or NodePort (a public front end). Only Services declared here may be of
    /// those types in the flow's environments (CLD-36).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Exposure>,
}

/// A Service of the tenant exposed outside the cluster by a declared ingress flow.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Exposure {
    /// The Service's name in each of the flow's environments.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub service: String,
    #[serde(rename = "type")]
    pub type_: ExposureType,
}

#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum ExposureType {
    LoadBalancer,
    NodePort,
}

impl ExposureType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::NodePort => "NodePort",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.acknowledgeAnyDestination) && self.acknowledgeAnyDestination) || \
     !self.to.exists(p, has(p.cidr) && isCIDR(p.cidr) && cidr(p.cidr).prefixLength() == 0)"
).message("a cidr of prefix length 0 (0.0.0.0/0, ::/0) opens the flow to every address: set acknowledgeAnyDestination: true to accept it, and the network control reports it as a warning (CLD-20, CLD-36)")
    .field_path(".to"))]
pub struct EgressFlow {
    /// DNS label naming the flow; its policy is `ft-egress-<name>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    pub nature: FlowNature,
    /// Environments the flow applies to; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub environments: Vec<String>,
    /// Pods of the environment that may send the flow; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Where the flow goes.
    #[schemars(length(min = 1, max = 16))]
    pub to: Vec<Peer>,
    /// Ports it may reach; any port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<FlowPort>,
    /// A flow to every address: a `cidr` of prefix length 0 (`0.0.0.0/0`, `::/0`) in `to` is
    /// accepted only when this is true, and the network control reports it as a warning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acknowledge_any_destination: bool,
}

/// The other end of a flow: namespaces (and pods in them) of the cluster, or an address block.
/// Namespaces of any tenant, this one included, are never matched: environments stay apart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cidr) != has(self.namespaceSelector)")
    .message("a peer is either a namespaceSelector (optionally with a podSelector) or a cidr, not both and not neither"))]
#[x_kube(validation = Rule::new("!has(self.podSelector) || has(self.namespaceSelector)")
    .message("a podSelector needs a namespaceSelector: flows inside an environment are already allowed")
    .field_path(".podSelector"))]
#[x_kube(validation = Rule::new("!has(self.except) || has(self.cidr)")
    .message("except only narrows a cidr")
    .field_path(".except"))]
#[x_kube(validation = Rule::new(
    "!has(self.except) || !has(self.cidr) || !isCIDR(self.cidr) || \
     self.except.all(e, !isCIDR(e) || (cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))"
).message("each block of except must lie strictly inside the cidr it narrows")
    .field_path(".except"))]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// An IPv4 or IPv6 block, such as `10.20.0.0/16`. In an egress flow, a block of every
    /// address (`0.0.0.0/0`, `::/0`) needs the flow's `acknowledgeAnyDestination`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 43))]
    #[x_kube(validation = Rule::new("isCIDR(self)")
        .message("must be an IPv4 or IPv6 block, such as 10.20.0.0/16 or fd00::/8"))]
    pub cidr: Option<String>,
    /// Blocks strictly inside `cidr` that are excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 43)))]
    #[x_kube(validation = Rule::new("self.all(e, isCIDR(e))")
        .message("every block must be an IPv4 or IPv6 block, such as 10.20.1.0/24"))]
    pub except: Option<Vec<String>>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endPort) || self.endPort >= self.port")
    .message("endPort must not be below port")
    .field_path(".endPort"))]
pub struct FlowPort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = storage_parameters_rule())]
pub struct Storage {
    /// Encryption profile naming the CSI driver and how it references the tenant key: one of
    /// the catalogue compiled into the operator (`policies/encryption-profiles.yaml`).
    #[schemars(schema_with = "profile_schema")]
    pub profile: String,
    /// Where the tenant key lives (CLD-40).
    #[serde(default)]
    pub key_store: KeyStoreKind,
    /// Largest volume a single claim may request, a Kubernetes quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = quantity_rule())]
    pub max_volume_size: Option<Quantity>,
    /// The tenant's key in the provider's key management service, for the profiles whose disks
    /// the cloud encrypts (`aws-ebs`: a KMS key ARN; `gce-pd`: a Cloud KMS key; `azure-disk`:
    /// a disk encryption set id; `ceph-rbd`: the KMS id of the Ceph-CSI configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub key_reference: Option<String>,
    /// Further parameters of the storage class (pool, cluster id, disk type). The parameters
    /// the profile sets carry the encryption: they are the profile's, and refused here (CLD-21).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub parameters: BTreeMap<String, String>,
}

/// The profile is one of the embedded catalogue's, listed in the schema so that the API server
/// names the supported values when it refuses another.
fn profile_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names = crate::encryption::Profiles::embedded()
        .map(|p| p.names().into_iter().map(String::from).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut schema = schemars::json_schema!({ "type": "string", "minLength": 1, "maxLength": 63 });
    if !names.is_empty() {
        schema.insert("enum".into(), names.into());
    }
    schema
}

/// One rule from the catalogue: no parameter the chosen profile sets, since those carry the
/// encryption and the profile's value would silently win over the tenant's (CLD-21). The
/// catalogue's keys are looked up in the tenant's parameters, not the other way round, so that
/// the cost does not grow with the tenant's keys.
fn storage_parameters_rule() -> Rule {
    let profiles = crate::encryption::Profiles::embedded()
        .map(|catalogue| catalogue.profiles)
        .unwrap_or_default();
    let keys = profiles
        .iter()
        .rev()
        .fold("[]".to_string(), |otherwise, p| {
            let keys: Vec<String> = p.parameters.keys().map(|k| cel_string(k)).collect();
            format!(
                "self.profile == {} ? [{}] : {otherwise}",
                cel_string(&p.name),
                keys.join(", ")
            )
        });
    Rule::new(format!(
        "!has(self.parameters) || !({keys}).exists(k, k in self.parameters)"
    ))
    .message(Message::Expression(format!(
        "'spec.storage.parameters.' + ({keys}).filter(k, k in self.parameters)[0] + ' is set by the ' + self.profile + ' profile, whose parameters carry the encryption and cannot be overridden (CLD-21)'"
    )))
    .field_path(".parameters")
    .reason(Reason::FieldValueForbidden)
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyStoreKind {
    /// A Secret in the operator's own namespace, which tenants cannot read.
    #[default]
    Kubernetes,
    /// An external Vault or OpenBao transit engine: not available in this version, refused
    /// with a message naming the field.
    Transit,
}

/// One field of a five-field cron expression: `*` or values, ranges and lists, each with an
/// optional step.
macro_rules! cron_field {
    ($value:literal) => {
        concat!(
            r"(\*|(",
            $value,
            r")(-(",
            $value,
            r"))?)(/[1-9][0-9]?)?(,(\*|(",
            $value,
            r")(-(",
            $value,
            r"))?)(/[1-9][0-9]?)?)*"
        )
    };
}

/// The cron expressions Velero and the operator both understand: five fields (minute, hour, day
/// of month, month, day of week) with their value ranges, or a shorthand such as `@daily`. The
/// API server refuses anything else.
pub const CRON_PATTERN: &str = concat!(
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|",
    cron_field!(r"[0-5]?[0-9]"),
    " ",
    cron_field!(r"[01]?[0-9]|2[0-3]"),
    " ",
    cron_field!(r"0?[1-9]|[12][0-9]|3[01]"),
    " ",
    cron_field!(r"0?[1-9]|1[0-2]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"),
    " ",
    cron_field!(r"[0-7]|SUN|MON|TUE|WED|THU|FRI|SAT"),
    ")$"
);

/// A Go duration in hours, minutes and seconds, as Velero's `ttl` takes it: `720h`, `36h30m`.
pub const RETENTION_PATTERN: &str = r"^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// When each environment is backed up: a five-field cron expression in UTC, such as
    /// `0 2 * * *`, or `@daily`. One Velero Schedule per environment.
    #[schemars(length(min = 6, max = 100), regex(pattern = CRON_PATTERN))]
    pub schedule: String,
    /// How long each backup is kept, such as `720h` (30 days). At least one hour.
    #[schemars(length(min = 2, max = 20), regex(pattern = RETENTION_PATTERN))]
    #[x_kube(validation = Rule::new("self != '' && duration(self) >= duration('1h')")
        .message("spec.backup.retention must be a duration of at least 1h, such as 720h"))]
    pub retention: String,
    /// Name of the Velero BackupStorageLocation the backups go to. It must be in an allowed
    /// country and outside the region the environments run in (CLD-26, CLD-74).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub storage_location: String,
    /// When each environment's latest backup is restored into a scratch namespace and checked,
    /// a cron expression like `schedule`, such as `0 4 * * 0` (CLD-26).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 6, max = 100), regex(pattern = CRON_PATTERN))]
    pub restore_test_schedule: Option<String>,
}

/// Who may act on the tenant's environments, and what happens to rights nobody declared.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Each becomes one RoleBinding per environment while it is in force.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub grants: Vec<AccessGrant>,
    /// Delete RoleBindings made by hand in the tenant's namespaces. By default they are only
    /// reported, as a failure of the access control (CLD-14).
    #[serde(default)]
    pub prune_undeclared: bool,
}

/// A personal right on some environments of the tenant, with an expiry.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrant {
    pub subject: Subject,
    pub role: Role,
    /// Environments the right applies to.
    #[schemars(length(min = 1, max = 8))]
    pub environments: Vec<String>,
    /// When the right ends, normally the contract end (general rule 2.4.c). Mandatory.
    pub expires: Time,
    /// When the right was last reviewed (CLD-17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<Time>,
    /// A suspended right keeps its declaration but grants nothing (CLD-16).
    #[serde(default)]
    pub suspended: bool,
}

/// A named person or group of people: never a shared or technical identity (CLD-14).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.name.startsWith('system:') && !self.name.contains('*')")
    .message("subjects must name a person or a group of people: system identities, service accounts and wildcards are refused (CLD-14)")
    .field_path(".name")
    .reason(Reason::FieldValueForbidden))]
pub struct Subject {
    pub kind: SubjectKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum SubjectKind {
    User,
    Group,
}

/// What a grant lets its holder do (general rule 2.4.a: read, update and execute are told apart).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read, update and execute, and manage the environment's service accounts: privileged (CLD-16).
    Admin,
    /// Read, update and execute outside production; read-only in production.
    Developer,
    /// Read only, secrets excepted.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Developer => "developer",
            Self::Viewer => "viewer",
        }
    }
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "User",
            Self::Group => "Group",
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    #[serde(default)]
    pub policy: DeletionPolicy,
    /// Export every environment before anything is destroyed (CLD-73).
    #[serde(default)]
    pub final_export: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Destroy the tenant key, then everything the tenant owned (CLD-47, CLD-76).
    #[default]
    CryptoShred,
    /// Leave the namespaces and their data; remove only the operator's own objects.
    Retain,
}

/// What the operator last observed and did for the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The generation of the spec these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded` and `Compliant`, per the Kubernetes API conventions.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The environments' names, comma-separated, for `kubectl get ftt`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environments: String,
    /// The tenant's namespaces, one per environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The rights in force: who holds which role on which environments, until when. The list
    /// of authorised people handed over on request (general rule 2.4.a).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub grants: Vec<GrantInForce>,
    /// A fingerprint of the tenant's key (never the key): the first 16 hex digits of the
    /// SHA-256 of the key, prefixed `sha256:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// The crypto-shredding in progress, once the tenant is being deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shredding: Option<ShreddingStatus>,
    /// The latest export asked for with the `hosting.francetravail.fr/export` annotation
    /// (CLD-73): where it goes and how far it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportStatus>,
    /// Environments gone from the spec whose namespace the tenant still owns: each is held
    /// until its removal is confirmed, then exported, deleted and recorded, step by step
    /// (CLD-47, CLD-73, CLD-76).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub removals: Vec<EnvironmentRemoval>,
}

/// Where the removal of one environment stands. Each step's time is set once, when it is done;
/// the operator resumes from the first step without one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRemoval {
    pub environment: String,
    pub namespace: String,
    /// The step in progress: `Held` (until confirmed), `FinalExport`, `DeleteNamespace`,
    /// `WriteRecord` or `Done`.
    pub step: String,
    /// What the step waits for, if anything.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The environment's kind, as its namespace was labelled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// When the operator first found the environment gone from the spec and held its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<Time>,
    /// Who set the confirmation annotation, as the API server recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub confirmed_by: String,
    /// When the namespace's final export completed (CLD-73).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_export_at: Option<Time>,
    /// The final export's Velero Backup, and where it is kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub exports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_deleted_at: Option<Time>,
    /// The removal record, `ConfigMap <operator namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// An export of every environment, requested by annotation or taken before shredding (CLD-73).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// The annotation's value that asked for it.
    pub requested: String,
    /// `Pending`, `InProgress`, `Completed`, `Failed`, or `Blocked` (with why).
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Where the export is kept: the Velero location and its bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// One Velero Backup per environment, `<velero namespace>/<name>: <phase>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub backups: Vec<String>,
}

/// Where a tenant's deletion stands, step by step (CLD-47, CLD-76). Each step's time is set
/// once, when it is done; the operator resumes from the first step without one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShreddingStatus {
    /// The step in progress: `FinalExport`, `DestroyKey`, `DeleteNamespaces`,
    /// `DeleteClusterObjects`, `DeleteBackups`, `WriteRecord` or `Done`.
    pub step: String,
    /// What the step waits for, if anything.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The fingerprint of the key that was destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_destroyed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces_deleted_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_objects_deleted_at: Option<Time>,
    /// The cluster-scoped objects and RoleBindings deleted so far, as `Kind/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub deleted: Vec<String>,
    /// When the last of the tenant's Velero backups and exports was gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups_deleted_at: Option<Time>,
    /// The Velero backups deleted, as `Backup <velero namespace>/<name>`, or why there was none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub backups_deleted: Vec<String>,
    /// The shredding record, `ConfigMap <operator namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// When the final export completed, before anything was destroyed (CLD-73).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_export_at: Option<Time>,
    /// The final export's Velero Backups, and where they are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub exports: Vec<String>,
}

/// One right in force, as listed in the tenant's status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantInForce {
    pub subject: Subject,
    pub role: Role,
    #[schemars(length(max = 8))]
    pub environments: Vec<String>,
    pub expires: Time,
}
