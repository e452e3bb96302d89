//! End-to-end, the red team: each way around the rules attempted as it would be in real life, on
//! a real API server, by the tenant's own administrator (impersonated) or by a careless
//! platform engineer, and each refused at admission or reported by a control, naming the rule.
//! The rows are those of the README's "Ways around the rules" table.

use std::time::Duration;

use ft_core::api::{ComplianceReport, ControlResult, FranceTravailTenant};
use ft_e2e::{
    Operator, TestNodes, cluster, delete_tenant, ensure_namespace, example_tenant, install_crds,
    restricted_pod, unique, wait_for,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(60);
/// The example tenant's production administrator (`examples/tenant.yaml`).
const TENANT_ADMIN: &str = "claire.martin@example.org";

const DRY_RUN: PostParams = PostParams {
    dry_run: true,
    field_manager: None,
};

/// A client acting as `user`, through the API server's impersonation.
async fn client_as(user: &str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user.into());
    Ok(Client::try_from(config)?)
}

/// The message of a refusal, or a failure saying what was admitted.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
            eprintln!("e2e: {what}: refused: {}", s.message);
            s.message
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

/// Waits until `attempt` is refused: policies and EnvironmentPolicies take effect a moment
/// after the tenant is reconciled.
async fn wait_refused<F, Fut, T>(what: &str, attempt: F) -> anyhow::Result<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    wait_for(what, SETTLE, || async {
        Ok(match attempt().await {
            Err(kube::Error::Api(s)) if s.code == 403 => Some(s.message),
            _ => None,
        })
    })
    .await
}

async fn wait_ready(client: &Client, name: &str) -> anyhow::Result<FranceTravailTenant> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    wait_for(&format!("tenant {name} Ready"), SETTLE, || async {
        Ok(tenants.get_opt(name).await?.filter(ft_e2e::is_ready))
    })
    .await
}

/// The example tenant, plus a public front end: an ingress flow from anywhere that exposes
/// Service `front` as a LoadBalancer.
fn tenant_with_front_end(name: &str) -> anyhow::Result<FranceTravailTenant> {
    let mut tenant = example_tenant("tenant.yaml", name)?;
    tenant
        .spec
        .network
        .ingress
        .push(serde_json::from_value(json!({
            "name": "public", "nature": "production", "environments": ["prod"],
            "from": [{"cidr": "0.0.0.0/0"}], "ports": [{"port": 8443}],
            "expose": {"service": "front", "type": "LoadBalancer"},
        }))?);
    Ok(tenant)
}

fn service(name: &str, spec: Value) -> anyhow::Result<Service> {
    let mut spec = spec;
    if spec.get("ports").is_none() && spec.get("type") != Some(&json!("ExternalName")) {
        spec["ports"] = json!([{"port": 8443}]);
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

fn claim(name: &str, class: &str, annotations: Value) -> anyhow::Result<PersistentVolumeClaim> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "storageClassName": class,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        }
    }))?)
}

/// Rows 2, 3, 4, 6 and 9, as the tenant's own administrator would try them in production.
#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn the_tenant_administrator_finds_no_way_around_the_rules() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ft_e2e::install_access_roles(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-red");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &tenant_with_front_end(&name)?)
        .await?;
    wait_ready(&client, &name).await?;
    let prod = format!("{name}-prod");
    let dev = format!("{name}-dev");
    let class = format!("ft-{name}-encrypted");
    let admin = client_as(TENANT_ADMIN).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &prod);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &prod);
    let services: Api<Service> = Api::namespaced(admin.clone(), &prod);

    // The administrator may do their job: a claim on the tenant's class, a plain pod, a
    // ClusterIP Service and the declared LoadBalancer are admitted.
    let good = claim("data", &class, json!({}))?;
    wait_for(
        "a claim on the tenant's class to be admitted",
        SETTLE,
        || async { Ok(claims.create(&DRY_RUN, &good).await.ok().map(|_| ())) },
    )
    .await?;
    services
        .create(&DRY_RUN, &service("internal", json!({}))?)
        .await?;
    let front = service("front", json!({"type": "LoadBalancer"}))?;
    wait_for(
        "the declared LoadBalancer to be admitted",
        SETTLE,
        || async { Ok(services.create(&DRY_RUN, &front).await.ok().map(|_| ())) },
    )
    .await?;

    // Row 2: the beta class annotation wins over spec.storageClassName in provisioning.
    let beta = json!({"volume.beta.kubernetes.io/storage-class": "standard"});
    let message = refused(
        "a claim naming the tenant's class with the beta annotation",
        claims
            .create(&DRY_RUN, &claim("sneaky", &class, beta.clone())?)
            .await,
    );
    assert!(
        message.contains("volume.beta.kubernetes.io/storage-class"),
        "{message}"
    );
    assert!(
        message.contains("CLD-21") && message.contains(&name),
        "{message}"
    );
    // … and through a generic ephemeral volume's claim template, on another class or with it.
    for (what, template) in [
        (
            "an ephemeral volume on another class",
            json!({"spec": {"storageClassName": "standard", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        (
            "an ephemeral volume with the beta annotation",
            json!({"metadata": {"annotations": beta}, "spec": {"storageClassName": class,
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
    ] {
        let pod = restricted_pod(
            "ephemeral",
            json!({"volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": template}}]}),
        )?;
        let message = refused(what, pods.create(&DRY_RUN, &pod).await);
        assert!(
            message.contains("ephemeral") && message.contains("CLD-21"),
            "{message}"
        );
    }

    // Row 3: an inline CSI volume, storage no claim policy would see.
    let csi = restricted_pod(
        "inline",
        json!({"volumes": [{"name": "disk", "csi": {"driver": "ebs.csi.aws.com",
            "volumeAttributes": {"encrypted": "false"}}}]}),
    )?;
    let message = refused("an inline CSI volume", pods.create(&DRY_RUN, &csi).await);
    assert!(
        message.contains("inline CSI") && message.contains("CLD-21"),
        "{message}"
    );

    // Row 4: exposure the flow matrix does not declare.
    for (what, svc, expected) in [
        (
            "an undeclared LoadBalancer",
            service("shadow", json!({"type": "LoadBalancer"}))?,
            "no ingress flow",
        ),
        (
            "a NodePort",
            service("shadow", json!({"type": "NodePort"}))?,
            "no ingress flow",
        ),
        (
            "a LoadBalancer under the declared name but as NodePort",
            service("front", json!({"type": "NodePort"}))?,
            "no ingress flow",
        ),
        (
            "externalIPs",
            service("shadow", json!({"externalIPs": ["203.0.113.10"]}))?,
            "externalIPs",
        ),
        (
            "an ExternalName",
            service(
                "shadow",
                json!({"type": "ExternalName", "externalName": "exfiltration.example.com"}),
            )?,
            "ExternalName",
        ),
    ] {
        let message = refused(what, services.create(&DRY_RUN, &svc).await);
        assert!(message.contains(expected), "{what}: {message}");
        assert!(message.contains("CLD-36"), "{what}: {message}");
    }
    // The declared front end is LoadBalancer in production only: in development it is not.
    let dev_services: Api<Service> = Api::namespaced(client.clone(), &dev);
    let message = refused(
        "the front end exposed in an environment its flow does not name",
        dev_services.create(&DRY_RUN, &front).await,
    );
    assert!(
        message.contains("no ingress flow of environment dev"),
        "{message}"
    );
    // Turning a ClusterIP Service into a LoadBalancer later is refused too.
    let internal = Api::<Service>::namespaced(client.clone(), &prod);
    internal
        .create(&PostParams::default(), &service("later", json!({}))?)
        .await?;
    let message = refused(
        "a ClusterIP Service turned into a LoadBalancer",
        internal
            .patch(
                "later",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"type": "LoadBalancer"}})),
            )
            .await,
    );
    assert!(message.contains("no ingress flow"), "{message}");

    // Row 6: a region outside the placement in nodeSelector is refused, not left Pending.
    let us = restricted_pod(
        "virginia",
        json!({"nodeSelector": {"topology.kubernetes.io/region": "us-east-1"}}),
    )?;
    let message = wait_refused("a pod selecting us-east-1", || pods.create(&DRY_RUN, &us)).await?;
    assert!(
        message.contains("spec.nodeSelector") && message.contains("CLD-74"),
        "{message}"
    );
    // … and a development pod selecting the production pool.
    let dev_pods: Api<Pod> = Api::namespaced(client.clone(), &dev);
    let onto_pool = restricted_pod(
        "onto-pool",
        json!({"nodeSelector": {"node-pool.example.org/name": "production"}}),
    )?;
    let message = refused(
        "a development pod selecting the production pool",
        dev_pods.create(&DRY_RUN, &onto_pool).await,
    );
    assert!(
        message.contains("spec.nodeSelector") && message.contains("CLD-25"),
        "{message}"
    );

    // Row 9: binding a pod to a node of one's choice (`pods/binding`) is not the tenant's to do.
    // The authorizer answers before the pod is looked up: 403, not 404.
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "any"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": nodes.us},
    });
    match pods
        .create_subresource::<Value, Value>("binding", "any", &PostParams::default(), &binding)
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => eprintln!("e2e: pods/binding: {}", s.message),
        other => panic!("the tenant administrator could bind a pod: {other:?}"),
    }

    internal.delete("later", &DeleteParams::default()).await?;
    delete_tenant(&client, &name).await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}

/// A tenant with a single development environment and nothing else.
fn small_tenant(name: &str, environment: &str) -> anyhow::Result<FranceTravailTenant> {
    let mut tenant = example_tenant("tenant.yaml", name)?;
    tenant.spec.environments = vec![serde_json::from_value(
        json!({"name": environment, "kind": "development"}),
    )?];
    tenant.spec.network = Default::default();
    tenant.spec.access = Default::default();
    tenant.spec.backup = None;
    Ok(tenant)
}

/// Row 1: tenant `a` with environment `b-c` and tenant `a-b` with environment `c` both compose
/// namespace `a-b-c`. The second takes nothing over, says why, and shredding it leaves the
/// first's data in place.
#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn a_tenant_never_takes_over_another_tenants_namespace() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let first = unique("e2e-a");
    let second = format!("{first}-b");
    let shared = format!("{first}-b-c");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &small_tenant(&first, "b-c")?)
        .await?;
    wait_ready(&client, &first).await?;
    let data: Api<ConfigMap> = Api::namespaced(client.clone(), &shared);
    data.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "data"}, "data": {"k": "v"}}))?,
    )
    .await?;

    tenants
        .create(&PostParams::default(), &small_tenant(&second, "c")?)
        .await?;
    let why = wait_for(
        "the second tenant to report the namespace as the first's",
        SETTLE,
        || async {
            Ok(tenants.get_opt(&second).await?.and_then(|t| {
                t.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready" && c.status == "False")
                    .map(|c| c.message)
                    .filter(|m| m.contains(&shared))
            }))
        },
    )
    .await?;
    eprintln!("e2e: {second}: {why}");
    assert!(why.contains(&format!("belongs to tenant {first}")), "{why}");
    assert!(why.contains("CLD-20"), "{why}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get(&shared).await?;
    assert_eq!(
        ns.labels().get("hosting.francetravail.fr/tenant"),
        Some(&first),
        "the namespace is still the first tenant's"
    );
    assert!(wait_ready(&client, &first).await.is_ok());

    // Handing the namespace over by its label is refused, to anyone.
    let relabel = json!({"metadata": {"labels": {"hosting.francetravail.fr/tenant": second}}});
    let message = refused(
        "relabelling the namespace for the second tenant",
        namespaces
            .patch(&shared, &PatchParams::default(), &Patch::Merge(&relabel))
            .await,
    );
    assert!(
        message.contains(&format!("belongs to tenant {first}")),
        "{message}"
    );

    // Shredding the second tenant leaves the first's namespace and data.
    delete_tenant(&client, &second).await?;
    assert!(
        data.get_opt("data").await?.is_some(),
        "the first tenant's data is kept"
    );
    assert!(
        namespaces
            .get(&shared)
            .await?
            .metadata
            .deletion_timestamp
            .is_none()
    );

    // Names kept for scratch namespaces cannot be an environment's.
    let scratch = small_tenant(&unique("e2e-s"), "restore")?;
    let message = refused(
        "an environment named restore",
        tenants.create(&DRY_RUN, &scratch).await,
    );
    assert!(message.contains("restore"), "{message}");

    delete_tenant(&client, &first).await?;
    drop(operator);
    Ok(())
}

/// Row 5: production pools are exclusive cluster-wide. Another tenant's development pods are
/// confined off the pool, and a pod of any other namespace found there is named by SEP-1.
#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn production_pools_are_exclusive_across_tenants() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let owner = unique("e2e-pool");
    let other = unique("e2e-oth");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(
            &PostParams::default(),
            &example_tenant("tenant.yaml", &owner)?,
        )
        .await?;
    tenants
        .create(&PostParams::default(), &small_tenant(&other, "dev")?)
        .await?;
    wait_ready(&client, &owner).await?;
    wait_ready(&client, &other).await?;

    // The other tenant, which has no pool of its own, keeps its pods off the owner's pool.
    let other_pods: Api<Pod> = Api::namespaced(client.clone(), &format!("{other}-dev"));
    let plain = restricted_pod("plain", json!({}))?;
    let confined = wait_for(
        "the other tenant's pods to avoid the pool",
        SETTLE,
        || async {
            Ok(other_pods.create(&DRY_RUN, &plain).await.ok().filter(|p| {
                serde_json::to_string(&p.spec).unwrap_or_default().contains(
                r#""key":"node-pool.example.org/name","operator":"NotIn","values":["production"]"#,
            )
            }))
        },
    )
    .await?;
    drop(confined);
    let onto_pool = restricted_pod(
        "onto-pool",
        json!({"nodeSelector": {"node-pool.example.org/name": "production"}}),
    )?;
    let message = refused(
        "another tenant's pod selecting the pool",
        other_pods.create(&DRY_RUN, &onto_pool).await,
    );
    assert!(
        message.contains(&other) && message.contains("CLD-25"),
        "{message}"
    );

    // A pod outside any tenant, bound to the pool node, is named; the platform's are not.
    ensure_namespace(&client, "kube-system").await?;
    let stray_ns = unique("e2e-stray");
    ensure_namespace(&client, &stray_ns).await?;
    let mut placed = Vec::new();
    for ns in [stray_ns.as_str(), "kube-system"] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let name = unique("on-pool");
        pods.create(
            &PostParams::default(),
            &restricted_pod(&name, json!({"nodeName": nodes.pool}))?,
        )
        .await?;
        placed.push((pods, name));
    }
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    let message = wait_for("SEP-1 to name the stray pod", 2 * SETTLE, || async {
        Ok(reports
            .get_opt(&owner)
            .await?
            .and_then(|r| r.status)
            .and_then(|s| s.controls.into_iter().find(|c| c.id == "SEP-1"))
            .filter(|c| c.result == ControlResult::Fail)
            .map(|c| c.message))
    })
    .await?;
    eprintln!("e2e: SEP-1: {message}");
    assert!(
        message.contains(&format!("Pod/{stray_ns}/{}", placed[0].1)),
        "{message}"
    );
    assert!(!message.contains("kube-system"), "{message}");

    for (pods, name) in placed {
        pods.delete(
            &name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    }
    Api::<Namespace>::all(client.clone())
        .delete(&stray_ns, &DeleteParams::default())
        .await?;
    delete_tenant(&client, &other).await?;
    delete_tenant(&client, &owner).await?;
    nodes.delete(&client).await?;
    drop(operator);
    Ok(())
}

/// Row 7: deleting the tenants' definition, which deletes every tenant past their own
/// admission, is refused without a confirmation naming it. The attempt is a dry run: the
/// admission is the same, and nothing is lost if it were let through.
#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn deleting_the_tenant_definition_needs_a_confirmation() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dry_run = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    for crd in ft_core::shredding::protection::PROTECTED_CRDS {
        let message =
            wait_refused(&format!("deleting {crd}"), || crds.delete(crd, &dry_run)).await?;
        assert!(
            message.contains(&format!("kubectl annotate crd {crd}")),
            "{message}"
        );
        assert!(message.contains("CLD-47"), "{message}");
    }
    Ok(())
}
