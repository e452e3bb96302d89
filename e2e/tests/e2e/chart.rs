//! The Helm chart, rendered by Helm's own engine: it lints clean, every object it renders is a
//! valid object of its kind, its pods meet Pod Security `restricted`, its CRDs, access roles and
//! RBAC are the operator's own, and wrong values are refused naming the value.
//!
//! These tests need `helm-python-sdk` (see `e2e/src/helm.rs`) but no cluster. The install,
//! upgrade and uninstall on a cluster are in `chart_install.rs`.

use std::collections::BTreeSet;
use std::io::Write as _;

use ft_core::api::labels::LEADER;
use ft_core::placement::regions::RegionCatalogue;
use ft_e2e::helm::{Helm, chart_dir, find};
use ft_e2e::{operator_binary, workspace_root};
use ft_operator::metrics::{Metrics, TenantLabels};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, SecurityContext, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

const RELEASE: &str = "ft-operator";
const NAMESPACE: &str = "ft-system";

/// Values that change everything a platform team may change.
fn other_values() -> Value {
    json!({
        "image": {
            "repository": "registry.example.org/platform/ft-operator",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "registry"}],
        "replicaCount": 3,
        "operatorNamespace": "platform-security",
        "serviceAccount": {"name": "ft-operator-sa"},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "logLevel": "debug",
        "logFormat": "text",
        "confinement": "webhook",
        "webhook": {"port": 9443, "certificate": {"source": "cert-manager"}},
        "metrics": {
            "port": 9090,
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
            "grafanaDashboard": {
                "enabled": true,
                "label": "dashboards.example.org/grafana",
                "labelValue": "security",
                "annotations": {"grafana_folder": "Security"}
            }
        },
        "placement": {
            "defaultAllowedCountries": ["FR", "DE"],
            "provider": "ovhcloud",
            "regionCatalogue": {"providers": [{
                "name": "ovhcloud",
                "providerIdPrefixes": ["openstack://"],
                "csiDrivers": ["cinder.csi.openstack.org"],
                "regions": {"GRA": "FR", "DE": "DE", "BHS": "CA"}
            }]}
        },
        "velero": {"namespace": "backup", "rbac": "always"},
        "network": {
            "dnsNamespace": "dns",
            "dnsPodLabels": "app=coredns,tier=node",
            "clusterNetworks": ["10.244.0.0/16", "10.96.0.0/12"]
        },
        "networkPolicy": {"apiServer": {"cidrs": ["192.0.2.10/32"], "ports": [6443]}},
        "nodeSelector": {"node-role.example.org/platform": "true"},
        "priorityClassName": "system-cluster-critical",
    })
}

fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("default values", json!({})),
        ("other values", other_values()),
        (
            "native confinement, one replica",
            json!({"confinement": "native", "replicaCount": 1, "networkPolicy": {"enabled": false}}),
        ),
    ]
}

/// Helm's engine, or `None` for a test to return early. libtest cannot skip at run time, so
/// such a test is counted as passed: it says on stderr that it was skipped, and why, written
/// past libtest's output capture so that a plain `cargo test` shows it too.
fn helm() -> Option<Helm> {
    let helm = Helm::find().expect("Helm's engine");
    if helm.is_none() {
        let current = std::thread::current();
        let test = current
            .name()
            .filter(|n| *n != "main")
            .unwrap_or("chart test");
        let python = std::env::var("FT_HELM_PYTHON").unwrap_or_else(|_| "python3".into());
        let _ = writeln!(
            std::io::stderr(),
            "{test}: skipped, Helm's engine not found: {python} cannot import helm_python; \
             set FT_HELM_PYTHON to a Python with helm-python-sdk==0.2.2 (.ci/run makes one), \
             or FT_REQUIRE_HELM=1 to fail instead"
        );
    }
    helm
}

fn namespace_of(values: &Value) -> &str {
    values["operatorNamespace"].as_str().unwrap_or(NAMESPACE)
}

fn objects(helm: &Helm, values: &Value) -> Vec<Value> {
    helm.objects(values, RELEASE, NAMESPACE)
        .unwrap_or_else(|e| panic!("rendering with {values}: {e:#}"))
}

fn typed<T: k8s_openapi::serde::de::DeserializeOwned>(object: &Value) -> T {
    serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", object["kind"], object["metadata"]["name"]))
}

fn deployment(objects: &[Value]) -> Deployment {
    typed(find(objects, "Deployment", "ft-operator").expect("the Deployment"))
}

fn env(deployment: &Deployment) -> Vec<(String, Option<String>)> {
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

fn env_value(deployment: &Deployment, name: &str) -> Option<String> {
    env(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v)
}

/// Serialised through its typed k8s-openapi struct and back: a field the API server would not
/// know (misspelt, misplaced) is dropped on the way, and the two differ.
fn round_trips<T>(object: &Value) -> Result<(), String>
where
    T: k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize,
{
    let parsed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let again = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    if normalized(&again) == normalized(object) {
        Ok(())
    } else {
        Err(format!(
            "fields lost in a typed round trip:\n rendered: {object}\n typed:    {again}"
        ))
    }
}

/// Without null fields, and every number as a float: YAML writes `minimum: 0.0` where Helm's
/// Go engine writes `0`, and both mean the same to the API server.
fn normalized(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
        other => other.clone(),
    }
}

#[test]
fn the_chart_lints_clean_with_default_and_other_values() {
    let Some(helm) = helm() else { return };
    for (what, values) in value_sets() {
        let report = helm.lint(&values).unwrap();
        assert_eq!(report["errors"], json!([]), "{what}: {report}");
        // Severity 2 is a warning, 3 an error; 1 (info) is only `icon is recommended`.
        let serious: Vec<_> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(serious.is_empty(), "{what}: {serious:?}");
    }
}

#[test]
fn every_rendered_object_is_a_valid_object_of_its_kind() {
    let Some(helm) = helm() else { return };
    for (what, values) in value_sets() {
        let objects = objects(&helm, &values);
        assert!(!objects.is_empty(), "{what}");
        for object in &objects {
            let kind = (
                object["apiVersion"].as_str().unwrap_or_default(),
                object["kind"].as_str().unwrap_or_default(),
            );
            let checked = match kind {
                ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(object),
                ("v1", "Service") => round_trips::<Service>(object),
                ("v1", "ConfigMap") => round_trips::<ConfigMap>(object),
                ("apps/v1", "Deployment") => round_trips::<Deployment>(object),
                ("policy/v1", "PodDisruptionBudget") => round_trips::<PodDisruptionBudget>(object),
                ("networking.k8s.io/v1", "NetworkPolicy") => round_trips::<NetworkPolicy>(object),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    round_trips::<ClusterRole>(object)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trips::<ClusterRoleBinding>(object)
                }
                ("rbac.authorization.k8s.io/v1", "Role") => round_trips::<Role>(object),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    round_trips::<RoleBinding>(object)
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    round_trips::<CustomResourceDefinition>(object)
                }
                ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                    round_trips::<ValidatingAdmissionPolicy>(object)
                }
                ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                    round_trips::<ValidatingAdmissionPolicyBinding>(object)
                }
                ("admissionregistration.k8s.io/v1", "MutatingAdmissionPolicy") => {
                    round_trips::<MutatingAdmissionPolicy>(object)
                }
                ("admissionregistration.k8s.io/v1", "MutatingAdmissionPolicyBinding") => {
                    round_trips::<MutatingAdmissionPolicyBinding>(object)
                }
                // Not Kubernetes' own: the fields cert-manager and prometheus-operator require.
                ("cert-manager.io/v1", "Certificate") => {
                    let spec = &object["spec"];
                    (spec["secretName"].is_string() && spec["issuerRef"]["name"].is_string())
                        .then_some(())
                        .ok_or_else(|| format!("incomplete Certificate: {spec}"))
                }
                ("cert-manager.io/v1", "Issuer") => {
                    let spec = object["spec"].as_object().cloned().unwrap_or_default();
                    (spec.contains_key("selfSigned") || spec.contains_key("ca"))
                        .then_some(())
                        .ok_or_else(|| format!("an Issuer of no kind: {spec:?}"))
                }
                ("monitoring.coreos.com/v1", "PrometheusRule") => alert_rules(object)
                    .iter()
                    .all(|r| r["alert"].is_string() && r["expr"].is_string())
                    .then_some(())
                    .ok_or_else(|| format!("a rule without alert or expr: {object}")),
                ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                    (object["spec"]["endpoints"][0]["port"] == "metrics")
                        .then_some(())
                        .ok_or_else(|| format!("ServiceMonitor without the metrics port: {object}"))
                }
                other => Err(format!("unexpected kind {other:?}")),
            };
            if let Err(e) = checked {
                panic!(
                    "{what}: {} {}: {e}",
                    object["kind"], object["metadata"]["name"]
                );
            }
            let namespaced = !matches!(
                kind.1,
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
                    | "MutatingAdmissionPolicy"
                    | "MutatingAdmissionPolicyBinding"
            );
            let namespace = object["metadata"]["namespace"].as_str();
            if namespaced {
                let velero_role = kind.1.starts_with("Role")
                    && namespace == values["velero"]["namespace"].as_str();
                assert!(
                    namespace == Some(namespace_of(&values)) || velero_role,
                    "{what}: {object}"
                );
            } else {
                assert_eq!(namespace, None, "{what}: {object}");
            }
        }
    }
}

/// What Pod Security `restricted` (v1.30 and later) refuses in a pod, as the admission
/// controller checks it; empty when the pod passes.
fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut faults = Vec::new();
    let pod_context = pod.security_context.clone().unwrap_or_default();
    for (what, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            faults.push(format!("{what} is set"));
        }
    }
    let allowed_volumes = [
        "config_map",
        "csi",
        "downward_api",
        "empty_dir",
        "ephemeral",
        "persistent_volume_claim",
        "projected",
        "secret",
    ];
    for volume in pod.volumes.iter().flatten() {
        let as_json = serde_json::to_value(volume).unwrap();
        for key in as_json.as_object().unwrap().keys().filter(|k| *k != "name") {
            let snake = key.chars().fold(String::new(), |mut s, c| {
                if c.is_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_lowercase());
                s
            });
            if !allowed_volumes.contains(&snake.as_str()) {
                faults.push(format!("volume {} is of type {key}", volume.name));
            }
        }
    }
    let pod_non_root = pod_context.run_as_non_root == Some(true);
    let pod_seccomp = pod_context
        .seccomp_profile
        .as_ref()
        .map(|p| p.type_.clone());
    if pod_context.run_as_user == Some(0) {
        faults.push("the pod runs as user 0".into());
    }
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let c: SecurityContext = container.security_context.clone().unwrap_or_default();
        let name = &container.name;
        if c.privileged == Some(true) {
            faults.push(format!("{name} is privileged"));
        }
        if c.allow_privilege_escalation != Some(false) {
            faults.push(format!("{name} may escalate privileges"));
        }
        let capabilities = c.capabilities.clone().unwrap_or_default();
        if !capabilities.drop.iter().flatten().any(|d| d == "ALL") {
            faults.push(format!("{name} does not drop ALL capabilities"));
        }
        if capabilities
            .add
            .iter()
            .flatten()
            .any(|a| a != "NET_BIND_SERVICE")
        {
            faults.push(format!("{name} adds capabilities"));
        }
        if !(c.run_as_non_root == Some(true) || (pod_non_root && c.run_as_non_root.is_none())) {
            faults.push(format!("{name} may run as root"));
        }
        if c.run_as_user == Some(0) {
            faults.push(format!("{name} runs as user 0"));
        }
        let seccomp = c
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            faults.push(format!(
                "{name} has no RuntimeDefault or Localhost seccomp profile"
            ));
        }
        if container
            .ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            faults.push(format!("{name} uses a host port"));
        }
    }
    faults
}

#[test]
fn the_restricted_check_finds_what_the_profile_refuses() {
    // The checker itself, on a pod that breaks each rule it knows.
    let bad: PodSpec = serde_json::from_value(json!({
        "hostNetwork": true,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{
            "name": "c",
            "ports": [{"containerPort": 80, "hostPort": 80}],
            "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}
        }]
    }))
    .unwrap();
    let faults = restricted_violations(&bad);
    for expected in [
        "hostNetwork",
        "user 0",
        "hostPath",
        "privileged",
        "escalate",
        "ALL",
        "adds",
        "may run as root",
        "seccomp",
        "host port",
    ] {
        assert!(
            faults.iter().any(|f| f.contains(expected)),
            "{expected} not found in {faults:?}"
        );
    }
}

#[test]
fn the_operator_pods_meet_the_restricted_pod_security_profile() {
    let Some(helm) = helm() else { return };
    for (what, values) in value_sets() {
        let deployment = deployment(&objects(&helm, &values));
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{what}");
        for container in &pod.containers {
            let context = container.security_context.clone().unwrap();
            assert_eq!(context.read_only_root_filesystem, Some(true), "{what}");
            assert_eq!(context.capabilities.unwrap().add, None, "{what}");
        }
        // The user the image runs as (operator/Dockerfile) is the one the chart asks for.
        let dockerfile =
            std::fs::read_to_string(workspace_root().join("operator/Dockerfile")).unwrap();
        let user = pod.security_context.unwrap().run_as_user.unwrap();
        assert!(
            dockerfile.contains(&format!("USER {user}:{user}")),
            "{what}: the image does not run as {user}"
        );
    }
}

#[test]
fn the_image_is_built_in_stages_and_runs_distroless_as_non_root() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("operator/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    assert!(
        stages[1].contains("gcr.io/distroless/") && stages[1].ends_with(":nonroot"),
        "{stages:?}"
    );
    let last_stage = dockerfile.rsplit("FROM ").next().unwrap();
    assert!(last_stage.contains("COPY --from=build"), "{last_stage}");
    assert!(
        !last_stage.contains("RUN "),
        "nothing runs in the final image: {last_stage}"
    );
    // Cargo reads every member of the workspace: the build stage has them all.
    let workspace = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let members = workspace
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("the workspace lists its members");
    for member in members.trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        assert!(
            dockerfile.contains(&format!("COPY {member} {member}\n")),
            "the build stage lacks the workspace member {member}"
        );
    }
}

#[test]
fn two_replicas_elect_a_leader_and_a_drain_keeps_one() {
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &json!({}));
    let deployment = deployment(&objects);
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        env_value(&deployment, "FT_LEASE_NAME").as_deref(),
        Some("ft-operator")
    );
    // POD_NAME comes from the downward API (no literal value): each replica has its own.
    assert!(
        env(&deployment)
            .iter()
            .any(|(n, v)| n == "POD_NAME" && v.is_none())
    );
    let pdb: PodDisruptionBudget =
        typed(find(&objects, "PodDisruptionBudget", "ft-operator").expect("a PDB"));
    let pdb = pdb.spec.unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        spec.selector.match_labels
    );
    // One replica: a PDB would block every drain.
    let single = self::objects(&helm, &json!({"replicaCount": 1}));
    assert!(find(&single, "PodDisruptionBudget", "ft-operator").is_none());
}

#[test]
fn the_webhook_service_reaches_the_leader_only() {
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &json!({"confinement": "auto"}));
    let service: Service =
        typed(find(&objects, "Service", "ft-operator-webhook").expect("the webhook Service"));
    let spec = service.spec.unwrap();
    assert_eq!(
        spec.selector.unwrap().get(LEADER).map(String::as_str),
        Some("true")
    );
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.port, 443);
    let deployment = deployment(&objects);
    assert_eq!(
        env_value(&deployment, "FT_WEBHOOK_SERVICE").as_deref(),
        Some("ft-operator-webhook")
    );
    // Native confinement only (the default): no webhook to reach.
    let native = self::objects(&helm, &json!({}));
    assert!(find(&native, "Service", "ft-operator-webhook").is_none());
}

#[test]
fn cert_manager_issues_the_webhook_certificate_when_asked() {
    let Some(helm) = helm() else { return };
    let values = other_values();
    let objects = objects(&helm, &values);
    let certificate = find(&objects, "Certificate", "ft-operator-webhook").expect("a Certificate");
    assert_eq!(
        certificate["spec"]["dnsNames"][0],
        "ft-operator-webhook.platform-security.svc"
    );
    let secret = certificate["spec"]["secretName"].as_str().unwrap();
    let issuer = &certificate["spec"]["issuerRef"]["name"];
    assert!(find(&objects, "Issuer", issuer.as_str().unwrap()).is_some());
    let deployment = deployment(&objects);
    let pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
        .expect("the certificate's Secret mounted");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        env_value(&deployment, "FT_WEBHOOK_CERT_DIR").as_deref(),
        Some(mount.mount_path.as_str())
    );
    // A given issuer is used as it is, and the chart makes none.
    let mut with_issuer = values.clone();
    with_issuer["webhook"]["certificate"]["certManager"]["issuerRef"] =
        json!({"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"});
    let objects = self::objects(&helm, &with_issuer);
    assert!(!objects.iter().any(|o| o["kind"] == "Issuer"));
    assert_eq!(
        find(&objects, "Certificate", "ft-operator-webhook").unwrap()["spec"]["issuerRef"]["kind"],
        "ClusterIssuer"
    );
    // By default the operator makes its own: nothing of cert-manager, nothing mounted.
    let objects = self::objects(&helm, &json!({}));
    assert!(
        !objects
            .iter()
            .any(|o| o["apiVersion"] == "cert-manager.io/v1")
    );
    assert_eq!(
        env_value(&self::deployment(&objects), "FT_WEBHOOK_CERT_DIR"),
        None
    );
}

#[test]
fn every_setting_reaches_the_operator_as_a_flag_it_knows() {
    let Some(helm) = helm() else { return };
    let help = std::process::Command::new(operator_binary().unwrap())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (what, values) in value_sets() {
        let deployment = deployment(&objects(&helm, &values));
        for (name, _) in env(&deployment) {
            assert!(
                help.contains(&format!("[env: {name}")),
                "{what}: {name} is no environment variable of `ft-operator run`"
            );
        }
    }
    let values = other_values();
    let objects = objects(&helm, &values);
    let deployment = deployment(&objects);
    let expected = [
        ("FT_OPERATOR_NAMESPACE", "platform-security"),
        ("FT_LOG_LEVEL", "debug"),
        ("FT_LOG_FORMAT", "text"),
        ("FT_METRICS_ADDRESS", "0.0.0.0:9090"),
        ("FT_CONFINEMENT", "webhook"),
        ("FT_WEBHOOK_ADDRESS", "0.0.0.0:9443"),
        ("FT_VELERO_NAMESPACE", "backup"),
        ("FT_DNS_NAMESPACE", "dns"),
        ("FT_DNS_POD_LABELS", "app=coredns,tier=node"),
        ("FT_CLUSTER_NETWORKS", "10.244.0.0/16,10.96.0.0/12"),
        ("FT_PROVIDER", "ovhcloud"),
    ];
    for (name, value) in expected {
        assert_eq!(
            env_value(&deployment, name).as_deref(),
            Some(value),
            "{name}"
        );
    }
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some(
            format!(
                "registry.example.org/platform/ft-operator@sha256:{}",
                "a".repeat(64)
            )
            .as_str()
        )
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("ft-operator-sa"));
    // The region catalogue reaches the operator as a file it parses, with the values' regions.
    let path = env_value(&deployment, "FT_REGION_CATALOGUE").expect("FT_REGION_CATALOGUE");
    let config_map: ConfigMap =
        typed(find(&objects, "ConfigMap", "ft-operator-region-catalogue").unwrap());
    let file = path.rsplit('/').next().unwrap();
    let catalogue =
        RegionCatalogue::parse(&config_map.data.unwrap()[file]).expect("a catalogue it accepts");
    let regions: BTreeSet<(String, String)> = catalogue
        .regions_of("ovhcloud")
        .unwrap()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect();
    assert!(
        regions.contains(&("GRA".into(), "FR".into())),
        "{regions:?}"
    );
    let mounted = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| path.starts_with(&m.mount_path));
    assert!(mounted, "{path} is not mounted");
}

/// The generated CRD of this name, from the operator.
fn generated_crd(name: &str) -> Value {
    let files = ft_core::crd::crd_files().unwrap();
    let (_, yaml) = files
        .iter()
        .find(|(file, _)| file.starts_with(name))
        .unwrap_or_else(|| panic!("no generated CRD {name}"));
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn the_chart_carries_the_generated_crds_byte_for_byte() {
    let generated = ft_core::crd::crd_files().unwrap();
    let mut in_chart: Vec<String> = std::fs::read_dir(chart_dir().join("files/crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_chart.sort();
    let mut names: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        in_chart, names,
        "charts/ft-operator/files/crds/ lists other CRDs"
    );
    for (name, yaml) in &generated {
        let chart = std::fs::read_to_string(chart_dir().join("files/crds").join(name)).unwrap();
        assert!(
            chart == *yaml,
            "charts/ft-operator/files/crds/{name} differs from the generated CRD: run \
             `cargo run -p ft-operator -- crd --output-dir charts/ft-operator/files/crds`"
        );
    }
}

#[test]
fn the_rendered_crds_are_the_generated_ones_kept_on_uninstall() {
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &json!({}));
    let crds: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), ft_core::crd::crd_files().unwrap().len());
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        let mut bare = crd.clone();
        let metadata = bare["metadata"].as_object_mut().unwrap();
        metadata.remove("labels");
        metadata.remove("annotations");
        assert!(
            normalized(&bare) == normalized(&generated_crd(name)),
            "{name} differs once rendered"
        );
    }
    let not_kept = self::objects(&helm, &json!({"crds": {"keep": false}}));
    let tenant = find(
        &not_kept,
        "CustomResourceDefinition",
        "francetravailtenants.hosting.francetravail.fr",
    )
    .unwrap();
    assert!(tenant["metadata"]["annotations"].is_null());
    let none = self::objects(&helm, &json!({"crds": {"install": false}}));
    assert!(!none.iter().any(|o| o["kind"] == "CustomResourceDefinition"));
}

#[test]
fn the_chart_installs_the_generated_admission_policies_kept_on_uninstall() {
    let generated = ft_core::admission::files().unwrap();
    for (name, yaml) in &generated {
        let chart =
            std::fs::read_to_string(chart_dir().join("files/admission").join(name)).unwrap();
        assert!(
            chart == *yaml,
            "charts/ft-operator/files/admission/{name} differs from the generated policies: run \
             `cargo run -p ft-operator -- admission --output-dir charts/ft-operator/files/admission`"
        );
    }
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &json!({}));
    let fixed = ft_core::admission::fixed();
    for (kind, names) in [
        (
            "ValidatingAdmissionPolicy",
            fixed
                .validating_admission_policies
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
        ),
        (
            "ValidatingAdmissionPolicyBinding",
            fixed
                .validating_admission_policy_bindings
                .iter()
                .map(|b| b.metadata.name.clone().unwrap_or_default())
                .collect(),
        ),
    ] {
        for name in names {
            let rendered = find(&objects, kind, &name)
                .unwrap_or_else(|| panic!("the chart does not render {kind} {name}"));
            assert_eq!(
                rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                "{kind} {name}"
            );
        }
    }
}

#[test]
fn the_chart_holds_the_operator_to_tenant_namespaces_as_ft_operator_rbac_does() {
    let path = chart_dir().join("files/operator-limits.yaml");
    let generated = ft_core::rbac::limits_template().unwrap();
    if std::env::var_os("FT_UPDATE_CHART").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let in_chart = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        in_chart == generated,
        "{} is stale: run FT_UPDATE_CHART=1 cargo test -p ft-e2e --test e2e chart::",
        path.display()
    );
    let Some(helm) = helm() else { return };
    for (values, namespace, account) in [
        (json!({}), NAMESPACE, "ft-operator"),
        (other_values(), "platform-security", "ft-operator-sa"),
    ] {
        let objects = objects(&helm, &values);
        let (policy, binding) = ft_core::rbac::limits(namespace, account);
        let rendered = find(&objects, "ValidatingAdmissionPolicy", "ft-operator-limits")
            .expect("the chart renders the limits policy");
        assert_eq!(
            rendered["spec"],
            serde_json::to_value(&policy).unwrap()["spec"]
        );
        let rendered = find(
            &objects,
            "ValidatingAdmissionPolicyBinding",
            "ft-operator-limits",
        )
        .expect("and its binding");
        assert_eq!(
            rendered["spec"],
            serde_json::to_value(&binding).unwrap()["spec"]
        );
    }
}

#[test]
fn the_default_allowed_countries_become_the_schema_default() {
    let Some(helm) = helm() else { return };
    let objects = objects(
        &helm,
        &json!({"placement": {"defaultAllowedCountries": ["FR", "DE"]}}),
    );
    let name = "francetravailtenants.hosting.francetravail.fr";
    let rendered = find(&objects, "CustomResourceDefinition", name).unwrap();
    let mut generated = generated_crd(name);
    for version in generated["spec"]["versions"].as_array_mut().unwrap() {
        let placement = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["placement"];
        // The 27 member states by default; the chart's value instead.
        assert_eq!(
            placement["default"]["allowedCountries"]
                .as_array()
                .unwrap()
                .len(),
            27
        );
        placement["default"]["allowedCountries"] = json!(["FR", "DE"]);
        placement["properties"]["allowedCountries"]["default"] = json!(["FR", "DE"]);
    }
    assert!(normalized(&rendered["spec"]) == normalized(&generated["spec"]));
}

#[test]
fn the_chart_carries_the_access_roles_of_the_policies() {
    let policies =
        std::fs::read_to_string(workspace_root().join("policies/access-roles.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart_dir().join("files/access-roles.yaml")).unwrap();
    assert!(
        chart == policies,
        "charts/ft-operator/files/access-roles.yaml differs from policies/access-roles.yaml: copy it"
    );
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &json!({}));
    let expected: Vec<ClusterRole> = serde_saphyr::from_multiple::<Option<ClusterRole>>(&policies)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(expected.len(), 3);
    for role in expected {
        let name = role.metadata.name.clone().unwrap();
        let rendered: ClusterRole = typed(find(&objects, "ClusterRole", &name).unwrap());
        assert_eq!(rendered.rules, role.rules, "{name}");
        let labels = rendered.metadata.labels.unwrap();
        for (key, value) in role.metadata.labels.unwrap() {
            assert_eq!(labels.get(&key), Some(&value), "{name}: {key}");
        }
        assert_eq!(
            rendered.metadata.annotations.unwrap()["helm.sh/resource-policy"],
            "keep"
        );
    }
}

/// The chart's RBAC objects, without the access roles (which the operator binds, not holds).
fn rbac_objects(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let access_role =
                o["metadata"]["labels"]["hosting.francetravail.fr/access-role"].is_string();
            matches!(
                kind,
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            ) && !access_role
        })
        .cloned()
        .collect()
}

/// What of an RBAC object grants: rules, or what it binds to whom.
fn grants(object: &Value) -> Value {
    json!({
        "kind": object["kind"],
        "name": object["metadata"]["name"],
        "namespace": object["metadata"]["namespace"],
        "rules": object["rules"],
        "roleRef": object["roleRef"],
        "subjects": object["subjects"],
    })
}

#[test]
fn the_chart_rbac_is_exactly_what_ft_operator_rbac_prints() {
    let Some(helm) = helm() else { return };
    let cases = [
        (
            json!({"velero": {"rbac": "always"}}),
            NAMESPACE,
            "ft-operator",
            "velero",
            false,
        ),
        (
            json!({"velero": {"rbac": "always"}, "confinement": "auto"}),
            NAMESPACE,
            "ft-operator",
            "velero",
            true,
        ),
        (
            other_values(),
            "platform-security",
            "ft-operator-sa",
            "backup",
            true,
        ),
    ];
    for (values, namespace, account, velero, webhook) in cases {
        let rendered: Vec<Value> = rbac_objects(&objects(&helm, &values))
            .iter()
            .map(grants)
            .collect();
        let printed: Vec<Value> = ft_core::rbac::objects(namespace, account, velero, webhook)
            .iter()
            .map(grants)
            .collect();
        assert_eq!(rendered.len(), printed.len(), "{rendered:#?}");
        for expected in &printed {
            assert!(
                rendered.contains(expected),
                "the chart lacks, or differs on, {expected:#}"
            );
        }
    }
    // Without Velero's namespace (offline render, `auto`) or with `never`: no Role there.
    for values in [json!({}), json!({"velero": {"rbac": "never"}})] {
        let rendered = rbac_objects(&objects(&helm, &values));
        assert!(
            !rendered
                .iter()
                .any(|o| o["metadata"]["namespace"] == "velero"),
            "{values}"
        );
    }
}

#[test]
fn the_operator_network_policy_opens_the_webhook_metrics_and_api_server_only() {
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &other_values());
    let policy: NetworkPolicy = typed(find(&objects, "NetworkPolicy", "ft-operator").unwrap());
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".into(), "Egress".into()])
    );
    let ports = |rules: Vec<Value>| -> Vec<Value> {
        rules
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| p["port"].clone())
            .collect()
    };
    let ingress: Vec<Value> = spec
        .ingress
        .unwrap()
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(ports(ingress), vec![json!("metrics"), json!("webhook")]);
    let egress: Vec<Value> = spec
        .egress
        .unwrap()
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(egress.len(), 1);
    assert_eq!(
        egress[0]["to"],
        json!([{"ipBlock": {"cidr": "192.0.2.10/32"}}])
    );
    assert_eq!(ports(egress), vec![json!(6443)]);
    let selector = spec.pod_selector.unwrap().match_labels.unwrap();
    let deployment = deployment(&objects);
    let labels = deployment
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
}

#[test]
fn wrong_values_are_refused_naming_the_value() {
    let Some(helm) = helm() else { return };
    let cases = [
        (json!({"replicaCount": 0}), "/replicaCount"),
        (json!({"replicaCount": "two"}), "/replicaCount"),
        (json!({"replicas": 2}), "'replicas' not allowed"),
        (json!({"image": {"digest": "md5:1234"}}), "/image/digest"),
        (json!({"image": {"repository": ""}}), "/image/repository"),
        (json!({"logLevel": "verbose"}), "/logLevel"),
        (json!({"confinement": "mutating"}), "/confinement"),
        (
            json!({"webhook": {"certificate": {"source": "vault"}}}),
            "/webhook/certificate/source",
        ),
        (json!({"metrics": {"port": 70000}}), "/metrics/port"),
        (
            json!({"placement": {"defaultAllowedCountries": ["US"]}}),
            "/placement/defaultAllowedCountries/0",
        ),
        (
            json!({"placement": {"regionCatalogue": {"providers": [{"name": "ovh", "regions": {"GRA": "France"}}]}}}),
            "/placement/regionCatalogue/providers/0/regions/GRA",
        ),
        (
            json!({"velero": {"namespace": "Velero_NS"}}),
            "/velero/namespace",
        ),
        (
            json!({"network": {"clusterNetworks": ["10.0.0.0"]}}),
            "/network/clusterNetworks/0",
        ),
        (
            json!({"operatorNamespace": "Platform"}),
            "/operatorNamespace",
        ),
    ];
    for (values, field) in cases {
        let error = match helm.render(&values, RELEASE, NAMESPACE) {
            Ok(_) => panic!("{values} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(field), "{values}: {error}");
    }
}

/// Every rule of a PrometheusRule.
fn alert_rules(rule: &Value) -> Vec<Value> {
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The families the operator's registry declares, as `/metrics` names them: read from the
/// registry itself, since the text encoding leaves out a family that holds no sample yet, and
/// from the encoding for the families its collectors write at each scrape.
fn declared_families(metrics: &Metrics) -> BTreeSet<String> {
    let registry = format!("{:?}", metrics.registry);
    let registered = registry
        .split("Descriptor { name: \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|name| format!("ft_{name}"));
    let encoded = metrics.encode();
    let collected = encoded
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string);
    registered.chain(collected).collect()
}

/// The sample names the operator's `/metrics` can carry: every family the registry declares,
/// given a sample, encoded, with the suffixes of its type (`_total`, `_bucket`…).
fn declared_metrics() -> BTreeSet<String> {
    let metrics = Metrics::default();
    let tenant = TenantLabels { tenant: "t".into() };
    metrics.reconciled("t", std::time::Duration::from_millis(10));
    metrics.failed("api");
    metrics.write("ConfigMap", "apply");
    metrics.drift_repairs.get_or_create(&tenant).inc();
    metrics.control("t", "CLS-1", Some(false));
    metrics.last_evaluation.get_or_create(&tenant).set(1);
    metrics.watch_restarted("pods");
    metrics.watch_synced("pods", true);
    metrics.grant_earliest_expiry.get_or_create(&tenant).set(1);
    metrics.grants_expiring.get_or_create(&tenant).set(1);

    let mut families = BTreeSet::new();
    let mut names = BTreeSet::new();
    for line in metrics.encode().lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = declared.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        families.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    // A family added to the registry must get a sample above, or it would go unchecked.
    let unsampled: Vec<_> = declared_families(&metrics)
        .difference(&families)
        .cloned()
        .collect();
    assert!(
        unsampled.is_empty(),
        "give these a sample here: {unsampled:?}"
    );
    names
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers
/// and ranges that are neither a function, a keyword, nor the labels of a grouping clause.
/// Grafana's `$variables` are not metrics either.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, `{…}` and `[…]` blanked out.
    let mut plain = String::with_capacity(expr.len());
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        if let Some(end) = closing {
            if c == end {
                closing = None;
            }
            plain.push(' ');
            continue;
        }
        closing = match c {
            '"' | '\'' | '`' => Some(c),
            '{' => Some('}'),
            '[' => Some(']'),
            _ => None,
        };
        plain.push(if closing.is_some() { ' ' } else { c });
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_labels = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' || c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$' | '.'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest: String = chars[i..].iter().collect();
            let rest = rest.trim_start();
            // A function, or an aggregation written `sum by (…) (…)`.
            let applied = rest.starts_with('(')
                || ["by", "without"].iter().any(|k| {
                    rest.strip_prefix(k).is_some_and(|after| {
                        !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
                });
            let next = rest.chars().next();
            if GROUPING.contains(&word.as_str()) {
                skip_labels = next == Some('(');
            } else if !(word.starts_with('$')
                || word.starts_with(|c: char| c.is_ascii_digit() || c == '.')
                || KEYWORDS.contains(&word.as_str())
                || applied)
            {
                names.insert(word);
            }
            continue;
        }
        if skip_labels && c == '(' {
            // The label list of `by (…)` and the like.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_labels = false;
        }
        i += 1;
    }
    names
}

#[test]
fn the_query_check_finds_metric_names_and_nothing_else() {
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (le) (rate(ft_reconcile_duration_seconds_bucket{job="ft-operator", le!="+Inf"}[$__rate_interval])))"#
        ),
        set(&["ft_reconcile_duration_seconds_bucket"])
    );
    assert_eq!(
        metric_names(
            "absent(ft_leader == 1) or max without (pod) (ft_no_such_metric offset 5m) > bool 0"
        ),
        set(&["ft_leader", "ft_no_such_metric"])
    );
    assert_eq!(
        metric_names("(ft_a - time()) / 86400 < 30 * 1e3 and on (tenant) group_left (x) ft_b"),
        set(&["ft_a", "ft_b"])
    );
    // Read from the registry: a family with no sample yet is there too.
    let families = declared_families(&Metrics::default());
    assert!(families.contains("ft_control_result"), "{families:?}");
    assert!(
        families.contains("ft_access_grants_expiring"),
        "{families:?}"
    );
    let declared = declared_metrics();
    for name in [
        "ft_control_result",
        "ft_reconciliations_total",
        "ft_reconcile_duration_seconds_bucket",
        "ft_access_grants_expiring",
        "ft_leader",
    ] {
        assert!(declared.contains(name), "{name} in {declared:?}");
    }
    // A counter is exposed with its `_total` only; a name nobody registered is not there.
    assert!(!declared.contains("ft_reconciliations"));
    assert!(!declared.contains("ft_no_such_metric"));
}

fn monitoring_values() -> Value {
    json!({"metrics": {"prometheusRule": {"enabled": true}, "grafanaDashboard": {"enabled": true}}})
}

#[test]
fn every_alert_and_dashboard_query_names_metrics_the_operator_exposes() {
    let Some(helm) = helm() else { return };
    let objects = objects(&helm, &monitoring_values());
    let rule = find(&objects, "PrometheusRule", "ft-operator").expect("the PrometheusRule");
    let dashboard = find(&objects, "ConfigMap", "ft-operator-dashboard").expect("the dashboard");

    let mut queries: Vec<(String, String)> = Vec::new();
    for rule in alert_rules(rule) {
        let alert = rule["alert"].as_str().expect("an alert name").to_string();
        let expr = rule["expr"].as_str().expect("an expr").to_string();
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{alert}: {rule}"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
        let description = rule["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(!summary.is_empty() && !description.is_empty(), "{alert}");
        if expr.contains("ft_control_result") {
            for needed in [
                "{{ $labels.tenant }}",
                "{{ $labels.control }}",
                "CLD-61",
                "24 hours",
            ] {
                assert!(
                    description.contains(needed),
                    "{alert}: {needed} in {description}"
                );
            }
        } else if expr.contains("ft_access_grants") {
            assert!(description.contains("{{ $labels.tenant }}"), "{alert}");
        }
        queries.push((format!("alert {alert}"), expr));
    }
    let json: Value = serde_json::from_str(
        dashboard["data"]["ft-operator.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .expect("the dashboard is JSON");
    let mut stack = vec![("dashboard".to_string(), &json)];
    while let Some((at, value)) = stack.pop() {
        match value {
            Value::Object(map) => {
                let at = map
                    .get("title")
                    .and_then(Value::as_str)
                    .map_or(at.clone(), |t| format!("panel {t:?}"));
                if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                    queries.push((at.clone(), expr.to_string()));
                }
                stack.extend(map.values().map(|v| (at.clone(), v)));
            }
            Value::Array(items) => stack.extend(items.iter().map(|v| (at.clone(), v))),
            _ => {}
        }
    }

    let declared = declared_metrics();
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (at, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{at}: `{expr}` selects no metric");
        for name in names {
            if !declared.contains(&name) {
                unknown.push(format!("{at}: {name} in `{expr}`"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the operator does not expose:\n{}",
        unknown.join("\n")
    );
    // What the alerts and panels are about.
    for name in [
        "ft_control_result",
        "ft_access_grants_expiring",
        "ft_leader",
        "ft_seconds_since_progress",
        "ft_reconciliations_total",
        "ft_reconcile_duration_seconds_bucket",
        "ft_api_writes_total",
    ] {
        assert!(used.contains(name), "no alert or panel reads {name}");
    }
}

#[test]
fn the_alerts_render_where_prometheus_rules_are_served_or_when_forced() {
    let Some(helm) = helm() else { return };
    let has = |values: Value, kind: &str, name: &str| {
        find(&objects(&helm, &values), kind, name).is_some()
    };
    // Offline, the cluster serves no monitoring.coreos.com/v1: `auto` renders nothing.
    assert!(!has(json!({}), "PrometheusRule", "ft-operator"));
    assert!(has(monitoring_values(), "PrometheusRule", "ft-operator"));
    // Nothing scrapes an operator without its metrics Service: no alert on absent series.
    let unscraped =
        json!({"metrics": {"service": {"enabled": false}, "prometheusRule": {"enabled": true}}});
    assert!(!has(unscraped, "PrometheusRule", "ft-operator"));
    assert!(!has(json!({}), "ConfigMap", "ft-operator-dashboard"));

    let objects = objects(&helm, &other_values());
    let rule = find(&objects, "PrometheusRule", "ft-operator").expect("the PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let dashboard = find(&objects, "ConfigMap", "ft-operator-dashboard").expect("the dashboard");
    assert_eq!(
        dashboard["metadata"]["labels"]["dashboards.example.org/grafana"],
        "security"
    );
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "Security"
    );
    let default = find(
        &objects_of_dashboard(&helm),
        "ConfigMap",
        "ft-operator-dashboard",
    )
    .cloned()
    .expect("the dashboard");
    assert_eq!(default["metadata"]["labels"]["grafana_dashboard"], "1");
}

fn objects_of_dashboard(helm: &Helm) -> Vec<Value> {
    objects(
        helm,
        &json!({"metrics": {"grafanaDashboard": {"enabled": true}}}),
    )
}
