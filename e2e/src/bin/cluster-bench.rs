//! The cluster benchmark: convergence of N tenants against the direct-write limit of the same
//! API server, writes at rest, drift repair and the operator's memory and CPU time. Run on
//! demand against `KUBECONFIG` (see BENCHMARKS.md); it prints one Markdown table.
//!
//! `cargo build --release -p ft-operator && FT_OPERATOR_BIN=target/release/ft-operator \
//!  cargo run --release -p ft-e2e --bin cluster-bench -- 1 100 1000`
//!
//! `--restarts N` (with `FT_E2E_RESTART_APISERVER`, see the fault suite) also restarts the API
//! server N times, 3 s down each, and times each return of a policy deleted the moment the
//! API server answers again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ft_core::api::FranceTravailTenant;
use ft_core::desired::{Facts, desired};
use ft_core::placement::regions::RegionCatalogue;
use ft_core::settings::BuildSettings;
use ft_core::validate::validate_for_cluster;
use ft_e2e::faults::{RESTART_VARIABLE, command_from, restart_api_server};
use ft_e2e::{
    Operator, TestNodes, cluster, ensure_namespace, example_tenant, install_crds, install_velero,
    unique, wait_for,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Mutex;

const OPERATOR_NAMESPACE: &str = "ft-system";
/// Requests in flight, for the operator's tenants and for the direct writes alike.
const CONCURRENCY: usize = 16;
const IDLE: Duration = Duration::from_secs(60);
const DRIFT_SAMPLES: usize = 20;
const ADMISSION_SAMPLES: usize = 1000;

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

/// The same objects `plan` renders for `n` tenants, written directly with server-side apply at
/// the same concurrency: what the API server itself takes.
async fn direct_writes(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Duration> {
    let mut objects = Vec::new();
    // The cluster's nodes decide the placement, as they do for the operator.
    let nodes: Vec<Arc<Node>> = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let settings = BuildSettings::default();
    let catalogue = RegionCatalogue::embedded()?;
    let restoring = Default::default();
    let facts = Facts {
        settings: &settings,
        nodes: &nodes,
        catalogue: &catalogue,
        provider: None,
        velero: None,
        restoring: &restoring,
        production_pools: &[],
    };
    for i in 0..n {
        let tenant = example_tenant("tenant.yaml", &format!("{prefix}-{i}"))?;
        let valid = validate_for_cluster(&tenant, &settings)?;
        objects.extend(desired(valid, &facts, jiff::Timestamp::now()).to_values()?);
    }
    let started = Instant::now();
    // Namespaces first, as the operator does.
    let (namespaces, rest): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|o| o["kind"] == "Namespace");
    for batch in [namespaces, rest] {
        stream::iter(batch)
            .map(|object| apply(client.clone(), object))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
    }
    Ok(started.elapsed())
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

async fn apply(client: Client, object: serde_json::Value) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(object)?;
    let types = object.types.clone().context("typed object")?;
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
    let api: Api<DynamicObject> = match object.namespace() {
        Some(ns) => Api::namespaced_with(client, &ns, &resource),
        None => Api::all_with(client, &resource),
    };
    api.patch(
        &object.name_any(),
        &PatchParams::apply("ft-bench").force(),
        &Patch::Apply(&object),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let sizes: Vec<usize> = args
        .iter()
        .map(|a| a.parse().context("tenant counts, such as 1 100 1000"))
        .collect::<anyhow::Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![1, 100, 1000]
    } else {
        sizes
    };

    let client = cluster().await?;
    install_crds(&client).await?;
    install_velero(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
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

    eprintln!("bench: admission cost before the benchmark's tenants");
    let admission_before = admission_cost(&client).await?;
    let objects_before = admission_objects(&client).await?;
    let run = unique("b");
    let mut rows = Vec::new();
    let mut last = (String::new(), 0);
    for &n in &sizes {
        let prefix = format!("{run}-{n}");
        eprintln!("bench: {n} tenant(s) through the operator");
        let (times, total) = converge(&client, &prefix, n).await?;
        eprintln!("bench: {n} tenant(s) written directly");
        let direct = direct_writes(&client, &format!("{run}-d{n}"), n).await?;
        rows.push(format!(
            "| {n} | {} | {} | {} | {} | {:.2} |",
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(total),
            ms(direct),
            total.as_secs_f64() / direct.as_secs_f64()
        ));
        last = (prefix, n);
    }

    eprintln!("bench: {IDLE:?} at rest with every tenant");
    let writes = "ft_api_writes_total";
    let before = operator.metric(writes).await?;
    tokio::time::sleep(IDLE).await;
    let idle_writes = operator.metric(writes).await? - before;
    let (rss, peak, cpu) = process_usage(pid)?;
    eprintln!("bench: admission cost with every tenant");
    let admission_after = admission_cost(&client).await?;
    let objects_after = admission_objects(&client).await?;
    eprintln!("bench: drift repair");
    let drift = drift_repair(&client, &last.0, last.1).await?;
    let tenants: usize = sizes.iter().sum();
    let restarted = match &restarts {
        Some((n, command)) => {
            eprintln!("bench: {n} API-server restarts");
            Some(after_restarts(command, &format!("{}-0-prod", last.0), *n).await?)
        }
        None => None,
    };

    // The same, the operator stopped: what the policies cost, without the operator's load on a
    // machine it shares with the API server.
    drop(operator);
    eprintln!("bench: admission cost with every tenant, the operator stopped");
    let admission_stopped = admission_cost(&client).await?;

    println!("| tenants | Ready+evaluated p50 | p99 | total | direct writes | ratio |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
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
    println!(
        "| dry-run pod creation in `default`, p50 / p99 of {ADMISSION_SAMPLES}: before the tenants / with them | {} / {} — {} / {} |",
        ms_fine(percentile(&admission_before, 50.0)),
        ms_fine(percentile(&admission_before, 99.0)),
        ms_fine(percentile(&admission_after, 50.0)),
        ms_fine(percentile(&admission_after, 99.0))
    );
    println!(
        "| the same with them, the operator stopped | {} / {} |",
        ms_fine(percentile(&admission_stopped, 50.0)),
        ms_fine(percentile(&admission_stopped, 99.0))
    );
    println!(
        "| admission policies and bindings in the cluster: before the tenants / with them | {objects_before} / {objects_after} |"
    );
    println!("| operator resident memory, steady / peak | {rss:.1} MiB / {peak:.1} MiB |");
    println!(
        "| operator CPU time, whole run | {:.1} s |",
        cpu.as_secs_f64()
    );
    nodes.delete(&client).await?;
    Ok(())
}
