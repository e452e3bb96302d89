//! Network flows (CLD-20, CLD-36): per environment, a default deny both ways, DNS, the
//! environment talking to itself, and one NetworkPolicy per declared flow. Nothing else.
//!
//! Checked by `controls/network.rs` (NET-1, NET-2).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    Environment, FlowNature, FlowPort, FranceTravailTenant, Peer, annotations, labels,
};
use crate::meta::{
    control_annotation, environment_policy_kind, environment_policy_ref, fixed_meta, object_meta,
    refuse_for_tenant, tenant_namespace_selector,
};
use crate::settings::BuildSettings;
use crate::validate::parse_cidr;

pub const DEFAULT_DENY: &str = "ft-default-deny";
pub const ALLOW_DNS: &str = "ft-allow-dns";
pub const ALLOW_SAME_NAMESPACE: &str = "ft-allow-same-namespace";

fn policy(
    name: &str,
    ns: &str,
    labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: NetworkPolicySpec,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(name, Some(ns), labels, annotations),
        spec: Some(spec),
    }
}

pub fn network_policies(
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

/// Whether `inner` is a smaller block inside `outer`: only those can be an `except`.
fn strictly_inside(inner: &str, outer: &str) -> bool {
    match (parse_cidr(inner), parse_cidr(outer)) {
        (Some(i), Some(o)) => crate::validate::strictly_inside(i, o),
        _ => false,
    }
}

/// The policy that keeps tenant Services inside the flow matrix, and its binding.
pub const SERVICES_POLICY: &str = "ft-services";

/// Refuses, in every tenant namespace, a Service that would carry a flow no NetworkPolicy and
/// no declared flow covers (CLD-36): `externalIPs`, an `ExternalName`, and a `LoadBalancer` or
/// `NodePort` that no ingress flow of the environment declares (`expose`, listed in its
/// EnvironmentPolicy).
pub fn services_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let refuse = |expression: &str, message: &str| {
        refuse_for_tenant(
            expression,
            &format!("': Service ' + object.metadata.name + {message}"),
        )
    };
    let kind = "(has(object.spec.type) ? object.spec.type : 'ClusterIP')";
    (
        ValidatingAdmissionPolicy {
            metadata: fixed_meta(SERVICES_POLICY),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                param_kind: Some(environment_policy_kind()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec![String::new()]),
                        api_versions: Some(vec!["v1".into()]),
                        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                        resources: Some(vec!["services".into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                validations: Some(vec![
                    refuse(
                        "!has(object.spec.externalIPs) || size(object.spec.externalIPs) == 0",
                        "': spec.externalIPs routes outside traffic to the tenant past every NetworkPolicy and declared flow (CLD-36)'",
                    ),
                    refuse(
                        &format!("{kind} != 'ExternalName'"),
                        "': type ExternalName points the tenant at a name outside the flow matrix; declare an egress flow and use its address (CLD-36)'",
                    ),
                    refuse(
                        &format!(
                            "!({kind} in ['LoadBalancer', 'NodePort']) || (has(params.spec.exposedServices) && params.spec.exposedServices.exists(e, e.name == object.metadata.name && e.type == {kind}))"
                        ),
                        &format!(
                            "': type ' + {kind} + ' exposes it outside the cluster, and no ingress flow of environment ' + params.spec.environment + ' declares it: add expose: {{service: ' + object.metadata.name + ', type: ' + {kind} + '}} to the ingress flow that carries it (CLD-36)'"
                        ),
                    ),
                ]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: fixed_meta(SERVICES_POLICY),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: SERVICES_POLICY.into(),
                param_ref: Some(environment_policy_ref()),
                match_resources: Some(tenant_namespace_selector()),
                validation_actions: vec!["Deny".into()],
            },
        },
    )
}
