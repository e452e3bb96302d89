//! End-to-end: `ft-operator migrate` removes the per-environment admission policies of earlier
//! versions, each only once the cluster-wide policies are in place and the namespaces it
//! covered have their EnvironmentPolicy, and leaves the tenant's pods confined throughout.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use ft_core::api::FranceTravailTenant;
use ft_core::placement::PLACEMENT_POLICY;
use ft_e2e::{
    Operator, TestNodes, cluster, create_example_tenant, delete_tenant, ensure_namespace,
    install_admission_policies, install_crds, is_ready, operator_binary, restricted_pod, unique,
    wait_for,
};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

/// An admission policy and binding as earlier versions made them, for `tenant`.
async fn old_policy(client: &Client, name: &str, tenant: &str) -> anyhow::Result<()> {
    let meta = json!({"name": name, "labels": {
        "app.kubernetes.io/managed-by": "ft-operator",
        "hosting.francetravail.fr/tenant": tenant,
    }});
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"failurePolicy": "Fail", "validations": [{"expression": "true"}],
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"]}]}},
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"hosting.francetravail.fr/tenant": tenant}}}},
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

fn migrate() -> anyhow::Result<(Option<i32>, String)> {
    let output = Command::new(operator_binary()?)
        .arg("migrate")
        .output()
        .context("running ft-operator migrate")?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr),
    ))
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn migrate_removes_the_old_policies_once_the_new_ones_cover_their_namespaces()
-> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-migrate");
    let tenants = create_example_tenant(&client, &name).await?;
    wait_for(&format!("tenant {name} Ready"), SETTLE, || async {
        let t: FranceTravailTenant = tenants.get(&name).await?;
        Ok(is_ready(&t).then_some(()))
    })
    .await?;
    // What an earlier version left: the tenant's policies, and those of a tenant whose
    // namespaces have no EnvironmentPolicy yet.
    let gone = unique("e2e-old");
    let prod = format!("{name}-prod");
    let ours = [format!("ft-placement-{prod}"), format!("ft-claims-{name}")];
    let theirs = format!("ft-placement-{gone}-prod");
    for policy in &ours {
        old_policy(&client, policy, &name).await?;
    }
    old_policy(&client, &theirs, &gone).await?;

    // Without the cluster-wide policies in place, nothing goes.
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    bindings
        .delete(PLACEMENT_POLICY, &DeleteParams::default())
        .await?;
    let (code, said) = migrate()?;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("nothing was removed"), "{said}");
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    for policy in ours.iter().chain([&theirs]) {
        assert!(
            policies.get_opt(policy).await?.is_some(),
            "{policy} removed too early"
        );
    }

    install_admission_policies(&client).await?;
    let (code, said) = migrate()?;
    assert_eq!(code, Some(3), "some are kept: {said}");
    for policy in &ours {
        assert!(
            said.contains(&format!("removed ValidatingAdmissionPolicy/{policy}")),
            "{said}"
        );
        assert!(
            said.contains(&format!(
                "removed ValidatingAdmissionPolicyBinding/{policy}"
            )),
            "{said}"
        );
        assert!(policies.get_opt(policy).await?.is_none(), "{policy} left");
    }
    assert!(
        said.contains(&format!("kept ValidatingAdmissionPolicy/{theirs}")),
        "{said}"
    );
    assert!(policies.get_opt(&theirs).await?.is_some());

    // The tenant's pods are confined by the cluster-wide policies alone.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &prod);
    let pod = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &restricted_pod("confined", json!({}))?,
        )
        .await?;
    let affinity = serde_json::to_string(&pod.spec.and_then(|s| s.affinity))?;
    assert!(affinity.contains("eu-west-3"), "{affinity}");

    for policy in [&theirs] {
        policies.delete(policy, &DeleteParams::default()).await?;
        bindings.delete(policy, &DeleteParams::default()).await?;
    }
    delete_tenant(&client, &name).await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}
