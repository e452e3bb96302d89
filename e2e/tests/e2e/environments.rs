//! End-to-end: an environment leaves like a tenant. Renamed in the spec, its namespace and
//! what is in it are held, over passes, and the status says how to confirm; once the
//! confirmation annotation names it, the namespace is deleted and a record is left in the
//! operator's namespace; the new environment's namespace is there all along.

use std::time::Duration;

use anyhow::Context as _;
use ft_core::api::FranceTravailTenant;
use ft_e2e::{
    Operator, cluster, delete_tenant, ensure_namespace, example_tenant, install_crds, is_ready,
    unique, wait_for,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);
const CONFIRM: &str = "hosting.francetravail.fr/confirm-environment-removal";

/// Renames an environment everywhere the spec names it: the environment, its flows, its grants.
fn rename(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.into(),
        Value::Array(items) => items.iter_mut().for_each(|i| rename(i, from, to)),
        Value::Object(fields) => fields.values_mut().for_each(|f| rename(f, from, to)),
        _ => {}
    }
}

fn removal_condition(t: &FranceTravailTenant) -> Option<(String, String, String)> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "EnvironmentRemoval")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn config_map_exists(client: &Client, ns: &str, name: &str) -> anyhow::Result<bool> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.is_some())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_renamed_environment_is_held_until_confirmed_then_removed_and_recorded()
-> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;

    let name = unique("e2e-envs");
    let (dev, develop) = (format!("{name}-dev"), format!("{name}-develop"));
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(
            &PostParams::default(),
            &example_tenant("tenant.yaml", &name)?,
        )
        .await?;
    wait_for(&format!("tenant {name} Ready"), SETTLE, || async {
        Ok(is_ready(&tenants.get(&name).await?).then_some(()))
    })
    .await?;

    // Data in the environment about to be renamed.
    let data: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "precious"},
        "data": {"orders": "42"}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &dev)
        .create(&PostParams::default(), &data)
        .await?;

    // `dev` becomes `develop`, in one edit.
    let mut spec = serde_json::to_value(&tenants.get(&name).await?.spec)?;
    rename(&mut spec, "dev", "develop");
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;

    // The new namespace is made; the old one is held, and the status says how to confirm.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(&format!("namespace {develop}"), SETTLE, || async {
        Ok(namespaces.get_opt(&develop).await?.map(|_| ()))
    })
    .await?;
    let (status, reason, message) = wait_for("the hold in the status", SETTLE, || async {
        Ok(removal_condition(&tenants.get(&name).await?))
    })
    .await?;
    eprintln!("e2e: EnvironmentRemoval {status} {reason}: {message}");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "EnvironmentRemovalHeld")
    );
    for part in [
        "environment dev".to_string(),
        dev.clone(),
        format!("kubectl annotate francetravailtenant {name} {CONFIRM}=dev"),
    ] {
        assert!(message.contains(&part), "{part} missing from {message}");
    }
    let stored = tenants.get(&name).await?;
    let removals = &stored.status.as_ref().context("status")?.removals;
    assert_eq!(removals.len(), 1);
    assert_eq!(
        (removals[0].environment.as_str(), removals[0].step.as_str()),
        ("dev", "Held")
    );

    // Over several passes (each poke, of a namespace not poked before, is one), nothing of it
    // goes.
    for poked in [&develop, &dev, &format!("{name}-prod")] {
        operator.poke(&client, &name, poked).await?;
        let ns = namespaces
            .get_opt(&dev)
            .await?
            .context("the held namespace")?;
        assert!(
            ns.metadata.deletion_timestamp.is_none(),
            "{dev} is being deleted"
        );
        assert!(config_map_exists(&client, &dev, "precious").await?);
    }
    let policies =
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), &dev)
            .list(&ListParams::default())
            .await?;
    assert!(
        !policies.items.is_empty(),
        "the held namespace lost its isolation"
    );

    // Confirmed: the namespace goes, a record stays.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {CONFIRM: "dev"}}})),
        )
        .await?;
    wait_for(
        &format!("namespace {dev} to be gone"),
        Duration::from_secs(180),
        || async { Ok(namespaces.get_opt(&dev).await?.is_none().then_some(())) },
    )
    .await?;
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let selector = format!(
        "hosting.francetravail.fr/environment-removal-record=true,hosting.francetravail.fr/tenant={name}"
    );
    let record = wait_for("the removal record", SETTLE, || async {
        Ok(records
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .next())
    })
    .await?;
    let body = record
        .data
        .as_ref()
        .and_then(|d| d.get("record.yaml"))
        .context("record.yaml")?;
    eprintln!("e2e: environment removal record\n{body}");
    let parsed: Value = serde_saphyr::from_str(body)?;
    assert_eq!(parsed["environment"], "dev");
    assert_eq!(parsed["namespace"], dev.as_str());
    let confirmed = parsed["confirmedBy"].as_str().unwrap_or_default();
    assert!(confirmed.starts_with("field manager "), "{confirmed}");
    assert!(parsed["namespaceDeletedAt"].is_string());
    assert!(
        parsed["tenantKey"]
            .as_str()
            .unwrap_or_default()
            .starts_with("kept"),
        "{body}"
    );

    // The removal is over: the confirmation used up, the new environment in place.
    let done = wait_for("the removal to be forgotten", SETTLE, || async {
        let t = tenants.get(&name).await?;
        let over = t.status.as_ref().is_some_and(|s| s.removals.is_empty())
            && removal_condition(&t).is_some_and(|(s, _, _)| s == "False");
        Ok(over.then_some(t))
    })
    .await?;
    assert!(
        !done
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(CONFIRM),
        "the confirmation was not used up"
    );
    assert!(namespaces.get_opt(&develop).await?.is_some());

    delete_tenant(&client, &name).await?;
    records
        .delete(
            record.metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;
    drop(operator);
    Ok(())
}
