//! End-to-end: `kubectl get compliance` against a real API server. A tenant on EU nodes is
//! Compliant; a RoleBinding nobody declared, then a pod bound to a node in the United States,
//! turn it NonCompliant naming the object, and it comes back once each is removed. An idle
//! tenant's report is not rewritten.

use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use ft_core::api::{ComplianceReport, ControlResult, Verdict};
use ft_e2e::{
    Operator, TestNodes, cluster, complete_scheduled_backups, confirm_and_delete,
    create_example_tenant, ensure_namespace, finish_restore_tests, install_crds, install_velero,
    restricted_pod, unique, wait_for,
};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

async fn report(client: &Client, name: &str) -> anyhow::Result<Option<ComplianceReport>> {
    Ok(Api::<ComplianceReport>::all(client.clone())
        .get_opt(name)
        .await?)
}

/// Waits until the report has `verdict` and `check` holds on it.
async fn wait_report(
    client: &Client,
    name: &str,
    verdict: Verdict,
    check: impl Fn(&ComplianceReport) -> bool,
) -> anyhow::Result<ComplianceReport> {
    let waited = wait_for(
        &format!("report {name} {}", verdict.as_str()),
        SETTLE,
        || async {
            Ok(report(client, name)
                .await?
                .filter(|r| r.status.as_ref().and_then(|s| s.result) == Some(verdict) && check(r)))
        },
    )
    .await;
    if waited.is_err() {
        // Dump what was seen, so a failure says why.
        let last = report(client, name).await.ok().flatten();
        eprintln!("e2e: last report seen: {:#?}", last.and_then(|r| r.status));
    }
    waited
}

fn failing<'a>(report: &'a ComplianceReport, id: &str) -> Option<&'a str> {
    report
        .status
        .as_ref()?
        .controls
        .iter()
        .find(|c| c.id == id && c.result == ControlResult::Fail)
        .map(|c| c.message.as_str())
}

/// Events about objects called `name`, as (kind, reason).
async fn events(client: &Client, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Event> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    Ok(api
        .list(&params)
        .await?
        .into_iter()
        .map(|e| {
            (
                e.involved_object.kind.unwrap_or_default(),
                e.reason.unwrap_or_default(),
            )
        })
        .collect())
}

async fn wait_failure_events(client: &Client, name: &str) -> anyhow::Result<()> {
    wait_for(
        "ControlFailed Events on tenant and report",
        SETTLE,
        || async {
            let seen = events(client, name).await?;
            let on = |kind: &str| seen.iter().any(|(k, r)| k == kind && r == "ControlFailed");
            Ok((on("FranceTravailTenant") && on("ComplianceReport")).then_some(()))
        },
    )
    .await
}

/// `kubectl get compliance NAME`, when kubectl is installed.
fn kubectl_get_compliance(name: &str) -> Option<String> {
    let output = Command::new("kubectl")
        .args(["get", "compliance", name])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn kubectl_get_compliance_follows_what_breaks_and_what_is_repaired() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    install_velero(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;

    // Two nodes in Paris, one of them in the production pool, and one in Virginia.
    let nodes = TestNodes::create(&client).await?;
    let us_node = nodes.us.clone();

    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-cmp");
    let tenants = create_example_tenant(&client, &name).await?;
    let dev = format!("{name}-dev");

    // Velero's part: each environment's backup completes, and its restore test passes.
    complete_scheduled_backups(&client, &name).await?;
    finish_restore_tests(&client, &name, 2, "Completed").await?;
    let compliant = wait_report(&client, &name, Verdict::Compliant, |_| true).await?;
    let owner = compliant.owner_references().first().context("owner")?;
    assert_eq!(owner.kind, "FranceTravailTenant");
    assert_eq!(owner.name, name);
    wait_for("the tenant's Compliant condition", SETTLE, || async {
        let t = tenants.get(&name).await?;
        Ok(t.status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Compliant" && c.status == "True")
            .then_some(()))
    })
    .await?;
    match kubectl_get_compliance(&name) {
        Some(table) => {
            eprintln!("e2e: kubectl get compliance\n{table}");
            let header: Vec<&str> = table
                .lines()
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            assert_eq!(
                header,
                [
                    "NAME",
                    "TENANT",
                    "PASSED",
                    "FAILING",
                    "RESULT",
                    "LAST",
                    "EVALUATED",
                    "AGE"
                ]
            );
            assert!(
                table
                    .lines()
                    .nth(1)
                    .is_some_and(|row| row.contains(" Compliant ")),
                "{table}"
            );
        }
        None => eprintln!(
            "e2e: kubectl not found; the printer columns are checked through the API only"
        ),
    }

    // Idle: a reconciliation of the unchanged tenant does not rewrite its report.
    let report_writes = "ft_api_writes_total{kind=\"ComplianceReport\",operation=\"status\"}";
    let version = compliant.resource_version();
    let writes_before = operator.metric(report_writes).await?;
    operator.poke(&client, &name, &dev).await?;
    assert_eq!(operator.metric(report_writes).await?, writes_before);
    assert_eq!(
        report(&client, &name)
            .await?
            .and_then(|r| r.resource_version()),
        version
    );

    // A RoleBinding nobody declared.
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &dev);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "mallory-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory@example.org"}],
    }))?;
    bindings.create(&PostParams::default(), &binding).await?;
    let broken = wait_report(&client, &name, Verdict::NonCompliant, |r| {
        failing(r, "ACC-1").is_some()
    })
    .await?;
    let message = failing(&broken, "ACC-1").unwrap_or_default();
    assert!(
        message.contains(&format!("RoleBinding/{dev}/mallory-admin")),
        "{message}"
    );
    assert!(message.contains("mallory@example.org"), "{message}");
    assert_eq!(
        broken.status.as_ref().map(|s| s.failing.as_str()),
        Some("ACC-1")
    );
    wait_failure_events(&client, &name).await?;
    let gauge = format!("ft_control_result{{tenant=\"{name}\",control=\"ACC-1\"}}");
    assert_eq!(operator.metric(&gauge).await?, 0.0);

    bindings
        .delete("mallory-admin", &DeleteParams::default())
        .await?;
    wait_report(&client, &name, Verdict::Compliant, |_| true).await?;
    assert_eq!(operator.metric(&gauge).await?, 1.0);

    // A pod of the tenant bound to the node in the United States.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &dev);
    let pod = restricted_pod("stray", json!({}))?;
    pods.create(&PostParams::default(), &pod).await?;
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "stray"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": us_node},
    });
    pods.create_subresource::<Value, Value>("binding", "stray", &PostParams::default(), &binding)
        .await?;
    let broken = wait_report(&client, &name, Verdict::NonCompliant, |r| {
        failing(r, "GEO-1").is_some()
    })
    .await?;
    let message = failing(&broken, "GEO-1").unwrap_or_default();
    assert!(message.contains(&format!("Pod/{dev}/stray")), "{message}");
    assert!(message.contains(&format!("Node/{us_node}")), "{message}");
    assert!(message.contains("US"), "{message}");

    // No kubelet will confirm a graceful deletion: remove it at once.
    pods.delete(
        "stray",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    wait_report(&client, &name, Verdict::Compliant, |_| true).await?;

    // The report goes with its tenant.
    confirm_and_delete(&client, &name).await?;
    wait_for(
        "the report to go with the tenant",
        Duration::from_secs(120),
        || async { Ok(report(&client, &name).await?.is_none().then_some(())) },
    )
    .await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}
