//! Helpers for the end-to-end tests: a real API server from `KUBECONFIG`, the real
//! `ft-operator` binary, and waits on conditions with timeouts (never bare sleeps).

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod faults;
pub mod helm;

use anyhow::{Context as _, bail};
use ft_core::api::FranceTravailTenant;
use ft_core::backup::velero::{Backup as VeleroBackup, BackupStorageLocation, Restore, Schedule};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client for the API server in `KUBECONFIG`, or an error that says so.
pub async fn cluster() -> anyhow::Result<Client> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API server configured: set KUBECONFIG")?;
    let version = client
        .apiserver_version()
        .await
        .context("the API server in KUBECONFIG is not reachable")?;
    eprintln!("e2e: API server {}", version.git_version);
    Ok(client)
}

/// Ready for the tenant's current generation.
pub fn is_ready(tenant: &FranceTravailTenant) -> bool {
    tenant.status.as_ref().is_some_and(|s| {
        s.observed_generation == tenant.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{:x}{:04x}",
        std::process::id() % 0xfff,
        nanos % 0xffff
    )
}

/// Polls `check` every 100 ms until it yields a value, or fails after `timeout` saying what
/// was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Installs (server-side applies) the operator's CRDs and waits until they are established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ft_core::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("ft-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("installing CRD {name}"))?;
        wait_for(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    install_admission_policies(client).await?;
    // The tenant API must be served, not only stored.
    wait_for(
        "the tenant API to be served",
        Duration::from_secs(30),
        || {
            let api: Api<FranceTravailTenant> = Api::all(client.clone());
            // Metadata only: a tenant these types cannot read must not hide the API.
            async move {
                Ok(api
                    .list_metadata(&Default::default())
                    .await
                    .ok()
                    .map(|_| ()))
            }
        },
    )
    .await
}

/// Installs the cluster-wide admission policies of `admission/`, as the chart does: the
/// mutating ones only where the API server serves them.
pub async fn install_admission_policies(client: &Client) -> anyhow::Result<()> {
    async fn apply<K>(client: &Client, objects: &[K]) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let api: Api<K> = Api::all(client.clone());
        for object in objects {
            let name = object.meta().name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply("ft-e2e").force(),
                &Patch::Apply(object),
            )
            .await
            .with_context(|| format!("installing {} {name}", K::kind(&())))?;
        }
        Ok(())
    }
    let fixed = ft_core::admission::fixed();
    apply(client, &fixed.validating_admission_policies).await?;
    apply(client, &fixed.validating_admission_policy_bindings).await?;
    let served = client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await?;
    if served
        .resources
        .iter()
        .any(|r| r.name == "mutatingadmissionpolicies")
    {
        apply(client, &fixed.mutating_admission_policies).await?;
        apply(client, &fixed.mutating_admission_policy_bindings).await?;
    }
    Ok(())
}

/// `kubectl auth can-i VERB RESOURCE -n NAMESPACE --as USER`: the API server's own answer.
pub fn can_i(user: &str, verb: &str, resource: &str, namespace: &str) -> anyhow::Result<bool> {
    let output = Command::new("kubectl")
        .args([
            "auth", "can-i", verb, resource, "-n", namespace, "--as", user,
        ])
        .output()
        .context("running kubectl (needed by this test)")?;
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i answered {answer:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Installs the ClusterRoles access grants bind, as the chart does.
pub async fn install_access_roles(client: &Client) -> anyhow::Result<()> {
    let api: Api<ClusterRole> = Api::all(client.clone());
    for role in ft_core::access::cluster_roles()? {
        let name = role.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("ft-e2e").force(),
            &Patch::Apply(&role),
        )
        .await
        .with_context(|| format!("installing ClusterRole {name}"))?;
    }
    Ok(())
}

/// Confirms that deleting a tenant is meant (the annotation the deletion protection asks
/// for), then deletes it.
pub async fn confirm_and_delete(client: &Client, name: &str) -> anyhow::Result<()> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let confirm = serde_json::json!({"metadata": {"annotations": {
        ft_core::api::annotations::CONFIRM_DELETION: name
    }}});
    tenants
        .patch(name, &PatchParams::default(), &Patch::Merge(&confirm))
        .await?;
    tenants.delete(name, &Default::default()).await?;
    // No Velero server here: its part in the shredding (deleting the tenant's backups) is
    // played until the tenant is gone.
    let (client, name) = (client.clone(), name.to_string());
    tokio::spawn(async move {
        let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            let _ = carry_out_backup_deletions(&client, &name).await;
            if matches!(tenants.get_opt(&name).await, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(())
}

/// Says, as France Travail would once it has received it, that the tenant's final export was
/// handed over: only then does the shredding delete the export's backups (CLD-73).
pub async fn hand_over_final_export(client: &Client, name: &str) -> anyhow::Result<()> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let handed = serde_json::json!({"metadata": {"annotations": {
        ft_core::api::annotations::FINAL_EXPORT_HANDED_OVER: name
    }}});
    tenants
        .patch(name, &PatchParams::default(), &Patch::Merge(&handed))
        .await?;
    Ok(())
}

/// Deletes a tenant and waits until it is gone: its finalizer has run. The operator must be
/// running, or the tenant stays.
pub async fn delete_tenant(client: &Client, name: &str) -> anyhow::Result<()> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    confirm_and_delete(client, name).await?;
    wait_for(
        &format!("tenant {name} to be gone"),
        Duration::from_secs(120),
        || async { Ok(tenants.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

/// Waits until namespace `name` is gone or being deleted (no kubelet here finishes the job
/// quickly, and the controller manager's pace is not the operator's).
pub async fn wait_namespace_going(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(&format!("namespace {name} to go"), timeout, || async {
        Ok(namespaces
            .get_opt(name)
            .await?
            .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await
}

pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

/// Creates the example tenant under `name`: the tenants' API, for the test to follow it.
pub async fn create_example_tenant(
    client: &Client,
    name: &str,
) -> anyhow::Result<Api<FranceTravailTenant>> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    tenants
        .create(
            &PostParams::default(),
            &example_tenant("tenant.yaml", name)?,
        )
        .await?;
    Ok(tenants)
}

/// The example tenant of the repository under another name, without a final export.
pub fn example_tenant(file: &str, name: &str) -> anyhow::Result<FranceTravailTenant> {
    let path = workspace_root().join("examples").join(file);
    let yaml = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut tenants = ft_core::plan::parse_tenants(&yaml)?;
    let mut tenant = tenants.remove(0);
    tenant.metadata.name = Some(name.into());
    // No export engine in this version: a final export would hold every deletion.
    tenant.spec.deletion.final_export = false;
    Ok(tenant)
}

/// The current kubeconfig, acting as a ServiceAccount (by impersonation).
pub fn kubeconfig_as_service_account(namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let original = std::env::var("KUBECONFIG").context("KUBECONFIG")?;
    let text = std::fs::read_to_string(&original)?;
    let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
    for user in config["users"].as_array_mut().into_iter().flatten() {
        user["user"]["as"] = format!("system:serviceaccount:{namespace}:{name}").into();
    }
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("ft-operator-as-sa")));
    std::fs::write(&path, serde_saphyr::to_string(&config)?)?;
    Ok(path)
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `ft-operator` binary: `FT_OPERATOR_BIN`, or built from this workspace.
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("FT_OPERATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    build_operator(&[])
}

/// Builds `ft-operator` from this workspace with extra cargo arguments; returns its path.
pub fn build_operator(extra: &[&str]) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "ft-operator", "--bin", "ft-operator"])
        .args(extra)
        .current_dir(workspace_root())
        .status()
        .context("building ft-operator")?;
    if !status.success() {
        bail!("building ft-operator {extra:?} failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    Ok(target.join("debug").join("ft-operator"))
}

/// A running `ft-operator run`, killed when dropped; its log is printed if a test fails.
pub struct Operator {
    child: Child,
    pub metrics_port: u16,
    log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str, lease: &str) -> anyhow::Result<Operator> {
        Self::start_with(namespace, lease, &[])
    }

    /// Starts `ft-operator run` with extra flags.
    pub fn start_with(namespace: &str, lease: &str, extra: &[&str]) -> anyhow::Result<Operator> {
        Self::launch(&Self::flags(namespace, lease, extra), &[], None)
    }

    /// Starts `ft-operator run` with another kubeconfig: another identity.
    pub fn start_as(namespace: &str, lease: &str, kubeconfig: &Path) -> anyhow::Result<Operator> {
        Self::launch(&Self::flags(namespace, lease, &[]), &[], Some(kubeconfig))
    }

    /// Starts `ft-operator run` configured by environment only, as a pod of the chart is, but
    /// listening on free local ports.
    pub fn start_with_env(env: &[(String, String)], kubeconfig: &Path) -> anyhow::Result<Operator> {
        let webhook = format!("127.0.0.1:{}", free_port()?);
        Self::launch(
            &["--webhook-address".into(), webhook],
            env,
            Some(kubeconfig),
        )
    }

    fn flags(namespace: &str, lease: &str, extra: &[&str]) -> Vec<String> {
        ["--namespace", namespace, "--lease-name", lease]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    fn launch(
        flags: &[String],
        env: &[(String, String)],
        kubeconfig: Option<&Path>,
    ) -> anyhow::Result<Operator> {
        Self::launch_binary(&operator_binary()?, flags, env, kubeconfig)
    }

    /// Starts `binary run` (an `ft-operator` built otherwise, with crash points say) with
    /// flags, environment and kubeconfig.
    pub fn start_binary(
        binary: &Path,
        namespace: &str,
        lease: &str,
        env: &[(String, String)],
        kubeconfig: Option<&Path>,
    ) -> anyhow::Result<Operator> {
        Self::launch_binary(binary, &Self::flags(namespace, lease, &[]), env, kubeconfig)
    }

    fn launch_binary(
        binary: &Path,
        flags: &[String],
        env: &[(String, String)],
        kubeconfig: Option<&Path>,
    ) -> anyhow::Result<Operator> {
        let metrics_port = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "ft-operator-e2e-{}-{metrics_port}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary);
        if let Some(path) = kubeconfig {
            command.env("KUBECONFIG", path);
        }
        let child = command
            .env("RUST_LOG", "info,ft_operator=debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("run")
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(flags)
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .context("starting ft-operator")?;
        Ok(Operator {
            child,
            metrics_port,
            log,
        })
    }

    /// Waits up to `timeout` for the process to end by itself; its exit status if it did.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The operator's process id, to read its usage from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process with SIGTERM, as the kubelet would, and waits for it.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(self.child.wait()?)
    }

    /// The value of a metric line such as `ft_leader` or `ft_reconciliations_total{tenant="x"}`,
    /// or summed over every series of a family when `name` has no labels.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.scrape().await?;
        let exact = name.contains('{');
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                if exact {
                    *series == name
                } else {
                    *series == name || series.starts_with(&format!("{name}{{"))
                }
            })
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum())
    }

    pub async fn scrape(&self) -> anyhow::Result<String> {
        self.get("/metrics").await
    }

    /// The body of an HTTP GET of `path` on its metrics address (`/readyz`, `/healthz`, …).
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default())
    }

    /// Wakes `tenant` through a harmless label on its `namespace`, something the operator
    /// does not own, and waits until it has reconciled.
    pub async fn poke(&self, client: &Client, tenant: &str, namespace: &str) -> anyhow::Result<()> {
        let reconciliations = format!("ft_reconciliations_total{{tenant=\"{tenant}\"}}");
        let before = self.metric(&reconciliations).await?;
        Api::<Namespace>::all(client.clone())
            .patch(
                namespace,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {"e2e.example.org/poke": "1"}}}),
                ),
            )
            .await?;
        wait_for(
            "a reconciliation after the poke",
            Duration::from_secs(30),
            || async { Ok((self.metric(&reconciliations).await? > before).then_some(())) },
        )
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- ft-operator log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A node without a kubelet: an object with the labels placement reads.
pub fn node(name: &str, region: &str, pool: bool) -> anyhow::Result<Node> {
    let mut labels = serde_json::json!({"topology.kubernetes.io/region": region});
    if pool {
        labels["node-pool.example.org/name"] = serde_json::json!("production");
    }
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": format!("aws:///{region}a/{name}")},
    }))?)
}

/// Two nodes in Paris, one of them in the example tenant's production pool, and one in
/// Virginia, under fresh names.
pub struct TestNodes {
    pub pool: String,
    pub general: String,
    pub us: String,
}

impl TestNodes {
    pub async fn create(client: &Client) -> anyhow::Result<Self> {
        let nodes = Self {
            pool: unique("e2e-fr-pool"),
            general: unique("e2e-fr"),
            us: unique("e2e-us"),
        };
        let api: Api<Node> = Api::all(client.clone());
        for n in [
            node(&nodes.pool, "eu-west-3", true)?,
            node(&nodes.general, "eu-west-3", false)?,
            node(&nodes.us, "us-east-1", false)?,
        ] {
            api.create(&PostParams::default(), &n).await?;
        }
        Ok(nodes)
    }

    pub async fn delete(&self, client: &Client) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(client.clone());
        for n in [&self.pool, &self.general, &self.us] {
            api.delete(n, &Default::default()).await?;
        }
        Ok(())
    }
}

/// A pod Pod Security `restricted` admits, with `extra` merged into its spec.
pub fn restricted_pod(name: &str, extra: serde_json::Value) -> anyhow::Result<Pod> {
    let mut pod = serde_json::json!({
        "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "app", "image": "registry.example.org/app:1",
            "securityContext": {
                "allowPrivilegeEscalation": false, "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
            }
        }]}
    });
    if let (Some(spec), serde_json::Value::Object(extra)) = (pod["spec"].as_object_mut(), extra) {
        spec.extend(extra);
    }
    Ok(serde_json::from_value(pod)?)
}

/// Velero's namespace in the e2e cluster.
pub const VELERO_NAMESPACE: &str = "velero";

fn velero_crd(plural: &str, kind: &str) -> anyhow::Result<CustomResourceDefinition> {
    // A fixture of Velero's definitions: its group, version, kinds and scope, and any fields.
    // There is no Velero server here: tests play its part and set each status by hand.
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.velero.io")},
        "spec": {
            "group": "velero.io",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))?)
}

const VELERO_KINDS: [(&str, &str); 5] = [
    ("schedules", "Schedule"),
    ("backups", "Backup"),
    ("restores", "Restore"),
    ("backupstoragelocations", "BackupStorageLocation"),
    ("deletebackuprequests", "DeleteBackupRequest"),
];

/// Plays Velero once for `tenant`'s DeleteBackupRequests: deletes each Backup named (Velero
/// would delete its data first). Returns the requests seen. Nothing when Velero is not served.
pub async fn carry_out_backup_deletions(
    client: &Client,
    tenant: &str,
) -> anyhow::Result<Vec<ft_core::shredding::backups::DeleteBackupRequest>> {
    use ft_core::shredding::backups::DeleteBackupRequest;
    let requests: Api<DeleteBackupRequest> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let selector = format!("{}={tenant}", ft_core::api::labels::TENANT);
    let Ok(found) = requests
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
    else {
        return Ok(Vec::new());
    };
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    for request in &found.items {
        match backups
            .delete(&request.spec.backup_name, &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found.items)
}

/// The cluster serves Velero's API (a fixture of its CustomResourceDefinitions), Velero's
/// namespace exists, and it holds an available location in Gravelines, away from the test
/// nodes in Paris.
pub async fn install_velero(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (plural, kind) in VELERO_KINDS {
        api.patch(
            &format!("{plural}.velero.io"),
            &PatchParams::apply("ft-e2e").force(),
            &Patch::Apply(&velero_crd(plural, kind)?),
        )
        .await?;
    }
    wait_for(
        "velero.io/v1 to be served",
        Duration::from_secs(60),
        || async {
            Ok(client
                .list_api_group_resources("velero.io/v1")
                .await
                .ok()
                .filter(|l| l.resources.len() >= VELERO_KINDS.len())
                .map(|_| ()))
        },
    )
    .await?;
    ensure_namespace(client, VELERO_NAMESPACE).await?;
    set_location(client, "backups-gra", "GRA7", "Available").await
}

/// The cluster does not serve Velero's API.
pub async fn remove_velero(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (plural, _) in VELERO_KINDS {
        match api
            .delete(&format!("{plural}.velero.io"), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    wait_for(
        "velero.io/v1 to be gone",
        Duration::from_secs(120),
        || async {
            Ok(client
                .list_api_group_resources("velero.io/v1")
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await
}

/// Creates or changes the location `name` of Velero's namespace: its region and phase.
pub async fn set_location(
    client: &Client,
    name: &str,
    region: &str,
    phase: &str,
) -> anyhow::Result<()> {
    let api: Api<BackupStorageLocation> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let location = serde_json::json!({
        "apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
        "metadata": {"name": name, "namespace": VELERO_NAMESPACE},
        "spec": {"provider": "aws", "objectStorage": {"bucket": "ft-e2e-backups"}, "config": {"region": region}},
        "status": {"phase": phase},
    });
    api.patch(
        name,
        &PatchParams::apply("ft-e2e").force(),
        &Patch::Apply(&location),
    )
    .await?;
    Ok(())
}

/// Plays Velero: each of the tenant's Schedules makes a backup that completes now.
pub async fn complete_scheduled_backups(client: &Client, tenant: &str) -> anyhow::Result<()> {
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let selector = format!("{}={tenant}", ft_core::api::labels::TENANT);
    let found = wait_for(
        "the tenant's Velero Schedules",
        Duration::from_secs(120),
        || async {
            let list = schedules
                .list(&kube::api::ListParams::default().labels(&selector))
                .await?;
            Ok((list.items.len() >= 2).then_some(list.items))
        },
    )
    .await?;
    for schedule in found {
        let name = format!(
            "{}-{}",
            schedule.metadata.name.clone().unwrap_or_default(),
            jiff::Timestamp::now().strftime("%Y%m%d%H%M%S")
        );
        let mut backup = VeleroBackup::new(&name, schedule.spec.template.clone());
        backup.spec.metadata = None;
        backup.metadata.namespace = Some(VELERO_NAMESPACE.into());
        backup.metadata.labels = schedule.spec.template.metadata.clone().map(|m| m.labels);
        backup.status = Some(serde_json::from_value(serde_json::json!({
            "phase": "Completed",
            "completionTimestamp": jiff::Timestamp::now().to_string(),
        }))?);
        backups.create(&PostParams::default(), &backup).await?;
    }
    Ok(())
}

/// Plays Velero: the restore tests the operator started for `tenant` end in `phase`, having
/// restored every item (or not, for a failure).
pub async fn finish_restore_tests(
    client: &Client,
    tenant: &str,
    expected: usize,
    phase: &str,
) -> anyhow::Result<Vec<Restore>> {
    let restores: Api<Restore> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let selector = format!("{}={tenant}", ft_core::api::labels::TENANT);
    let running = wait_for(
        "the operator's restore tests",
        Duration::from_secs(120),
        || async {
            let list = restores
                .list(&kube::api::ListParams::default().labels(&selector))
                .await?;
            let running: Vec<Restore> = list
                .items
                .into_iter()
                .filter(|r| r.status.is_none())
                .collect();
            Ok((running.len() >= expected).then_some(running))
        },
    )
    .await?;
    let (errors, restored) = if phase == "Completed" { (0, 3) } else { (2, 1) };
    for restore in &running {
        let mut done = restore.clone();
        done.status = Some(serde_json::from_value(serde_json::json!({
            "phase": phase,
            "errors": errors,
            "completionTimestamp": jiff::Timestamp::now().to_string(),
            "progress": {"totalItems": 3, "itemsRestored": restored},
        }))?);
        restores
            .replace(
                &restore.metadata.name.clone().unwrap_or_default(),
                &PostParams::default(),
                &done,
            )
            .await?;
    }
    Ok(running)
}

/// A change that makes a valid tenant invalid, on its JSON.
pub type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// Sends a tenant as raw JSON in a dry run, so that shapes the Rust types cannot hold (an
/// integer quantity below zero, a profile outside the catalogue) reach the API server as typed.
pub async fn dry_run_create_tenant(
    client: &Client,
    tenant: serde_json::Value,
) -> Result<kube::api::DynamicObject, kube::Error> {
    let resource = kube::core::ApiResource::erase::<FranceTravailTenant>(&());
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    let object: kube::api::DynamicObject =
        serde_json::from_value(tenant).map_err(kube::Error::SerdeError)?;
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&params, &object).await
}

/// Each case's edit of `valid` is refused by the API server (422), its message holding every
/// part expected (the field, the rule).
pub async fn assert_refused(
    client: &Client,
    valid: &serde_json::Value,
    cases: Vec<(&str, Edit, &[&str])>,
) {
    for (case, edit, expected) in cases {
        let mut tenant = valid.clone();
        edit(&mut tenant);
        let message = match dry_run_create_tenant(client, tenant).await {
            Ok(_) => panic!("{case}: the API server accepted an invalid tenant"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{case}: {}", status.message);
                status.message
            }
            Err(e) => panic!("{case}: unexpected error: {e}"),
        };
        for part in expected {
            assert!(
                message.contains(part),
                "{case}: {part:?} not in {message:?}"
            );
        }
        eprintln!("e2e: refused ({case}): {message}");
    }
}
