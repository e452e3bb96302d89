//! End-to-end: with the upstream OpenReports definitions installed, each tenant namespace holds
//! a `Report` of the tenant's controls that the API server validated against them, and a
//! control that starts failing shows there too.

use std::path::PathBuf;
use std::time::Duration;

use ft_core::openreports::{GROUP, KIND, PLURAL, REPORT_NAME, VERSION};
use ft_e2e::{
    Operator, cluster, create_example_tenant, delete_tenant, ensure_namespace, install_crds,
    unique, wait_for, workspace_root,
};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

/// Where the upstream OpenReports definitions are: `FT_OPENREPORTS_CRDS`, or the fixtures
/// beside the checkout.
fn definitions() -> PathBuf {
    std::env::var_os("FT_OPENREPORTS_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/fixtures/openreports"))
}

/// Applies the upstream definitions as they are, and waits until Reports are served.
async fn install_openreports(client: &Client, dir: &std::path::Path) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        "openreports.io_reports.yaml",
        "openreports.io_clusterreports.yaml",
    ] {
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&std::fs::read_to_string(dir.join(file))?)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("ft-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    wait_for("openreports.io/v1alpha1 to be served", SETTLE, || async {
        Ok(client
            .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
            .await
            .ok()
            .filter(|l| l.resources.iter().any(|r| r.name == PLURAL))
            .map(|_| ()))
    })
    .await
}

fn result_of<'a>(report: &'a DynamicObject, policy: &str) -> Option<&'a Value> {
    report.data["results"]
        .as_array()?
        .iter()
        .find(|r| r["policy"] == policy)
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn control_results_are_written_as_openreports_reports() -> anyhow::Result<()> {
    let dir = definitions();
    if !dir.join("openreports.io_reports.yaml").exists() {
        eprintln!(
            "openreports: skipped, the upstream OpenReports definitions are not at {} (set FT_OPENREPORTS_CRDS)",
            dir.display()
        );
        return Ok(());
    }
    let client = cluster().await?;
    install_crds(&client).await?;
    install_openreports(&client, &dir).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-or");
    create_example_tenant(&client, &name).await?;
    let prod = format!("{name}-prod");
    let resource = ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    };
    let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), &prod, &resource);
    let controls = ft_core::controls::Catalogue::embedded()?.controls.len();

    let report = wait_for(
        "the Report of every control in production",
        SETTLE,
        || async {
            Ok(reports
                .get_opt(REPORT_NAME)
                .await?
                .filter(|r| r.data["results"].as_array().map(Vec::len) == Some(controls)))
        },
    )
    .await?;
    assert_eq!(report.data["source"], "ft-operator");
    assert_eq!(report.data["scope"]["name"], prod);
    let summary = &report.data["summary"];
    let counted: i64 = ["pass", "fail", "warn", "error", "skip"]
        .iter()
        .map(|k| summary[k].as_i64().unwrap_or_default())
        .sum();
    assert_eq!(counted, controls as i64, "{summary}");
    let net = result_of(&report, "NET-1").expect("NET-1");
    assert_eq!(net["result"], "pass", "{net}");
    assert_eq!(net["source"], "ft-operator");
    assert!(
        net["rule"].as_str().unwrap_or_default().contains("CLD-"),
        "{net}"
    );
    // The development namespace has its own.
    let dev: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &format!("{name}-dev"), &resource);
    assert!(dev.get_opt(REPORT_NAME).await?.is_some());

    // A RoleBinding nobody declared: ACC-1 fails, in the Report too, naming it.
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &prod);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "by-hand"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "someone@example.org", "apiGroup": "rbac.authorization.k8s.io"}],
            }))?,
        )
        .await?;
    let failing = wait_for("ACC-1 to fail in the Report", SETTLE, || async {
        Ok(reports.get_opt(REPORT_NAME).await?.and_then(|r| {
            result_of(&r, "ACC-1")
                .filter(|c| c["result"] == "fail")
                .cloned()
        }))
    })
    .await?;
    assert!(
        failing["message"]
            .as_str()
            .unwrap_or_default()
            .contains("by-hand"),
        "{failing}"
    );

    delete_tenant(&client, &name).await?;
    drop(operator);
    Ok(())
}
