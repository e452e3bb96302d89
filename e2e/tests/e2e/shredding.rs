//! End-to-end: a tenant's own key and encrypted class, and crypto-shredding, against a real API
//! server. The tenant gets its key Secret and class; a claim on another class is refused in its
//! namespaces and accepted elsewhere; an unconfirmed deletion is refused; a confirmed one
//! destroys the key first, then the namespaces, then the rest, has Velero delete the tenant's
//! backups, survives the operator being killed midway, and leaves one record with every step's
//! time. A deletion admission did not see (as the CRD's deletion would be) is held, the tenant
//! enforced, until it is confirmed.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ft_core::api::{ComplianceReport, ControlResult, FranceTravailTenant};
use ft_core::backup::velero::Backup as VeleroBackup;
use ft_core::shredding::protection::DELETION_PROTECTION;
use ft_e2e::{
    Operator, TestNodes, VELERO_NAMESPACE, can_i, carry_out_backup_deletions, cluster,
    confirm_and_delete, create_example_tenant, ensure_namespace, install_access_roles,
    install_admission_policies, install_crds, install_velero, unique, wait_for,
};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Secret,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);

fn claim(name: &str, class: &str) -> anyhow::Result<PersistentVolumeClaim> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))?)
}

/// Creates a claim, retrying while the admission policies are not yet in force; returns the
/// API server's refusal, if it refuses.
async fn try_claim(
    client: &Client,
    namespace: &str,
    pvc: &PersistentVolumeClaim,
) -> anyhow::Result<Option<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), pvc).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) => Ok(Some(s.message)),
        Err(e) => Err(e.into()),
    }
}

async fn exists<K>(api: &Api<K>, name: &str) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_some())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_confirmed_deletion_destroys_the_key_first_and_leaves_a_record() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    install_velero(&client).await?;
    install_access_roles(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;

    let name = unique("e2e-shred");
    let (dev, prod) = (format!("{name}-dev"), format!("{name}-prod"));
    let class = format!("ft-{name}-encrypted");
    let key_name = format!("ft-key-{name}");
    let tenants = create_example_tenant(&client, &name).await?;

    // Its key, in the operator's namespace, and its class.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let classes: Api<StorageClass> = Api::all(client.clone());
    wait_for("the key Secret and the class", SETTLE, || async {
        Ok((exists(&secrets, &key_name).await? && exists(&classes, &class).await?).then_some(()))
    })
    .await?;
    let made = classes.get(&class).await?;
    assert_eq!(made.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(made.provisioner, "driver.longhorn.io");
    let fingerprint = wait_for("the key fingerprint in the status", SETTLE, || async {
        Ok(tenants
            .get(&name)
            .await?
            .status
            .and_then(|s| s.key_fingerprint))
    })
    .await?;
    // No key in any tenant namespace.
    for ns in [&dev, &prod] {
        let in_tenant: Api<Secret> = Api::namespaced(client.clone(), ns);
        let found = in_tenant.list(&ListParams::default()).await?;
        assert!(
            found
                .items
                .iter()
                .all(|s| s.type_.as_deref() != Some("hosting.francetravail.fr/tenant-key")),
            "a key Secret in {ns}"
        );
    }

    // A claim on another class is refused in the tenant's namespace, accepted in `default`.
    let refusal = wait_for("claims on other classes to be refused", SETTLE, || async {
        let pvc = claim(&unique("other"), "standard")?;
        let refused = try_claim(&client, &dev, &pvc).await?;
        if refused.is_none() {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &dev);
            api.delete(
                pvc.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await?;
        }
        Ok(refused)
    })
    .await?;
    assert!(
        refusal.contains("CLD-21") && refusal.contains(&class),
        "{refusal}"
    );
    assert_eq!(
        try_claim(&client, &dev, &claim("data", &class)?).await?,
        None
    );

    // A volume not provisioned by the tenant's class, bound to one of its claims, fails ENC-2.
    let stray_pv = unique("pv-stray");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": stray_pv},
        "spec": {
            "storageClassName": "standard",
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/stray"},
            "claimRef": {"namespace": dev, "name": "bound"}
        }
    }))?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    volumes.create(&PostParams::default(), &pv).await?;
    let mut bound = claim("bound", &class)?;
    if let Some(spec) = bound.spec.as_mut() {
        spec.volume_name = Some(stray_pv.clone());
    }
    assert_eq!(try_claim(&client, &dev, &bound).await?, None);
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    let message = wait_for("ENC-2 to fail for the stray volume", SETTLE, || async {
        let report = reports.get_opt(&name).await?;
        Ok(report
            .and_then(|r| r.status)
            .and_then(|s| s.controls.into_iter().find(|c| c.id == "ENC-2"))
            .filter(|c| c.result == ControlResult::Fail)
            .map(|c| c.message))
    })
    .await?;
    assert!(
        message.contains(&format!("PersistentVolume/{stray_pv}"))
            && message.contains("provisioned by standard"),
        "{message}"
    );
    volumes.delete(&stray_pv, &DeleteParams::default()).await?;

    // The key is out of reach of the tenant's own administrator.
    let admin = "claire.martin@example.org";
    wait_for("the administrator's grant", SETTLE, || async {
        Ok(can_i(admin, "get", "secrets", &prod)?.then_some(()))
    })
    .await?;
    assert!(!can_i(admin, "get", "secrets", OPERATOR_NAMESPACE)?);
    let elsewhere = claim(&unique("elsewhere"), "standard")?;
    assert_eq!(try_claim(&client, "default", &elsewhere).await?, None);
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .delete(
            elsewhere.metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;

    // An unconfirmed deletion is refused, saying what to do.
    let refused = tenants.delete(&name, &DeleteParams::default()).await;
    let Err(kube::Error::Api(status)) = refused else {
        bail!("an unconfirmed deletion was accepted: {refused:?}");
    };
    assert!(
        status.message.contains(&format!(
            "kubectl annotate francetravailtenant {name} hosting.francetravail.fr/confirm-deletion={name}"
        )),
        "{}",
        status.message
    );
    assert!(exists(&tenants, &name).await?);

    // Who confirms is written by admission, never by hand.
    let forged = tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "hosting.francetravail.fr/deletion-confirmed-by": "someone-else"
            }}})),
        )
        .await;
    assert!(forged.is_err(), "a forged confirmation was accepted");

    // A backup of production, as Velero's Schedule would have taken it.
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let backup_name = format!(
        "ft-{name}-prod-{}",
        jiff::Timestamp::now().strftime("%Y%m%d%H%M%S")
    );
    let backup: VeleroBackup = serde_json::from_value(json!({
        "apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": backup_name, "namespace": VELERO_NAMESPACE, "labels": {
            "hosting.francetravail.fr/tenant": name,
            "hosting.francetravail.fr/environment": "prod",
            "hosting.francetravail.fr/backup-purpose": "schedule",
            // Copied by Velero from the Schedule's template: the operator watches only these.
            "app.kubernetes.io/managed-by": "ft-operator",
        }},
        "spec": {"includedNamespaces": [prod], "storageLocation": "backups-gra"},
        "status": {"phase": "Completed", "completionTimestamp": jiff::Timestamp::now().to_string()},
    }))?;
    backups.create(&PostParams::default(), &backup).await?;

    // Confirmed: the key goes first. The operator is killed as soon as it has.
    confirm_and_delete(&client, &name).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for("the key Secret to go", SETTLE, || async {
        Ok((!exists(&secrets, &key_name).await?).then_some(()))
    })
    .await?;
    let both_namespaces_there_when_key_went =
        exists(&namespaces, &dev).await? || exists(&namespaces, &prod).await?;
    drop(operator);
    assert!(
        both_namespaces_there_when_key_went,
        "the namespaces were gone before the key"
    );
    assert!(
        exists(&tenants, &name).await?,
        "the tenant went without its operator"
    );

    // A new operator completes it.
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    wait_for(
        "the tenant to be shredded",
        Duration::from_secs(180),
        || async { Ok((!exists(&tenants, &name).await?).then_some(())) },
    )
    .await?;
    for ns in [&dev, &prod] {
        assert!(!exists(&namespaces, ns).await?, "{ns} left");
    }
    assert!(!exists(&classes, &class).await?, "{class} left");
    assert!(!exists(&reports, &name).await?);
    // Velero was asked to delete the backup (confirm_and_delete played Velero's part).
    assert!(!exists(&backups, &backup_name).await?, "{backup_name} left");
    let requests = carry_out_backup_deletions(&client, &name).await?;
    assert!(
        requests.iter().any(|r| r.spec.backup_name == backup_name
            && r.metadata.name.as_deref() == Some(format!("{backup_name}-ft-delete").as_str())),
        "no DeleteBackupRequest for {backup_name}: {requests:?}"
    );
    // The cluster-wide admission policies are not the tenant's: they stay for the others.
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    for policy in ["ft-claims", "ft-placement"] {
        assert!(exists(&policies, policy).await?, "{policy} deleted");
    }

    // One record, in the operator's namespace, with every step's time in order.
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let found = records
        .list(&ListParams::default().labels(&format!(
            "hosting.francetravail.fr/shredding-record=true,hosting.francetravail.fr/tenant={name}"
        )))
        .await?;
    assert_eq!(found.items.len(), 1);
    let body = found.items[0]
        .data
        .as_ref()
        .and_then(|d| d.get("record.yaml"))
        .context("record.yaml")?;
    eprintln!("e2e: shredding record\n{body}");
    let record: serde_json::Value = serde_saphyr::from_str(body)?;
    assert_eq!(record["keyFingerprint"], fingerprint.as_str());
    let confirmed = record["deletionConfirmedBy"].as_str().unwrap_or_default();
    assert!(confirmed.starts_with("user "), "{confirmed}");
    let time = |field: &str| -> anyhow::Result<jiff::Timestamp> {
        record[field]
            .as_str()
            .with_context(|| format!("{field} missing"))?
            .parse()
            .with_context(|| format!("{field} is not a time"))
    };
    let steps = [
        "deletionRequestedAt",
        "startedAt",
        "keyDestroyedAt",
        "namespacesDeletedAt",
        "clusterObjectsDeletedAt",
        "backupsDeletedAt",
        "recordedAt",
    ];
    for pair in steps.windows(2) {
        assert!(
            time(pair[0])? <= time(pair[1])?,
            "{} after {}",
            pair[0],
            pair[1]
        );
    }
    assert!(!body.contains("CRYPTO_KEY_VALUE"));
    assert!(
        record["backupsDeleted"].as_array().is_some_and(|b| b
            .iter()
            .any(|b| b == &json!(format!("Backup {VELERO_NAMESPACE}/{backup_name}")))),
        "{body}"
    );
    let requests: Api<ft_core::shredding::backups::DeleteBackupRequest> =
        Api::namespaced(client.clone(), VELERO_NAMESPACE);
    requests
        .delete(
            &format!("{backup_name}-ft-delete"),
            &DeleteParams::default(),
        )
        .await?;
    records
        .delete(
            found.items[0].metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_deletion_admission_did_not_see_is_held_until_confirmed() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    install_access_roles(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;

    let name = unique("e2e-held");
    let (dev, prod) = (format!("{name}-dev"), format!("{name}-prod"));
    let key_name = format!("ft-key-{name}");
    let tenants = create_example_tenant(&client, &name).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    wait_for("the key Secret", SETTLE, || async {
        Ok(exists(&secrets, &key_name).await?.then_some(()))
    })
    .await?;

    // A deletion the protection does not see, as the CRD's deletion would delete every tenant:
    // the protection's binding is taken away for the time of one delete, then put back.
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    bindings
        .delete(DELETION_PROTECTION, &DeleteParams::default())
        .await?;
    let deleted = wait_for(
        "the unconfirmed deletion to be let through",
        SETTLE,
        || async {
            Ok(tenants
                .delete(&name, &DeleteParams::default())
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await;
    install_admission_policies(&client).await?;
    deleted?;

    // Held: the condition says why and how to confirm; the key and namespaces stay.
    let held = |t: &FranceTravailTenant| {
        t.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "DeletionHeld" && c.status == "True")
            .map(|c| c.message.clone())
    };
    let message = wait_for("the deletion to be held", SETTLE, || async {
        Ok(tenants.get_opt(&name).await?.as_ref().and_then(held))
    })
    .await?;
    assert!(
        message.contains(&format!(
            "kubectl annotate francetravailtenant {name} hosting.francetravail.fr/confirm-deletion={name}"
        )),
        "{message}"
    );
    assert!(
        exists(&secrets, &key_name).await?,
        "the key went unconfirmed"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&dev, &prod] {
        let found = namespaces.get_opt(ns).await?;
        assert!(
            found.is_some_and(|n| n.metadata.deletion_timestamp.is_none()),
            "{ns} deleted unconfirmed"
        );
    }
    let tenant = tenants.get(&name).await?;
    assert!(tenant.metadata.deletion_timestamp.is_some());
    assert!(tenant.status.and_then(|s| s.shredding).is_none());

    // Confirmed: the shredding proceeds.
    confirm_and_delete(&client, &name).await?;
    wait_for(
        "the tenant to be shredded",
        Duration::from_secs(180),
        || async { Ok((!exists(&tenants, &name).await?).then_some(())) },
    )
    .await?;
    assert!(!exists(&secrets, &key_name).await?, "the key stayed");
    for ns in [&dev, &prod] {
        assert!(!exists(&namespaces, ns).await?, "{ns} left");
    }
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    for record in records
        .list(&ListParams::default().labels(&format!(
            "hosting.francetravail.fr/shredding-record=true,hosting.francetravail.fr/tenant={name}"
        )))
        .await?
        .items
    {
        records
            .delete(
                record.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await?;
    }
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}
