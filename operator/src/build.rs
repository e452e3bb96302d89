//! Pure builders: a validated tenant in, every object the operator wants out. No client, no
//! clock, no I/O, so `plan` shows exactly what `run` applies and every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use jiff::Timestamp;
use k8s_openapi::api::rbac::v1::RoleBinding;

use k8s_openapi::api::storage::v1::StorageClass;

use crate::access::role_bindings;
use crate::admission::{Confinement, placement_policies};
use crate::api::{
    ComplianceReport, Environment, FlowNature, FlowPort, FranceTravailTenant, Peer, ReportSpec,
    annotations, labels,
};
use crate::backup::{DEFAULT_VELERO_NAMESPACE, schedules};
use crate::encryption::{Profiles, claims_policy, storage_class};
use crate::placement::placements;
use crate::validate::{cidr_contains, parse_cidr};
use crate::velero::Schedule;

pub const DEFAULT_DENY: &str = "ft-default-deny";
pub const ALLOW_DNS: &str = "ft-allow-dns";
pub const ALLOW_SAME_NAMESPACE: &str = "ft-allow-same-namespace";
pub const QUOTA: &str = "ft-quota";
pub const LIMITS: &str = "ft-limits";

/// Where the cluster's DNS service runs, the one destination every environment may always reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEndpoint {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for DnsEndpoint {
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
        }
    }
}

/// Cluster facts and operator settings the builders need besides the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// How each CSI driver's class references the tenant key.
    pub profiles: Profiles,
    /// The operator's namespace, where tenant keys are kept.
    pub key_namespace: String,
    pub dns: DnsEndpoint,
    /// The cluster's pod and service ranges. Some network plugins match `ipBlock` against pod
    /// addresses, so these ranges are carved out of every declared block: a `cidr` flow can
    /// never reach another tenant's pods.
    pub cluster_networks: Vec<String>,
    /// How new pods are confined: told by discovery at start-up.
    pub confinement: Confinement,
    /// Where Velero runs: its Schedules, Backups and Restores for tenants go there.
    pub velero_namespace: String,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            // The embedded catalogue loads: `tests/encryption.rs` fails otherwise.
            profiles: Profiles::embedded().unwrap_or_else(|_| Profiles { profiles: vec![] }),
            key_namespace: "ft-system".into(),
            dns: DnsEndpoint::default(),
            cluster_networks: Vec::new(),
            confinement: Confinement::default(),
            velero_namespace: DEFAULT_VELERO_NAMESPACE.into(),
        }
    }
}

/// Every object the operator wants for one tenant. `apply` destructures it field by field, so
/// a kind added here and not applied there fails to compile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub namespaces: Vec<Namespace>,
    pub network_policies: Vec<NetworkPolicy>,
    pub resource_quotas: Vec<ResourceQuota>,
    pub limit_ranges: Vec<LimitRange>,
    /// The access grants in force, one per grant per environment (see `with_access`).
    pub role_bindings: Vec<RoleBinding>,
    /// The tenant's encrypted class (CLD-21), when it declares storage.
    pub storage_classes: Vec<StorageClass>,
    /// The tenant's one report; its status is written by the evaluator, not here.
    pub compliance_reports: Vec<ComplianceReport>,
    /// Placement admission, per environment (see `with_placement`).
    pub validating_admission_policies: Vec<ValidatingAdmissionPolicy>,
    pub validating_admission_policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    pub mutating_admission_policies: Vec<MutatingAdmissionPolicy>,
    pub mutating_admission_policy_bindings: Vec<MutatingAdmissionPolicyBinding>,
    /// The Velero Schedules, one per environment (see `with_backups`). `None` while the
    /// cluster is not known to serve Velero: its objects are then left as they are.
    pub schedules: Option<Vec<Schedule>>,
}

impl Desired {
    /// Every object, in the order they are applied, as plain JSON (for `plan`).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        fn push<T: Serialize>(
            out: &mut Vec<serde_json::Value>,
            items: &[T],
        ) -> Result<(), serde_json::Error> {
            for item in items {
                out.push(serde_json::to_value(item)?);
            }
            Ok(())
        }
        let Desired {
            namespaces,
            network_policies,
            resource_quotas,
            limit_ranges,
            role_bindings,
            storage_classes,
            compliance_reports,
            validating_admission_policies,
            validating_admission_policy_bindings,
            mutating_admission_policies,
            mutating_admission_policy_bindings,
            schedules,
        } = self;
        let mut out = Vec::new();
        push(&mut out, validating_admission_policies)?;
        push(&mut out, validating_admission_policy_bindings)?;
        push(&mut out, mutating_admission_policies)?;
        push(&mut out, mutating_admission_policy_bindings)?;
        push(&mut out, namespaces)?;
        push(&mut out, network_policies)?;
        push(&mut out, resource_quotas)?;
        push(&mut out, limit_ranges)?;
        push(&mut out, role_bindings)?;
        push(&mut out, storage_classes)?;
        push(&mut out, compliance_reports)?;
        push(&mut out, schedules.as_deref().unwrap_or_default())?;
        Ok(out)
    }
}

pub fn namespace_name(tenant: &str, environment: &str) -> String {
    format!("{tenant}-{environment}")
}

/// The namespaces of every environment the tenant declares.
pub fn tenant_namespaces(tenant: &FranceTravailTenant) -> BTreeSet<String> {
    let name = tenant.name_any();
    tenant
        .spec
        .environments
        .iter()
        .map(|e| namespace_name(&name, &e.name))
        .collect()
}

/// Builds everything a tenant needs. The tenant must have passed `validate`.
pub fn build(tenant: &FranceTravailTenant, settings: &BuildSettings) -> Desired {
    let mut desired = Desired::default();
    for env in &tenant.spec.environments {
        let ns = namespace_name(&tenant.name_any(), &env.name);
        let labels = child_labels(tenant, env);
        desired.namespaces.push(build_namespace(&ns, &labels));
        desired
            .network_policies
            .extend(build_network_policies(tenant, env, &ns, &labels, settings));
        desired
            .resource_quotas
            .push(build_resource_quota(env, &ns, &labels));
        desired
            .limit_ranges
            .push(build_limit_range(tenant, env, &ns, &labels));
    }
    desired.compliance_reports.push(build_report(tenant));
    desired.storage_classes.extend(storage_class(
        tenant,
        &settings.profiles,
        &settings.key_namespace,
    ));
    // The claims policy is owned by the tenant: offline, with no uid, it has no owner yet.
    let (policy, binding) = claims_policy(tenant);
    desired.validating_admission_policies.push(policy);
    desired.validating_admission_policy_bindings.push(binding);
    desired
}

/// Adds the placement admission policies of every environment (CLD-74, CLD-25), confining
/// pods to `regions`: the region values of the cluster's nodes in allowed countries, a cluster
/// fact, hence apart from `build`. Owned by the tenant, so they go when it goes.
pub fn with_placement(
    mut desired: Desired,
    tenant: &FranceTravailTenant,
    regions: &BTreeSet<String>,
    confinement: Confinement,
) -> Desired {
    let owner = tenant.controller_owner_ref(&()).map(|o| vec![o]);
    for placement in placements(tenant, regions) {
        let ns = namespace_name(&tenant.name_any(), &placement.environment);
        let Some(env) = tenant
            .spec
            .environments
            .iter()
            .find(|e| e.name == placement.environment)
        else {
            continue;
        };
        let labels = child_labels(tenant, env);
        let policies = placement_policies(&placement, &ns, &labels, confinement);
        let (mut policy, mut binding) = policies.validating;
        policy.metadata.owner_references = owner.clone();
        binding.metadata.owner_references = owner.clone();
        desired.validating_admission_policies.push(policy);
        desired.validating_admission_policy_bindings.push(binding);
        if let Some((mut policy, mut binding)) = policies.mutating {
            policy.metadata.owner_references = owner.clone();
            binding.metadata.owner_references = owner.clone();
            desired.mutating_admission_policies.push(policy);
            desired.mutating_admission_policy_bindings.push(binding);
        }
    }
    desired
}

/// Adds the RoleBindings of the access grants in force at `now`: time, like the cluster's
/// regions, is an input here, so the builders stay pure.
pub fn with_access(mut desired: Desired, tenant: &FranceTravailTenant, now: Timestamp) -> Desired {
    desired.role_bindings = role_bindings(tenant, now);
    desired
}

/// Adds the tenant's Velero Schedules, when the cluster serves Velero (`engine`: a cluster
/// fact, like the regions). With `engine` unknown, Velero's objects are left untouched.
pub fn with_backups(
    mut desired: Desired,
    tenant: &FranceTravailTenant,
    settings: &BuildSettings,
    engine: Option<bool>,
) -> Desired {
    desired.schedules = match engine {
        Some(true) => Some(schedules(tenant, &settings.velero_namespace)),
        // Velero is gone: nothing of it is left to apply or to prune.
        Some(false) => Some(Vec::new()),
        None => None,
    };
    desired
}

/// The report is named like the tenant and owned by it, so it goes when the tenant goes. Offline
/// (`plan`) the tenant has no uid yet, hence no owner reference.
fn build_report(tenant: &FranceTravailTenant) -> ComplianceReport {
    let labels = BTreeMap::from([
        (labels::TENANT.into(), tenant.name_any()),
        (
            labels::DATA_CLASSIFICATION.into(),
            tenant.spec.data_classification.as_str().into(),
        ),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
    ]);
    let mut report = ComplianceReport::new(
        &tenant.name_any(),
        ReportSpec {
            tenant: tenant.name_any(),
        },
    );
    report.metadata.labels = Some(labels);
    report.metadata.owner_references = tenant.controller_owner_ref(&()).map(|o| vec![o]);
    report
}

/// The labels every child of an environment carries: who owns it and how sensitive it is.
pub fn child_labels(tenant: &FranceTravailTenant, env: &Environment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::TENANT.into(), tenant.name_any()),
        (labels::ENVIRONMENT.into(), env.name.clone()),
        (labels::ENVIRONMENT_KIND.into(), env.kind.as_str().into()),
        (
            labels::DATA_CLASSIFICATION.into(),
            tenant.spec.data_classification.as_str().into(),
        ),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
    ])
}

fn meta(
    name: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels.clone()),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

fn build_namespace(name: &str, labels: &BTreeMap<String, String>) -> Namespace {
    let mut labels = labels.clone();
    // Pod Security Admission, `restricted` in all three modes (CLD-20).
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    Namespace {
        metadata: meta(name, None, &labels, BTreeMap::new()),
        ..Default::default()
    }
}

fn policy(
    name: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: NetworkPolicySpec,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(name, Some(ns), labels, annotations),
        spec: Some(spec),
    }
}

fn control_annotation(controls: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(annotations::CONTROL.into(), controls.into())])
}

fn build_network_policies(
    tenant: &FranceTravailTenant,
    env: &Environment,
    ns: &str,
    labels: &BTreeMap<String, String>,
    settings: &BuildSettings,
) -> Vec<NetworkPolicy> {
    let all_pods = LabelSelector::default();
    let mut policies = vec![
        // Everything not allowed below is denied, both ways (CLD-20, CLD-36).
        policy(
            DEFAULT_DENY,
            ns,
            labels,
            control_annotation("CLD-20,CLD-36"),
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![]),
                egress: Some(vec![]),
            },
        ),
        policy(
            ALLOW_DNS,
            ns,
            labels,
            control_annotation("CLD-36"),
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(match_labels([(
                            "kubernetes.io/metadata.name",
                            settings.dns.namespace.as_str(),
                        )])),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(settings.dns.pod_labels.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(
                        ["UDP", "TCP"]
                            .into_iter()
                            .map(|protocol| NetworkPolicyPort {
                                port: Some(IntOrString::Int(53)),
                                protocol: Some(protocol.into()),
                                end_port: None,
                            })
                            .collect(),
                    ),
                }]),
                ingress: None,
            },
        ),
        // A peer with only a podSelector means this namespace: the environment talks to itself.
        policy(
            ALLOW_SAME_NAMESPACE,
            ns,
            labels,
            control_annotation("CLD-20"),
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![same_namespace_peer()]),
                    ports: None,
                }]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![same_namespace_peer()]),
                    ports: None,
                }]),
            },
        ),
    ];

    let applies =
        |environments: &[String]| environments.is_empty() || environments.contains(&env.name);
    let network = &tenant.spec.network;
    for flow in network.ingress.iter().filter(|f| applies(&f.environments)) {
        policies.push(policy(
            &format!("ft-ingress-{}", flow.name),
            ns,
            &flow_labels(labels, flow.nature),
            flow_annotations("ingress", &flow.name, flow.nature),
            NetworkPolicySpec {
                pod_selector: Some(flow.pod_selector.clone().unwrap_or_default()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(flow.from.iter().map(|p| peer(p, settings)).collect()),
                    ports: ports(&flow.ports),
                }]),
                egress: None,
            },
        ));
    }
    for flow in network.egress.iter().filter(|f| applies(&f.environments)) {
        policies.push(policy(
            &format!("ft-egress-{}", flow.name),
            ns,
            &flow_labels(labels, flow.nature),
            flow_annotations("egress", &flow.name, flow.nature),
            NetworkPolicySpec {
                pod_selector: Some(flow.pod_selector.clone().unwrap_or_default()),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(flow.to.iter().map(|p| peer(p, settings)).collect()),
                    ports: ports(&flow.ports),
                }]),
                ingress: None,
            },
        ));
    }
    policies
}

fn same_namespace_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    }
}

fn match_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn flow_labels(labels: &BTreeMap<String, String>, nature: FlowNature) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(labels::FLOW_NATURE.into(), nature.as_str().into());
    labels
}

fn flow_annotations(direction: &str, name: &str, nature: FlowNature) -> BTreeMap<String, String> {
    let mut a = control_annotation("CLD-20,CLD-36");
    a.insert(
        annotations::FLOW.into(),
        format!("{direction}/{name} ({})", nature.as_str()),
    );
    a
}

/// Renders a declared peer. Namespace selectors never match a tenant namespace, this tenant's
/// other environments included: no flow between environments or tenants can be declared.
/// Address blocks get the cluster's own networks carved out for the same reason.
fn peer(p: &Peer, settings: &BuildSettings) -> NetworkPolicyPeer {
    if let Some(cidr) = &p.cidr {
        let mut except = p.except.clone().unwrap_or_default();
        for network in &settings.cluster_networks {
            if !except.contains(network) && strictly_inside(network, cidr) {
                except.push(network.clone());
            }
        }
        return NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: (!except.is_empty()).then_some(except),
            }),
            ..Default::default()
        };
    }
    let mut namespaces = p.namespace_selector.clone().unwrap_or_default();
    namespaces
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: labels::TENANT.into(),
            operator: "DoesNotExist".into(),
            values: None,
        });
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: p.pod_selector.clone(),
        ip_block: None,
    }
}

fn ports(ports: &[FlowPort]) -> Option<Vec<NetworkPolicyPort>> {
    (!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(p.port)),
                end_port: p.end_port,
                protocol: Some(p.protocol.as_str().into()),
            })
            .collect()
    })
}

fn build_resource_quota(
    env: &Environment,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> ResourceQuota {
    let q = &env.quota;
    let hard = BTreeMap::from([
        ("requests.cpu".to_string(), q.cpu.clone()),
        ("limits.cpu".to_string(), q.cpu.clone()),
        ("requests.memory".to_string(), q.memory.clone()),
        ("limits.memory".to_string(), q.memory.clone()),
        ("requests.storage".to_string(), q.storage.clone()),
        ("pods".to_string(), Quantity(q.pods.to_string())),
        (
            "persistentvolumeclaims".to_string(),
            Quantity(q.persistent_volume_claims.to_string()),
        ),
    ]);
    ResourceQuota {
        metadata: meta(QUOTA, Some(ns), labels, control_annotation("CLD-20")),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    }
}

fn build_limit_range(
    tenant: &FranceTravailTenant,
    env: &Environment,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> LimitRange {
    let d = &env.container_defaults;
    let mut limits = vec![LimitRangeItem {
        type_: "Container".into(),
        default: Some(BTreeMap::from([
            ("cpu".into(), d.limit_cpu.clone()),
            ("memory".into(), d.limit_memory.clone()),
        ])),
        default_request: Some(BTreeMap::from([
            ("cpu".into(), d.request_cpu.clone()),
            ("memory".into(), d.request_memory.clone()),
        ])),
        ..Default::default()
    }];
    if let Some(max) = tenant
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.max_volume_size.clone())
    {
        limits.push(LimitRangeItem {
            type_: "PersistentVolumeClaim".into(),
            max: Some(BTreeMap::from([("storage".into(), max)])),
            ..Default::default()
        });
    }
    LimitRange {
        metadata: meta(LIMITS, Some(ns), labels, control_annotation("CLD-20")),
        spec: Some(LimitRangeSpec { limits }),
    }
}

/// Whether `inner` is a smaller block inside `outer`: only those can be an `except`.
fn strictly_inside(inner: &str, outer: &str) -> bool {
    match (parse_cidr(inner), parse_cidr(outer)) {
        (Some(i), Some(o)) => i.1 > o.1 && cidr_contains(o, i),
        _ => false,
    }
}
