//! End-to-end: the operator runs under the least-privilege RBAC that `ft-operator rbac` prints,
//! as its ServiceAccount (by impersonation), and does everything a tenant's life asks of it,
//! from its first reconciliation to its crypto-shredding, without one refusal.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ft_core::api::ComplianceReport;
use ft_e2e::{
    Operator, TestNodes, cluster, complete_scheduled_backups, confirm_and_delete,
    create_example_tenant, ensure_namespace, finish_restore_tests, install_access_roles,
    install_crds, install_velero, kubeconfig_as_service_account, operator_binary, unique, wait_for,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::ListParams;
use kube::{Api, Client};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

/// Applies what `ft-operator rbac` prints, with kubectl.
fn apply_operator_rbac() -> anyhow::Result<()> {
    let printed = Command::new(operator_binary()?)
        .args(["rbac", "--namespace", OPERATOR_NAMESPACE])
        .output()
        .context("ft-operator rbac")?;
    if !printed.status.success() {
        bail!("ft-operator rbac failed");
    }
    let mut apply = Command::new("kubectl")
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running kubectl (needed by this test)")?;
    apply
        .stdin
        .take()
        .context("kubectl's input")?
        .write_all(&printed.stdout)?;
    if !apply.wait()?.success() {
        bail!("kubectl apply of the operator's RBAC failed");
    }
    Ok(())
}

async fn count<K>(api: &Api<K>, selector: &str) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .len())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn the_operator_needs_no_more_than_its_least_privilege_rbac() -> anyhow::Result<()> {
    let client: Client = cluster().await?;
    install_crds(&client).await?;
    install_access_roles(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    // Velero's namespace holds the operator's Role there.
    install_velero(&client).await?;
    apply_operator_rbac()?;
    let nodes = TestNodes::create(&client).await?;
    let kubeconfig = kubeconfig_as_service_account(OPERATOR_NAMESPACE, "ft-operator")?;
    let operator = Operator::start_as(OPERATOR_NAMESPACE, &unique("e2e-lease"), &kubeconfig)?;

    let name = unique("e2e-rbac");
    let tenants = create_example_tenant(&client, &name).await?;
    // Every kind of child made, the grants bound, the report written.
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    wait_for("the tenant Ready, with its report", SETTLE, || async {
        let ready = tenants.get(&name).await?.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                && s.key_fingerprint.is_some()
        });
        let reported = reports
            .get_opt(&name)
            .await?
            .and_then(|r| r.status)
            .is_some_and(|s| s.result.is_some());
        Ok((ready && reported).then_some(()))
    })
    .await?;
    // Backups and restore tests, under the same rules.
    complete_scheduled_backups(&client, &name).await?;
    finish_restore_tests(&client, &name, 2, "Completed").await?;
    let bindings: Api<RoleBinding> = Api::all(client.clone());
    let selector = format!("hosting.francetravail.fr/tenant={name},hosting.francetravail.fr/grant");
    assert!(count(&bindings, &selector).await? > 0, "no grant was bound");

    // Its whole deletion.
    confirm_and_delete(&client, &name).await?;
    wait_for(
        "the tenant to be shredded",
        Duration::from_secs(180),
        || async { Ok(tenants.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await?;
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let record_selector = format!("hosting.francetravail.fr/tenant={name}");
    assert_eq!(count(&records, &record_selector).await?, 1);

    let log = operator.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused under its RBAC:\n{}",
        refused.join("\n")
    );
    nodes.delete(&client).await?;
    drop(operator);
    std::fs::remove_file(&kubeconfig)?;
    Ok(())
}
