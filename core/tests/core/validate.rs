//! Validation and `plan`: every invalid tenant is refused with the offending field named, and
//! every problem is reported at once.

use crate::common;

use common::{read, tenant};
use ft_core::plan::PlanError;
use ft_core::settings::BuildSettings;
use ft_core::validate::validate;

/// The example tenant with one line of its YAML replaced.
fn example_with(from: &str, to: &str) -> String {
    let yaml = read("examples/tenant.yaml");
    assert!(yaml.contains(from), "the example contains {from:?}");
    yaml.replacen(from, to, 1)
}

fn fields(yaml: &str) -> Vec<String> {
    match common::plan(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.field_errors().into_iter().map(|f| f.field).collect(),
    }
}

#[test]
fn the_examples_are_valid() {
    for example in ["examples/tenant.yaml", "examples/minimal-tenant.yaml"] {
        assert_eq!(validate(&tenant(example)), Ok(()), "{example}");
    }
}

#[test]
fn environment_names_must_be_dns_labels() {
    for bad in [
        "Prod",
        "pr_od",
        "-prod",
        "prod-",
        "une-tres-longue-production",
    ] {
        let yaml = example_with("- name: prod", &format!("- name: {bad}"));
        assert!(
            fields(&yaml).contains(&"spec.environments[0].name".to_string()),
            "{bad}"
        );
    }
}

#[test]
fn environment_names_must_not_repeat() {
    let yaml = example_with(
        "- name: dev\n      kind: development",
        "- name: prod\n      kind: development",
    );
    let f = fields(&yaml);
    assert!(
        f.contains(&"spec.environments[1].name".to_string()),
        "{f:?}"
    );
}

#[test]
fn production_needs_a_node_pool() {
    let yaml = example_with(
        "      nodePool:\n        matchLabels:\n          node-pool.example.org/name: production\n",
        "",
    );
    assert_eq!(fields(&yaml), ["spec.environments[0].nodePool"]);
    let err = common::plan(&yaml).unwrap_err().to_string();
    assert!(err.contains("CLD-25"), "{err}");
}

#[test]
fn unknown_or_non_adequate_countries_are_refused() {
    for bad in ["CN", "XX", "fr"] {
        let yaml = example_with(
            "allowedCountries: [FR, DE]",
            &format!("allowedCountries: [FR, {bad}]"),
        );
        let f = fields(&yaml);
        assert!(
            f.iter()
                .any(|f| f.starts_with("spec.placement.allowedCountries")),
            "{bad}: {f:?}"
        );
    }
    // An adequacy country is accepted when listed (the opt-in).
    let yaml = example_with("allowedCountries: [FR, DE]", "allowedCountries: [FR, CH]");
    assert!(common::plan(&yaml).is_ok());
}

#[test]
fn access_grants_need_an_expiry() {
    let yaml = example_with("        expires: \"2027-06-30T00:00:00Z\"\n", "");
    let f = fields(&yaml);
    assert_eq!(f.len(), 1);
    assert!(f[0].starts_with("spec.access.grants[0]"), "{f:?}");
    let err = common::plan(&yaml).unwrap_err().to_string();
    assert!(err.contains("expires"), "{err}");
}

#[test]
fn shared_and_system_identities_are_refused() {
    for bad in ["system:masters", "system:serviceaccount:default:app", "*"] {
        let yaml = example_with(
            "name: claire.martin@example.org",
            &format!("name: \"{bad}\""),
        );
        assert_eq!(
            fields(&yaml),
            ["spec.access.grants[1].subject.name"],
            "{bad}"
        );
    }
}

#[test]
fn one_subject_holds_a_role_through_one_grant() {
    // The administrator's grant given a second time, for development.
    let yaml = example_with(
        "        reviewedAt: \"2026-09-01T00:00:00Z\"\n\n",
        "        reviewedAt: \"2026-09-01T00:00:00Z\"\n      - subject: {kind: User, name: claire.martin@example.org}\n        role: admin\n        environments: [dev]\n        expires: \"2027-01-31T00:00:00Z\"\n\n",
    );
    let err = common::plan(&yaml).unwrap_err();
    assert_eq!(
        err.field_errors()
            .iter()
            .map(|f| f.field.as_str())
            .collect::<Vec<_>>(),
        ["spec.access.grants[2].subject"]
    );
    assert!(
        err.to_string().contains("through spec.access.grants[1]"),
        "{err}"
    );
    // The same person in another role is a different grant.
    let other_role = yaml.replacen(
        "role: admin\n        environments: [dev]",
        "role: viewer\n        environments: [dev]",
        1,
    );
    assert!(common::plan(&other_role).is_ok());
}

#[test]
fn flows_and_grants_must_name_declared_environments() {
    let yaml = example_with(
        "environments: [prod]\n        podSelector",
        "environments: [staging]\n        podSelector",
    );
    assert_eq!(fields(&yaml), ["spec.network.egress[0].environments[0]"]);
    let yaml = example_with(
        "environments: [dev, prod]\n        expires",
        "environments: [qa, prod]\n        expires",
    );
    assert_eq!(fields(&yaml), ["spec.access.grants[0].environments[0]"]);
}

#[test]
fn peers_are_a_selector_or_a_valid_block() {
    let yaml = example_with("- cidr: 10.20.0.0/16", "- cidr: 10.20.0.0/33");
    assert_eq!(fields(&yaml), ["spec.network.egress[0].to[0].cidr"]);
    let yaml = example_with(
        "- cidr: 10.20.0.0/16",
        "- cidr: 10.20.0.0/16\n            except: [10.30.0.0/24]",
    );
    assert_eq!(fields(&yaml), ["spec.network.egress[0].to[0].except[0]"]);
    let yaml = example_with(
        "- cidr: 10.20.0.0/16",
        "- cidr: 10.20.0.0/16\n            namespaceSelector: {}",
    );
    assert_eq!(fields(&yaml), ["spec.network.egress[0].to[0]"]);
}

#[test]
fn bad_quantities_and_port_ranges_are_named() {
    let yaml = example_with("memory: 32Gi", "memory: 32 gigas");
    assert_eq!(fields(&yaml), ["spec.environments[0].quota.memory"]);
    let yaml = example_with("- port: 5432", "- port: 5432\n            endPort: 5000");
    assert_eq!(fields(&yaml), ["spec.network.egress[0].ports[0].endPort"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = read("examples/tenant.yaml")
        .replacen("name: offres-emploi", "name: Offres.Emploi", 1)
        .replacen("- name: dev", "- name: prod", 1)
        .replacen("- cidr: 10.20.0.0/16", "- cidr: nowhere", 1);
    let f = fields(&yaml);
    for expected in [
        "metadata.name",
        "spec.environments[1].name",
        "spec.network.egress[0].to[0].cidr",
    ] {
        assert!(
            f.contains(&expected.to_string()),
            "{expected} missing from {f:?}"
        );
    }
}

#[test]
fn wrong_kind_and_unparseable_yaml_are_refused() {
    let yaml =
        read("examples/tenant.yaml").replacen("kind: FranceTravailTenant", "kind: Tenant", 1);
    assert_eq!(fields(&yaml), ["kind"]);
    let err = common::plan("spec: [unclosed").unwrap_err();
    assert!(matches!(err, PlanError::Yaml { .. }), "{err}");
    assert!(matches!(common::plan(""), Err(PlanError::Empty)));
}

#[test]
fn plan_prints_every_object_as_yaml_documents() {
    // Grants are rendered as they stand when `plan` runs: moved far ahead, they are in force.
    let yaml = read("examples/tenant.yaml").replace("expires: \"2027-", "expires: \"2099-");
    let out = common::plan(&yaml).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    let count = |kind: &str| docs.iter().filter(|d| d["kind"] == kind).count();
    assert_eq!(count("Namespace"), 2);
    assert_eq!(count("NetworkPolicy"), 12);
    assert_eq!(count("ResourceQuota"), 2);
    assert_eq!(count("LimitRange"), 2);
    assert_eq!(count("ComplianceReport"), 1);
    // The developers on both environments, the administrator on production.
    assert_eq!(count("RoleBinding"), 3);
    // The tenant's encrypted class.
    assert_eq!(count("StorageClass"), 1);
    // What `run` applies too: per environment, what the cluster-wide admission policies
    // enforce in its namespace. The policies themselves are the cluster's, not the tenant's.
    assert_eq!(count("EnvironmentPolicy"), 2);
    assert_eq!(count("ValidatingAdmissionPolicy"), 0);
    assert_eq!(count("MutatingAdmissionPolicy"), 0);
    // No Velero on the cluster `plan` was given: no Schedule.
    assert_eq!(count("Schedule"), 0);
    assert_eq!(docs.len(), 25);
}

#[test]
fn address_blocks_inside_the_cluster_networks_are_refused() {
    let settings = BuildSettings {
        cluster_networks: vec!["10.16.0.0/12".into()],
        ..Default::default()
    };
    let err = common::plan_with(&read("examples/tenant.yaml"), &settings).unwrap_err();
    let fields: Vec<String> = err.field_errors().into_iter().map(|f| f.field).collect();
    // 10.20.0.0/16 and 10.30.0.0/16 both lie inside 10.16.0.0/12.
    assert_eq!(
        fields,
        [
            "spec.network.egress[0].to[0].cidr",
            "spec.network.egress[1].to[0].cidr"
        ]
    );
    assert!(err.to_string().contains("CLD-20"));
    assert!(common::plan(&read("examples/tenant.yaml")).is_ok());
}
