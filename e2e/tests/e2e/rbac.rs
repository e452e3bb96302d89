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

/// A client that acts as the operator's ServiceAccount, as a stolen token would.
async fn as_operator(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// The request was refused (403), and by what `why` names: the operator limits policy's
/// message, or RBAC's "forbidden".
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, why: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => assert!(
            status.message.contains(why),
            "{what}: refused, but not by {why:?}: {}",
            status.message
        ),
        other => panic!("{what}: not refused: {other:?}"),
    }
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn the_operators_token_reaches_nothing_outside_tenant_namespaces() -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
    };
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    use serde_json::json;

    let admin: Client = cluster().await?;
    install_crds(&admin).await?;
    install_access_roles(&admin).await?;
    ensure_namespace(&admin, OPERATOR_NAMESPACE).await?;
    install_velero(&admin).await?;
    apply_operator_rbac()?;
    let kubeconfig = kubeconfig_as_service_account(OPERATOR_NAMESPACE, "ft-operator")?;
    let stolen = as_operator(&kubeconfig).await?;
    let limits = "ft-operator: ";
    let create = PostParams::default();
    let object = |value: serde_json::Value| value;

    // A namespace no tenant owns, and one labelled as a tenant's, made by the platform team.
    let plain = unique("e2e-plain");
    let tenant = unique("e2e-owned");
    let tenant_ns = format!("{tenant}-prod");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &create,
            &serde_json::from_value(json!({"metadata": {"name": plain}}))?,
        )
        .await?;
    namespaces
        .create(
            &create,
            &serde_json::from_value(json!({"metadata": {"name": tenant_ns,
                "labels": {"hosting.francetravail.fr/tenant": tenant}}}))?,
        )
        .await?;
    // The policy takes effect a moment after it is made: wait until it refuses.
    let bindings_in = |ns: &str| Api::<RoleBinding>::namespaced(stolen.clone(), ns);
    let admin_binding = |ns: &str| -> anyhow::Result<RoleBinding> {
        Ok(serde_json::from_value(object(json!({
            "metadata": {"name": "stolen", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ft-tenant-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
        })))?)
    };
    wait_for("the limits policy to refuse", SETTLE, || async {
        Ok(
            match bindings_in("kube-system")
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &admin_binding("kube-system")?,
                )
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 => Some(()),
                _ => None,
            },
        )
    })
    .await?;

    // RoleBindings: none outside tenant namespaces, none to another role inside them.
    for ns in [
        "kube-system",
        OPERATOR_NAMESPACE,
        ft_e2e::VELERO_NAMESPACE,
        plain.as_str(),
    ] {
        refused(
            &format!("a RoleBinding to ft-tenant-admin in {ns}"),
            bindings_in(ns).create(&create, &admin_binding(ns)?).await,
            limits,
        );
    }
    let mut cluster_admin = admin_binding(&tenant_ns)?;
    cluster_admin.role_ref.name = "cluster-admin".into();
    refused(
        "a RoleBinding to cluster-admin in a tenant namespace",
        bindings_in(&tenant_ns)
            .create(&create, &cluster_admin)
            .await,
        "forbidden",
    );
    // The same to an access role in a tenant namespace is the operator's job: allowed.
    bindings_in(&tenant_ns)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &admin_binding(&tenant_ns)?,
        )
        .await?;

    // Admission: no policy written, no webhook but its own.
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(stolen.clone());
    refused(
        "a ValidatingAdmissionPolicy",
        policies
            .create(
                &create,
                &serde_json::from_value(json!({"metadata": {"name": "evil"}, "spec": {}}))?,
            )
            .await,
        "forbidden",
    );
    refused(
        "a change to ft-placement",
        policies
            .patch(
                "ft-placement",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"failurePolicy": "Ignore"}})),
            )
            .await,
        "forbidden",
    );
    refused(
        "deleting ft-placement",
        policies
            .delete("ft-placement", &DeleteParams::default())
            .await,
        "forbidden",
    );
    // Where policies confine pods (the default) it holds no right on webhook configurations;
    // where its webhook does, the limits policy holds it to its own (`ft-operator rbac
    // --webhook`).
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(stolen.clone());
    refused(
        "a webhook configuration",
        webhooks
            .create(
                &create,
                &serde_json::from_value(json!({"metadata": {"name": "evil"}}))?,
            )
            .await,
        "forbidden",
    );

    // Namespaces: none made, labelled or deleted but tenants'.
    let stolen_namespaces: Api<Namespace> = Api::all(stolen.clone());
    refused(
        "an unlabelled namespace",
        stolen_namespaces
            .create(
                &create,
                &serde_json::from_value(json!({"metadata": {"name": unique("e2e-evil")}}))?,
            )
            .await,
        limits,
    );
    refused(
        "labelling a namespace as a tenant's",
        stolen_namespaces
            .patch(
                &plain,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"hosting.francetravail.fr/tenant": tenant}}}),
                ),
            )
            .await,
        limits,
    );
    refused(
        "deleting a namespace no tenant owns",
        stolen_namespaces
            .delete(&plain, &DeleteParams::default())
            .await,
        limits,
    );
    refused(
        "a NetworkPolicy in kube-system",
        Api::<NetworkPolicy>::namespaced(stolen.clone(), "kube-system")
            .create(
                &create,
                &serde_json::from_value(
                    json!({"metadata": {"name": "evil"}, "spec": {"podSelector": {}}}),
                )?,
            )
            .await,
        limits,
    );
    refused(
        "a StorageClass not a tenant's own",
        Api::<StorageClass>::all(stolen.clone())
            .create(&create, &serde_json::from_value(json!({"metadata": {"name": "evil",
                "labels": {"hosting.francetravail.fr/tenant": tenant}}, "provisioner": "example.org/evil"}))?)
            .await,
        limits,
    );
    refused(
        "reading a Secret of kube-system",
        Api::<Secret>::namespaced(stolen.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "forbidden",
    );

    // Velero: no backup of the operator's namespace, whatever tenant it claims to be for.
    let backups: Api<kube::api::DynamicObject> = Api::namespaced_with(
        stolen.clone(),
        ft_e2e::VELERO_NAMESPACE,
        &kube::api::ApiResource::erase::<ft_core::backup::velero::Backup>(&()),
    );
    refused(
        "a Backup of the operator's namespace",
        backups
            .create(
                &create,
                &serde_json::from_value(json!({
                    "apiVersion": "velero.io/v1", "kind": "Backup",
                    "metadata": {"name": unique("e2e-evil"), "namespace": ft_e2e::VELERO_NAMESPACE,
                        "labels": {"hosting.francetravail.fr/tenant": tenant}},
                    "spec": {"includedNamespaces": [OPERATOR_NAMESPACE]},
                }))?,
            )
            .await,
        limits,
    );

    for ns in [&plain, &tenant_ns] {
        namespaces.delete(ns, &DeleteParams::default()).await?;
    }
    std::fs::remove_file(&kubeconfig)?;
    Ok(())
}
