//! The committed CRDs are exactly what the code generates.

use crate::common;

use common::repo_path;
use ft_core::crd;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

#[test]
fn committed_crds_are_up_to_date() {
    let files = crd::crd_files().unwrap();
    assert!(!files.is_empty());
    for (name, generated) in &files {
        let path = repo_path("crds").join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == *generated,
            "{} is stale: run `cargo run -p ft-operator -- crd --output-dir crds`",
            path.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_path("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "crds/ holds exactly the generated files");
}

fn crd_of(kind: &str) -> CustomResourceDefinition {
    crd::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

/// Scope, short names, and the printer columns of the first version; checks the status
/// subresource is there.
fn shape(crd: &CustomResourceDefinition) -> (String, Vec<String>, Vec<String>) {
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "{} has a status subresource",
        crd.spec.names.kind
    );
    let columns = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    (
        crd.spec.scope.clone(),
        crd.spec.names.short_names.clone().unwrap_or_default(),
        columns,
    )
}

#[test]
fn the_tenant_crd_is_cluster_scoped_with_status_and_columns() {
    let (scope, short_names, columns) = shape(&crd_of("FranceTravailTenant"));
    assert_eq!(scope, "Cluster");
    assert_eq!(short_names, ["ftt"]);
    assert_eq!(
        columns,
        ["Environments", "Ready", "Compliant", "Age", "Shredding"]
    );
}

#[test]
fn kubectl_get_compliance_shows_one_row_per_tenant_with_its_verdict() {
    let crd = crd_of("ComplianceReport");
    assert_eq!(crd.spec.names.plural, "compliancereports");
    assert_eq!(crd.spec.names.singular.as_deref(), Some("compliancereport"));
    let (scope, short_names, columns) = shape(&crd);
    assert_eq!(scope, "Cluster");
    assert_eq!(short_names, ["compliance"]);
    assert_eq!(
        columns,
        [
            "Tenant",
            "Passed",
            "Failing",
            "Result",
            "Last Evaluated",
            "Age"
        ]
    );
}
