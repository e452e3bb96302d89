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

/// The fields and messages of a refused tenant.
fn refusal(yaml: &str) -> Vec<(String, String)> {
    match common::plan(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e
            .field_errors()
            .into_iter()
            .map(|f| (f.field, f.message))
            .collect(),
    }
}

#[test]
fn address_blocks_are_read_as_the_api_server_reads_them() {
    for bad in [
        "10.20.0.0/33",
        "10.20.0.0",
        "010.20.0.0/16",
        "10.20.0.0/016",
        "10.20.0.0/-1",
        "fd00::/129",
        "fe80::1%eth0/64",
        // An IPv4 block written as IPv6 would slip past the checks on IPv4 blocks.
        "::ffff:10.20.0.0/112",
        " 10.20.0.0/16",
    ] {
        let yaml = example_with("- cidr: 10.20.0.0/16", &format!("- cidr: \"{bad}\""));
        let refused = refusal(&yaml);
        assert_eq!(refused.len(), 1, "{bad}: {refused:?}");
        assert_eq!(refused[0].0, "spec.network.egress[0].to[0].cidr", "{bad}");
        assert!(refused[0].1.contains("IPv4 or IPv6 block"), "{refused:?}");
    }
    for good in [
        "10.20.0.0/16",
        "10.20.0.1/16",
        "fd00:20::/32",
        "64:ff9b::a14:0/112",
    ] {
        let yaml = example_with("- cidr: 10.20.0.0/16", &format!("- cidr: \"{good}\""));
        assert!(common::plan(&yaml).is_ok(), "{good} is a block");
    }
}

#[test]
fn an_exception_lies_strictly_inside_its_block() {
    for (bad, why) in [
        ("10.20.0.0/16", "strictly inside"),
        ("10.30.1.0/24", "strictly inside"),
        ("10.0.0.0/8", "strictly inside"),
        ("fd00::/64", "strictly inside"),
        ("10.20.1.0/33", "IPv4 or IPv6 block"),
    ] {
        let yaml = example_with(
            "- cidr: 10.20.0.0/16",
            &format!("- cidr: 10.20.0.0/16\n            except: [10.20.2.0/24, \"{bad}\"]"),
        );
        let refused = refusal(&yaml);
        assert_eq!(refused.len(), 1, "{bad}: {refused:?}");
        assert_eq!(refused[0].0, "spec.network.egress[0].to[0].except[1]");
        assert!(refused[0].1.contains(why), "{bad}: {refused:?}");
    }
}

#[test]
fn quantities_are_kubernetes_quantities_not_below_zero() {
    for (from, to, field) in [
        ("cpu: \"16\"", "cpu: lots", "spec.environments[0].quota.cpu"),
        (
            "cpu: \"16\"",
            "cpu: \"-1\"",
            "spec.environments[0].quota.cpu",
        ),
        ("cpu: \"16\"", "cpu: -1", "spec.environments[0].quota.cpu"),
        (
            "storage: 50Gi",
            "storage: 50 GB",
            "spec.environments[1].quota.storage",
        ),
        (
            "maxVolumeSize: 100Gi",
            "maxVolumeSize: big",
            "spec.storage.maxVolumeSize",
        ),
    ] {
        let refused = refusal(&example_with(from, to));
        assert_eq!(
            refused.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            [field],
            "{to}"
        );
        assert!(refused[0].1.contains("quantity"), "{refused:?}");
    }
    let defaults = "persistentVolumeClaims: 5\n      containerDefaults:\n        requestCpu: some\n        requestMemory: 64Mi\n        limitCpu: \"1.5\"\n        limitMemory: 1e9";
    let refused = refusal(&example_with("persistentVolumeClaims: 5", defaults));
    assert_eq!(
        refused.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        ["spec.environments[1].containerDefaults.requestCpu"]
    );
    // A bare number is a quantity.
    assert!(common::plan(&example_with("cpu: \"16\"", "cpu: 16")).is_ok());
}

#[test]
fn only_profiles_of_the_catalogue_are_accepted() {
    let refused = refusal(&example_with("profile: longhorn", "profile: plain-disk"));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "spec.storage.profile");
    for known in ["longhorn", "ceph-rbd", "aws-ebs", "gce-pd", "azure-disk"] {
        assert!(refused[0].1.contains(known), "{known}: {refused:?}");
    }
}

#[test]
fn parameters_the_profile_sets_are_refused() {
    let yaml = example_with(
        "maxVolumeSize: 100Gi",
        "maxVolumeSize: 100Gi\n    parameters:\n      encrypted: \"false\"\n      dataLocality: best-effort",
    );
    let refused = refusal(&yaml);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "spec.storage.parameters.encrypted");
    assert!(refused[0].1.contains("CLD-21"), "{refused:?}");
    // A parameter the profile leaves alone is the tenant's.
    let yaml = example_with(
        "maxVolumeSize: 100Gi",
        "maxVolumeSize: 100Gi\n    parameters:\n      dataLocality: best-effort",
    );
    assert!(common::plan(&yaml).is_ok());
}

#[test]
fn egress_to_every_address_must_be_acknowledged() {
    for everything in ["0.0.0.0/0", "::/0", "10.0.0.0/0"] {
        let yaml = example_with("- cidr: 10.30.0.0/16", &format!("- cidr: \"{everything}\""));
        let refused = refusal(&yaml);
        assert_eq!(refused.len(), 1, "{everything}: {refused:?}");
        assert_eq!(refused[0].0, "spec.network.egress[1].to[0].cidr");
        assert!(
            refused[0].1.contains("acknowledgeAnyDestination"),
            "{refused:?}"
        );
        let acknowledged = yaml.replacen(
            "environments: [dev]\n        to:",
            "environments: [dev]\n        acknowledgeAnyDestination: true\n        to:",
            1,
        );
        assert!(common::plan(&acknowledged).is_ok(), "{everything}");
    }
    // A narrower block needs no acknowledgement, and ingress from everywhere is a public front.
    assert!(common::plan(&example_with("- cidr: 10.30.0.0/16", "- cidr: 0.0.0.0/1")).is_ok());
    let public = example_with(
        "        from:\n          - namespaceSelector:\n              matchLabels:\n                kubernetes.io/metadata.name: ingress-nginx\n            podSelector:\n              matchLabels:\n                app.kubernetes.io/name: ingress-nginx\n",
        "        from:\n          - cidr: 0.0.0.0/0\n",
    );
    assert!(common::plan(&public).is_ok());
}

/// The tenant CRD's schema of `spec`.
fn spec_schema() -> serde_json::Value {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(ft_core::api::FranceTravailTenant::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

fn rules(schema: &serde_json::Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["rule"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_schema_refuses_what_validation_refuses() {
    let spec = spec_schema();
    let storage = &spec["properties"]["storage"];
    // The API server lists the supported profiles when it refuses another.
    assert_eq!(
        storage["properties"]["profile"]["enum"],
        serde_json::json!(["longhorn", "ceph-rbd", "aws-ebs", "gce-pd", "azure-disk"])
    );
    // One rule names every parameter each profile sets, for that profile only.
    let catalogue = ft_core::encryption::Profiles::embedded().unwrap();
    let parameters = rules(storage)
        .into_iter()
        .find(|r| r.contains("self.parameters"))
        .expect("a rule on spec.storage.parameters");
    for profile in &catalogue.profiles {
        let keys: Vec<String> = profile
            .parameters
            .keys()
            .map(|k| format!("'{k}'"))
            .collect();
        assert!(
            parameters.contains(&format!(
                "self.profile == '{}' ? [{}]",
                profile.name,
                keys.join(", ")
            )),
            "{}: {parameters}",
            profile.name
        );
    }

    let environment = &spec["properties"]["environments"]["items"]["properties"];
    let quantities = [
        &environment["quota"]["properties"]["cpu"],
        &environment["quota"]["properties"]["memory"],
        &environment["quota"]["properties"]["storage"],
        &environment["containerDefaults"]["properties"]["requestCpu"],
        &environment["containerDefaults"]["properties"]["requestMemory"],
        &environment["containerDefaults"]["properties"]["limitCpu"],
        &environment["containerDefaults"]["properties"]["limitMemory"],
        &storage["properties"]["maxVolumeSize"],
    ];
    for quantity in quantities {
        assert_eq!(quantity["x-kubernetes-int-or-string"], true);
        let rules = rules(quantity);
        assert!(
            rules
                .iter()
                .any(|r| r.contains("type(self) == int ? self >= 0")
                    && r.contains("isQuantity(self)")),
            "{quantity}"
        );
    }

    let network = &spec["properties"]["network"]["properties"];
    for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
        let peer = &network[direction]["items"]["properties"][peers]["items"];
        assert_eq!(rules(&peer["properties"]["cidr"]), ["isCIDR(self)"]);
        assert_eq!(
            rules(&peer["properties"]["except"]),
            ["self.all(e, isCIDR(e))"]
        );
        assert!(
            rules(peer)
                .iter()
                .any(|r| r.contains("cidr(self.cidr).containsCIDR(e)")),
            "{direction}"
        );
    }
    let egress = rules(&network["egress"]["items"]);
    assert!(
        egress
            .iter()
            .any(|r| r.contains("acknowledgeAnyDestination") && r.contains("prefixLength() == 0")),
        "{egress:?}"
    );
    // Ingress from everywhere stays allowed.
    assert!(
        !rules(&network["ingress"]["items"])
            .iter()
            .any(|r| r.contains("prefixLength() == 0"))
    );
}

/// `restore` as a word of an environment's name is kept for scratch namespaces, so that
/// `<tenant>-<env>-restore` can never be another environment's namespace.
#[test]
fn the_word_restore_is_kept_for_scratch_namespaces() {
    for name in ["restore", "db-restore", "restore-db", "a-restore-b"] {
        let yaml = example_with("  - name: dev\n", &format!("  - name: {name}\n"));
        let yaml = yaml.replace("[dev, prod]", &format!("[{name}, prod]"));
        let yaml = yaml.replace("environments: [dev]", &format!("environments: [{name}]"));
        assert_eq!(fields(&yaml), ["spec.environments[1].name"], "{name}");
    }
    let yaml = example_with("  - name: dev\n", "  - name: restored\n")
        .replace("[dev, prod]", "[restored, prod]")
        .replace("environments: [dev]", "environments: [restored]");
    assert!(
        common::plan(&yaml).is_ok(),
        "restored is not the word restore"
    );
}
