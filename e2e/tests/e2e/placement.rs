//! End-to-end: EU-only placement (CLD-74) and the production pool (CLD-25) at admission. Nodes
//! without kubelets in Paris and in Virginia; a tenant pod comes back confined to Paris, a pod
//! naming a node directly is refused with the rule, a pod in `default` is untouched, and a pod
//! bound to the node in Virginia anyway is named by the report.

use std::time::Duration;

use ft_core::api::{ComplianceReport, ControlResult, FranceTravailTenant};
use ft_core::placement::PLACEMENT_POLICY;
use ft_e2e::{
    Operator, TestNodes, cluster, create_example_tenant, delete_tenant, ensure_namespace,
    example_tenant, free_port, install_crds, node, restricted_pod, unique, wait_for,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

/// The required node selector terms of a pod, as `key operator values` strings per term.
fn terms(pod: &Pod) -> Vec<Vec<String>> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| {
            r.node_selector_terms
                .iter()
                .map(|t| {
                    t.match_expressions
                        .iter()
                        .flatten()
                        .map(|e| {
                            format!(
                                "{} {} {}",
                                e.key,
                                e.operator,
                                e.values.clone().unwrap_or_default().join(",")
                            )
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the pod in a dry run: what admission makes of it, or the refusal.
async fn admitted(client: &Client, ns: &str, pod: &Pod) -> Result<Pod, kube::Error> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&params, pod)
        .await
}

/// Creates `pod` in dry runs until admission confines it: policies and the webhook's index
/// take effect a moment after the tenant is reconciled.
async fn wait_confined(client: &Client, ns: &str, pod: &Pod, what: &str) -> anyhow::Result<Pod> {
    wait_for(what, SETTLE, || async {
        Ok(admitted(client, ns, pod)
            .await
            .ok()
            .filter(|p| !terms(p).is_empty()))
    })
    .await
}

fn region_of(term: &[String]) -> Option<&String> {
    term.iter()
        .find(|e| e.starts_with("topology.kubernetes.io/region In "))
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn tenant_pods_are_confined_to_allowed_regions_at_admission() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let us_node = nodes.us.clone();

    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-geo");
    create_example_tenant(&client, &name).await?;
    let (prod, dev) = (format!("{name}-prod"), format!("{name}-dev"));

    // Admission policies take effect a moment after they are created: wait until a plain pod
    // comes back confined.
    let plain = restricted_pod("plain", json!({}))?;
    let confined = wait_confined(
        &client,
        &dev,
        &plain,
        "a development pod to come back confined",
    )
    .await?;
    let dev_terms = terms(&confined);
    eprintln!("e2e: development pod confined to {dev_terms:?}");
    assert_eq!(dev_terms.len(), 1);
    let region = region_of(&dev_terms[0]).expect("a region requirement");
    assert!(region.contains("eu-west-3"), "{region}");
    assert!(!region.contains("us-east-1"), "{region}");
    assert!(
        dev_terms[0].contains(&"node-pool.example.org/name NotIn production".to_string()),
        "development kept off the production pool: {dev_terms:?}"
    );

    let prod_pod = wait_confined(
        &client,
        &prod,
        &plain,
        "a production pod to come back confined",
    )
    .await?;
    assert!(
        terms(&prod_pod)[0].contains(&"node-pool.example.org/name In production".to_string()),
        "{:?}",
        terms(&prod_pod)
    );

    // A pod with its own two terms keeps both, each confined.
    let own = restricted_pod(
        "own",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]}
        ]}}}}),
    )?;
    let own_terms = terms(&admitted(&client, &dev, &own).await?);
    assert_eq!(own_terms.len(), 2, "{own_terms:?}");
    for (term, disk) in own_terms.iter().zip(["ssd", "nvme"]) {
        assert!(term.contains(&format!("disk In {disk}")), "{term:?}");
        assert!(region_of(term).is_some(), "{term:?}");
    }

    // Naming a node directly is refused, naming the tenant, the regions and the rule.
    let forced = restricted_pod("forced", json!({"nodeName": us_node}))?;
    let refusal = wait_for(
        "a pod naming a node in Virginia to be refused",
        SETTLE,
        || async {
            Ok(match admitted(&client, &dev, &forced).await {
                Err(kube::Error::Api(s)) if s.code == 403 => Some(s.message),
                _ => None,
            })
        },
    )
    .await?;
    eprintln!("e2e: refused: {refusal}");
    assert!(refusal.contains(&name), "{refusal}");
    assert!(refusal.contains("eu-west-3"), "{refusal}");
    assert!(refusal.contains("CLD-74"), "{refusal}");

    // Elsewhere in the cluster, nothing changes.
    let elsewhere = admitted(&client, "default", &plain).await?;
    assert!(terms(&elsewhere).is_empty(), "{:?}", terms(&elsewhere));

    // A pod that reaches Virginia anyway, through the binding subresource, is reported.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &dev);
    pods.create(&PostParams::default(), &restricted_pod("stray", json!({}))?)
        .await?;
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "stray"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": us_node},
    });
    pods.create_subresource::<Value, Value>("binding", "stray", &PostParams::default(), &binding)
        .await?;
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    let message = wait_for("GEO-1 to name the stray pod", SETTLE, || async {
        let report = reports.get_opt(&name).await?;
        Ok(report
            .and_then(|r| r.status)
            .and_then(|s| s.controls.into_iter().find(|c| c.id == "GEO-1"))
            .filter(|c| c.result == ControlResult::Fail)
            .map(|c| c.message))
    })
    .await?;
    assert!(message.contains(&format!("Pod/{dev}/stray")), "{message}");
    assert!(message.contains(&us_node), "{message}");
    let geo3 = reports
        .get(&name)
        .await?
        .status
        .and_then(|s| s.controls.into_iter().find(|c| c.id == "GEO-3"))
        .map(|c| c.result);
    assert_eq!(geo3, Some(ControlResult::Pass));

    pods.delete(
        "stray",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    delete_tenant(&client, &name).await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn without_mutating_policies_the_operators_webhook_confines_pods() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    // A cluster before Kubernetes 1.36: no MutatingAdmissionPolicy confines pods. Put back at
    // the end (`install_crds` installs the cluster-wide policies).
    let mutating: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    if mutating.get_opt(PLACEMENT_POLICY).await?.is_some() {
        mutating
            .delete(PLACEMENT_POLICY, &DeleteParams::default())
            .await?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let paris = unique("e2e-fr");
    nodes
        .create(&PostParams::default(), &node(&paris, "eu-west-3", false)?)
        .await?;

    // The API server runs on this machine: it reaches the operator's webhook on loopback.
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let url = format!("https://{address}/mutate-pods");
    let operator = Operator::start_with(
        OPERATOR_NAMESPACE,
        &unique("e2e-lease"),
        &[
            "--confinement",
            "webhook",
            "--webhook-address",
            &address,
            "--webhook-url",
            &url,
        ],
    )?;
    let name = unique("e2e-hook");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let mut tenant = example_tenant("minimal-tenant.yaml", &name)?;
    tenant.spec.placement.allowed_countries = vec![ft_core::api::Country::FR];
    tenants.create(&PostParams::default(), &tenant).await?;
    let ns = format!("{name}-{}", tenant.spec.environments[0].name);

    let plain = restricted_pod("plain", json!({}))?;
    let confined = wait_confined(
        &client,
        &ns,
        &plain,
        "a pod to come back confined by the webhook",
    )
    .await?;
    let confined_terms = terms(&confined);
    eprintln!("e2e: confined by the webhook to {confined_terms:?}");
    assert!(
        region_of(&confined_terms[0]).is_some_and(|r| r.contains("eu-west-3")),
        "{confined_terms:?}"
    );
    // No MutatingAdmissionPolicy binds: the webhook did it.
    assert!(mutating.get_opt(PLACEMENT_POLICY).await?.is_none());
    // The validating policy still refuses what the webhook cannot fix.
    let forced = restricted_pod("forced", json!({"nodeName": paris}))?;
    // The webhook answers at once; the policy takes effect a moment after it is created.
    let refusal = wait_for(
        "the validating policy to refuse nodeName",
        SETTLE,
        || async {
            Ok(match admitted(&client, &ns, &forced).await {
                Err(kube::Error::Api(s)) if s.code == 403 => Some(s.message),
                _ => None,
            })
        },
    )
    .await?;
    assert!(refusal.contains("CLD-74"), "{refusal}");
    assert!(refusal.contains(&name), "{refusal}");
    let elsewhere = admitted(&client, "default", &plain).await?;
    assert!(terms(&elsewhere).is_empty());

    delete_tenant(&client, &name).await?;
    drop(operator);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete("ft-operator-pod-placement", &DeleteParams::default())
        .await?;
    nodes.delete(&paris, &DeleteParams::default()).await?;
    install_crds(&client).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_tenant_namespace_without_its_environment_policy_refuses_every_pod_and_claim()
-> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
    let client = cluster().await?;
    install_crds(&client).await?;
    // A namespace labelled as a tenant's, whose parameters are missing (never written, or
    // deleted): the cluster-wide policies fail closed there.
    let ns = unique("e2e-noparams");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns,
                "labels": {"hosting.francetravail.fr/tenant": ns}}}))?,
        )
        .await?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))?;
    // The API server answers 422: the binding cannot be configured without its parameter.
    let pod_refusal = wait_for("a pod refused for want of parameters", SETTLE, || async {
        let pod = restricted_pod("p", json!({}))?;
        Ok(match pods.create(&dry_run, &pod).await {
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => Some(s.message),
            _ => None,
        })
    })
    .await?;
    // Either policy judging pods there may be the one that answers.
    assert!(
        (pod_refusal.contains("'ft-placement'") || pod_refusal.contains("'ft-pod-volumes'"))
            && pod_refusal.contains("no params found"),
        "{pod_refusal}"
    );
    match claims.create(&dry_run, &claim).await {
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => assert!(
            s.message.contains("'ft-claims'") && s.message.contains("no params found"),
            "{}",
            s.message
        ),
        other => panic!("a claim admitted without parameters: {other:?}"),
    }
    // Elsewhere, nothing changes.
    let default: Api<Pod> = Api::namespaced(client.clone(), "default");
    default
        .create(&dry_run, &restricted_pod("p", json!({}))?)
        .await?;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}
