//! End-to-end: the real `ft-operator run` against the API server in `KUBECONFIG`.
//!
//! Ignored by a plain `cargo test` (the reason says how to run them); `.ci/run` runs them where
//! an API server is reachable. Each test uses fresh tenant and Lease names.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ft_core::api::FranceTravailTenant;
use ft_core::meta::child_labels;
use ft_core::network::network_policies;
use ft_core::settings::BuildSettings;
use ft_e2e::{
    Edit, Operator, assert_refused, cluster, confirm_and_delete, dry_run_create_tenant,
    ensure_namespace, example_tenant, install_crds, is_ready, unique, wait_for,
};
use k8s_openapi::api::core::v1::{Event, LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(30);

async fn wait_ready(
    api: &Api<FranceTravailTenant>,
    name: &str,
) -> anyhow::Result<FranceTravailTenant> {
    wait_for(&format!("tenant {name} Ready"), SETTLE, || async {
        let t = api.get(name).await?;
        Ok(is_ready(&t).then_some(t))
    })
    .await
}

async fn policy_names(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|p| p.name_any())
        .collect())
}

async fn tenant_events(
    client: &Client,
    tenant: &str,
    reason: &str,
) -> anyhow::Result<Option<Event>> {
    let api: Api<Event> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("involvedObject.name={tenant}"));
    Ok(api
        .list(&params)
        .await?
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason)))
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_tenant_is_isolated_kept_in_shape_and_deleted() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    wait_for("the operator to lead", SETTLE, || async {
        Ok(operator
            .metric("ft_leader")
            .await
            .ok()
            .filter(|v| *v == 1.0))
    })
    .await?;

    let name = unique("e2e");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let tenant = example_tenant("tenant.yaml", &name)?;
    tenants.create(&PostParams::default(), &tenant).await?;
    let started = Instant::now();
    let stored = wait_ready(&tenants, &name).await?;
    eprintln!("e2e: tenant Ready after {:?}", started.elapsed());

    // Every child is there, as `plan` renders it.
    let status = stored.status.clone().context("status")?;
    let (prod, dev) = (format!("{name}-prod"), format!("{name}-dev"));
    assert_eq!(status.namespaces, [prod.clone(), dev.clone()]);
    assert_eq!(status.environments, "prod,dev");
    assert!(
        stored
            .finalizers()
            .iter()
            .any(|f| f == ft_core::api::FINALIZER)
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (ns, env, kind) in [(&prod, "prod", "production"), (&dev, "dev", "development")] {
        let labels = namespaces.get(ns).await?.labels().clone();
        assert_eq!(labels["hosting.francetravail.fr/tenant"], name);
        assert_eq!(labels["hosting.francetravail.fr/environment"], env);
        assert_eq!(labels["hosting.francetravail.fr/environment-kind"], kind);
        assert_eq!(
            labels["hosting.francetravail.fr/data-classification"],
            "personal"
        );
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels[&format!("pod-security.kubernetes.io/{mode}")],
                "restricted"
            );
        }
        let environment = tenant
            .spec
            .environments
            .iter()
            .find(|e| e.name == env)
            .context("the environment")?;
        let expected: BTreeSet<String> = network_policies(
            &tenant,
            environment,
            ns,
            &child_labels(&tenant, environment),
            &BuildSettings::default(),
        )
        .iter()
        .map(|p| p.name_any())
        .collect();
        assert_eq!(
            policy_names(&client, ns).await?,
            expected,
            "policies in {ns}"
        );
        let quota = Api::<ResourceQuota>::namespaced(client.clone(), ns)
            .get("ft-quota")
            .await?;
        assert!(
            quota
                .spec
                .and_then(|s| s.hard)
                .is_some_and(|h| h.contains_key("requests.cpu"))
        );
        Api::<LimitRange>::namespaced(client.clone(), ns)
            .get("ft-limits")
            .await?;
    }
    let deny = Api::<NetworkPolicy>::namespaced(client.clone(), &prod)
        .get("ft-default-deny")
        .await?;
    assert_eq!(
        deny.spec.and_then(|s| s.policy_types),
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );

    // An unchanged tenant costs no write: poke it through a harmless label on one of its
    // namespaces, wait for the reconciliation, and compare the operator's write counter.
    wait_for("the operator to settle", SETTLE, || async {
        let before = operator.metric("ft_api_writes_total").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok((operator.metric("ft_api_writes_total").await? == before).then_some(()))
    })
    .await?;
    let writes_before = operator.metric("ft_api_writes_total").await?;
    operator.poke(&client, &name, &dev).await?;
    assert_eq!(
        operator.metric("ft_api_writes_total").await?,
        writes_before,
        "an unchanged tenant made writes"
    );

    // A NetworkPolicy deleted by hand comes back.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &prod);
    let old_uid = policies.get("ft-default-deny").await?.uid();
    policies
        .delete("ft-default-deny", &DeleteParams::default())
        .await?;
    let deleted_at = Instant::now();
    wait_for(
        "ft-default-deny to be restored",
        Duration::from_secs(10),
        || async {
            Ok(policies
                .get_opt("ft-default-deny")
                .await?
                .filter(|p| p.uid() != old_uid))
        },
    )
    .await?;
    eprintln!(
        "e2e: NetworkPolicy restored after {:?}",
        deleted_at.elapsed()
    );

    // A Namespace label removed by hand comes back.
    namespaces
        .patch(
            &dev,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "remove", "path": "/metadata/labels/pod-security.kubernetes.io~1enforce"}
            ]))?),
        )
        .await?;
    let removed_at = Instant::now();
    wait_for(
        "the enforce label to be restored",
        Duration::from_secs(10),
        || async {
            let ns = namespaces.get(&dev).await?;
            Ok((ns
                .labels()
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str)
                == Some("restricted"))
            .then_some(()))
        },
    )
    .await?;
    eprintln!(
        "e2e: Namespace label restored after {:?}",
        removed_at.elapsed()
    );
    wait_for("a DriftReverted Event", SETTLE, || {
        tenant_events(&client, &name, "DriftReverted")
    })
    .await?;

    // A flow removed from the spec loses its policies.
    let web_only: Vec<Value> = serde_json::to_value(&tenant.spec.network.ingress)?
        .as_array()
        .context("ingress")?
        .iter()
        .filter(|f| f["name"] == "web")
        .cloned()
        .collect();
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"network": {"ingress": web_only}}})),
        )
        .await?;
    wait_for("ft-ingress-metrics to be pruned", SETTLE, || async {
        let prod_has = policy_names(&client, &prod)
            .await?
            .contains("ft-ingress-metrics");
        let dev_has = policy_names(&client, &dev)
            .await?
            .contains("ft-ingress-metrics");
        Ok((!prod_has && !dev_has).then_some(()))
    })
    .await?;
    wait_ready(&tenants, &name).await?;

    // Deleting the tenant deletes its namespaces, then the tenant itself.
    confirm_and_delete(&client, &name).await?;
    wait_for(
        "the tenant and its namespaces to be gone",
        Duration::from_secs(120),
        || async {
            let tenant_gone = tenants.get_opt(&name).await?.is_none();
            let namespaces_gone = namespaces.get_opt(&prod).await?.is_none()
                && namespaces.get_opt(&dev).await?.is_none();
            Ok((tenant_gone && namespaces_gone).then_some(()))
        },
    )
    .await?;
    ensure!(
        operator.log().contains("namespace deleted"),
        "deletion was journaled"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn the_api_server_refuses_invalid_tenants_naming_the_field() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let valid = serde_json::to_value(example_tenant("tenant.yaml", &unique("e2e-invalid"))?)?;
    // The valid example passes the same checks.
    dry_run_create_tenant(&client, valid.clone()).await?;

    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "environment name not a DNS label",
            Box::new(|t| t["spec"]["environments"][0]["name"] = json!("Prod_1")),
            &["spec.environments[0].name"],
        ),
        (
            "environment declared twice",
            Box::new(|t| t["spec"]["environments"][1]["name"] = json!("prod")),
            &["spec.environments[1]", "Duplicate value"],
        ),
        (
            "production without a node pool",
            Box::new(|t| {
                t["spec"]["environments"][0]
                    .as_object_mut()
                    .map(|e| e.remove("nodePool"));
            }),
            &["spec.environments[0].nodePool", "CLD-25"],
        ),
        (
            "unknown country",
            Box::new(|t| t["spec"]["placement"]["allowedCountries"] = json!(["FR", "CN"])),
            &["spec.placement.allowedCountries[1]", "CN"],
        ),
        (
            "grant without expiry",
            Box::new(|t| {
                t["spec"]["access"]["grants"][0]
                    .as_object_mut()
                    .map(|g| g.remove("expires"));
            }),
            &["spec.access.grants[0].expires", "Required"],
        ),
        (
            "shared identity",
            Box::new(|t| {
                t["spec"]["access"]["grants"][1]["subject"]["name"] = json!("system:masters")
            }),
            &["spec.access.grants[1].subject.name", "CLD-14"],
        ),
        (
            "flow naming an undeclared environment",
            Box::new(|t| t["spec"]["network"]["egress"][0]["environments"] = json!(["staging"])),
            &["spec.network"],
        ),
        (
            "tenant name too long for its namespaces",
            Box::new(|t| t["metadata"]["name"] = json!("a".repeat(50))),
            &["metadata.name"],
        ),
    ];
    assert_refused(&client, &valid, cases).await;
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn two_replicas_share_one_lease_and_hand_over_on_shutdown() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let lease = unique("e2e-lease");
    let mut replicas = [
        Operator::start(OPERATOR_NAMESPACE, &lease)?,
        Operator::start(OPERATOR_NAMESPACE, &lease)?,
    ];

    let leader = wait_for("exactly one leader", SETTLE, || async {
        let mut gauges = Vec::new();
        for replica in &replicas {
            gauges.push(replica.metric("ft_leader").await.ok());
        }
        Ok(match gauges.as_slice() {
            [Some(1.0), Some(0.0)] => Some(0),
            [Some(0.0), Some(1.0)] => Some(1),
            _ => None,
        })
    })
    .await?;

    // Stop the leader gracefully: it releases the Lease and the standby takes over.
    let status = replicas[leader].terminate()?;
    assert!(
        status.success(),
        "graceful shutdown exits cleanly: {status}"
    );
    let standby = &replicas[1 - leader];
    wait_for(
        "the standby to take over",
        Duration::from_secs(40),
        || async { Ok((standby.metric("ft_leader").await.unwrap_or(0.0) == 1.0).then_some(())) },
    )
    .await?;
    Ok(())
}
