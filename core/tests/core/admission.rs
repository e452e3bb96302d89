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
fn the_fixed_set_is_six_policies_and_two_mutations_each_bound_once() {
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
