//! The cluster-wide admission objects: `admission/` holds exactly what the code generates, and
//! they are a fixed set, whatever the tenants.

use std::collections::BTreeSet;

use ft_core::admission::{files, fixed};
use kube::ResourceExt;

use crate::common::repo_path;

#[test]
fn committed_admission_policies_are_up_to_date() {
    let files = files().unwrap();
    for (name, generated) in &files {
        let path = repo_path("admission").join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == *generated,
            "{} is stale: run `cargo run -p ft-operator -- admission --output-dir admission`",
            path.display()
        );
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo_path("admission"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = files.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        on_disk, expected,
        "admission/ holds exactly the generated files"
    );
}

#[test]
fn the_fixed_set_is_seven_policies_and_two_mutations_each_bound_once() {
    let fixed = fixed();
    let names = |items: Vec<String>| items.into_iter().collect::<BTreeSet<_>>();
    let validating = names(
        fixed
            .validating_admission_policies
            .iter()
            .map(|p| p.name_any())
            .collect(),
    );
    assert_eq!(
        validating,
        BTreeSet::from([
            "ft-placement".into(),
            "ft-claims".into(),
            "ft-pod-volumes".into(),
            "ft-services".into(),
            "ft-namespace-ownership".into(),
            "ft-tenant-deletion-protection".into(),
            "ft-crd-deletion-protection".into(),
        ])
    );
    assert_eq!(
        names(
            fixed
                .validating_admission_policy_bindings
                .iter()
                .map(|b| b.spec.policy_name.clone())
                .collect()
        ),
        validating
    );
    let mutating = names(
        fixed
            .mutating_admission_policies
            .iter()
            .map(|p| p.name_any())
            .collect(),
    );
    assert_eq!(
        mutating,
        BTreeSet::from([
            "ft-placement".into(),
            "ft-tenant-deletion-protection".into()
        ])
    );
    assert_eq!(
        names(
            fixed
                .mutating_admission_policy_bindings
                .iter()
                .filter_map(|b| b.spec.as_ref()?.policy_name.clone())
                .collect()
        ),
        mutating
    );
    // Nothing of any tenant in them: they are the same for one tenant or a thousand.
    let text = serde_json::to_string(&(
        &fixed.validating_admission_policies,
        &fixed.mutating_admission_policies,
    ))
    .unwrap();
    for tenant_value in ["offres-emploi", "eu-west-3", "ft-offres-emploi-encrypted"] {
        assert!(!text.contains(tenant_value), "{tenant_value}");
    }
}

/// The rules a policy matches, as (resources, operations).
fn rules(
    policy: &k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
) -> Vec<(String, String)> {
    policy
        .spec
        .iter()
        .flat_map(|s| s.match_constraints.iter())
        .flat_map(|m| m.resource_rules.iter().flatten())
        .map(|r| {
            (
                r.resources.clone().unwrap_or_default().join(","),
                r.operations.clone().unwrap_or_default().join(","),
            )
        })
        .collect()
}

fn expressions(
    policy: &k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
) -> Vec<String> {
    policy
        .spec
        .iter()
        .flat_map(|s| s.validations.iter().flatten())
        .map(|v| v.expression.clone())
        .collect()
}

/// Exposure outside the cluster only as the flow matrix declares it (CLD-36).
#[test]
fn the_services_policy_refuses_exposure_nobody_declared() {
    let (policy, binding) = ft_core::network::services_policy();
    assert_eq!(
        rules(&policy),
        [("services".to_string(), "CREATE,UPDATE".to_string())]
    );
    let found = expressions(&policy);
    assert!(found[0].contains("object.spec.externalIPs"), "{found:?}");
    assert!(found[1].contains("!= 'ExternalName'"), "{found:?}");
    assert!(
        found[2].contains("['LoadBalancer', 'NodePort']")
            && found[2]
                .contains("params.spec.exposedServices.exists(e, e.name == object.metadata.name"),
        "{found:?}"
    );
    for v in policy
        .spec
        .iter()
        .flat_map(|s| s.validations.iter().flatten())
    {
        let message = v.message_expression.as_deref().unwrap_or_default();
        assert!(
            message.contains("CLD-36") && message.contains("params.spec.tenant"),
            "{message}"
        );
    }
    assert_eq!(
        binding.spec.param_ref.and_then(|p| p.name).as_deref(),
        Some("ft-environment")
    );
}

/// A namespace's tenant label never changes from one tenant to another (CLD-20), whoever asks.
#[test]
fn namespace_ownership_binds_every_namespace_update() {
    let (policy, binding) = ft_core::isolation::namespace_ownership();
    assert_eq!(
        rules(&policy),
        [("namespaces".to_string(), "UPDATE".to_string())]
    );
    let found = expressions(&policy);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].ends_with(
            "object.metadata.labels['hosting.francetravail.fr/tenant'] == oldObject.metadata.labels['hosting.francetravail.fr/tenant']"
        ),
        "{found:?}"
    );
    // No match resources, no param: every namespace, the operator's requests included.
    assert!(binding.spec.match_resources.is_none() && binding.spec.param_ref.is_none());
}

/// The operator's definitions are deleted only when the definition itself says it is meant.
#[test]
fn deleting_the_operators_definitions_needs_their_name_in_an_annotation() {
    let (policy, _) = ft_core::shredding::protection::crd_protection();
    assert_eq!(
        rules(&policy),
        [(
            "customresourcedefinitions".to_string(),
            "DELETE".to_string()
        )]
    );
    let condition = policy
        .spec
        .as_ref()
        .and_then(|s| s.match_conditions.clone())
        .expect("a match condition");
    for crd in [
        "francetravailtenants.hosting.francetravail.fr",
        "environmentpolicies.hosting.francetravail.fr",
        "compliancereports.hosting.francetravail.fr",
    ] {
        assert!(
            condition[0].expression.contains(&format!("'{crd}'")),
            "{crd}"
        );
    }
    assert_eq!(
        expressions(&policy),
        [
            "oldObject.metadata.?annotations[?'hosting.francetravail.fr/confirm-deletion'].orValue('') == oldObject.metadata.name"
        ]
    );
}

/// A nodeSelector that contradicts every term of the placement is refused, not left Pending.
#[test]
fn the_placement_policy_judges_the_node_selector_against_the_terms() {
    let (policy, _) = ft_core::placement::placement_validation();
    let found = expressions(&policy);
    assert!(
        found.iter().any(|e| e.contains(
            "params.spec.terms.exists(t, t.all(r, !(r.key in object.spec.nodeSelector) || ((r.operator == 'In') == (object.spec.nodeSelector[r.key] in r.values))))"
        )),
        "{found:?}"
    );
}
