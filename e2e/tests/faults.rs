//! The fault suite, against a real API server: the operator keeps enforcing through the API
//! server killed and restarted, watches expired by an etcd compaction, its own crash at every
//! shredding and restore-test step, a leader cut off from the API server, and a tenant it
//! cannot read. Every scenario ends the same way: a drift is repaired, a new tenant becomes
//! Ready, the report is evaluated again, and there is no second shredding record and no
//! duplicate Velero object.
//!
//! Each scenario names what it needs and reports itself ignored, with the reason, when the
//! cluster at hand cannot give it: `KUBECONFIG`, and for some `FT_E2E_RESTART_APISERVER` (a
//! command that kills the API server, waits the number of seconds it is given, and starts it
//! again) or `FT_E2E_COMPACT_ETCD`. Run with
//! `cargo test -p ft-e2e --test faults -- --ignored --test-threads=1`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use ft_core::api::{
    AccessGrant, FranceTravailTenant, Role, Subject, SubjectKind, annotations, labels,
};
use ft_core::backup::velero::{Backup as VeleroBackup, Restore, Schedule};
use ft_e2e::faults::{
    COMPACT_VARIABLE, Proxy, RESTART_VARIABLE, api_server_address, command_from, compact_etcd,
    failpoints_binary, restart_api_server,
};
use ft_e2e::{
    Operator, TestNodes, VELERO_NAMESPACE, complete_scheduled_backups, confirm_and_delete,
    example_tenant, finish_restore_tests, hand_over_final_export, install_access_roles,
    install_crds, install_velero, is_ready, operator_binary, unique, wait_for,
    wait_namespace_going,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "ft-system";
const SETTLE: Duration = Duration::from_secs(90);

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        scenario(
            "api_server_killed_for_3s_during_a_50_tenant_convergence",
            |_| api_server_killed_during_convergence(Duration::from_secs(3)),
        ),
        scenario(
            "api_server_killed_for_30s_during_a_50_tenant_convergence",
            |_| api_server_killed_during_convergence(Duration::from_secs(30)),
        ),
        scenario("api_server_restarted_while_a_grant_expires", |_| {
            api_server_restarted_while_a_grant_expires()
        }),
        scenario("watches_expired_by_an_etcd_compaction", |_| {
            watches_expired_by_an_etcd_compaction()
        }),
        scenario("operator_killed_at_every_shredding_step", |_| {
            operator_killed_at_every_shredding_step()
        }),
        scenario("operator_killed_at_every_restore_test_step", |_| {
            operator_killed_at_every_restore_test_step()
        }),
        scenario("leader_cut_off_from_the_api_server", |_| {
            leader_cut_off_from_the_api_server()
        }),
        scenario("a_tenant_the_operator_cannot_read", |_| {
            a_tenant_the_operator_cannot_read()
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Why a scenario cannot run on the cluster at hand.
struct Missing(String);

/// An end-to-end scenario: ignored unless asked for (`--ignored`), and then reported ignored,
/// with the reason, when what it needs is missing; never passed without having run.
fn scenario<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce(()) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<Result<(), Missing>>>,
{
    Trial::ignorable_test(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Failed::from(format!("no runtime: {e}")))?;
        match runtime.block_on(body(())) {
            Ok(Ok(())) => Ok(Completion::Completed),
            Ok(Err(Missing(why))) => Ok(Completion::ignored_with(why)),
            Err(e) => Err(Failed::from(format!("{e:#}"))),
        }
    })
    .with_ignored_flag(true)
}

/// The cluster, or why there is none.
async fn cluster() -> anyhow::Result<Result<Client, Missing>> {
    if std::env::var("KUBECONFIG").is_err() {
        return Ok(Err(Missing("KUBECONFIG is not set: no API server".into())));
    }
    match ft_e2e::cluster().await {
        Ok(client) => {
            install_crds(&client).await?;
            install_access_roles(&client).await?;
            ft_e2e::ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
            install_velero(&client).await?;
            Ok(Ok(client))
        }
        Err(e) => Ok(Err(Missing(format!("{e:#}")))),
    }
}

/// The command in `variable`, or why the scenario cannot run.
fn needs(variable: &str, what: &str) -> Result<String, Missing> {
    command_from(variable, what).map_err(Missing)
}

macro_rules! need {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(missing) => return Ok(Err(missing)),
        }
    };
}

const RESTARTS: &str = "kills the API server, waits the seconds it is given, and starts it again";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A minimal tenant under `name`.
fn minimal(name: &str) -> anyhow::Result<FranceTravailTenant> {
    example_tenant("minimal-tenant.yaml", name)
}

async fn create(client: &Client, tenant: &FranceTravailTenant) -> anyhow::Result<()> {
    Api::<FranceTravailTenant>::all(client.clone())
        .create(&PostParams::default(), tenant)
        .await?;
    Ok(())
}

async fn wait_ready(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    wait_for(&format!("tenant {name} Ready"), timeout, || async {
        Ok(tenants.get_opt(name).await?.filter(is_ready).map(|_| ()))
    })
    .await
}

/// Deletes tenants with their confirmation, without waiting for the shredding.
async fn discard(client: &Client, names: &[String]) {
    for name in names {
        let _ = confirm_and_delete(client, name).await;
    }
}

/// The end of every scenario: the operator enforces, as the README promises.
/// - a policy deleted by hand in `canary`'s first environment comes back;
/// - a new tenant becomes Ready;
/// - `canary`'s report is evaluated after `since` (unix seconds);
/// - no tenant has two shredding records, and no Velero object is made twice.
async fn still_enforcing(
    client: &Client,
    operator: &Operator,
    canary: &str,
    environment: &str,
    since: f64,
) -> anyhow::Result<()> {
    let namespace = format!("{canary}-{environment}");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let before = policies.get("ft-default-deny").await?.uid();
    policies
        .delete("ft-default-deny", &Default::default())
        .await?;
    wait_for("the deleted policy to be restored", SETTLE, || async {
        Ok(policies
            .get_opt("ft-default-deny")
            .await?
            .filter(|p| p.uid() != before)
            .map(|_| ()))
    })
    .await?;

    let newcomer = unique("e2e-fault-new");
    create(client, &minimal(&newcomer)?).await?;
    wait_ready(client, &newcomer, SETTLE).await?;
    discard(client, &[newcomer]).await;

    let evaluated =
        format!("ft_compliance_last_evaluation_timestamp_seconds{{tenant=\"{canary}\"}}");
    wait_for("the report to be evaluated again", SETTLE, || async {
        Ok((operator.metric(&evaluated).await? >= since.floor()).then_some(()))
    })
    .await?;

    no_second_record(client).await?;
    no_duplicate_velero_object(client).await
}

async fn no_second_record(client: &Client) -> anyhow::Result<()> {
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    for record in records
        .list(&ListParams::default().labels("hosting.francetravail.fr/shredding-record=true"))
        .await?
    {
        *per_tenant
            .entry(
                record
                    .labels()
                    .get(labels::TENANT)
                    .cloned()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    let twice: Vec<_> = per_tenant.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        twice.is_empty(),
        "tenants with more than one shredding record: {twice:?}"
    );
    Ok(())
}

/// No two Schedules for one environment, no two Restores of one backup, no two export
/// Backups of one environment and export.
async fn no_duplicate_velero_object(client: &Client) -> anyhow::Result<()> {
    let ours = ListParams::default().labels(labels::MANAGED_SELECTOR);
    let key = |o: &dyn Fn(&str) -> Option<String>, extra: Option<String>| {
        (
            o(labels::TENANT),
            o(labels::ENVIRONMENT),
            o(labels::BACKUP_PURPOSE),
            extra,
        )
    };
    let mut seen = BTreeMap::new();
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    for s in schedules.list(&ours).await? {
        let l = |k: &str| s.labels().get(k).cloned();
        *seen.entry(("Schedule", key(&l, None))).or_insert(0) += 1;
    }
    let restores: Api<Restore> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    for r in restores.list(&ours).await? {
        let l = |k: &str| r.labels().get(k).cloned();
        *seen
            .entry(("Restore", key(&l, Some(r.spec.backup_name.clone()))))
            .or_insert(0) += 1;
    }
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    for b in backups.list(&ours).await? {
        let l = |k: &str| b.labels().get(k).cloned();
        if let Some(export) = l(labels::EXPORT) {
            *seen.entry(("Backup", key(&l, Some(export)))).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "Velero objects made twice: {twice:?}");
    Ok(())
}

/// An operator on the shared lease of the suite's namespace.
fn start_operator() -> anyhow::Result<Operator> {
    Operator::start(OPERATOR_NAMESPACE, &unique("e2e-faults"))
}

/// The API server is killed (SIGKILL) while 50 new tenants converge, and started again after
/// `outage`: every tenant becomes Ready, and the operator enforces as before, in the same
/// process, having seen its watches fail.
async fn api_server_killed_during_convergence(
    outage: Duration,
) -> anyhow::Result<Result<(), Missing>> {
    let restart = need!(needs(RESTART_VARIABLE, RESTARTS));
    let client = need!(cluster().await?);
    let mut operator = start_operator()?;
    let canary = unique("e2e-fault-canary");
    create(&client, &minimal(&canary)?).await?;
    wait_ready(&client, &canary, SETTLE).await?;

    let names: Vec<String> = (0..50)
        .map(|i| unique(&format!("e2e-conv{i:02}")))
        .collect();
    for name in &names {
        create(&client, &minimal(name)?).await?;
    }
    let back = tokio::task::spawn_blocking(move || restart_api_server(&restart, outage)).await??;
    eprintln!("e2e: API server back after a {outage:?} outage");
    let since = unix_now();
    // A fresh client: the test's own connections died with the API server too.
    let client = ft_e2e::cluster().await?;
    for name in &names {
        wait_ready(&client, name, Duration::from_secs(180)).await?;
    }
    eprintln!(
        "e2e: 50 tenants Ready {:.1}s after the API server came back",
        back.elapsed().as_secs_f64()
    );
    ensure!(
        operator.wait_exit(Duration::ZERO).await?.is_none(),
        "the operator exited"
    );
    ensure!(
        operator.metric("ft_watch_restarts_total").await? > 0.0,
        "the operator saw no watch fail: was the API server restarted?"
    );
    still_enforcing(&client, &operator, &canary, "dev", since).await?;
    wait_for(
        "the operator to be ready again",
        Duration::from_secs(30),
        || async {
            let verdict = operator.get("/readyz").await?;
            Ok((verdict == "ok").then_some(()))
        },
    )
    .await?;
    discard(&client, &names).await;
    discard(&client, &[canary]).await;
    Ok(Ok(()))
}

/// A grant expires while the API server is down: its RoleBinding is gone within 2 s of the API
/// server answering again (2.4.c).
async fn api_server_restarted_while_a_grant_expires() -> anyhow::Result<Result<(), Missing>> {
    let restart = need!(needs(RESTART_VARIABLE, RESTARTS));
    let client = need!(cluster().await?);
    let operator = start_operator()?;
    let name = unique("e2e-fault-grant");
    let user = format!("{name}@example.org");
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 30)?;
    let mut tenant = minimal(&name)?;
    tenant.spec.access.grants.push(AccessGrant {
        subject: Subject {
            kind: SubjectKind::User,
            name: user.clone(),
        },
        role: Role::Developer,
        environments: vec!["dev".into()],
        expires: Time(expires),
        reviewed_at: Some(Time(jiff::Timestamp::now())),
        suspended: false,
    });
    create(&client, &tenant).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &format!("{name}-dev"));
    let granted = || async {
        Ok::<_, anyhow::Error>(
            bindings
                .list(&ListParams::default())
                .await?
                .into_iter()
                .any(|b| b.subjects.iter().flatten().any(|s| s.name == user)),
        )
    };
    wait_for("the grant's RoleBinding", SETTLE, || async {
        Ok(granted().await?.then_some(()))
    })
    .await?;
    // Down from 5 s before the expiry to 10 s after it.
    let until_down =
        expires.duration_since(jiff::Timestamp::now()) - jiff::SignedDuration::from_secs(5);
    ensure!(
        until_down.is_positive(),
        "the tenant took too long to converge to test an expiry during an outage"
    );
    tokio::time::sleep(until_down.unsigned_abs()).await;
    let back =
        tokio::task::spawn_blocking(move || restart_api_server(&restart, Duration::from_secs(15)))
            .await??;
    ensure!(
        jiff::Timestamp::now() > expires,
        "the API server came back before the grant expired"
    );
    let client = ft_e2e::cluster().await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &format!("{name}-dev"));
    wait_for(
        "the lapsed grant's RoleBinding to go",
        Duration::from_secs(10),
        || async {
            let held = bindings
                .list(&ListParams::default())
                .await?
                .into_iter()
                .any(|b| b.subjects.iter().flatten().any(|s| s.name == user));
            Ok((!held).then_some(()))
        },
    )
    .await?;
    let took = back.elapsed();
    eprintln!(
        "e2e: RoleBinding gone {:.2}s after the API server answered again",
        took.as_secs_f64()
    );
    ensure!(
        took <= Duration::from_secs(2),
        "the lapsed grant was revoked {took:?} after the API server came back (2.4.c: within 2 s)"
    );
    still_enforcing(&client, &operator, &name, "dev", unix_now()).await?;
    discard(&client, &[name]).await;
    Ok(Ok(()))
}

/// The operator is cut off while a policy is deleted, etcd's history compacted and the API
/// server restarted: its watches resume from a resourceVersion that no longer exists, get
/// 410 Gone, list again, and the deletion is seen and repaired.
async fn watches_expired_by_an_etcd_compaction() -> anyhow::Result<Result<(), Missing>> {
    let restart = need!(needs(RESTART_VARIABLE, RESTARTS));
    let compact = need!(needs(
        COMPACT_VARIABLE,
        "compacts etcd's history at its current revision"
    ));
    let client = need!(cluster().await?);
    let proxy = Proxy::start(api_server_address()?).await?;
    let kubeconfig = proxy.kubeconfig()?;
    let operator = Operator::start_binary(
        &operator_binary()?,
        OPERATOR_NAMESPACE,
        &unique("e2e-faults"),
        &[],
        Some(&kubeconfig),
    )?;
    let name = unique("e2e-fault-410");
    create(&client, &minimal(&name)?).await?;
    wait_ready(&client, &name, SETTLE).await?;

    proxy.cut();
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &format!("{name}-dev"));
    policies
        .delete("ft-default-deny", &Default::default())
        .await?;
    compact_etcd(&compact)?;
    tokio::task::spawn_blocking(move || restart_api_server(&restart, Duration::from_secs(3)))
        .await??;
    proxy.restore();
    let client = ft_e2e::cluster().await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &format!("{name}-dev"));
    wait_for(
        "the policy deleted unseen to be restored",
        SETTLE,
        || async { Ok(policies.get_opt("ft-default-deny").await?.map(|_| ())) },
    )
    .await?;
    ensure!(
        operator.log().contains("too old resource version"),
        "no watch was told its resourceVersion expired"
    );
    still_enforcing(&client, &operator, &name, "dev", unix_now()).await?;
    discard(&client, &[name]).await;
    Ok(Ok(()))
}

/// For each shredding step, an operator built with crash points dies right after the step's
/// action, before recording it; a fresh operator finishes the shredding: the key is gone, the
/// namespaces and the class too, and there is exactly one record.
async fn operator_killed_at_every_shredding_step() -> anyhow::Result<Result<(), Missing>> {
    let client = need!(cluster().await?);
    let with_points = failpoints_binary()?;
    let nodes = TestNodes::create(&client).await?;
    for step in [
        "FinalExport",
        "DestroyKey",
        "DeleteNamespaces",
        "DeleteClusterObjects",
        "DeleteBackups",
        "WriteRecord",
        "Done",
    ] {
        let name = unique("e2e-shred-crash");
        let lease = unique("e2e-faults");
        let mut crashing = Operator::start_binary(
            &with_points,
            OPERATOR_NAMESPACE,
            &lease,
            &[("FAILPOINTS".into(), format!("shred-{step}=return({name})"))],
            None,
        )?;
        let mut tenant = example_tenant("tenant.yaml", &name)?;
        tenant.spec.deletion.final_export = step == "FinalExport";
        create(&client, &tenant).await?;
        wait_ready(&client, &name, SETTLE).await?;
        confirm_and_delete(&client, &name).await?;
        if step == "FinalExport" {
            complete_export(&client, &name).await?;
        }
        let status = crashing
            .wait_exit(Duration::from_secs(120))
            .await?
            .with_context(|| format!("the operator did not reach the crash point after {step}"))?;
        ensure!(!status.success(), "the operator exited cleanly at {step}");
        eprintln!("e2e: operator killed after {step}: {status}");
        drop(crashing);

        let operator = Operator::start(OPERATOR_NAMESPACE, &lease)?;
        if step == "FinalExport" {
            hand_over_final_export(&client, &name).await?;
        }
        let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
        wait_for(
            &format!("tenant {name} shredded after a crash at {step}"),
            Duration::from_secs(180),
            || async { Ok(tenants.get_opt(&name).await?.is_none().then_some(())) },
        )
        .await?;
        shredded(&client, &name).await?;
        still_enforcing_after(&client, &operator).await?;
    }
    nodes.delete(&client).await?;
    Ok(Ok(()))
}

/// Plays Velero for a final export: its Backups complete.
async fn complete_export(client: &Client, tenant: &str) -> anyhow::Result<()> {
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let selector = format!("{}={tenant}", labels::TENANT);
    let made = wait_for("the final export's Backups", SETTLE, || async {
        let list = backups
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok((list.items.len() >= 2).then_some(list.items))
    })
    .await?;
    for backup in made {
        let mut done = backup.clone();
        done.status = Some(serde_json::from_value(json!({
            "phase": "Completed",
            "completionTimestamp": jiff::Timestamp::now().to_string(),
        }))?);
        backups
            .replace(&backup.name_any(), &PostParams::default(), &done)
            .await?;
    }
    Ok(())
}

/// Nothing of `tenant` is left but one record.
async fn shredded(client: &Client, tenant: &str) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    ensure!(
        secrets
            .get_opt(&format!("ft-key-{tenant}"))
            .await?
            .is_none(),
        "the key of {tenant} is still there"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for env in ["dev", "prod"] {
        ensure!(
            namespaces
                .get_opt(&format!("{tenant}-{env}"))
                .await?
                .is_none(),
            "namespace {tenant}-{env} is still there"
        );
    }
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    ensure!(
        classes
            .get_opt(&format!("ft-{tenant}-encrypted"))
            .await?
            .is_none(),
        "the class of {tenant} is still there"
    );
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let found = records
        .list(&ListParams::default().labels(&format!(
            "hosting.francetravail.fr/shredding-record=true,{}={tenant}",
            labels::TENANT
        )))
        .await?;
    ensure!(
        found.items.len() == 1,
        "{} shredding records for {tenant}",
        found.items.len()
    );
    Ok(())
}

/// `still_enforcing` on a canary of its own.
async fn still_enforcing_after(client: &Client, operator: &Operator) -> anyhow::Result<()> {
    let canary = unique("e2e-fault-canary");
    create(client, &minimal(&canary)?).await?;
    wait_ready(client, &canary, SETTLE).await?;
    still_enforcing(client, operator, &canary, "dev", unix_now()).await?;
    discard(client, &[canary]).await;
    Ok(())
}

/// For each restore-test step, an operator built with crash points dies there; a fresh one
/// carries the test through: one Restore per environment, never two, and the scratch
/// namespaces gone once Velero reports the restores done.
async fn operator_killed_at_every_restore_test_step() -> anyhow::Result<Result<(), Missing>> {
    let client = need!(cluster().await?);
    let with_points = failpoints_binary()?;
    let nodes = TestNodes::create(&client).await?;
    for point in ["restore-test-due", "restore-test-created"] {
        let name = unique("e2e-rt-crash");
        let lease = unique("e2e-faults");
        let mut crashing = Operator::start_binary(
            &with_points,
            OPERATOR_NAMESPACE,
            &lease,
            &[("FAILPOINTS".into(), format!("{point}=return({name})"))],
            None,
        )?;
        create(&client, &example_tenant("tenant.yaml", &name)?).await?;
        wait_ready(&client, &name, SETTLE).await?;
        complete_scheduled_backups(&client, &name).await?;
        let status = crashing
            .wait_exit(Duration::from_secs(120))
            .await?
            .with_context(|| format!("the operator did not reach {point}"))?;
        ensure!(!status.success(), "the operator exited cleanly at {point}");
        eprintln!("e2e: operator killed at {point}: {status}");
        drop(crashing);

        let operator = Operator::start(OPERATOR_NAMESPACE, &lease)?;
        let finished = finish_restore_tests(&client, &name, 2, "Completed").await?;
        ensure!(
            finished.len() == 2,
            "{} restore tests running",
            finished.len()
        );
        for env in ["dev", "prod"] {
            wait_namespace_going(&client, &format!("{name}-{env}-restore"), SETTLE).await?;
        }
        let restores: Api<Restore> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
        let made = restores
            .list(&ListParams::default().labels(&format!("{}={name}", labels::TENANT)))
            .await?;
        ensure!(
            made.items.len() == 2,
            "{} Restores for two environments: {:?}",
            made.items.len(),
            made.items.iter().map(|r| r.name_any()).collect::<Vec<_>>()
        );
        still_enforcing(&client, &operator, &name, "dev", unix_now()).await?;
        discard(&client, &[name]).await;
    }
    nodes.delete(&client).await?;
    Ok(Ok(()))
}

/// Two replicas; the leader, reaching the API server through a proxy, is cut off. The standby
/// takes over within the lease duration; the cut-off leader pauses before the Lease can pass,
/// writes nothing from then on, and stands by once it is reconnected.
async fn leader_cut_off_from_the_api_server() -> anyhow::Result<Result<(), Missing>> {
    let client = need!(cluster().await?);
    let lease = unique("e2e-faults");
    let proxy = Proxy::start(api_server_address()?).await?;
    let kubeconfig = proxy.kubeconfig()?;
    let first = Operator::start_binary(
        &operator_binary()?,
        OPERATOR_NAMESPACE,
        &lease,
        &[],
        Some(&kubeconfig),
    )?;
    wait_for("the first replica to lead", SETTLE, || async {
        Ok((first.metric("ft_leader").await? == 1.0).then_some(()))
    })
    .await?;
    let second = Operator::start(OPERATOR_NAMESPACE, &lease)?;
    let canary = unique("e2e-fault-canary");
    create(&client, &minimal(&canary)?).await?;
    wait_ready(&client, &canary, SETTLE).await?;
    ensure!(
        second.metric("ft_leader").await? == 0.0,
        "two replicas lead"
    );

    proxy.cut();
    let cut = Instant::now();
    wait_for(
        "the second replica to take over",
        Duration::from_secs(30),
        || async { Ok((second.metric("ft_leader").await? == 1.0).then_some(())) },
    )
    .await?;
    let took = cut.elapsed();
    eprintln!(
        "e2e: the standby leads {:.1}s after the leader was cut off",
        took.as_secs_f64()
    );
    ensure!(
        took <= Duration::from_secs(15) + Duration::from_secs(5),
        "the standby took over after {took:?}, beyond the 15 s lease"
    );
    ensure!(
        first.metric("ft_leader").await? == 0.0,
        "the cut-off leader still counts itself leading while the other leads"
    );
    // Work for the new leader while the old one is reconnected. Counted once it has stood
    // down: a write answered just before the cut may still be counted just after it.
    let writes_stood_down = first.metric("ft_api_writes_total").await?;
    proxy.restore();
    still_enforcing(&client, &second, &canary, "dev", unix_now()).await?;
    ensure!(
        first.metric("ft_api_writes_total").await? == writes_stood_down,
        "the cut-off leader wrote, reconnected, beside the new leader"
    );
    ensure!(
        first.metric("ft_leader").await? == 0.0,
        "the reconnected replica leads beside the new leader"
    );
    ensure!(
        first.log().contains("standing by"),
        "the reconnected replica does not say it stands by"
    );
    discard(&client, &[canary]).await;
    Ok(Ok(()))
}

/// A tenant the operator's types reject (its CRD let in a value a later schema refuses): that
/// tenant reports the field, and every other tenant keeps being reconciled.
async fn a_tenant_the_operator_cannot_read() -> anyhow::Result<Result<(), Missing>> {
    let client = need!(cluster().await?);
    let operator = start_operator()?;
    let canary = unique("e2e-fault-canary");
    create(&client, &minimal(&canary)?).await?;
    wait_ready(&client, &canary, SETTLE).await?;

    // Another version of the CRD lets a kind of environment in that these types do not know.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = format!("francetravailtenants.{}", ft_core::api::GROUP);
    let generated = ft_core::crd::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(crd_name.as_str()))
        .context("the tenant CRD")?;
    let mut loose = serde_json::to_value(generated)?;
    let kinds = loose
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/environments/items/properties/kind/enum")
        .and_then(|v| v.as_array_mut())
        .context("the CRD's environment kinds")?;
    kinds.push(json!("lab"));
    crds.patch(
        &crd_name,
        &PatchParams::apply("ft-e2e").force(),
        &Patch::Apply(&loose),
    )
    .await?;
    let odd = unique("e2e-fault-odd");
    let resource = ApiResource::erase::<FranceTravailTenant>(&());
    let dynamic: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut object = serde_json::to_value(minimal(&odd)?)?;
    object["spec"]["environments"][0]["kind"] = json!("lab");
    let created = wait_for("the API server to take the odd tenant", SETTLE, || async {
        let object: DynamicObject = serde_json::from_value(object.clone())?;
        Ok(dynamic.create(&PostParams::default(), &object).await.ok())
    })
    .await;
    // The operator's own CRD again, whatever happened.
    install_crds(&client).await?;
    created?;

    let checked = async {
        let reported = wait_for("the odd tenant to report the field", SETTLE, || async {
            let found = dynamic.get(&odd).await?;
            let conditions = found.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok(conditions
                .into_iter()
                .find(|c| {
                    c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "Unreadable"
                })
                .and_then(|c| c["message"].as_str().map(String::from)))
        })
        .await?;
        eprintln!("e2e: {reported}");
        ensure!(
            reported.contains("spec.environments[0].kind") && reported.contains("lab"),
            "the message does not name the field: {reported}"
        );
        still_enforcing(&client, &operator, &canary, "dev", unix_now()).await
    }
    .await;
    // The odd tenant goes whatever happened: the other tests read every tenant.
    let confirm = json!({"metadata": {"annotations": {annotations::CONFIRM_DELETION: odd}}});
    dynamic
        .patch(&odd, &PatchParams::default(), &Patch::Merge(&confirm))
        .await?;
    dynamic.delete(&odd, &Default::default()).await?;
    checked?;
    discard(&client, &[canary]).await;
    Ok(Ok(()))
}
