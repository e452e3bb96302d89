//! End-to-end: the chart installed by Helm's engine on a real API server, into a namespace
//! that enforces Pod Security `restricted`. Its pods are admitted; the operator, run with the
//! environment of one of those pods and as the chart's ServiceAccount, becomes ready, leads,
//! labels its pod (a standby clears a stale label) and reconciles a tenant; what the README's
//! break-glass deletes comes back with the operator; an upgrade changes the Deployment and
//! keeps the tenant; uninstalling removes the operator and leaves the CRDs, the tenant, its
//! namespaces and its key untouched; reinstalling picks them up.
//!
//! A cluster without kubelets cannot run the image, so the binary stands in for the container
//! (the same environment, ServiceAccount and RBAC).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ft_core::api::FranceTravailTenant;
use ft_core::api::labels::{LEADER, TENANT};
use ft_core::api::{ENVIRONMENT_POLICY, EnvironmentPolicy};
use ft_core::placement::PLACEMENT_POLICY;
use ft_e2e::helm::Helm;
use ft_e2e::{
    Operator, cluster, delete_tenant, example_tenant, kubeconfig_as_service_account, unique,
    wait_for,
};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, MutatingWebhookConfiguration,
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

const RELEASE: &str = "ft-operator";
const WEBHOOK_CONFIGURATION: &str = "ft-operator-pod-placement";
const SETTLE: Duration = Duration::from_secs(60);
const CRDS: [&str; 3] = [
    "francetravailtenants.hosting.francetravail.fr",
    "compliancereports.hosting.francetravail.fr",
    "environmentpolicies.hosting.francetravail.fr",
];

async fn create_namespace(client: &Client, name: &str, restricted: bool) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    if restricted {
        for mode in ["enforce", "audit", "warn"] {
            labels.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".to_string(),
            );
        }
    }
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Marks a cluster-scoped object that exists already (installed by `kubectl` or another test)
/// as the release's, as Helm asks before it takes an object over.
async fn adopt<K>(client: &Client, name: &str, namespace: &str) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        return Ok(());
    }
    let patch = json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {
            "meta.helm.sh/release-name": RELEASE,
            "meta.helm.sh/release-namespace": namespace,
        }
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn set_leader_label(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"labels": {LEADER: "true"}}});
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn env_of(deployment: &Deployment, pod: &str) -> anyhow::Result<Vec<(String, String)>> {
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("the Deployment's container")?;
    let mut env = Vec::new();
    for variable in container.env.iter().flatten() {
        let value = match (&variable.value, &variable.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from))
                if from.field_ref.as_ref().map(|f| f.field_path.as_str())
                    == Some("metadata.name") =>
            {
                pod.to_string()
            }
            _ => bail!("{} has a source this test does not resolve", variable.name),
        };
        env.push((variable.name.clone(), value));
    }
    Ok(env)
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn helm_installs_upgrades_and_uninstalls_the_operator_leaving_tenants_untouched()
-> anyhow::Result<()> {
    let client = cluster().await?;
    let Some(helm) = Helm::find()? else {
        return Ok(());
    };
    let namespace = unique("ft-chart");
    let velero = unique("ft-chart-velero");
    create_namespace(&client, &namespace, true).await?;
    // Velero's namespace exists: `velero.rbac: auto` finds it with `lookup`.
    create_namespace(&client, &velero, false).await?;
    for crd in CRDS {
        adopt::<CustomResourceDefinition>(&client, crd, &namespace).await?;
    }
    for role in [
        "ft-tenant-admin",
        "ft-tenant-developer",
        "ft-tenant-viewer",
        "ft-operator",
    ] {
        adopt::<ClusterRole>(&client, role, &namespace).await?;
    }
    adopt::<ClusterRoleBinding>(&client, "ft-operator", &namespace).await?;
    // The cluster-wide admission policies, installed by the other tests as the chart would.
    let fixed = ft_core::admission::fixed();
    for policy in &fixed.validating_admission_policies {
        adopt::<ValidatingAdmissionPolicy>(&client, &policy.name_any(), &namespace).await?;
    }
    for binding in &fixed.validating_admission_policy_bindings {
        adopt::<ValidatingAdmissionPolicyBinding>(&client, &binding.name_any(), &namespace).await?;
    }
    for policy in &fixed.mutating_admission_policies {
        adopt::<MutatingAdmissionPolicy>(&client, &policy.name_any(), &namespace).await?;
    }
    for binding in &fixed.mutating_admission_policy_bindings {
        adopt::<MutatingAdmissionPolicyBinding>(&client, &binding.name_any(), &namespace).await?;
    }
    // The release's own policy on the operator, left behind when an earlier run stopped midway.
    adopt::<ValidatingAdmissionPolicy>(&client, "ft-operator-limits", &namespace).await?;
    adopt::<ValidatingAdmissionPolicyBinding>(&client, "ft-operator-limits", &namespace).await?;

    // The webhook path, which clusters before 1.36 take: Service, certificate, registration.
    let values = json!({"velero": {"namespace": velero}, "confinement": "webhook"});
    helm.install(RELEASE, &namespace, &values)?;

    // The ReplicaSet's pods were admitted by Pod Security `restricted`, enforced.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = "app.kubernetes.io/name=ft-operator";
    let admitted = wait_for("two operator pods admitted", SETTLE, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        Ok((list.items.len() == 2).then_some(list.items))
    })
    .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd_uids = BTreeMap::new();
    for crd in CRDS {
        crd_uids.insert(crd, crds.get(crd).await?.uid());
    }
    let velero_role: Api<Role> = Api::namespaced(client.clone(), &velero);
    assert!(
        velero_role.get_opt("ft-operator").await?.is_some(),
        "the Role in Velero's namespace"
    );

    // The operator as one of those pods: its environment, its ServiceAccount, its RBAC.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments.get("ft-operator").await?;
    let pod_name = admitted[0].name_any();
    let env = env_of(&deployment, &pod_name)?;
    let kubeconfig = kubeconfig_as_service_account(&namespace, "ft-operator")?;
    // The other pod carries a stale leader label, as a container restarted after losing the
    // Lease would: its replica, a standby, must clear it.
    let standby_pod = admitted[1].name_any();
    set_leader_label(&pods, &standby_pod).await?;
    let operator = Operator::start_with_env(&env, &kubeconfig)?;
    wait_for("the operator leading", SETTLE, || async {
        Ok((operator.metric("ft_leader").await.unwrap_or(0.0) == 1.0).then_some(()))
    })
    .await?;
    wait_for("its pod labelled as the leader", SETTLE, || async {
        let pod = pods.get(&pod_name).await?;
        Ok((pod.labels().get(LEADER).map(String::as_str) == Some("true")).then_some(()))
    })
    .await?;

    let mut standby = Operator::start_with_env(&env_of(&deployment, &standby_pod)?, &kubeconfig)?;
    wait_for(
        "the standby's stale leader label cleared",
        SETTLE,
        || async {
            let pod = pods.get(&standby_pod).await?;
            Ok((!pod.labels().contains_key(LEADER)).then_some(()))
        },
    )
    .await?;
    assert_eq!(standby.metric("ft_leader").await?, 0.0);
    standby.terminate()?;

    // The leader registered the webhook, behind the chart's Service, with its own CA.
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let registered = wait_for("the webhook registered", SETTLE, || async {
        Ok(webhooks.get_opt(WEBHOOK_CONFIGURATION).await?)
    })
    .await?;
    let config = registered
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("a webhook")?
        .client_config;
    let service = config.service.context("a Service reference")?;
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        (namespace.as_str(), "ft-operator-webhook")
    );
    assert!(config.ca_bundle.is_some_and(|b| !b.0.is_empty()));
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let leader_only = services
        .get("ft-operator-webhook")
        .await?
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default();
    assert_eq!(leader_only.get(LEADER).map(String::as_str), Some("true"));

    let tenant_name = unique("chart");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(
            &PostParams::default(),
            &example_tenant("minimal-tenant.yaml", &tenant_name)?,
        )
        .await?;
    let tenant = wait_for("the tenant Ready", SETTLE, || async {
        let t = tenants.get(&tenant_name).await?;
        let ready = t.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        Ok(ready.then_some(t))
    })
    .await?;
    let tenant_namespaces = tenant.status.clone().unwrap_or_default().namespaces;
    assert!(!tenant_namespaces.is_empty());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace_uids = BTreeMap::new();
    for ns in &tenant_namespaces {
        namespace_uids.insert(ns.clone(), namespaces.get(ns).await?.uid());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let key = format!("ft-key-{tenant_name}");
    let key_uid = secrets.get(&key).await?.uid();

    // Break-glass (README): with the operator down, its webhook and the tenant's
    // EnvironmentPolicies are deleted; the operator, once back, puts them back. The
    // cluster-wide policies are the chart's, and stay.
    drop(operator);
    webhooks
        .delete(WEBHOOK_CONFIGURATION, &DeleteParams::default())
        .await?;
    let environment_policies: Api<EnvironmentPolicy> = Api::all(client.clone());
    let of_tenant = ListParams::default().labels(&format!("{TENANT}={tenant_name}"));
    let deleted = environment_policies.list(&of_tenant).await?.items.len();
    assert_eq!(deleted, tenant_namespaces.len(), "one per tenant namespace");
    for ns in &tenant_namespaces {
        Api::<EnvironmentPolicy>::namespaced(client.clone(), ns)
            .delete(ENVIRONMENT_POLICY, &DeleteParams::default())
            .await?;
    }
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    assert!(bindings.get_opt(PLACEMENT_POLICY).await?.is_some());
    let operator = Operator::start_with_env(&env, &kubeconfig)?;
    wait_for(
        "the webhook and EnvironmentPolicies back",
        SETTLE,
        || async {
            let webhook = webhooks.get_opt(WEBHOOK_CONFIGURATION).await?.is_some();
            let restored = environment_policies.list(&of_tenant).await?.items.len();
            Ok((webhook && restored == deleted).then_some(()))
        },
    )
    .await?;

    // Upgrade: the Deployment follows the values; nothing of the tenant moves.
    let upgraded = json!({
        "velero": {"namespace": velero},
        "confinement": "webhook",
        "logLevel": "debug",
        "replicaCount": 3,
    });
    helm.upgrade(RELEASE, &namespace, &upgraded)?;
    let deployment = deployments.get("ft-operator").await?;
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let env = env_of(&deployment, &pod_name)?;
    assert!(
        env.contains(&("FT_LOG_LEVEL".into(), "debug".into())),
        "{env:?}"
    );
    wait_for("three operator pods admitted", SETTLE, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        Ok((list.items.len() >= 3).then_some(()))
    })
    .await?;
    for crd in CRDS {
        assert_eq!(crds.get(crd).await?.uid(), crd_uids[crd], "{crd}");
    }

    // Uninstall: the operator goes; what tenants depend on stays.
    drop(operator);
    helm.uninstall(RELEASE, &namespace)?;
    wait_for("the Deployment gone", SETTLE, || async {
        Ok(deployments
            .get_opt("ft-operator")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    assert!(accounts.get_opt("ft-operator").await?.is_none());
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(cluster_roles.get_opt("ft-operator").await?.is_none());
    for role in ["ft-tenant-admin", "ft-tenant-developer", "ft-tenant-viewer"] {
        assert!(cluster_roles.get_opt(role).await?.is_some(), "{role} kept");
    }
    for crd in CRDS {
        assert_eq!(crds.get(crd).await?.uid(), crd_uids[crd], "{crd} kept");
    }
    let tenant_after = tenants.get(&tenant_name).await?;
    assert_eq!(tenant_after.uid(), tenant.uid());
    for (ns, uid) in &namespace_uids {
        let kept = namespaces.get(ns).await?;
        assert_eq!(&kept.uid(), uid, "{ns}");
        assert!(kept.metadata.deletion_timestamp.is_none(), "{ns}");
    }
    assert_eq!(secrets.get(&key).await?.uid(), key_uid, "the tenant's key");
    assert!(namespaces.get_opt(&namespace).await?.is_some());

    // Reinstalling takes the kept objects back and the operator picks the tenant up.
    helm.install(RELEASE, &namespace, &values)?;
    let operator = Operator::start_with_env(&env, &kubeconfig)?;
    wait_for("the reinstalled operator leading", SETTLE, || async {
        Ok((operator.metric("ft_leader").await.unwrap_or(0.0) == 1.0).then_some(()))
    })
    .await?;
    operator
        .poke(&client, &tenant_name, &tenant_namespaces[0])
        .await?;
    for crd in CRDS {
        assert_eq!(crds.get(crd).await?.uid(), crd_uids[crd], "{crd}");
    }
    drop(operator);
    helm.uninstall(RELEASE, &namespace)?;

    // Clean up with an operator of full rights: the tenant is shredded as usual.
    let cleaner = Operator::start(&namespace, &unique("ft-chart-cleanup"))?;
    delete_tenant(&client, &tenant_name).await?;
    drop(cleaner);
    webhooks
        .delete(WEBHOOK_CONFIGURATION, &DeleteParams::default())
        .await?;
    for ns in [&namespace, &velero] {
        namespaces.delete(ns, &DeleteParams::default()).await?;
    }
    Ok(())
}
