//! End-to-end: access grants against a real API server. A grant becomes a RoleBinding that the
//! API server's authorizer honours (`kubectl auth can-i --as`); at its expiry the binding goes
//! within two seconds and the answer turns to no; a binding made by hand fails the access
//! control and is deleted once the tenant asks for it; a grant to a system group is refused.

use std::time::{Duration, Instant};

use anyhow::bail;
use ft_core::api::{
    AccessGrant, ComplianceReport, ControlResult, FranceTravailTenant, Role, Subject, SubjectKind,
};
use ft_e2e::{
    Operator, TestNodes, can_i, cluster, delete_tenant, ensure_namespace, example_tenant,
    install_access_roles, install_crds, install_velero, unique, wait_for,
};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);
const ALICE: &str = "alice@example.org";

fn grant(user: &str, role: Role, environments: &[&str], expires: jiff::Timestamp) -> AccessGrant {
    AccessGrant {
        subject: Subject {
            kind: SubjectKind::User,
            name: user.into(),
        },
        role,
        environments: environments.iter().map(|e| e.to_string()).collect(),
        expires: Time(expires),
        reviewed_at: Some(Time(jiff::Timestamp::now())),
        suspended: false,
    }
}

/// Whole seconds, as the API server stores times.
fn in_seconds(seconds: i64) -> anyhow::Result<jiff::Timestamp> {
    Ok(jiff::Timestamp::from_second(
        jiff::Timestamp::now().as_second() + seconds,
    )?)
}

async fn bindings_of(
    client: &Client,
    namespace: &str,
    user: &str,
) -> anyhow::Result<Vec<RoleBinding>> {
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|b| b.subjects.iter().flatten().any(|s| s.name == user))
        .collect())
}

async fn event_reasons(client: &Client, tenant: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Event> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("involvedObject.name={tenant}"));
    Ok(api
        .list(&params)
        .await?
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

async fn control(
    client: &Client,
    tenant: &str,
    id: &str,
) -> anyhow::Result<Option<(ControlResult, String)>> {
    let report = Api::<ComplianceReport>::all(client.clone())
        .get_opt(tenant)
        .await?;
    Ok(report.and_then(|r| {
        r.status?
            .controls
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| (c.result, c.message))
    }))
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn rights_appear_and_disappear_exactly_as_the_grants_say() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    install_access_roles(&client).await?;
    install_velero(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;

    let name = unique("e2e-acc");
    let (dev, prod) = (format!("{name}-dev"), format!("{name}-prod"));
    let mut tenant = example_tenant("tenant.yaml", &name)?;
    tenant.spec.access.grants = vec![grant(
        ALICE,
        Role::Developer,
        &["dev", "prod"],
        in_seconds(24 * 3600)?,
    )];
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants.create(&PostParams::default(), &tenant).await?;

    // Bound in both environments; a developer changes development and only reads production.
    wait_for("Alice's bindings", SETTLE, || async {
        let both = !bindings_of(&client, &dev, ALICE).await?.is_empty()
            && !bindings_of(&client, &prod, ALICE).await?.is_empty();
        Ok(both.then_some(()))
    })
    .await?;
    assert!(can_i(ALICE, "create", "deployments.apps", &dev)?);
    assert!(can_i(ALICE, "create", "pods/exec", &dev)?);
    assert!(can_i(ALICE, "get", "pods", &prod)?);
    assert!(!can_i(ALICE, "create", "deployments.apps", &prod)?);
    assert!(!can_i(ALICE, "get", "secrets", &prod)?);
    assert!(!can_i(
        ALICE,
        "create",
        "networkpolicies.networking.k8s.io",
        &dev
    )?);

    // The status lists the right in force.
    let listed = tenants.get(&name).await?;
    let holders: Vec<String> = listed
        .status
        .iter()
        .flat_map(|s| &s.grants)
        .map(|g| g.subject.name.clone())
        .collect();
    assert_eq!(holders, [ALICE]);

    // The grant now lapses a few seconds ahead: the binding must go within 2 s of that instant.
    let expiry = in_seconds(6)?;
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"grants": [
                serde_json::to_value(grant(ALICE, Role::Developer, &["dev", "prod"], expiry))?
            ]}}})),
        )
        .await?;
    let started = Instant::now();
    let gone = loop {
        if bindings_of(&client, &dev, ALICE).await?.is_empty()
            && bindings_of(&client, &prod, ALICE).await?.is_empty()
        {
            break jiff::Timestamp::now();
        }
        if started.elapsed() > SETTLE {
            bail!("Alice's bindings were still there a minute after her grant expired");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let late = gone.duration_since(expiry);
    eprintln!("e2e: bindings gone {late:#} after the expiry instant");
    assert!(
        late <= jiff::SignedDuration::from_secs(2),
        "revoked {late:#} after expiry"
    );
    assert!(
        late >= jiff::SignedDuration::ZERO,
        "revoked {late:#} before the expiry instant"
    );
    assert!(!can_i(ALICE, "create", "deployments.apps", &dev)?);
    assert!(!can_i(ALICE, "get", "pods", &prod)?);
    wait_for("AccessGranted and AccessExpired Events", SETTLE, || async {
        let reasons = event_reasons(&client, &name).await?;
        let both = reasons.iter().any(|r| r == "AccessGranted")
            && reasons.iter().any(|r| r == "AccessExpired");
        Ok(both.then_some(()))
    })
    .await?;

    // A RoleBinding made by hand fails the access control, naming it …
    let by_hand: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "mallory-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ft-tenant-developer"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory@example.org"}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), &dev)
        .create(&PostParams::default(), &by_hand)
        .await?;
    let message = wait_for("ACC-1 to fail", SETTLE, || async {
        Ok(control(&client, &name, "ACC-1")
            .await?
            .filter(|(r, _)| *r == ControlResult::Fail)
            .map(|(_, m)| m))
    })
    .await?;
    assert!(
        message.contains(&format!("RoleBinding/{dev}/mallory-edit")),
        "{message}"
    );
    assert!(can_i(
        "mallory@example.org",
        "create",
        "deployments.apps",
        &dev
    )?);

    // … and is deleted once the tenant says so.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"pruneUndeclared": true}}})),
        )
        .await?;
    wait_for("the hand-made binding to be deleted", SETTLE, || async {
        Ok(bindings_of(&client, &dev, "mallory@example.org")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    assert!(!can_i(
        "mallory@example.org",
        "create",
        "deployments.apps",
        &dev
    )?);
    wait_for("ACC-1 to pass again", SETTLE, || async {
        Ok(control(&client, &name, "ACC-1")
            .await?
            .filter(|(r, _)| *r == ControlResult::Pass)
            .map(|_| ()))
    })
    .await?;

    // Deleted while the operator runs, so that nothing of the tenant is left behind.
    delete_tenant(&client, &name).await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_grant_to_a_shared_identity_is_refused_by_the_api_server() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let name = unique("e2e-shared");
    let mut tenant = example_tenant("tenant.yaml", &name)?;
    let mut shared = grant(ALICE, Role::Viewer, &["dev"], in_seconds(3600)?);
    shared.subject = Subject {
        kind: SubjectKind::Group,
        name: "system:authenticated".into(),
    };
    tenant.spec.access.grants = vec![shared];
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let refused = tenants.create(&PostParams::default(), &tenant).await;
    let Err(kube::Error::Api(status)) = refused else {
        if refused.is_ok() {
            tenants.delete(&name, &DeleteParams::default()).await?;
        }
        bail!("a grant to system:authenticated was accepted: {refused:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("spec.access.grants[0].subject.name"),
        "{}",
        status.message
    );
    assert!(status.message.contains("CLD-14"), "{}", status.message);
    assert!(tenants.get_opt(&name).await?.is_none());
    Ok(())
}
