//! The reconciler against an in-process fake API server: the exact calls it makes for a new
//! tenant, an unchanged one (none), drift, pruning, an invalid spec, and deletion.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use common::tenant;
use ft_core::api::{FINALIZER, FranceTravailTenant, ShreddingStatus, annotations};
use ft_core::backup::velero::{Backup as VeleroBackup, BackupStorageLocation, Restore, Schedule};
use ft_core::desired::Desired;
use ft_core::settings::BuildSettings;
use ft_operator::compliance::Compliance;
use ft_operator::context::Context;
use ft_operator::keystore::MemoryKeyStore;
use ft_operator::metrics::Metrics;
use ft_operator::observe::CacheWriter as Writer;
use ft_operator::observe::{ObservedWriters, empty_stores};
use ft_operator::reconcile::reconcile;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::Client;
use kube::api::PartialObjectMetaExt;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

impl Call {
    fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// Answers like an API server that accepts everything: applies are echoed back with a new
/// resourceVersion, newer than any the caches hold, reads of unknown objects are 404.
#[derive(Clone, Default)]
struct FakeApi {
    calls: Arc<Mutex<Vec<Call>>>,
    /// What the server holds for the tenant: answers to patches of the tenant and its status.
    tenant: Arc<Mutex<Value>>,
    /// Answers without a resourceVersion.
    unversioned: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeApi {
    fn client(&self) -> Client {
        let calls = self.calls.clone();
        let tenant = self.tenant.clone();
        let unversioned = self.unversioned.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let calls = calls.clone();
            let tenant = tenant.lock().unwrap().clone();
            let unversioned = unversioned.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body: body.clone(),
                };
                let n = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(call.clone());
                    calls.len()
                };
                let (status, answer) = match call.method.as_str() {
                    // The cluster serves Velero.
                    "GET" if call.path == "/apis/velero.io/v1" => (
                        200,
                        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "velero.io/v1",
                               "resources": [{"name": "schedules", "singularName": "schedule", "namespaced": true,
                                              "kind": "Schedule", "verbs": ["get", "list", "watch"]}]}),
                    ),
                    "GET" => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                    ),
                    "DELETE" => (
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    ),
                    _ if call.path.contains("/francetravailtenants/") => {
                        let mut answer = tenant;
                        if let Some(status) = call.body.get("status") {
                            answer["status"] = status.clone();
                        }
                        (200, answer)
                    }
                    _ => {
                        let mut answer = body;
                        // A status patch carries no metadata: answer with the whole report.
                        if let Some(report) = call.path.strip_suffix("/status") {
                            let name = report.rsplit('/').next().unwrap_or_default();
                            answer["metadata"]["name"] = json!(name);
                            answer["spec"]["tenant"] = json!(name);
                        }
                        if unversioned {
                            if let Some(meta) =
                                answer.get_mut("metadata").and_then(Value::as_object_mut)
                            {
                                meta.remove("resourceVersion");
                            }
                        } else if answer.get("metadata").is_some() || call.path.contains("/events")
                        {
                            // Above every version the tests' caches hold, as a write's is.
                            answer["metadata"]["resourceVersion"] =
                                json!(format!("{}", 1_000_000 + n));
                        }
                        (if call.method == "POST" { 201 } else { 200 }, answer)
                    }
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_write).collect()
    }
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    writers: ObservedWriters,
}

fn harness() -> Harness {
    // Nothing feeds these caches but the tests: a pass's writes are never shown.
    harness_waiting(std::time::Duration::from_millis(20))
}

/// A harness whose passes wait up to `show_writes` for the caches to show their writes.
fn harness_waiting(show_writes: std::time::Duration) -> Harness {
    harness_with(show_writes, BuildSettings::default())
}

fn harness_with(show_writes: std::time::Duration, settings: BuildSettings) -> Harness {
    let api = FakeApi::default();
    let (observed, writers) = empty_stores();
    let mut ctx = Context::new(
        api.client(),
        observed,
        Arc::new(Metrics::default()),
        settings,
        Compliance::embedded(None).unwrap(),
        Reporter {
            controller: "ft-operator".into(),
            instance: Some("test".into()),
        },
        Arc::new(MemoryKeyStore::default()),
    );
    ctx.show_writes = show_writes;
    let ctx = Arc::new(ctx);
    // Velero is installed and listed, unless a test says otherwise.
    ctx.compliance.set_backup_engine(Some(true));
    Harness { api, ctx, writers }
}

fn ours() -> Option<Vec<ManagedFieldsEntry>> {
    Some(vec![ManagedFieldsEntry {
        manager: Some("ft-operator".into()),
        operation: Some("Apply".into()),
        ..Default::default()
    }])
}

impl Harness {
    fn reconcile(
        &self,
        t: FranceTravailTenant,
    ) -> impl std::future::Future<Output = ft_operator::Result<Action>> {
        *self.api.tenant.lock().unwrap() = serde_json::to_value(&t).unwrap();
        reconcile(Arc::new(t), self.ctx.clone())
    }

    /// Fills the stores as the reflectors would after listing the cluster: the children of
    /// `desired`, two nodes in France (one of the production pool), nothing else.
    fn observe(&mut self, desired: &Desired, tweak: impl Fn(&mut NetworkPolicy)) {
        let w = &mut self.writers;
        // The passes here are given their tenant: the controller's own cache of them is listed.
        list(&mut w.tenants, std::iter::empty(), |_| {});
        let namespaces = desired
            .namespaces
            .iter()
            .map(|ns| ns.metadata.clone().into_response_partial());
        list(&mut w.namespaces, namespaces, |_| {});
        list(
            &mut w.network_policies,
            desired.network_policies.iter().cloned(),
            tweak,
        );
        list(
            &mut w.resource_quotas,
            desired.resource_quotas.iter().cloned(),
            |_| {},
        );
        list(
            &mut w.limit_ranges,
            desired.limit_ranges.iter().cloned(),
            |_| {},
        );
        list(
            &mut w.compliance_reports,
            desired.compliance_reports.iter().cloned(),
            |_| {},
        );
        let nodes = [
            node("prod-1", &[("node-pool.example.org/name", "production")]),
            node("general-1", &[]),
        ];
        list(&mut w.nodes, nodes.into_iter(), |_| {});
        list(&mut w.pods, std::iter::empty(), |_| {});
        list(&mut w.persistent_volume_claims, std::iter::empty(), |_| {});
        list(&mut w.persistent_volumes, std::iter::empty(), |_| {});
        list(
            &mut w.role_bindings,
            desired.role_bindings.iter().cloned(),
            |_| {},
        );
        list(
            &mut w.storage_classes,
            desired.storage_classes.iter().cloned(),
            |_| {},
        );
        list(
            &mut w.environment_policies,
            desired.environment_policies.iter().cloned(),
            |_| {},
        );
        // The cluster-wide admission policies, installed with the chart.
        let fixed = ft_core::admission::fixed();
        list(
            &mut w.validating_admission_policies,
            fixed.validating_admission_policies.into_iter(),
            |_| {},
        );
        list(
            &mut w.validating_admission_policy_bindings,
            fixed.validating_admission_policy_bindings.into_iter(),
            |_| {},
        );
        list(
            &mut w.mutating_admission_policies,
            fixed.mutating_admission_policies.into_iter(),
            |_| {},
        );
        list(
            &mut w.mutating_admission_policy_bindings,
            fixed.mutating_admission_policy_bindings.into_iter(),
            |_| {},
        );
        let (backups, restores) = backed_up(desired);
        list(
            &mut w.schedules,
            desired.schedules.iter().flatten().cloned(),
            |_| {},
        );
        list(&mut w.backups, backups.into_iter(), |_| {});
        list(&mut w.restores, restores.into_iter(), |_| {});
        list(
            &mut w.backup_storage_locations,
            [location("backups-gra", "GRA7")].into_iter(),
            |_| {},
        );
    }

    fn observe_nothing(&mut self) {
        self.observe(&Desired::default(), |_| {});
    }

    fn observe_extra_policy(&mut self, np: NetworkPolicy) {
        self.writers
            .network_policies
            .apply_watcher_event(&Event::Apply(np));
    }

    /// Brings the tenant to its steady state: one pass over a cluster that holds every child,
    /// whose report and tenant status are then stored as the reflectors would see them.
    async fn settle(&mut self, mut t: FranceTravailTenant) -> FranceTravailTenant {
        let desired = desired(&t);
        self.observe(&desired, |_| {});
        self.reconcile(t.clone()).await.unwrap();
        let calls = self.api.writes();
        self.store_report(&calls);
        t.status = Some(serde_json::from_value(tenant_status(&calls).unwrap()).unwrap());
        self.api.calls.lock().unwrap().clear();
        t
    }

    /// Stores the report status written by `calls`, as the reflector would see it.
    fn store_report(&mut self, calls: &[Call]) {
        let status = report_status(calls).expect("a report status was written");
        let t = stored_tenant();
        let mut report = desired(&t).compliance_reports[0].clone();
        report.status = Some(serde_json::from_value(status).unwrap());
        report.metadata.resource_version = Some("1000".into());
        report.metadata.managed_fields = ours();
        self.writers
            .compliance_reports
            .apply_watcher_event(&Event::Apply(report));
    }
}

/// What the operator applies for `t` on the harness's cluster, whose nodes are all in Paris,
/// with Velero installed.
fn desired(t: &FranceTravailTenant) -> Desired {
    common::desired_with(
        t,
        &BuildSettings::default(),
        Some(true),
        jiff::Timestamp::now(),
    )
}

/// A Velero location in `region`, available.
fn location(name: &str, region: &str) -> BackupStorageLocation {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "velero"},
        "spec": {"provider": "aws", "objectStorage": {"bucket": "ft-backups"}, "config": {"region": region}},
        "status": {"phase": "Available"},
    }))
    .unwrap()
}

/// A backup Velero completed for `schedule`, an hour ago.
fn completed_backup(schedule: &Schedule) -> VeleroBackup {
    let done = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let mut backup = VeleroBackup::new(
        &format!(
            "{}-20260101020000",
            schedule.metadata.name.as_deref().unwrap()
        ),
        Default::default(),
    );
    backup.metadata.namespace = Some("velero".into());
    backup.metadata.labels = schedule.spec.template.metadata.clone().map(|m| m.labels);
    backup.status = Some(
        serde_json::from_value(json!({"phase": "Completed", "completionTimestamp": Time(done)}))
            .unwrap(),
    );
    backup
}

/// Every environment of `desired` backed up an hour ago, and that backup's restore test
/// passed since.
fn backed_up(desired: &Desired) -> (Vec<VeleroBackup>, Vec<Restore>) {
    let t = stored_tenant();
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(30);
    let mut backups = Vec::new();
    let mut restores = Vec::new();
    for (schedule, env) in desired.schedules.iter().flatten().zip(&t.spec.environments) {
        let backup = completed_backup(schedule);
        let mut restore = ft_core::backup::restore(
            &t,
            env,
            backup.metadata.name.as_deref().unwrap(),
            started,
            "velero",
        );
        restore.metadata.creation_timestamp = Some(Time(started));
        restore.status = Some(serde_json::from_value(json!({
            "phase": "Completed", "errors": 0, "completionTimestamp": Time(started + jiff::SignedDuration::from_mins(10)),
            "progress": {"totalItems": 4, "itemsRestored": 4},
        })).unwrap());
        backups.push(backup);
        restores.push(restore);
    }
    (backups, restores)
}

fn node(name: &str, extra: &[(&str, &str)]) -> Node {
    let mut labels = json!({"topology.kubernetes.io/region": "eu-west-3"});
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": format!("aws:///eu-west-3a/{name}")},
    }))
    .unwrap()
}

/// One initial listing into a store: each object as made by the operator's field manager.
fn list<K>(writer: &mut Writer<K>, objects: impl Iterator<Item = K>, tweak: impl Fn(&mut K))
where
    K: ft_operator::observe::Cached<DynamicType = ()>,
{
    writer.apply_watcher_event(&Event::Init);
    for mut object in objects {
        object.meta_mut().managed_fields = ours();
        object.meta_mut().resource_version = Some("1".into());
        tweak(&mut object);
        writer.apply_watcher_event(&Event::InitApply(object));
    }
    writer.apply_watcher_event(&Event::InitDone);
}

/// The example tenant, as stored: with its finalizer, and a generation.
fn stored_tenant() -> FranceTravailTenant {
    let mut t = tenant("examples/tenant.yaml");
    t.metadata.finalizers = Some(vec![FINALIZER.into()]);
    t.metadata.generation = Some(3);
    t.metadata.uid = Some("uid-1".into());
    // The example's grants, in force whenever the tests run: bound, with no expiry in sight.
    // Whole seconds, as the API server stores them.
    let later = jiff::Timestamp::from_second(
        (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 180)).as_second(),
    )
    .unwrap();
    for grant in &mut t.spec.access.grants {
        grant.expires = Time(later);
    }
    // Restore tests on 29 February only: none falls due while a test runs.
    t.spec.backup.as_mut().unwrap().restore_test_schedule = Some("0 5 29 2 *".into());
    t
}

fn applies(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            c.method == "PATCH"
                && c.content_type.starts_with("application/apply-patch")
                && !c.path.ends_with("/status")
        })
        .map(|c| c.path.clone())
        .collect()
}

fn events(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.contains("/events"))
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Status patches of the tenant.
fn status_patches(calls: &[Call]) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| {
            c.method == "PATCH"
                && c.path.ends_with("/status")
                && c.path.contains("/francetravailtenants/")
        })
        .map(|c| c.body["status"].clone())
        .collect()
}

fn tenant_status(calls: &[Call]) -> Option<Value> {
    status_patches(calls).pop()
}

/// The last status patch of the compliance report.
fn report_status(calls: &[Call]) -> Option<Value> {
    calls
        .iter()
        .rev()
        .find(|c| {
            c.method == "PATCH"
                && c.path
                    == "/apis/hosting.francetravail.fr/v1alpha1/compliancereports/offres-emploi/status"
        })
        .map(|c| c.body["status"].clone())
}

/// Each Event as (reason, kind of the object it is about).
fn events_on(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.contains("/events"))
        .map(|c| {
            (
                c.body["reason"].as_str().unwrap_or_default().to_string(),
                c.body["regarding"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn control<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["controls"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no control {id} in {report}"))
}

fn condition(status: &Value, type_: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn a_new_tenant_first_gets_the_finalizer_and_nothing_else() {
    let mut h = harness();
    h.observe_nothing();
    let mut t = stored_tenant();
    t.metadata.finalizers = None;
    h.reconcile(t).await.unwrap();

    let writes = h.api.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PATCH");
    assert!(
        writes[0]
            .path
            .ends_with("/francetravailtenants/offres-emploi")
    );
    assert_eq!(writes[0].content_type, "application/json-patch+json");
    assert!(writes[0].body.to_string().contains(FINALIZER));
}

#[tokio::test]
async fn a_tenant_with_its_finalizer_gets_every_child_applied_then_its_status() {
    let mut h = harness();
    h.observe_nothing();
    let t = stored_tenant();
    let action = h.reconcile(t.clone()).await.unwrap();
    // Looked at again soon, to judge the children once the cluster shows them.
    assert_eq!(action, Action::requeue(ft_operator::reconcile::SETTLING));

    let calls = h.api.writes();
    let applied = applies(&calls);
    let desired = desired(&t);
    assert_eq!(applied.len(), desired.to_values().unwrap().len());
    // Each namespace's EnvironmentPolicy right after the namespaces, before anything else: the
    // cluster-wide policies refuse every pod of a tenant namespace until it is there.
    let at = |path: &str| applied.iter().position(|a| a == path).unwrap();
    let first_namespace = at("/api/v1/namespaces/offres-emploi-prod");
    assert_eq!(
        applied[first_namespace + 1],
        "/api/v1/namespaces/offres-emploi-dev"
    );
    for env in ["prod", "dev"] {
        let path = format!(
            "/apis/hosting.francetravail.fr/v1alpha1/namespaces/offres-emploi-{env}/environmentpolicies/ft-environment"
        );
        assert!(
            at(&path) <= first_namespace + 3,
            "{path} not applied right after the namespaces: {applied:?}"
        );
    }
    // The admission policies themselves are the cluster's: the operator writes none.
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("admissionregistration")),
        "{calls:?}"
    );
    assert!(applied.contains(&"/apis/networking.k8s.io/v1/namespaces/offres-emploi-prod/networkpolicies/ft-default-deny".to_string()));
    assert!(
        applied
            .contains(&"/api/v1/namespaces/offres-emploi-dev/resourcequotas/ft-quota".to_string())
    );
    assert!(
        applied.contains(&"/api/v1/namespaces/offres-emploi-dev/limitranges/ft-limits".to_string())
    );
    // One field manager, forced, for every apply.
    let first = h
        .api
        .calls()
        .into_iter()
        .find(|c| c.content_type.starts_with("application/apply-patch"))
        .unwrap();
    assert_eq!(
        first.body["metadata"]["labels"]["hosting.francetravail.fr/tenant"],
        "offres-emploi"
    );

    let statuses = status_patches(&calls);
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        condition(&statuses[0], "Ready"),
        ("True".into(), "Reconciled".into())
    );
    assert_eq!(
        condition(&statuses[0], "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(statuses[0]["observedGeneration"], 3);
    assert_eq!(
        statuses[0]["namespaces"],
        json!(["offres-emploi-prod", "offres-emploi-dev"])
    );
    // Nothing is judged against a cluster that does not show the children yet.
    assert_eq!(
        condition(&statuses[0], "Compliant"),
        ("Unknown".into(), "NotEvaluated".into())
    );
    assert!(report_status(&calls).is_none());
    // One Event per right granted: the developers on both environments, the administrator.
    assert_eq!(
        events(&calls),
        [
            "Created",
            "AccessGranted",
            "AccessGranted",
            "AccessGranted",
            "Reconciled"
        ]
    );
}

#[tokio::test]
async fn an_unchanged_tenant_costs_no_write() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    h.reconcile(t).await.unwrap();
    assert_eq!(h.api.writes().len(), 0, "{:?}", h.api.writes());
}

/// The production environment's default-deny policy, as desired.
fn default_deny(t: &FranceTravailTenant) -> NetworkPolicy {
    desired(t)
        .network_policies
        .into_iter()
        .find(|np| {
            np.metadata.name.as_deref() == Some("ft-default-deny")
                && np.metadata.namespace.as_deref() == Some("offres-emploi-prod")
        })
        .unwrap()
}

/// The same, as the cache shows it once someone opened it to everything.
fn opened_default_deny(t: &FranceTravailTenant) -> NetworkPolicy {
    let mut np = default_deny(t);
    np.spec.as_mut().unwrap().ingress = Some(vec![Default::default()]);
    np.metadata.managed_fields = ours();
    np.metadata.resource_version = Some("2".into());
    np
}

#[tokio::test]
async fn a_child_changed_by_hand_is_restored_and_reported() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    h.observe_extra_policy(opened_default_deny(&t));
    let action = h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert_eq!(
        applies(&calls),
        [
            "/apis/networking.k8s.io/v1/namespaces/offres-emploi-prod/networkpolicies/ft-default-deny"
        ]
    );
    assert_eq!(events(&calls), ["DriftReverted"]);
    assert!(status_patches(&calls).is_empty(), "status unchanged");
    // Repaired before it was judged: the controls wait for the repair to be seen, and the
    // cache here never shows it, so the tenant is looked at again shortly.
    assert!(report_status(&calls).is_none());
    assert_eq!(action, Action::requeue(ft_operator::reconcile::SETTLING));
}

#[tokio::test]
async fn a_repair_the_cache_shows_is_judged_in_the_same_pass() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    let want = default_deny(&t);
    h.observe_extra_policy(opened_default_deny(&t));

    // The watch shows the repair once the API server has answered it, as a reflector would.
    *h.api.tenant.lock().unwrap() = serde_json::to_value(&t).unwrap();
    let pass = reconcile(Arc::new(t), h.ctx.clone());
    let api = h.api.clone();
    let writer = &mut h.writers.network_policies;
    let watch = async move {
        while applies(&api.writes()).is_empty() {
            tokio::task::yield_now().await;
        }
        let mut repaired = want;
        repaired.metadata.managed_fields = ours();
        repaired.metadata.resource_version = Some("9999999".into());
        writer.apply_watcher_event(&Event::Apply(repaired));
    };
    let (action, ()) = tokio::join!(pass, watch);

    // Judged then and there: the next look is the resync, not a settling retry, and the
    // repaired policy passes.
    assert_eq!(
        action.unwrap(),
        Action::requeue(ft_operator::reconcile::RESYNC)
    );
    let calls = h.api.writes();
    assert_eq!(events(&calls), ["DriftReverted"]);
    assert!(report_status(&calls).is_none(), "the report is unchanged");
}

/// A write the API server answers without a resourceVersion is one no cache can be shown to
/// hold: the pass does not wait for it, and the tenant is judged at the next look. On a paused
/// clock, a pass that waited would have advanced it by its whole wait.
#[tokio::test(start_paused = true)]
async fn a_write_answered_without_a_version_is_not_waited_for() {
    let hour = std::time::Duration::from_secs(3600);
    let mut h = harness_waiting(hour);
    let t = h.settle(stored_tenant()).await;
    h.observe_extra_policy(opened_default_deny(&t));
    h.api
        .unversioned
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let start = tokio::time::Instant::now();
    let action = h.reconcile(t).await.unwrap();
    assert!(start.elapsed() < hour, "waited {:?}", start.elapsed());
    assert_eq!(events(&h.api.writes()), ["DriftReverted"]);
    assert_eq!(action, Action::requeue(ft_operator::reconcile::SETTLING));
}

#[tokio::test]
async fn children_no_longer_declared_are_pruned_but_look_alikes_are_not() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    let desired = desired(&t);
    let mut stale = desired.network_policies[0].clone();
    stale.metadata.name = Some("ft-ingress-retired".into());
    stale.metadata.managed_fields = ours();
    h.observe_extra_policy(stale);
    let mut look_alike = desired.network_policies[0].clone();
    look_alike.metadata.name = Some("made-by-hand".into());
    look_alike.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kubectl".into()),
        ..Default::default()
    }]);
    h.observe_extra_policy(look_alike);

    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    let deletes: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(
        deletes,
        [
            "/apis/networking.k8s.io/v1/namespaces/offres-emploi-prod/networkpolicies/ft-ingress-retired"
        ]
    );
    assert!(applies(&calls).is_empty());
    assert_eq!(events(&calls), ["Pruned"]);
}

/// `t` with its environment `from` renamed `to`, in every flow and grant that names it.
fn renamed(t: &FranceTravailTenant, from: &str, to: &str) -> FranceTravailTenant {
    fn rename(v: &mut Value, from: &str, to: &str) {
        match v {
            Value::String(s) if s == from => *s = to.into(),
            Value::Array(items) => items.iter_mut().for_each(|i| rename(i, from, to)),
            Value::Object(fields) => fields.values_mut().for_each(|f| rename(f, from, to)),
            _ => {}
        }
    }
    let mut spec = serde_json::to_value(&t.spec).unwrap();
    rename(&mut spec, from, to);
    let mut r = t.clone();
    r.spec = serde_json::from_value(spec).unwrap();
    r
}

const HELD_NS: &str = "/api/v1/namespaces/offres-emploi-prod";

#[tokio::test]
async fn a_renamed_environment_is_held_then_removed_once_confirmed_and_recorded() {
    let mut h = harness();
    let mut t = stored_tenant();
    t.spec.deletion.final_export = false;
    let before = h.settle(t).await;
    let mut t = renamed(&before, "prod", "production");

    // Held: its namespace and what isolates it stay, over passes; only its rights go.
    for _ in 0..2 {
        h.api.calls.lock().unwrap().clear();
        h.reconcile(t.clone()).await.unwrap();
        let calls = h.api.writes();
        for path in deletes(&calls) {
            assert!(
                !path.contains("offres-emploi-prod") || path.contains("/rolebindings/"),
                "{path} deleted while held"
            );
        }
        // Written when the hold begins; unchanged afterwards, and not written again.
        let status = tenant_status(&calls)
            .or_else(|| t.status.as_ref().map(|s| serde_json::to_value(s).unwrap()))
            .expect("a status");
        assert_eq!(
            condition(&status, "EnvironmentRemoval"),
            ("True".into(), "EnvironmentRemovalHeld".into())
        );
        let message = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "EnvironmentRemoval")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("offres-emploi-prod"), "{message}");
        assert!(
            message.contains("kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/confirm-environment-removal=prod"),
            "{message}"
        );
        assert_eq!(status["removals"][0]["environment"], "prod");
        assert_eq!(status["removals"][0]["step"], "Held");
        if t.status.as_ref().is_none_or(|s| s.removals.is_empty()) {
            assert!(events(&calls).contains(&"EnvironmentRemovalHeld".to_string()));
        } else {
            assert!(!events(&calls).contains(&"EnvironmentRemovalHeld".to_string()));
        }
        t.status = Some(serde_json::from_value(status).unwrap());
    }

    // Confirmed: the namespace is deleted, and waited for.
    t.metadata.annotations = Some(
        [(
            "hosting.francetravail.fr/confirm-environment-removal".to_string(),
            "prod".to_string(),
        )]
        .into(),
    );
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    assert!(deletes(&calls).contains(&HELD_NS.to_string()), "{calls:#?}");
    assert!(events(&calls).contains(&"EnvironmentRemovalConfirmed".to_string()));
    let status = tenant_status(&calls).unwrap();
    assert_eq!(status["removals"][0]["step"], "DeleteNamespace");
    assert!(status["removals"][0]["confirmedAt"].is_string());
    assert_eq!(
        condition(&status, "EnvironmentRemoval"),
        ("True".into(), "EnvironmentRemovalInProgress".into())
    );
    t.status = Some(serde_json::from_value(status).unwrap());

    // Gone: recorded, the confirmation used up, the removal forgotten.
    let gone = desired(&before)
        .namespaces
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some("offres-emploi-prod"))
        .unwrap();
    h.writers
        .namespaces
        .apply_watcher_event(&Event::Delete(gone.metadata.into_response_partial()));
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    assert!(!deletes(&calls).contains(&HELD_NS.to_string()));
    let record = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == "/api/v1/namespaces/ft-system/configmaps")
        .expect("a removal record");
    assert_eq!(
        record.body["metadata"]["labels"]["hosting.francetravail.fr/environment-removal-record"],
        "true"
    );
    let body = record.body["data"]["record.yaml"].as_str().unwrap();
    for part in [
        "environment: prod",
        "namespace: offres-emploi-prod",
        "confirmedBy:",
        "namespaceDeletedAt:",
        "tenantKey: ",
    ] {
        assert!(body.contains(part), "{part} missing from:\n{body}");
    }
    assert!(events(&calls).contains(&"EnvironmentRemoved".to_string()));
    let used = calls
        .iter()
        .find(|c| {
            c.method == "PATCH"
                && c.path.ends_with("/francetravailtenants/offres-emploi")
                && c.body["metadata"]["annotations"].is_object()
        })
        .expect("the confirmation is used up");
    assert!(
        used.body["metadata"]["annotations"]["hosting.francetravail.fr/confirm-environment-removal"]
            .is_null()
    );
    let status = tenant_status(&calls).unwrap();
    assert!(status.get("removals").is_none(), "{status}");
    assert_eq!(
        condition(&status, "EnvironmentRemoval"),
        ("False".into(), "NoEnvironmentRemoval".into())
    );
}

#[tokio::test]
async fn a_confirmed_removal_exports_the_namespace_before_deleting_it_and_waits_for_velero() {
    let mut h = harness();
    let before = h.settle(stored_tenant()).await;
    let mut t = renamed(&before, "prod", "production");
    h.reconcile(t.clone()).await.unwrap();
    t.status = Some(serde_json::from_value(tenant_status(&h.api.writes()).unwrap()).unwrap());
    t.metadata.annotations = Some(
        [(
            "hosting.francetravail.fr/confirm-environment-removal".to_string(),
            "prod".to_string(),
        )]
        .into(),
    );

    // Without Velero: blocked, saying why; nothing deleted.
    h.ctx.compliance.set_backup_engine(Some(false));
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    assert!(!deletes(&calls).contains(&HELD_NS.to_string()));
    let status = tenant_status(&calls).unwrap();
    assert_eq!(status["removals"][0]["step"], "FinalExport");
    let message = status["removals"][0]["message"].as_str().unwrap();
    assert!(message.contains("velero.io/v1"), "{message}");
    assert!(message.contains("the namespace is kept"), "{message}");

    // With Velero: one Backup of the held namespace; still nothing deleted until it completes.
    h.ctx.compliance.set_backup_engine(Some(true));
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    let exports: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/apis/velero.io/v1/namespaces/velero/backups")
        .collect();
    assert_eq!(exports.len(), 1, "{calls:#?}");
    assert_eq!(
        exports[0].body["spec"]["includedNamespaces"],
        json!(["offres-emploi-prod"])
    );
    assert!(!deletes(&calls).contains(&HELD_NS.to_string()));

    // Completed: recorded, then the namespace is deleted.
    let mut backup: VeleroBackup = serde_json::from_value(exports[0].body.clone()).unwrap();
    backup.metadata.managed_fields = ours();
    backup.status = Some(serde_json::from_value(json!({"phase": "Completed"})).unwrap());
    h.writers.backups.apply_watcher_event(&Event::Apply(backup));
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    let exported = calls
        .iter()
        .position(|c| c.body.to_string().contains("finalExportAt"))
        .expect("the export is recorded");
    let deleted = calls
        .iter()
        .position(|c| c.method == "DELETE" && c.path == HELD_NS)
        .expect("then the namespace is deleted");
    assert!(exported < deleted);
    assert!(events(&calls).contains(&"EnvironmentExported".to_string()));
}

#[tokio::test]
async fn a_held_environment_declared_again_is_the_tenants_again() {
    let mut h = harness();
    let mut t = stored_tenant();
    t.spec.deletion.final_export = false;
    let before = h.settle(t).await;
    let mut t = renamed(&before, "prod", "production");
    h.reconcile(t.clone()).await.unwrap();
    t.status = Some(serde_json::from_value(tenant_status(&h.api.writes()).unwrap()).unwrap());

    let mut back = before.clone();
    back.status = t.status.clone();
    h.api.calls.lock().unwrap().clear();
    h.reconcile(back).await.unwrap();
    let calls = h.api.writes();
    assert!(!deletes(&calls).contains(&HELD_NS.to_string()));
    let status = tenant_status(&calls).unwrap();
    assert!(status.get("removals").is_none(), "{status}");
}

#[tokio::test]
async fn an_invalid_tenant_gets_no_child_and_a_status_naming_the_field() {
    let mut h = harness();
    h.observe_nothing();
    let mut t = stored_tenant();
    // As if stored before the schema refused it.
    t.spec.environments[0].node_pool = None;
    let action = h.reconcile(t).await.unwrap();
    // Not retried, but looked at again within the minute to keep its report fresh.
    assert_eq!(action, Action::requeue(ft_operator::reconcile::RESYNC));

    let calls = h.api.writes();
    assert!(applies(&calls).is_empty());
    let statuses = status_patches(&calls);
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        condition(&statuses[0], "Ready"),
        ("False".into(), "InvalidSpec".into())
    );
    assert!(
        statuses[0]
            .to_string()
            .contains("spec.environments[0].nodePool")
    );
    assert_eq!(events(&calls), ["InvalidSpec"]);
}

#[tokio::test]
async fn a_key_deleted_outside_the_operator_is_replaced_and_said_loudly() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    let before = t.status.as_ref().unwrap().key_fingerprint.clone().unwrap();
    h.ctx.keys.destroy("offres-emploi").await.unwrap();
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert_eq!(events(&calls), ["KeyReplaced"]);
    let status = tenant_status(&calls).expect("status rewritten");
    let after = status["keyFingerprint"].as_str().unwrap();
    assert_ne!(after, before);
    let note = calls
        .iter()
        .find(|c| c.path.contains("/events"))
        .map(|c| c.body["note"].to_string())
        .unwrap_or_default();
    assert!(note.contains(&before) && note.contains(after), "{note}");
}

/// The last `status.shredding` the operator wrote, as the tenant would then hold it.
fn shredding(calls: &[Call]) -> Option<ShreddingStatus> {
    calls
        .iter()
        .rev()
        .filter(|c| c.path.ends_with("/offres-emploi/status"))
        .find_map(|c| c.body["status"].get("shredding").cloned())
        .map(|v| serde_json::from_value(v).unwrap())
}

fn finalizer_removed(calls: &[Call]) -> bool {
    calls
        .iter()
        .any(|c| c.method == "PATCH" && c.body.to_string().contains("/metadata/finalizers/0"))
}

/// A settled tenant whose deletion has been requested, not confirmed.
async fn unconfirmed(h: &mut Harness) -> FranceTravailTenant {
    let mut t = stored_tenant();
    // The final export waits for an export engine; see the test of that below.
    t.spec.deletion.final_export = false;
    let mut t = h.settle(t).await;
    t.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    t
}

fn annotate(t: &mut FranceTravailTenant, key: &str, value: &str) {
    t.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
}

/// A settled tenant whose deletion has been requested and confirmed.
async fn deleting(h: &mut Harness) -> FranceTravailTenant {
    let mut t = unconfirmed(h).await;
    annotate(&mut t, annotations::CONFIRM_DELETION, "offres-emploi");
    t
}

#[tokio::test]
async fn an_unconfirmed_deletion_is_held_and_the_tenant_stays_enforced() {
    let mut h = harness();
    let mut t = unconfirmed(&mut h).await;
    // Someone opens the default-deny policy while the deletion is held: repaired as for a live
    // tenant.
    let mut np = desired(&t)
        .network_policies
        .into_iter()
        .find(|np| {
            np.metadata.name.as_deref() == Some("ft-default-deny")
                && np.metadata.namespace.as_deref() == Some("offres-emploi-prod")
        })
        .unwrap();
    np.spec.as_mut().unwrap().ingress = Some(vec![Default::default()]);
    np.metadata.managed_fields = ours();
    // Unlike any the fake server answers with in this pass.
    np.metadata.resource_version = Some("20".into());
    h.observe_extra_policy(np);
    let action = h.reconcile(t.clone()).await.unwrap();
    assert_ne!(action, Action::await_change());
    let calls = h.api.writes();
    assert!(deletes(&calls).is_empty(), "{calls:#?}");
    assert!(!finalizer_removed(&calls));
    assert!(shredding(&calls).is_none());
    assert_eq!(
        applies(&calls),
        [
            "/apis/networking.k8s.io/v1/namespaces/offres-emploi-prod/networkpolicies/ft-default-deny"
        ]
    );
    assert!(
        h.ctx
            .keys
            .fingerprint("offres-emploi")
            .await
            .unwrap()
            .is_some()
    );
    let status = tenant_status(&calls).expect("status written");
    assert_eq!(
        condition(&status, "DeletionHeld"),
        ("True".into(), "DeletionNotConfirmed".into())
    );
    let message = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DeletionHeld")
        .unwrap()["message"]
        .to_string();
    assert!(
        message.contains("kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/confirm-deletion=offres-emploi"),
        "{message}"
    );
    assert_eq!(events(&calls), ["DeletionHeld", "DriftReverted"]);

    // Held again: no second Event.
    t.status = Some(serde_json::from_value(status).unwrap());
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    assert!(!events(&calls).contains(&"DeletionHeld".to_string()));
    assert!(deletes(&calls).is_empty());

    // Confirmed: the shredding begins with the key.
    annotate(&mut t, annotations::CONFIRM_DELETION, "offres-emploi");
    h.api.calls.lock().unwrap().clear();
    let _ = h.reconcile(t).await;
    let calls = h.api.writes();
    assert!(events(&calls).contains(&"KeyDestroyed".to_string()));
    // The hold no longer stands: its condition goes with the first step recorded.
    let first = status_patches(&calls)
        .into_iter()
        .find(|s| s.get("shredding").is_some())
        .expect("the shredding recorded");
    let types: Vec<&str> = first["conditions"]
        .as_array()
        .expect("conditions rewritten")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert!(
        types.contains(&"Ready") && !types.contains(&"DeletionHeld"),
        "{types:?}"
    );
}

#[tokio::test]
async fn the_tenants_backups_are_deleted_through_velero_before_the_record() {
    let mut h = harness();
    let t = deleting(&mut h).await;
    let d = desired(&t);
    let scheduled = completed_backup(&d.schedules.as_ref().unwrap()[0]);
    let backup_name = scheduled.metadata.name.clone().unwrap();
    let mut t = t;
    t.status.as_mut().unwrap().shredding = Some(ShreddingStatus {
        step: "DeleteClusterObjects".into(),
        key_fingerprint: Some("sha256:k".into()),
        key_destroyed_at: Some(Time(jiff::Timestamp::now())),
        namespaces_deleted_at: Some(Time(jiff::Timestamp::now())),
        cluster_objects_deleted_at: Some(Time(jiff::Timestamp::now())),
        ..Default::default()
    });
    h.observe_nothing();
    list(&mut h.writers.backups, [scheduled].into_iter(), |_| {});

    // Velero is asked to delete it; the step waits until the Backup is gone.
    let waiting = h.reconcile(t.clone()).await.unwrap_err();
    assert_eq!(waiting.category(), "shredding_blocked");
    let calls = h.api.writes();
    let requests: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.method == "POST"
                && c.path == "/apis/velero.io/v1/namespaces/velero/deletebackuprequests"
        })
        .collect();
    assert_eq!(requests.len(), 1, "{calls:#?}");
    assert_eq!(requests[0].body["spec"]["backupName"], backup_name.as_str());
    assert_eq!(
        requests[0].body["metadata"]["name"],
        format!("{backup_name}-ft-delete")
    );
    assert_eq!(
        requests[0].body["metadata"]["labels"]["hosting.francetravail.fr/tenant"],
        "offres-emploi"
    );
    assert!(!finalizer_removed(&calls));
    let progress = shredding(&calls).unwrap();
    assert_eq!(progress.step, "DeleteBackups");
    assert_eq!(
        progress.backups_deleted,
        [format!("Backup velero/{backup_name}")]
    );
    assert!(progress.backups_deleted_at.is_none());

    // Velero deleted it: the step is done, and the record lists it.
    list(&mut h.writers.backups, std::iter::empty(), |_| {});
    t.status.as_mut().unwrap().shredding = Some(progress);
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    let record = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == "/api/v1/namespaces/ft-system/configmaps")
        .expect("a shredding record");
    let body = record.body["data"]["record.yaml"].as_str().unwrap();
    assert!(body.contains("backupsDeletedAt:"), "{body}");
    assert!(
        body.contains(&format!("Backup velero/{backup_name}")),
        "{body}"
    );
    assert!(events(&calls).contains(&"BackupsDeleted".to_string()));
    assert!(finalizer_removed(&calls));
}

#[tokio::test]
async fn deletion_destroys_the_key_first_then_the_namespaces_then_the_rest_and_records_it() {
    let mut h = harness();
    let mut t = deleting(&mut h).await;
    let fingerprint = t.status.as_ref().unwrap().key_fingerprint.clone().unwrap();

    // First pass: the key goes, then the namespaces are deleted; they take a while.
    let pending = h.reconcile(t.clone()).await;
    assert_eq!(pending.unwrap_err().category(), "cleanup_pending");
    let calls = h.api.writes();
    let key_recorded = calls
        .iter()
        .position(|c| c.body.to_string().contains("keyDestroyedAt"))
        .expect("the key's destruction is recorded");
    let first_namespace_delete = calls
        .iter()
        .position(|c| c.method == "DELETE" && c.path.starts_with("/api/v1/namespaces/"))
        .expect("namespaces deleted");
    assert!(key_recorded < first_namespace_delete, "{calls:#?}");
    let mut deleted = deletes(&calls);
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "/api/v1/namespaces/offres-emploi-dev",
            "/api/v1/namespaces/offres-emploi-prod"
        ]
    );
    assert!(!finalizer_removed(&calls));
    let progress = shredding(&calls).unwrap();
    assert_eq!(progress.step, "DeleteNamespaces");
    assert_eq!(
        progress.key_fingerprint.as_deref(),
        Some(fingerprint.as_str())
    );
    assert!(events(&calls).contains(&"KeyDestroyed".to_string()));
    // The key store holds it no more.
    let again = h.ctx.keys.fingerprint("offres-emploi").await.unwrap();
    assert_eq!(again, None);

    // The namespaces are gone, and the cluster objects go: then the record, then the finalizer.
    t.status.as_mut().unwrap().shredding = Some(progress);
    h.observe_nothing();
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    let record = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == "/api/v1/namespaces/ft-system/configmaps")
        .expect("a shredding record");
    let body = record.body["data"]["record.yaml"].as_str().unwrap();
    for field in [
        "keyDestroyedAt:",
        "namespacesDeletedAt:",
        "clusterObjectsDeletedAt:",
        "startedAt:",
        "recordedAt:",
        "offres-emploi-prod",
        fingerprint.as_str(),
    ] {
        assert!(body.contains(field), "{field} missing from:\n{body}");
    }
    assert!(record.body["metadata"].get("ownerReferences").is_none());
    assert!(finalizer_removed(&calls));
    let progress = shredding(&calls).unwrap();
    assert_eq!(progress.step, "Done");
    assert!(
        progress
            .record
            .unwrap()
            .starts_with("ConfigMap ft-system/ft-shredding-offres-emploi-")
    );
    assert!(events(&calls).contains(&"Shredded".to_string()));
}

#[tokio::test]
async fn a_restarted_operator_resumes_the_shredding_where_it_stopped() {
    let mut h = harness();
    let mut t = deleting(&mut h).await;
    h.reconcile(t.clone()).await.unwrap_err();
    let progress = shredding(&h.api.writes()).unwrap();
    assert_eq!(progress.step, "DeleteNamespaces");

    // A new operator (new key store, new caches), the namespaces still there.
    let mut h = harness();
    t.status.as_mut().unwrap().shredding = Some(progress.clone());
    h.observe(&desired(&t), |_| {});
    let pending = h.reconcile(t.clone()).await;
    assert_eq!(pending.unwrap_err().category(), "cleanup_pending");
    let calls = h.api.writes();
    // The key is not destroyed twice, nor its time rewritten.
    assert!(!events(&calls).contains(&"KeyDestroyed".to_string()));
    assert_eq!(deletes(&calls).len(), 2);
    assert!(calls.iter().all(|c| {
        !c.body.to_string().contains("keyDestroyedAt")
            || c.body
                .to_string()
                .contains(&progress.key_destroyed_at.as_ref().unwrap().0.to_string())
    }),);

    // Stopped after the record was written but before the finalizer went: it goes now.
    let mut h = harness();
    let mut done = progress;
    done.namespaces_deleted_at = done.key_destroyed_at.clone();
    done.cluster_objects_deleted_at = done.key_destroyed_at.clone();
    done.record = Some("ConfigMap ft-system/ft-shredding-offres-emploi-uid1".into());
    t.status.as_mut().unwrap().shredding = Some(done);
    h.observe_nothing();
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert!(finalizer_removed(&calls));
    assert!(!calls.iter().any(|c| c.path.contains("/configmaps")));
}

#[tokio::test]
async fn a_final_export_is_taken_before_anything_is_destroyed() {
    let mut h = harness();
    let mut t = deleting(&mut h).await;
    t.spec.deletion.final_export = true;

    // First pass: one export Backup per environment is asked of Velero; nothing is destroyed.
    let waiting = h.reconcile(t.clone()).await.unwrap_err();
    assert_eq!(waiting.category(), "shredding_blocked");
    let calls = h.api.writes();
    let exports: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/apis/velero.io/v1/namespaces/velero/backups")
        .collect();
    assert_eq!(exports.len(), 2, "{calls:#?}");
    assert_eq!(
        exports[0].body["spec"]["includedNamespaces"],
        json!(["offres-emploi-prod"])
    );
    assert_eq!(exports[0].body["spec"]["storageLocation"], "backups-gra");
    assert!(deletes(&calls).is_empty());
    assert!(
        h.ctx
            .keys
            .fingerprint("offres-emploi")
            .await
            .unwrap()
            .is_some()
    );
    let progress = shredding(&calls).unwrap();
    assert_eq!(progress.step, "FinalExport");
    assert!(progress.message.contains("0 of 2"), "{}", progress.message);

    // Velero completes them: the export is recorded, then the key is destroyed.
    for export in &exports {
        let mut backup: VeleroBackup = serde_json::from_value(export.body.clone()).unwrap();
        backup.metadata.managed_fields = ours();
        backup.status = Some(serde_json::from_value(json!({"phase": "Completed"})).unwrap());
        h.writers.backups.apply_watcher_event(&Event::Apply(backup));
    }
    t.status.as_mut().unwrap().shredding = Some(progress);
    h.api.calls.lock().unwrap().clear();
    let _ = h.reconcile(t).await;
    let calls = h.api.writes();
    let exported = calls
        .iter()
        .position(|c| c.body.to_string().contains("finalExportAt"))
        .expect("the final export is recorded");
    let key = calls
        .iter()
        .position(|c| c.body.to_string().contains("keyDestroyedAt"))
        .expect("then the key is destroyed");
    assert!(exported < key);
    let done = shredding(&calls).unwrap();
    assert_eq!(done.exports.len(), 2);
    assert!(
        done.exports[0].contains("velero/backups-gra"),
        "{:?}",
        done.exports
    );
    assert!(events(&calls).contains(&"FinalExported".to_string()));
}

#[tokio::test]
async fn without_velero_a_final_export_blocks_the_shredding_and_says_why() {
    let mut h = harness();
    let mut t = deleting(&mut h).await;
    t.spec.deletion.final_export = true;
    h.ctx.compliance.set_backup_engine(Some(false));
    let blocked = h.reconcile(t).await.unwrap_err();
    assert_eq!(blocked.category(), "shredding_blocked");
    let calls = h.api.writes();
    assert!(deletes(&calls).is_empty());
    assert!(
        h.ctx
            .keys
            .fingerprint("offres-emploi")
            .await
            .unwrap()
            .is_some()
    );
    let progress = shredding(&calls).unwrap();
    assert_eq!(progress.step, "FinalExport");
    for said in [
        "backup engine not installed",
        "nothing has been destroyed",
        "spec.deletion.finalExport",
    ] {
        assert!(
            progress.message.contains(said),
            "{said}: {}",
            progress.message
        );
    }
}

#[tokio::test]
async fn a_first_backup_gets_a_restore_test_in_an_isolated_scratch_namespace() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    // Velero holds a backup of production, and no restore test yet.
    let d = desired(&t);
    let schedule = &d.schedules.as_ref().unwrap()[0];
    let mut backup = completed_backup(schedule);
    backup.metadata.managed_fields = ours();
    list(&mut h.writers.backups, [backup].into_iter(), |_| {});
    list(&mut h.writers.restores, std::iter::empty(), |_| {});

    let _ = h.reconcile(t.clone()).await.unwrap();
    let calls = h.api.writes();
    let applied = applies(&calls);
    // The scratch namespace, with its isolation and placement, before the Restore.
    let scratch = applied
        .iter()
        .position(|a| a.contains("/namespaces/offres-emploi-prod-restore"))
        .expect("the scratch namespace is applied");
    assert!(
        applied
            .iter()
            .any(|a| a.contains("offres-emploi-prod-restore/networkpolicies/ft-default-deny")),
        "{applied:#?}"
    );
    let restores: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/apis/velero.io/v1/namespaces/velero/restores")
        .collect();
    // dev has no backup yet: one restore test, of production.
    assert_eq!(restores.len(), 1, "{calls:#?}");
    let restore = &restores[0].body;
    assert_eq!(
        restore["spec"]["backupName"],
        "ft-offres-emploi-prod-20260101020000"
    );
    assert_eq!(
        restore["spec"]["namespaceMapping"],
        json!({"offres-emploi-prod": "offres-emploi-prod-restore"})
    );
    let restore_at = calls
        .iter()
        .position(|c| c.path.ends_with("/velero/restores"))
        .unwrap();
    let scratch_at = calls
        .iter()
        .position(|c| c.path.contains("/namespaces/offres-emploi-prod-restore"))
        .unwrap();
    assert!(scratch_at < restore_at, "{scratch}");
    assert!(events(&calls).contains(&"RestoreTestStarted".to_string()));
}
#[tokio::test]
async fn deletion_with_retain_keeps_namespaces_and_key_and_removes_the_operators_objects() {
    let mut h = harness();
    let mut t = stored_tenant();
    t.spec.deletion.policy = ft_core::api::DeletionPolicy::Retain;
    let mut t = h.settle(t).await;
    t.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    // Unconfirmed, even Retain removes nothing.
    h.reconcile(t.clone()).await.unwrap();
    assert!(deletes(&h.api.writes()).is_empty());
    h.api.calls.lock().unwrap().clear();
    annotate(&mut t, annotations::CONFIRM_DELETION, "offres-emploi");
    let pending = h.reconcile(t.clone()).await;
    assert_eq!(pending.unwrap_err().category(), "cleanup_pending");
    let calls = h.api.writes();
    let deleted = deletes(&calls);
    assert!(
        !deleted
            .iter()
            .any(|d| d.starts_with("/api/v1/namespaces/offres-emploi")
                && d.matches('/').count() == 4),
        "{deleted:?}"
    );
    for kind in [
        "storageclasses/ft-offres-emploi-encrypted",
        "rolebindings/",
        "compliancereports/offres-emploi",
    ] {
        assert!(
            deleted.iter().any(|d| d.contains(kind)),
            "{kind} not deleted: {deleted:?}"
        );
    }
    assert!(
        h.ctx
            .keys
            .fingerprint("offres-emploi")
            .await
            .unwrap()
            .is_some()
    );

    let mut h2 = harness();
    h2.observe_nothing();
    h2.reconcile(t).await.unwrap();
    let calls = h2.api.writes();
    assert!(finalizer_removed(&calls));
    assert_eq!(events(&calls), ["Retained"]);
}

#[tokio::test]
async fn once_the_children_are_seen_the_report_is_written_and_the_tenant_is_compliant() {
    let mut h = harness();
    let t = stored_tenant();
    h.observe(&desired(&t), |_| {});
    let action = h.reconcile(t).await.unwrap();
    assert_eq!(action, Action::requeue(ft_operator::reconcile::RESYNC));

    let calls = h.api.writes();
    assert!(applies(&calls).is_empty(), "{calls:?}");
    let report = report_status(&calls).expect("report written");
    assert_eq!(report["result"], "Compliant", "{report:#}");
    assert_eq!(report["failing"], Value::Null);
    assert_eq!(control(&report, "NET-1")["result"], "Pass");
    assert_eq!(
        control(&report, "NET-1")["rules"],
        json!(["CLD-20", "CLD-36"])
    );
    // The tenant's key was made, and only its fingerprint is shown.
    let status = tenant_status(&calls).unwrap();
    let fingerprint = status["keyFingerprint"]
        .as_str()
        .expect("a key fingerprint");
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    assert_eq!(fingerprint.len(), "sha256:".len() + 16);
    assert_eq!(control(&report, "ENC-2")["result"], "Pass");
    assert!(
        control(&report, "ENC-2")["message"]
            .as_str()
            .unwrap_or_default()
            .contains(fingerprint)
    );
    assert_eq!(
        condition(&status, "Compliant"),
        ("True".into(), "ControlsPass".into())
    );
    assert!(events(&calls).iter().all(|e| e != "ControlFailed"));
}

fn binding(name: &str, subject: Value) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "offres-emploi-prod", "resourceVersion": "5"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [subject],
    }))
    .unwrap()
}

#[tokio::test]
async fn a_control_that_starts_failing_is_reported_once_with_events_on_tenant_and_report() {
    let mut h = harness();
    let t = h.settle(stored_tenant()).await;
    let metric = |h: &Harness| {
        h.ctx
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("ft_control_result{") && l.contains("control=\"ACC-1\""))
            .map(str::to_string)
    };
    assert!(metric(&h).unwrap().ends_with(" 1"));
    // The time of the latest evaluation shows the evaluation runs, the report being unchanged.
    let evaluated = h.ctx.metrics.encode();
    let evaluated = evaluated
        .lines()
        .find(|l| {
            l.starts_with(
                "ft_compliance_last_evaluation_timestamp_seconds{tenant=\"offres-emploi\"}",
            )
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<i64>().ok());
    assert!(
        evaluated.is_some_and(|t| t > 1_700_000_000),
        "{evaluated:?}"
    );

    // A right nobody declared, and one a workload needs for itself, which is allowed.
    let undeclared = binding(
        "mallory-admin",
        json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory@example.org"}),
    );
    let workload = binding(
        "app-reader",
        json!({"kind": "ServiceAccount", "name": "app", "namespace": "offres-emploi-prod"}),
    );
    h.writers
        .role_bindings
        .apply_watcher_event(&Event::Apply(undeclared.clone()));
    h.writers
        .role_bindings
        .apply_watcher_event(&Event::Apply(workload));
    h.reconcile(t.clone()).await.unwrap();

    let calls = h.api.writes();
    let report = report_status(&calls).expect("report rewritten");
    assert_eq!(report["result"], "NonCompliant");
    assert_eq!(report["failing"], "ACC-1");
    let acc = control(&report, "ACC-1");
    assert_eq!(acc["result"], "Fail");
    let message = acc["message"].as_str().unwrap();
    assert!(
        message.contains("RoleBinding/offres-emploi-prod/mallory-admin"),
        "{message}"
    );
    assert!(message.contains("User mallory@example.org"), "{message}");
    assert!(!message.contains("app-reader"), "{message}");
    assert_eq!(
        events_on(&calls),
        [
            (
                "ControlFailed".to_string(),
                "FranceTravailTenant".to_string()
            ),
            ("ControlFailed".to_string(), "ComplianceReport".to_string()),
        ]
    );
    let status = tenant_status(&calls).unwrap();
    assert_eq!(
        condition(&status, "Compliant"),
        ("False".into(), "ControlsFail".into())
    );
    assert!(metric(&h).unwrap().ends_with(" 0"));

    // The same failure seen again costs nothing and raises nothing.
    h.store_report(&calls);
    let mut t = t;
    t.status = Some(serde_json::from_value(status).unwrap());
    h.api.calls.lock().unwrap().clear();
    h.reconcile(t.clone()).await.unwrap();
    assert_eq!(h.api.writes().len(), 0, "{:?}", h.api.writes());

    // Repaired by hand: the control holds again, and says so.
    h.writers
        .role_bindings
        .apply_watcher_event(&Event::Delete(undeclared));
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert_eq!(report_status(&calls).unwrap()["result"], "Compliant");
    assert_eq!(
        events_on(&calls),
        [
            (
                "ControlPassed".to_string(),
                "FranceTravailTenant".to_string()
            ),
            ("ControlPassed".to_string(), "ComplianceReport".to_string()),
        ]
    );
}

fn deletes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect()
}

const ADMIN_BINDING: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/offres-emploi-prod/rolebindings/ft-admin-172aef385e";

#[tokio::test]
async fn a_lapsed_grant_loses_its_binding_and_the_change_is_journalled() {
    let mut h = harness();
    let mut t = h.settle(stored_tenant()).await;
    // The administrator's right has just expired.
    t.spec.access.grants[1].expires = Time(jiff::Timestamp::now());
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert_eq!(deletes(&calls), [ADMIN_BINDING]);
    assert_eq!(events(&calls), ["AccessExpired"]);
    let event = calls
        .iter()
        .find(|c| c.path.contains("/events"))
        .expect("an Event");
    assert_eq!(event.body["related"]["name"], "ft-admin-172aef385e");
    let note = event.body["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("User claire.martin@example.org") && note.contains("(2.4.c)"),
        "{note}"
    );
    // The inventory in the status no longer lists the administrator.
    let status = tenant_status(&calls).expect("status rewritten");
    let holders: Vec<&str> = status["grants"]
        .as_array()
        .expect("grants in force")
        .iter()
        .filter_map(|g| g["subject"]["name"].as_str())
        .collect();
    assert_eq!(holders, ["offres-emploi-developpeurs"]);
}

#[tokio::test]
async fn a_refused_spec_gets_nothing_new_but_still_loses_its_lapsed_rights() {
    let mut h = harness();
    let mut t = h.settle(stored_tenant()).await;
    t.spec.access.grants[1].expires = Time(jiff::Timestamp::now());
    // The administrator's grant given twice: the spec is refused.
    let mut twice = t.spec.access.grants[1].clone();
    twice.environments = vec!["dev".into()];
    t.spec.access.grants.push(twice);
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert!(applies(&calls).is_empty(), "{:?}", applies(&calls));
    assert_eq!(deletes(&calls), [ADMIN_BINDING]);
    let status = tenant_status(&calls).expect("status rewritten");
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "InvalidSpec".into())
    );
}

#[tokio::test]
async fn bindings_made_by_hand_are_deleted_only_when_the_tenant_says_so() {
    let mut h = harness();
    let mut t = h.settle(stored_tenant()).await;
    let by_hand = binding(
        "mallory-admin",
        json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory@example.org"}),
    );
    let workload = binding(
        "app-reader",
        json!({"kind": "ServiceAccount", "name": "app", "namespace": "offres-emploi-prod"}),
    );
    for b in [&by_hand, &workload] {
        h.writers
            .role_bindings
            .apply_watcher_event(&Event::Apply(b.clone()));
    }
    h.reconcile(t.clone()).await.unwrap();
    assert!(deletes(&h.api.writes()).is_empty());

    h.api.calls.lock().unwrap().clear();
    t.spec.access.prune_undeclared = true;
    h.reconcile(t).await.unwrap();
    let calls = h.api.writes();
    assert_eq!(
        deletes(&calls),
        [
            "/apis/rbac.authorization.k8s.io/v1/namespaces/offres-emploi-prod/rolebindings/mallory-admin"
        ]
    );
    assert_eq!(events(&calls), ["UndeclaredAccessRemoved"]);
}

#[tokio::test]
async fn the_webhook_s_placements_are_kept_only_where_the_webhook_confines_pods() {
    use ft_core::placement::admission::Confinement;
    for (confinement, kept) in [(Confinement::Native, false), (Confinement::Webhook, true)] {
        let settings = BuildSettings {
            confinement,
            ..BuildSettings::default()
        };
        let mut h = harness_with(std::time::Duration::from_millis(20), settings);
        h.settle(stored_tenant()).await;
        assert_eq!(
            h.ctx.placements.get("offres-emploi-prod").is_some(),
            kept,
            "{confinement:?}"
        );
    }
}
