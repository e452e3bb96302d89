//! The cluster benchmark: convergence of N tenants against the direct-write limit of the same
//! API server, writes at rest, drift repair, the operator's memory and CPU time, the API
//! server's memory, what the tenants cost every pod creation at admission, and what one object
//! of each of the operator's caches costs in memory. Run on demand against `KUBECONFIG` on a
//! freshly wiped cluster (see BENCHMARKS.md); it prints Markdown tables.
//!
//! `cargo build --release -p ft-operator -p ft-e2e --bin ft-operator --bin cluster-bench && \
//!  FT_OPERATOR_BIN=target/release/ft-operator ./target/release/cluster-bench 1 100 1000`
//!
//! The steps, in order:
//!
//! 1. The resident memory of the local `kube-apiserver` (found by its command name in `/proc`;
//!    "not measured" when there is not exactly one), before anything.
//! 2. The CRDs, the cluster-wide admission policies, a stand-in Velero and three nodes.
//! 3. The direct-write limit, for each N, on a clean API server, before the operator starts:
//!    the objects `plan` renders for N tenants, with every `hosting.francetravail.fr/` label
//!    taken off (no watch of the operator would care about them), written with server-side
//!    apply, 16 in flight, namespaces first; timed, with the CPU time of the API server and of
//!    every process of the machine (`/proc/stat`); for the largest N, the dry-run pod
//!    creations of step 4 while they are in place (what holding that many objects costs a
//!    pod creation, with no tenant nor operator); then deleted, the benchmark waiting until
//!    every one of them, and every namespace of that size, is gone before the next size. Then
//!    the API server's resident memory again.
//! 4. The operator starts. 1,000 dry-run pod creations in `default` (a namespace no tenant
//!    owns), timed one by one, after 250 untimed: what a pod creation costs before the
//!    tenants.
//! 5. For each N, N copies of `examples/tenant.yaml` under fresh names, 16 in flight, each
//!    timed from its creation until it is Ready and evaluated, through a watch; the ratio is
//!    the time of all N over the direct-write time of step 3; with the CPU time of the API
//!    server, of the operator and of every process of the machine.
//! 6. With every tenant: the API writes the operator counted while they converged (by kind
//!    and verb, and per tenant), its API writes over 60 idle seconds, its resident memory
//!    and CPU time, the API server's resident memory, and `ft-default-deny` deleted in 20
//!    tenants, one at a time, each return timed; with `--restarts N`, the restarts below.
//! 7. The dry-run pod creations again, the operator running, then stopped, one right after the
//!    other, and the change of their p50 and p99 from step 4.
//! 8. What one object of each of the operator's caches costs: its objects listed as JSON with
//!    the operator's label selector, then, counted by the global allocator, each deserialized
//!    into the type the operator caches, trimmed as it trims it, and filed in the operator's
//!    own cache of that kind, in the form it keeps it in (`ft_operator::observe`).
//!
//! `--tenants N` is a scale run: N tenants only, one size, without steps 3, 4 and 7 (no
//! direct-write comparison, no admission-cost sampling).
//!
//! `--restarts N` (with `FT_E2E_RESTART_APISERVER`, see the fault suite) also restarts the API
//! server N times, 3 s down each, and times each return of a policy deleted the moment the
//! API server answers again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ft_core::api::{ComplianceReport, EnvironmentPolicy, FranceTravailTenant, labels};
use ft_core::backup::velero::{Backup, BackupStorageLocation, Restore, Schedule};
use ft_core::desired::{Facts, desired};
use ft_core::placement::admission::Confinement;
use ft_core::placement::regions::RegionCatalogue;
use ft_core::settings::BuildSettings;
use ft_core::validate::validate_for_cluster;
use ft_e2e::faults::{RESTART_VARIABLE, command_from, restart_api_server};
use ft_e2e::{
    Operator, TestNodes, cluster, ensure_namespace, example_tenant, install_crds, install_velero,
    unique, wait_for,
};
use ft_operator::observe::{Cache, CacheWriter, Cached, empty_stores};
use ft_operator::watch::trim::{
    annotation_managers_only, managers_only, trim_meta, trim_node, trim_pod, trim_quota,
};
use ft_operator::watch::{discover_confinement, discover_velero};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Mutex;

/// Counts the bytes the benchmark holds on the heap, to measure what the operator's cached
/// objects cost (`cache_size`). No limit is set.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const OPERATOR_NAMESPACE: &str = "ft-system";
/// Requests in flight, for the operator's tenants and for the direct writes alike.
const CONCURRENCY: usize = 16;
const IDLE: Duration = Duration::from_secs(60);
const DRIFT_SAMPLES: usize = 20;
const ADMISSION_SAMPLES: usize = 1000;
/// The labels taken off the directly written objects: every label the operator's watches and
/// its cluster-wide admission bindings select on. No admission policy of `admission/` requires
/// one of them on a creation (`ft-namespace-ownership` only compares the tenant label of a
/// namespace on an update, when both versions carry it), so the objects stay valid without them.
const OPERATOR_LABELS: &str = "hosting.francetravail.fr/";
/// Objects per page when the caches are measured, as the operator's watches list them.
const PAGE: u32 = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms_fine(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Ready, and judged: no Velero server runs here, so no backup ever completes and a tenant's
/// report stays `Unknown` (awaiting its first backup) rather than `Compliant`.
fn converged(t: &FranceTravailTenant) -> bool {
    t.status.as_ref().is_some_and(|s| {
        s.observed_generation == t.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Compliant" && c.reason != "NotEvaluated")
    })
}

/// Creates `n` tenants, `CONCURRENCY` at a time, and waits until each is Ready and evaluated.
/// Returns each tenant's time from its creation to convergence, and the total.
async fn converge(
    client: &Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let api: Api<FranceTravailTenant> = Api::all(client.clone());
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done: Arc<Mutex<BTreeMap<String, Duration>>> = Arc::default();

    // Watch first, so that no convergence is missed.
    let watch = {
        let (created, done) = (created.clone(), done.clone());
        let prefix = prefix.to_string();
        let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(t)) = stream.next().await {
                let name = t.name_any();
                if !name.starts_with(&prefix) || !converged(&t) {
                    continue;
                }
                let start = created.lock().await.get(&name).copied();
                if let Some(start) = start {
                    done.lock()
                        .await
                        .entry(name)
                        .or_insert_with(|| start.elapsed());
                }
            }
        })
    };

    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let (api, created) = (api.clone(), created.clone());
            let name = format!("{prefix}-{i}");
            async move {
                let tenant = example_tenant("tenant.yaml", &name)?;
                created.lock().await.insert(name, Instant::now());
                api.create(&PostParams::default(), &tenant).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let timeout = Duration::from_secs(60 + 2 * n as u64);
    wait_for(&format!("{n} tenants to converge"), timeout, || async {
        Ok((done.lock().await.len() == n).then_some(()))
    })
    .await?;
    let total = started.elapsed();
    watch.abort();
    let mut times: Vec<Duration> = done.lock().await.values().copied().collect();
    times.sort();
    Ok((times, total))
}

/// The objects `plan` renders for `n` tenants named `{prefix}-{i}` on this cluster: placed on
/// its nodes, with Velero's Schedules where it serves Velero, as the operator renders them.
async fn rendered(
    client: &Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let nodes: Vec<Arc<Node>> = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let settings = BuildSettings {
        confinement: discover_confinement(client).await,
        ..Default::default()
    };
    let catalogue = RegionCatalogue::embedded()?;
    let restoring = Default::default();
    let facts = Facts {
        settings: &settings,
        nodes: &nodes,
        catalogue: &catalogue,
        provider: None,
        velero: discover_velero(client).await,
        restoring: &restoring,
        production_pools: &[],
    };
    let mut objects = Vec::new();
    for i in 0..n {
        let tenant = example_tenant("tenant.yaml", &format!("{prefix}-{i}"))?;
        let valid = validate_for_cluster(&tenant, &settings)?;
        objects.extend(desired(valid, &facts, jiff::Timestamp::now()).to_values()?);
    }
    Ok(objects)
}

/// The object without any label of `OPERATOR_LABELS` in its metadata.
fn without_operator_labels(mut object: serde_json::Value) -> serde_json::Value {
    if let Some(labels) = object
        .pointer_mut("/metadata/labels")
        .and_then(serde_json::Value::as_object_mut)
    {
        labels.retain(|key, _| !key.starts_with(OPERATOR_LABELS));
    }
    object
}

fn is_namespace(object: &DynamicObject) -> bool {
    object.types.as_ref().is_some_and(|t| t.kind == "Namespace")
}

/// The direct-write limit: the objects `plan` renders for `n` tenants, without the operator's
/// labels, written directly with server-side apply at the operator's concurrency, namespaces
/// first as the operator does: what the API server itself takes. Meant for an API server that
/// holds no tenant and serves no operator. Returns the time, and the objects for `clean_up`.
async fn direct_writes(
    client: &Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(Duration, Vec<DynamicObject>)> {
    let objects = rendered(client, prefix, n)
        .await?
        .into_iter()
        .map(|o| serde_json::from_value(without_operator_labels(o)))
        .collect::<Result<Vec<DynamicObject>, _>>()?;
    let started = Instant::now();
    let (namespaces, rest): (Vec<_>, Vec<_>) = objects.iter().partition(|o| is_namespace(o));
    for batch in [namespaces, rest] {
        stream::iter(batch)
            .map(|object| apply(client, object))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
    }
    Ok((started.elapsed(), objects))
}

/// Deletes what `direct_writes` wrote: its namespaces (the namespace controller deletes what
/// they hold) and every object outside them (StorageClasses, ComplianceReports, Velero
/// Schedules), then waits until those objects, and every namespace whose name starts with
/// `prefix`, are gone.
async fn clean_up(
    client: &Client,
    prefix: &str,
    objects: Vec<DynamicObject>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let namespaces: BTreeSet<String> = objects
        .iter()
        .filter(|o| is_namespace(o))
        .map(|o| o.name_any())
        .collect();
    let mut left: Vec<DynamicObject> = objects
        .into_iter()
        .filter(|o| o.namespace().is_none_or(|ns| !namespaces.contains(&ns)))
        .collect();
    stream::iter(&left)
        .map(|object| async move {
            match api_for(client.clone(), object)?
                .delete(&object.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    // The namespaces are followed by listing, not one by one.
    left.retain(|o| !is_namespace(o));
    let all_namespaces: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        left = stream::iter(left)
            .map(|object| async move {
                let found = api_for(client.clone(), &object)?
                    .get_opt(&object.name_any())
                    .await?;
                anyhow::Ok(found.map(|_| object))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(futures::future::ok)
            .try_collect()
            .await?;
        let namespaces_left = all_namespaces
            .list_metadata(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|ns| ns.name_any().starts_with(prefix))
            .count();
        if left.is_empty() && namespaces_left == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for the direct writes to be gone: {} objects and {namespaces_left} namespaces left (the namespace controller of kube-controller-manager deletes namespaces)",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The admission objects of the cluster: policies and bindings, validating and mutating.
async fn admission_objects(client: &Client) -> anyhow::Result<usize> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
        ValidatingAdmissionPolicyBinding,
    };
    let all = Default::default();
    Ok(Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .list_metadata(&all)
        .await?
        .items
        .len()
        + Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .list_metadata(&all)
            .await?
            .items
            .len()
        + Api::<MutatingAdmissionPolicy>::all(client.clone())
            .list_metadata(&all)
            .await?
            .items
            .len()
        + Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
            .list_metadata(&all)
            .await?
            .items
            .len())
}

/// What every pod creation in the cluster pays for the tenants' admission policies: server-side
/// dry-run creations of a pod in `default`, a namespace no tenant owns, one after another.
async fn admission_cost(client: &Client) -> anyhow::Result<Vec<Duration>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod = ft_e2e::restricted_pod("admission-cost", serde_json::json!({}))?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // Connections and the API server's caches warm first, then the timed samples.
    for _ in 0..ADMISSION_SAMPLES / 4 {
        pods.create(&dry_run, &pod).await?;
    }
    let mut times = Vec::with_capacity(ADMISSION_SAMPLES);
    for _ in 0..ADMISSION_SAMPLES {
        let started = Instant::now();
        pods.create(&dry_run, &pod).await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

/// The API of an object of any kind, from its `apiVersion` and `kind`.
fn api_for(client: Client, object: &DynamicObject) -> anyhow::Result<Api<DynamicObject>> {
    let types = object.types.as_ref().context("typed object")?;
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", types.api_version.as_str()));
    let kind = types.kind.to_ascii_lowercase();
    let plural = if let Some(stem) = kind.strip_suffix('y') {
        format!("{stem}ies")
    } else if kind.ends_with("ss") {
        format!("{kind}es")
    } else {
        format!("{kind}s")
    };
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: types.api_version.clone(),
        kind: types.kind.clone(),
        plural,
    };
    Ok(match object.namespace() {
        Some(ns) => Api::namespaced_with(client, &ns, &resource),
        None => Api::all_with(client, &resource),
    })
}

async fn apply(client: &Client, object: &DynamicObject) -> anyhow::Result<()> {
    api_for(client.clone(), object)?
        .patch(
            &object.name_any(),
            &PatchParams::apply("ft-bench").force(),
            &Patch::Apply(object),
        )
        .await?;
    Ok(())
}

/// Deletes a NetworkPolicy of `samples` tenants, one at a time, and times its return.
async fn drift_repair(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in (0..n)
        .step_by((n / DRIFT_SAMPLES).max(1))
        .take(DRIFT_SAMPLES)
    {
        let api: Api<NetworkPolicy> =
            Api::namespaced(client.clone(), &format!("{prefix}-{i}-prod"));
        let deleted = Instant::now();
        delete_and_wait_for_return(&api).await?;
        times.push(deleted.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Deletes `ft-default-deny` and waits until the operator has put it back.
async fn delete_and_wait_for_return(api: &Api<NetworkPolicy>) -> anyhow::Result<()> {
    let old = api.get("ft-default-deny").await?.uid();
    api.delete("ft-default-deny", &DeleteParams::default())
        .await?;
    wait_for(
        "ft-default-deny to return",
        Duration::from_secs(120),
        || async {
            Ok(api
                .get_opt("ft-default-deny")
                .await?
                .filter(|p| p.uid() != old)
                .map(|_| ()))
        },
    )
    .await
}

/// Restarts the API server `n` times; after each, the moment it answers, deletes a policy of
/// `namespace` and times its return from that moment: how soon after an outage the operator
/// repairs drift again.
async fn after_restarts(command: &str, namespace: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..n {
        let restart = command.to_string();
        let back = tokio::task::spawn_blocking(move || {
            restart_api_server(&restart, Duration::from_secs(3))
        })
        .await??;
        let api: Api<NetworkPolicy> = Api::namespaced(cluster().await?, namespace);
        delete_and_wait_for_return(&api).await?;
        times.push(back.elapsed());
        eprintln!(
            "bench: restart {}: repaired {:?} after",
            i + 1,
            back.elapsed()
        );
    }
    times.sort();
    Ok(times)
}

/// Resident memory now and at its peak, in MiB, and CPU time, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(f64, f64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // The kernel's USER_HZ is 100 on Linux.
    Ok((
        kib("VmRSS:") / 1024.0,
        kib("VmHWM:") / 1024.0,
        Duration::from_millis(ticks * 10),
    ))
}

/// The pid of the local `kube-apiserver`: the one process of that name in `/proc`. None when
/// there is none (the API server runs elsewhere, or in another pid namespace) or several.
fn api_server_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "kube-apiserver" {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// The CPU time the local API server has used, if it can be told.
fn api_server_cpu() -> Option<Duration> {
    process_usage(api_server_pid()?).ok().map(|(_, _, cpu)| cpu)
}

/// The CPU time used between two readings, as seconds.
fn cpu_used(before: Option<Duration>, after: Option<Duration>) -> String {
    match (before, after) {
        (Some(before), Some(after)) => format!("{:.1} s", (after - before).as_secs_f64()),
        _ => "not measured".into(),
    }
}

/// The CPU time every process of the machine has used (user, nice, system, irq and softirq
/// of `/proc/stat`'s first line), and the time the cores were there to be used (those and
/// idle and iowait; not steal, time the host gave elsewhere): what is left of the cores shows
/// whether a phase waits on CPU or on something else.
fn machine_cpu() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq; guest time is counted in user already.
    let field = |i: usize| ticks.get(i).copied();
    let used = field(0)? + field(1)? + field(2)? + field(5)? + field(6)?;
    let idle = field(3)? + field(4)?;
    // The kernel's USER_HZ is 100 on Linux.
    Some((
        Duration::from_millis(used * 10),
        Duration::from_millis((used + idle) * 10),
    ))
}

/// The machine's CPU time used between two readings, and its share of what the cores offered.
fn machine_used(
    before: Option<(Duration, Duration)>,
    after: Option<(Duration, Duration)>,
) -> String {
    match (before, after) {
        (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => format!(
            "{:.1} s ({:.0} %)",
            (busy1 - busy0).as_secs_f64(),
            100.0 * (busy1 - busy0).as_secs_f64() / (all1 - all0).as_secs_f64()
        ),
        _ => "not measured".into(),
    }
}

/// The local API server's resident memory, in MiB, if it can be told.
fn api_server_rss() -> Option<f64> {
    process_usage(api_server_pid()?).ok().map(|(rss, _, _)| rss)
}

fn mib(value: Option<f64>) -> String {
    value.map_or_else(|| "not measured".into(), |v| format!("{v:.1} MiB"))
}

/// The relative change from `before` to `after`, such as "+12 %".
fn change(before: Duration, after: Duration) -> String {
    if before.is_zero() {
        return "n/a".into();
    }
    let percent = (after.as_secs_f64() / before.as_secs_f64() - 1.0) * 100.0;
    format!("{percent:+.0} %")
}

/// One of the operator's caches: how many objects it holds, and the heap bytes they take.
struct CacheSize {
    name: &'static str,
    objects: usize,
    bytes: usize,
}

/// What the operator's cache `name` holds: the objects at `path`, matching `selector`, listed
/// whole or as metadata only, each deserialized as `K`, trimmed by `trim` and filed through
/// `writer`, one of the operator's own cache writers (`ft_operator::observe::empty_stores`), in
/// the form and with the indexes the operator keeps them in. They are listed a page at a time,
/// as the watch lists them, as JSON first; then what the cache grows by while it files the
/// page's objects is counted by the global allocator, while the page's JSON is still held: the
/// JSON buffers count for nothing, and what filing allocates and frees again counts for nothing
/// either. The bytes are those asked of the allocator, without its own rounding and
/// bookkeeping. Other tasks of the benchmark are idle meanwhile; what they allocate would count
/// too.
async fn cache_size<K: Cached<DynamicType = ()>>(
    client: &Client,
    (name, cache, mut writer): (&'static str, Cache<K>, CacheWriter<K>),
    path: String,
    selector: Option<&str>,
    metadata: bool,
    trim: impl Fn(&mut K),
) -> anyhow::Result<CacheSize> {
    let request = kube::core::Request::new(path);
    let mut bytes = 0;
    let mut token: Option<String> = None;
    writer.apply_watcher_event(&watcher::Event::Init);
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(selector) = selector {
            params = params.labels(selector);
        }
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let http = if metadata {
            request.list_metadata(&params)
        } else {
            request.list(&params)
        }
        .with_context(|| format!("listing {name}"))?;
        let mut page: serde_json::Value = client
            .request(http)
            .await
            .with_context(|| format!("listing {name}"))?;
        let items = match page.get_mut("items").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        };
        token = page
            .pointer("/metadata/continue")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);

        let before = ALLOCATOR.allocated();
        let mut failed = None;
        for item in &items {
            match K::deserialize(item) {
                Ok(mut object) => {
                    trim(&mut object);
                    writer.apply_watcher_event(&watcher::Event::InitApply(object));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if token.is_none() {
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        let after = ALLOCATOR.allocated();

        if let Some(e) = failed {
            return Err(e).with_context(|| format!("reading an object of {name}"));
        }
        bytes += after.saturating_sub(before);
        if token.is_none() {
            return Ok(CacheSize {
                name,
                objects: cache.len(),
                bytes,
            });
        }
    }
}

/// The series of metric `name` in a scrape, by their labels.
fn series(scrape: &str, name: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(labels, _)| labels.is_empty() || labels.starts_with('{'))
        .filter_map(|(labels, v)| Some((labels.to_string(), v.parse().ok()?)))
        .collect()
}

fn path<K: Resource<DynamicType = ()>>(namespace: Option<&str>) -> String {
    K::url_path(&(), namespace)
}

/// Every cache the operator keeps (`ft_operator::watch`: `run` and the Velero watches), with
/// its label selector (`ours()` or `everything()`), its type and its trim.
async fn cache_sizes(client: &Client) -> anyhow::Result<Vec<CacheSize>> {
    let ours = Some(labels::MANAGED_SELECTOR);
    let everything = None;
    // The operator's own caches, empty: each in the form the operator keeps it in.
    let (o, w) = empty_stores();
    let mut caches = vec![
        cache_size(
            client,
            ("namespaces (metadata)", o.namespaces.clone(), w.namespaces),
            path::<Namespace>(None),
            everything,
            true,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "networkpolicies",
                o.network_policies.clone(),
                w.network_policies,
            ),
            path::<NetworkPolicy>(None),
            everything,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "resourcequotas",
                o.resource_quotas.clone(),
                w.resource_quotas,
            ),
            path::<ResourceQuota>(None),
            ours,
            false,
            trim_quota,
        )
        .await?,
        cache_size(
            client,
            ("limitranges", o.limit_ranges.clone(), w.limit_ranges),
            path::<LimitRange>(None),
            ours,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "compliancereports",
                o.compliance_reports.clone(),
                w.compliance_reports,
            ),
            path::<ComplianceReport>(None),
            ours,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            ("pods", o.pods.clone(), w.pods),
            path::<Pod>(None),
            everything,
            false,
            trim_pod,
        )
        .await?,
        cache_size(
            client,
            (
                "persistentvolumeclaims",
                o.persistent_volume_claims.clone(),
                w.persistent_volume_claims,
            ),
            path::<PersistentVolumeClaim>(None),
            everything,
            false,
            |o| trim_meta(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            ("rolebindings", o.role_bindings.clone(), w.role_bindings),
            path::<RoleBinding>(None),
            everything,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "persistentvolumes",
                o.persistent_volumes.clone(),
                w.persistent_volumes,
            ),
            path::<PersistentVolume>(None),
            everything,
            false,
            |o| trim_meta(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            ("nodes", o.nodes.clone(), w.nodes),
            path::<Node>(None),
            everything,
            false,
            trim_node,
        )
        .await?,
        cache_size(
            client,
            (
                "storageclasses",
                o.storage_classes.clone(),
                w.storage_classes,
            ),
            path::<StorageClass>(None),
            everything,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "environmentpolicies",
                o.environment_policies.clone(),
                w.environment_policies,
            ),
            path::<EnvironmentPolicy>(None),
            ours,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "validatingadmissionpolicies",
                o.validating_admission_policies.clone(),
                w.validating_admission_policies,
            ),
            path::<ValidatingAdmissionPolicy>(None),
            everything,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
        cache_size(
            client,
            (
                "validatingadmissionpolicybindings",
                o.validating_admission_policy_bindings.clone(),
                w.validating_admission_policy_bindings,
            ),
            path::<ValidatingAdmissionPolicyBinding>(None),
            everything,
            false,
            |o| managers_only(&mut o.metadata),
        )
        .await?,
    ];
    // Watched only where the cluster serves them, as the operator discovers it.
    if discover_confinement(client).await == Confinement::Native {
        caches.push(
            cache_size(
                client,
                (
                    "mutatingadmissionpolicies",
                    o.mutating_admission_policies.clone(),
                    w.mutating_admission_policies,
                ),
                path::<MutatingAdmissionPolicy>(None),
                everything,
                false,
                |o| managers_only(&mut o.metadata),
            )
            .await?,
        );
        caches.push(
            cache_size(
                client,
                (
                    "mutatingadmissionpolicybindings",
                    o.mutating_admission_policy_bindings.clone(),
                    w.mutating_admission_policy_bindings,
                ),
                path::<MutatingAdmissionPolicyBinding>(None),
                everything,
                false,
                |o| managers_only(&mut o.metadata),
            )
            .await?,
        );
    }
    // The tenants, packed; the controller keeps only their metadata.
    caches.push(
        cache_size(
            client,
            ("francetravailtenants", o.tenants.clone(), w.tenants),
            path::<FranceTravailTenant>(None),
            everything,
            false,
            |o| annotation_managers_only(&mut o.metadata),
        )
        .await?,
    );
    // Velero's objects, in its namespace, once the cluster serves its API.
    if discover_velero(client).await == Some(true) {
        let namespace = BuildSettings::default().velero_namespace;
        let ns = Some(namespace.as_str());
        caches.push(
            cache_size(
                client,
                ("schedules.velero.io", o.schedules.clone(), w.schedules),
                path::<Schedule>(ns),
                ours,
                false,
                |o| managers_only(&mut o.metadata),
            )
            .await?,
        );
        caches.push(
            cache_size(
                client,
                ("backups.velero.io", o.backups.clone(), w.backups),
                path::<Backup>(ns),
                ours,
                false,
                |o| trim_meta(&mut o.metadata),
            )
            .await?,
        );
        caches.push(
            cache_size(
                client,
                ("restores.velero.io", o.restores.clone(), w.restores),
                path::<Restore>(ns),
                everything,
                false,
                |o| trim_meta(&mut o.metadata),
            )
            .await?,
        );
        caches.push(
            cache_size(
                client,
                (
                    "backupstoragelocations.velero.io",
                    o.backup_storage_locations.clone(),
                    w.backup_storage_locations,
                ),
                path::<BackupStorageLocation>(ns),
                everything,
                false,
                |o| trim_meta(&mut o.metadata),
            )
            .await?,
        );
    }
    Ok(caches)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything: the API server as the benchmark finds it.
    let api_server_at_start = api_server_rss();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let restarts = match args.iter().position(|a| a == "--restarts") {
        Some(at) => {
            let n: usize = args
                .get(at + 1)
                .context("--restarts takes a count")?
                .parse()
                .context("--restarts takes a count")?;
            args.drain(at..at + 2);
            let command = command_from(RESTART_VARIABLE, "restarts the API server")
                .map_err(anyhow::Error::msg)?;
            Some((n, command))
        }
        None => None,
    };
    let scale: Option<usize> = match args.iter().position(|a| a == "--tenants") {
        Some(at) => {
            let n = args
                .get(at + 1)
                .context("--tenants takes a count")?
                .parse()
                .context("--tenants takes a count")?;
            args.drain(at..at + 2);
            Some(n)
        }
        None => None,
    };
    let sizes: Vec<usize> = args
        .iter()
        .map(|a| a.parse().context("tenant counts, such as 1 100 1000"))
        .collect::<anyhow::Result<_>>()?;
    let sizes = match (scale, sizes.is_empty()) {
        (Some(n), true) => vec![n],
        (Some(_), false) => bail!("--tenants N converges N tenants only: give no other count"),
        (None, true) => vec![1, 100, 1000],
        (None, false) => sizes,
    };
    // Direct writes and admission cost, or a scale run without them.
    let compared = scale.is_none();

    let client = cluster().await?;
    install_crds(&client).await?;
    install_velero(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    let run = unique("b");

    // The direct-write limit of each size, on a clean API server, before the operator starts.
    let mut direct = Vec::new();
    let mut api_server_cleaned = None;
    let mut admission_direct = None;
    // Where the time of each size goes: the API server's CPU, and the operator's.
    let mut cpu_rows = Vec::new();
    if compared {
        for &n in &sizes {
            let prefix = format!("{run}-d{n}");
            eprintln!("bench: {n} tenant(s) written directly, on a clean API server");
            let cpu_before = (api_server_cpu(), machine_cpu());
            let (time, objects) = direct_writes(&client, &prefix, n).await?;
            cpu_rows.push(format!(
                "| {n}, written directly | {} | {} | — | {} |",
                ms(time),
                cpu_used(cpu_before.0, api_server_cpu()),
                machine_used(cpu_before.1, machine_cpu())
            ));
            if Some(&n) == sizes.last() {
                // The same objects, held by an API server with no tenant and no operator: what
                // holding them costs a pod creation, apart from anything the tenants add.
                eprintln!("bench: admission cost with the objects written directly");
                admission_direct = Some(admission_cost(&client).await?);
            }
            eprintln!(
                "bench: deleting the {} objects written directly",
                objects.len()
            );
            let timeout = Duration::from_secs(120 + 2 * n as u64);
            clean_up(&client, &format!("{prefix}-"), objects, timeout).await?;
            direct.push(time);
        }
        api_server_cleaned = api_server_rss();
    }

    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("bench-lease"))?;
    let pid = operator.pid();
    wait_for("the operator to lead", Duration::from_secs(60), || async {
        Ok(operator
            .metric("ft_leader")
            .await
            .ok()
            .filter(|v| *v == 1.0)
            .map(|_| ()))
    })
    .await?;

    let mut admission = None;
    if compared {
        eprintln!("bench: admission cost before the benchmark's tenants");
        admission = Some((
            admission_cost(&client).await?,
            admission_objects(&client).await?,
        ));
    }
    let mut rows = Vec::new();
    let mut last = (String::new(), 0);
    for (k, &n) in sizes.iter().enumerate() {
        let prefix = format!("{run}-{n}");
        eprintln!("bench: {n} tenant(s) through the operator");
        let cpu_before = (
            api_server_cpu(),
            process_usage(pid).ok().map(|u| u.2),
            machine_cpu(),
        );
        let (times, total) = converge(&client, &prefix, n).await?;
        cpu_rows.push(format!(
            "| {n}, through the operator | {} | {} | {} | {} |",
            ms(total),
            cpu_used(cpu_before.0, api_server_cpu()),
            cpu_used(cpu_before.1, process_usage(pid).ok().map(|u| u.2)),
            machine_used(cpu_before.2, machine_cpu())
        ));
        let mut row = format!(
            "| {n} | {} | {} | {} |",
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(total),
        );
        if let Some(direct) = direct.get(k) {
            row += &format!(
                " {} | {:.2} |",
                ms(*direct),
                total.as_secs_f64() / direct.as_secs_f64()
            );
        }
        rows.push(row);
        last = (prefix, n);
    }

    // The writes the operator counted while the tenants converged, by kind and verb.
    let writes = "ft_api_writes_total";
    let converging = series(&operator.scrape().await?, writes);

    eprintln!("bench: {IDLE:?} at rest with every tenant");
    let before = series(&operator.scrape().await?, writes);
    tokio::time::sleep(IDLE).await;
    let after = series(&operator.scrape().await?, writes);
    // Which kinds were written, if any: what to look at.
    let written: Vec<String> = after
        .iter()
        .filter_map(|(labels, v)| {
            let delta = v - before.get(labels).copied().unwrap_or(0.0);
            (delta > 0.0).then(|| format!("{labels}: {delta}"))
        })
        .collect();
    let idle_writes = after.values().sum::<f64>() - before.values().sum::<f64>();
    let idle_writes = if written.is_empty() {
        format!("{idle_writes}")
    } else {
        format!("{idle_writes} ({})", written.join(", "))
    };
    let (rss, peak, cpu) = process_usage(pid)?;
    // What jemalloc counts of it: the objects, and the pages it holds for them.
    let memory = operator.scrape().await?;
    let allocator = |name| series(&memory, name).get("").map(|b| b / (1024.0 * 1024.0));
    let (allocated, resident) = (
        allocator("ft_memory_allocated_bytes"),
        allocator("ft_memory_resident_bytes"),
    );
    let api_server_with_tenants = api_server_rss();
    eprintln!("bench: drift repair");
    let drift = drift_repair(&client, &last.0, last.1).await?;
    let tenants: usize = sizes.iter().sum();
    let restarted = match &restarts {
        Some((n, command)) => {
            eprintln!("bench: {n} API-server restarts");
            let times = after_restarts(command, &format!("{}-0-prod", last.0), *n).await?;
            // Back, the operator lists everything again and looks at every tenant: the
            // admission samples below wait until it has made a pass per tenant since.
            let passes = || async {
                let scrape = operator.scrape().await?;
                Ok::<f64, anyhow::Error>(series(&scrape, "ft_reconciliations_total").values().sum())
            };
            let since = passes().await?;
            wait_for(
                "the operator to look at every tenant after the restarts",
                Duration::from_secs(300),
                || async { Ok((passes().await? >= since + tenants as f64).then_some(())) },
            )
            .await?;
            Some(times)
        }
        None => None,
    };

    // The admission cost with every tenant, the operator running then stopped, one right after
    // the other on the same API server (restarted above, if it was): what the policies cost,
    // and what the operator adds on a machine it shares with the API server.
    let mut admission_after = None;
    if compared {
        eprintln!("bench: admission cost with every tenant");
        admission_after = Some((
            admission_cost(&client).await?,
            admission_objects(&client).await?,
        ));
    }
    drop(operator);
    let mut admission_stopped = None;
    if compared {
        eprintln!("bench: admission cost with every tenant, the operator stopped");
        admission_stopped = Some(admission_cost(&client).await?);
    }
    eprintln!("bench: what one object of each of the operator's caches costs");
    let caches = cache_sizes(&client).await?;

    if compared {
        println!("| tenants | Ready+evaluated p50 | p99 | total | direct writes | ratio |");
        println!("|---|---|---|---|---|---|");
    } else {
        println!("| tenants | Ready+evaluated p50 | p99 | total |");
        println!("|---|---|---|---|");
    }
    for row in rows {
        println!("{row}");
    }
    println!();
    println!(
        "| tenants | wall time | API server CPU | operator CPU | every process's CPU (share of the cores) |"
    );
    println!("|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
    }
    println!();
    println!("| with {tenants} tenants | value |");
    println!("|---|---|");
    println!(
        "| operator writes in {} idle seconds | {idle_writes} |",
        IDLE.as_secs()
    );
    println!(
        "| drift repair (NetworkPolicy deleted → back), p50 / p99 of {} | {} / {} |",
        drift.len(),
        ms(percentile(&drift, 50.0)),
        ms(percentile(&drift, 99.0))
    );
    if let Some(times) = &restarted {
        println!(
            "| API server back (3 s down) → a drift made then repaired, p50 / p99 of {} restarts | {} / {} |",
            times.len(),
            ms(percentile(times, 50.0)),
            ms(percentile(times, 99.0))
        );
    }
    if let (Some((before, objects_before)), Some((after, objects_after)), Some(stopped)) =
        (&admission, &admission_after, &admission_stopped)
    {
        let p = |times: &[Duration], p| percentile(times, p);
        println!(
            "| dry-run pod creation in `default`, p50 / p99 of {ADMISSION_SAMPLES}: before the tenants / with them | {} / {} — {} / {} |",
            ms_fine(p(before, 50.0)),
            ms_fine(p(before, 99.0)),
            ms_fine(p(after, 50.0)),
            ms_fine(p(after, 99.0))
        );
        println!(
            "| the same with them, the operator stopped | {} / {} |",
            ms_fine(p(stopped, 50.0)),
            ms_fine(p(stopped, 99.0))
        );
        if let (Some(direct), Some(last_size)) = (&admission_direct, sizes.last()) {
            println!(
                "| the same with the objects of {last_size} tenants written directly instead (no tenant, no operator) | {} / {} ({} / {}) |",
                ms_fine(p(direct, 50.0)),
                ms_fine(p(direct, 99.0)),
                change(p(before, 50.0), p(direct, 50.0)),
                change(p(before, 99.0), p(direct, 99.0))
            );
        }
        println!(
            "| change with them vs before the tenants, p50 / p99: operator running — stopped | {} / {} — {} / {} |",
            change(p(before, 50.0), p(after, 50.0)),
            change(p(before, 99.0), p(after, 99.0)),
            change(p(before, 50.0), p(stopped, 50.0)),
            change(p(before, 99.0), p(stopped, 99.0))
        );
        println!(
            "| admission policies and bindings in the cluster: before the tenants / with them | {objects_before} / {objects_after} |"
        );
    }
    println!("| operator resident memory, steady / peak | {rss:.1} MiB / {peak:.1} MiB |");
    println!(
        "| operator's allocator: allocated / resident, steady | {} / {} |",
        mib(allocated),
        mib(resident)
    );
    println!(
        "| operator CPU time, whole run | {:.1} s |",
        cpu.as_secs_f64()
    );
    println!(
        "| API server resident memory, before anything | {} |",
        mib(api_server_at_start)
    );
    if compared {
        println!(
            "| API server resident memory, the direct writes deleted | {} |",
            mib(api_server_cleaned)
        );
    }
    println!(
        "| API server resident memory, with every tenant (at rest) | {} |",
        mib(api_server_with_tenants)
    );
    println!();
    println!("| writes while the {tenants} tenants converged | total | per tenant |");
    println!("|---|---|---|");
    for (labels, total) in &converging {
        println!("| {labels} | {total} | {:.2} |", total / tenants as f64);
    }
    let total: f64 = converging.values().sum();
    println!("| all | {total} | {:.2} |", total / tenants as f64);
    println!();
    println!("| cache | objects | bytes per object | total MiB |");
    println!("|---|---|---|---|");
    let per_object = |bytes: usize, objects: usize| match objects {
        0 => "—".to_string(),
        n => format!("{}", bytes / n),
    };
    let as_mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    for cache in &caches {
        println!(
            "| {} | {} | {} | {:.2} |",
            cache.name,
            cache.objects,
            per_object(cache.bytes, cache.objects),
            as_mib(cache.bytes)
        );
    }
    let (objects, bytes) = caches
        .iter()
        .fold((0, 0), |(o, b), c| (o + c.objects, b + c.bytes));
    println!(
        "| total | {objects} | {} | {:.2} |",
        per_object(bytes, objects),
        as_mib(bytes)
    );
    nodes.delete(&client).await?;
    Ok(())
}
