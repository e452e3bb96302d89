//! The builders, from YAML fixtures: names, labels, policy rules, quotas, and the guarantee
//! that no declared flow can reach another environment or another tenant.

use crate::common;

use std::collections::BTreeMap;

use common::{selects, tenant};

/// What the operator applies for `t` with these settings, at a fixed instant.
fn build(t: &ft_core::api::FranceTravailTenant, settings: &BuildSettings) -> Desired {
    common::desired_with(t, settings, None, jiff::Timestamp::UNIX_EPOCH)
}
use ft_core::desired::Desired;
use ft_core::settings::BuildSettings;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

fn desired(fixture: &str) -> Desired {
    build(&tenant(fixture), &BuildSettings::default())
}

fn policy<'a>(d: &'a Desired, ns: &str, name: &str) -> &'a NetworkPolicy {
    d.network_policies
        .iter()
        .find(|p| p.namespace().as_deref() == Some(ns) && p.name_any() == name)
        .unwrap_or_else(|| panic!("no policy {ns}/{name}"))
}

fn policy_names(d: &Desired, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = d
        .network_policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

fn peers(p: &NetworkPolicy) -> Vec<NetworkPolicyPeer> {
    let spec = p.spec.clone().unwrap_or_default();
    let from = spec
        .ingress
        .into_iter()
        .flatten()
        .flat_map(|r| r.from.into_iter().flatten());
    let to = spec
        .egress
        .into_iter()
        .flatten()
        .flat_map(|r| r.to.into_iter().flatten());
    from.chain(to).collect()
}

#[test]
fn one_namespace_per_environment_labelled_and_restricted() {
    let d = desired("examples/tenant.yaml");
    let names: Vec<String> = d.namespaces.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["offres-emploi-prod", "offres-emploi-dev"]);

    let prod = d.namespaces[0].labels();
    let expected = [
        ("hosting.francetravail.fr/tenant", "offres-emploi"),
        ("hosting.francetravail.fr/environment", "prod"),
        ("hosting.francetravail.fr/environment-kind", "production"),
        ("hosting.francetravail.fr/data-classification", "personal"),
        ("app.kubernetes.io/managed-by", "ft-operator"),
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/audit", "restricted"),
        ("pod-security.kubernetes.io/warn", "restricted"),
    ];
    for (key, value) in expected {
        assert_eq!(
            prod.get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    assert_eq!(
        d.namespaces[1].labels()["hosting.francetravail.fr/environment-kind"],
        "development"
    );
}

#[test]
fn every_child_carries_the_tenant_labels() {
    let d = desired("examples/tenant.yaml");
    let metas = d
        .network_policies
        .iter()
        .map(|o| o.labels())
        .chain(d.resource_quotas.iter().map(|o| o.labels()))
        .chain(d.limit_ranges.iter().map(|o| o.labels()));
    let mut count = 0;
    for labels in metas {
        count += 1;
        assert_eq!(labels["hosting.francetravail.fr/tenant"], "offres-emploi");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ft-operator");
        assert_eq!(
            labels["hosting.francetravail.fr/data-classification"],
            "personal"
        );
    }
    assert_eq!(count, 12 + 2 + 2);
}

#[test]
fn default_deny_both_ways_in_every_environment() {
    let d = desired("examples/tenant.yaml");
    for ns in ["offres-emploi-prod", "offres-emploi-dev"] {
        let spec = policy(&d, ns, "ft-default-deny").spec.clone().unwrap();
        assert_eq!(
            spec.pod_selector,
            Some(Default::default()),
            "selects every pod"
        );
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".into(), "Egress".into()])
        );
        assert!(spec.ingress.unwrap_or_default().is_empty());
        assert!(spec.egress.unwrap_or_default().is_empty());
    }
}

#[test]
fn dns_is_always_allowed_and_only_to_the_cluster_dns() {
    let d = desired("examples/minimal-tenant.yaml");
    let spec = policy(&d, "sandbox-dev", "ft-allow-dns")
        .spec
        .clone()
        .unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Egress".into()]));
    let rules = spec.egress.unwrap();
    assert_eq!(rules.len(), 1);
    let peer = &rules[0].to.as_ref().unwrap()[0];
    let kube_system = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "kube-system".to_string(),
    )]);
    assert!(selects(
        peer.namespace_selector.as_ref().unwrap(),
        &kube_system
    ));
    let dns_pod = BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]);
    assert!(selects(peer.pod_selector.as_ref().unwrap(), &dns_pod));
    let ports: Vec<(IntOrString, String)> = rules[0]
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port.clone().unwrap(), p.protocol.clone().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            (IntOrString::Int(53), "UDP".to_string()),
            (IntOrString::Int(53), "TCP".to_string())
        ]
    );
}

#[test]
fn pods_of_an_environment_reach_each_other_and_nothing_else_by_default() {
    let d = desired("examples/minimal-tenant.yaml");
    assert_eq!(
        policy_names(&d, "sandbox-dev"),
        ["ft-allow-dns", "ft-allow-same-namespace", "ft-default-deny"]
    );
    let same = policy(&d, "sandbox-dev", "ft-allow-same-namespace");
    for peer in peers(same) {
        // A peer with only a podSelector is confined to the policy's own namespace.
        assert!(peer.namespace_selector.is_none() && peer.ip_block.is_none());
        assert_eq!(peer.pod_selector, Some(Default::default()));
    }
}

#[test]
fn declared_flows_become_policies_in_the_environments_they_name() {
    let d = desired("examples/tenant.yaml");
    assert_eq!(
        policy_names(&d, "offres-emploi-prod"),
        [
            "ft-allow-dns",
            "ft-allow-same-namespace",
            "ft-default-deny",
            "ft-egress-database",
            "ft-ingress-metrics",
            "ft-ingress-web"
        ]
    );
    assert_eq!(
        policy_names(&d, "offres-emploi-dev"),
        [
            "ft-allow-dns",
            "ft-allow-same-namespace",
            "ft-default-deny",
            "ft-egress-database-dev",
            "ft-ingress-metrics",
            "ft-ingress-web"
        ]
    );

    let web = policy(&d, "offres-emploi-prod", "ft-ingress-web");
    assert_eq!(
        web.labels()["hosting.francetravail.fr/flow-nature"],
        "production"
    );
    assert_eq!(
        web.annotations()["hosting.francetravail.fr/flow"],
        "ingress/web (production)"
    );
    let spec = web.spec.clone().unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".into()]));
    let frontend = BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "frontend".to_string(),
    )]);
    assert!(selects(spec.pod_selector.as_ref().unwrap(), &frontend));
    let rule = &spec.ingress.unwrap()[0];
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(8080))
    );
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );
    let nginx_ns = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "ingress-nginx".to_string(),
    )]);
    assert!(selects(
        rule.from.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap(),
        &nginx_ns
    ));

    let metrics = policy(&d, "offres-emploi-dev", "ft-ingress-metrics");
    assert_eq!(
        metrics.labels()["hosting.francetravail.fr/flow-nature"],
        "supervision"
    );

    let db = policy(&d, "offres-emploi-prod", "ft-egress-database")
        .spec
        .clone()
        .unwrap();
    assert_eq!(db.policy_types, Some(vec!["Egress".into()]));
    let rule = &db.egress.unwrap()[0];
    assert_eq!(
        rule.to.as_ref().unwrap()[0].ip_block.as_ref().unwrap().cidr,
        "10.20.0.0/16"
    );
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(5432))
    );
}

#[test]
fn no_flow_reaches_another_environment_or_another_tenant() {
    let hostile = tenant("core/tests/fixtures/hostile-flows.yaml");
    let d = build(&hostile, &BuildSettings::default());
    let tenant_namespaces = [
        ("curieux", "dev"),
        ("curieux", "prod"),
        ("voisin", "prod"),
        ("offres-emploi", "dev"),
    ]
    .map(|(tenant, env)| {
        BTreeMap::from([
            (
                "kubernetes.io/metadata.name".to_string(),
                format!("{tenant}-{env}"),
            ),
            (
                "hosting.francetravail.fr/tenant".to_string(),
                tenant.to_string(),
            ),
            (
                "hosting.francetravail.fr/environment".to_string(),
                env.to_string(),
            ),
        ])
    });
    let shared_namespace = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_string(),
        "monitoring".to_string(),
    )]);

    let mut selector_peers = 0;
    for p in &d.network_policies {
        for peer in peers(p) {
            let Some(selector) = &peer.namespace_selector else {
                continue;
            };
            selector_peers += 1;
            for ns in &tenant_namespaces {
                assert!(
                    !selects(selector, ns),
                    "{}/{} lets {} in or out",
                    p.namespace().unwrap(),
                    p.name_any(),
                    ns["kubernetes.io/metadata.name"]
                );
            }
        }
    }
    assert!(
        selector_peers >= 4,
        "the fixture exercises namespace selectors"
    );
    // The exclusion does not break legitimate flows: `{}` still reaches shared namespaces.
    let everywhere = policy(&d, "curieux-prod", "ft-ingress-from-everywhere");
    let selector = peers(everywhere)[0].namespace_selector.clone().unwrap();
    assert!(selects(&selector, &shared_namespace));
    // A flow limited to prod is not rendered in dev.
    assert!(
        policy_names(&d, "curieux-dev")
            .iter()
            .all(|n| n != "ft-ingress-from-my-dev")
    );
}

#[test]
fn cidr_peers_keep_their_exceptions_and_port_ranges() {
    let d = desired("core/tests/fixtures/hostile-flows.yaml");
    let egress = policy(&d, "curieux-dev", "ft-egress-to-everything")
        .spec
        .clone()
        .unwrap();
    let rule = &egress.egress.unwrap()[0];
    let block = rule.to.as_ref().unwrap()[1].ip_block.clone().unwrap();
    assert_eq!(block.cidr, "0.0.0.0/0");
    assert_eq!(
        block.except,
        Some(vec!["10.0.0.0/8".into(), "169.254.169.254/32".into()])
    );
    let range = &rule.ports.as_ref().unwrap()[1];
    assert_eq!(
        (
            range.port.clone(),
            range.end_port,
            range.protocol.as_deref()
        ),
        (Some(IntOrString::Int(8000)), Some(8100), Some("UDP"))
    );
}

#[test]
fn quota_and_limits_come_from_the_environment() {
    let d = desired("examples/tenant.yaml");
    let prod = d
        .resource_quotas
        .iter()
        .find(|q| q.namespace().as_deref() == Some("offres-emploi-prod"))
        .unwrap();
    let hard = prod.spec.clone().unwrap().hard.unwrap();
    let get = |k: &str| hard.get(k).map(|q| q.0.as_str());
    assert_eq!(get("requests.cpu"), Some("16"));
    assert_eq!(get("limits.cpu"), Some("16"));
    assert_eq!(get("requests.memory"), Some("32Gi"));
    assert_eq!(get("requests.storage"), Some("500Gi"));
    assert_eq!(get("pods"), Some("200"));
    assert_eq!(get("persistentvolumeclaims"), Some("20"));

    let limits = d.limit_ranges[0].spec.clone().unwrap().limits;
    let container = limits.iter().find(|l| l.type_ == "Container").unwrap();
    assert_eq!(container.default.as_ref().unwrap()["memory"].0, "512Mi");
    assert_eq!(container.default_request.as_ref().unwrap()["cpu"].0, "100m");
    let pvc = limits
        .iter()
        .find(|l| l.type_ == "PersistentVolumeClaim")
        .unwrap();
    assert_eq!(pvc.max.as_ref().unwrap()["storage"].0, "100Gi");
}

#[test]
fn defaults_apply_when_the_environment_declares_no_quota() {
    let d = desired("examples/minimal-tenant.yaml");
    let hard = d.resource_quotas[0].spec.clone().unwrap().hard.unwrap();
    assert_eq!(hard["requests.cpu"].0, "4");
    assert_eq!(hard["requests.memory"].0, "8Gi");
    assert_eq!(hard["pods"].0, "50");
    // No storage section: no volume size limit.
    assert!(
        d.limit_ranges[0]
            .spec
            .clone()
            .unwrap()
            .limits
            .iter()
            .all(|l| l.type_ == "Container")
    );
}

#[test]
fn building_is_deterministic() {
    let t = tenant("examples/tenant.yaml");
    assert_eq!(
        build(&t, &BuildSettings::default()),
        build(&t, &BuildSettings::default())
    );
}

#[test]
fn the_cluster_networks_are_carved_out_of_every_address_block() {
    let settings = BuildSettings {
        cluster_networks: vec![
            "10.244.0.0/16".into(),
            "10.96.0.0/12".into(),
            "192.168.0.0/16".into(),
        ],
        ..Default::default()
    };
    let d = build(&tenant("core/tests/fixtures/hostile-flows.yaml"), &settings);
    let egress = policy(&d, "curieux-prod", "ft-egress-to-everything")
        .spec
        .clone()
        .unwrap();
    let block = egress.egress.unwrap()[0].to.as_ref().unwrap()[1]
        .ip_block
        .clone()
        .unwrap();
    let except = block.except.unwrap();
    // The declared exceptions stay, and every cluster network inside the block is added.
    for network in [
        "10.0.0.0/8",
        "169.254.169.254/32",
        "10.244.0.0/16",
        "10.96.0.0/12",
        "192.168.0.0/16",
    ] {
        assert!(
            except.contains(&network.to_string()),
            "{network} not in {except:?}"
        );
    }
    let d = build(&tenant("examples/tenant.yaml"), &settings);
    let db = policy(&d, "offres-emploi-prod", "ft-egress-database")
        .spec
        .clone()
        .unwrap();
    let block = db.egress.unwrap()[0].to.as_ref().unwrap()[0]
        .ip_block
        .clone()
        .unwrap();
    assert_eq!(
        block.except, None,
        "a block outside the cluster networks is left as declared"
    );
}

/// The Services an ingress flow exposes are listed in the EnvironmentPolicy of each of its
/// environments, and nowhere else: the services policy admits those only (CLD-36).
#[test]
fn exposed_services_reach_the_environment_policies_of_their_flow() {
    let mut t = tenant("examples/tenant.yaml");
    t.spec.network.ingress.push(
        serde_json::from_value(serde_json::json!({
            "name": "public", "nature": "production", "environments": ["prod"],
            "from": [{"cidr": "0.0.0.0/0"}],
            "expose": {"service": "front", "type": "LoadBalancer"},
        }))
        .expect("a flow"),
    );
    let d = build(&t, &BuildSettings::default());
    let exposed = |ns: &str| {
        d.environment_policies
            .iter()
            .find(|p| p.namespace().as_deref() == Some(ns))
            .map(|p| {
                p.spec
                    .exposed_services
                    .iter()
                    .map(|e| format!("{} {} {}", e.name, e.type_, e.flow))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| panic!("no policy in {ns}"))
    };
    assert_eq!(exposed("offres-emploi-prod"), ["front LoadBalancer public"]);
    assert!(exposed("offres-emploi-dev").is_empty());
}

/// Production pools are exclusive cluster-wide: a tenant without a pool of its own keeps its
/// pods off every other tenant's (CLD-25).
#[test]
fn another_tenants_production_pool_is_avoided() {
    use ft_core::placement::{Pool, placements};
    let mut t = tenant("examples/tenant.yaml");
    t.spec.environments.retain(|e| e.name == "dev");
    let regions = std::collections::BTreeSet::from(["eu-west-3".to_string()]);
    let theirs = BTreeMap::from([("pool".to_string(), "their-production".to_string())]);
    let alone = placements(&t, &regions, &[]);
    assert_eq!(alone[0].pool, Pool::Any);
    let shared = placements(&t, &regions, std::slice::from_ref(&theirs));
    assert_eq!(shared[0].pool, Pool::Excluded(vec![theirs]));
}
