//! The compliance evaluator, control by control: each one passes on a healthy tenant and fails,
//! naming what is wrong, on the cluster objects of `tests/fixtures/compliance/`. Then the report
//! built from the findings, and the catalogue the controls come from.
//!
//! Everything here is pure: a fixed time, no clock, no network.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ft_core::api::{
    ControlResult, DeletionPolicy, FIELD_MANAGER, FranceTravailTenant, ReportStatus, Verdict,
    labels,
};
use ft_core::backup::velero::{
    Backup, BackupSpec, BackupStatus, Restore, RestoreProgress, RestoreStatus,
};
use ft_core::backup::{self, VeleroView};
use ft_core::controls::{
    Catalogue, ClusterFacts, EVALUATORS, Evaluation, Finding, Inputs, NOT_IN_THIS_VERSION,
    TenantView, compliant_condition, encrypts, evaluate, next_report, transitions,
};
use ft_core::desired::Desired;
use ft_core::placement::regions::RegionCatalogue;
use ft_core::settings::BuildSettings;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, ResourceQuota};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
};
use k8s_openapi::api::rbac::v1::Subject as RbacSubject;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ManagedFieldsEntry, Time};
use kube::Resource;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use ControlResult::{Fail, NotApplicable, Pass, Unknown};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const FIXTURES: &str = "core/tests/fixtures/compliance";

/// The time every test evaluates at. Never the real clock.
fn now() -> Timestamp {
    "2026-11-22T12:00:00Z".parse().expect("a valid timestamp")
}

fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("{text} is not a timestamp: {e}"))
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

/// The documents of a fixture file.
fn documents(file: &str) -> Vec<Value> {
    let text = common::read(&format!("{FIXTURES}/{file}"));
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every object of kind `K` in a fixture file.
fn objects<K: Resource<DynamicType = ()> + DeserializeOwned>(file: &str) -> Vec<Arc<K>> {
    let kind = K::kind(&());
    documents(file)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind.as_ref()))
        .map(|d| {
            let name = d["metadata"]["name"].clone();
            Arc::new(
                serde_json::from_value(d).unwrap_or_else(|e| panic!("{file}: {kind} {name}: {e}")),
            )
        })
        .collect()
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key_of<K: Resource>(object: &K) -> String {
    let name = object.meta().name.clone().unwrap_or_default();
    match &object.meta().namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// The objects of kind `K` with these keys, in this order; panics on a key not in the file, so
/// that a typo cannot quietly leave a test without its object.
fn pick<K: Resource<DynamicType = ()> + DeserializeOwned>(
    file: &str,
    keys: &[&str],
) -> Vec<Arc<K>> {
    let all = objects::<K>(file);
    keys.iter()
        .map(|key| {
            all.iter()
                .find(|o| key_of(&***o) == *key)
                .cloned()
                .unwrap_or_else(|| panic!("{file} has no {} {key}", K::kind(&())))
        })
        .collect()
}

fn one<K: Resource<DynamicType = ()> + DeserializeOwned>(file: &str, key: &str) -> Arc<K> {
    pick(file, &[key]).remove(0)
}

/// Changes the object with this key in place.
#[track_caller]
fn edit<K: Resource + Clone>(list: &mut [Arc<K>], key: &str, change: impl FnOnce(&mut K)) {
    let found = list
        .iter_mut()
        .find(|o| key_of(&***o) == key)
        .unwrap_or_else(|| panic!("no {key} to edit"));
    change(Arc::make_mut(found));
}

#[track_caller]
fn remove<K: Resource>(list: &mut Vec<Arc<K>>, key: &str) {
    let before = list.len();
    list.retain(|o| key_of(&**o) != key);
    assert_eq!(list.len(), before - 1, "no {key} to remove");
}

fn arcs<T: Clone>(items: &[T]) -> Vec<Arc<T>> {
    items.iter().cloned().map(Arc::new).collect()
}

/// An object as the API server returns it after the operator applied it: with the operator as
/// a field manager.
fn managed<K: Resource + Clone>(object: &K) -> K {
    let mut object = object.clone();
    object.meta_mut().managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        ..Default::default()
    }]);
    object
}

/// A namespace as the API server returns it after the operator applied it: with the operator
/// as a field manager.
fn applied(ns: &Namespace) -> PartialObjectMeta<Namespace> {
    let mut meta = ns.metadata.clone();
    meta.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    }]);
    meta.into_response_partial()
}

/// Velero as it stands when every environment of `tenant` is backed up and tested: its
/// Schedules, a backup completed at 02:05 today, a restore test of it that passed at 05:30, and
/// the location in Gravelines, away from the Paris nodes.
fn backed_up(tenant: &FranceTravailTenant) -> VeleroView {
    let schedules = backup::schedules(tenant, "velero");
    let mut view = VeleroView {
        namespace: "velero".into(),
        location: pick("velero.yaml", &["velero/backups-gra"]).pop(),
        schedules: schedules
            .iter()
            .map(|s| {
                let mut s = managed(s);
                s.metadata.creation_timestamp = Some(Time(at("2026-11-01T00:00:00Z")));
                Arc::new(s)
            })
            .collect(),
        ..Default::default()
    };
    for (env, schedule) in tenant.spec.environments.iter().zip(&schedules) {
        let backup = completed_backup(schedule, "20261122020000", "2026-11-22T02:05:00Z");
        let restore = restore_test(
            tenant,
            env,
            &backup.metadata.name.clone().unwrap_or_default(),
            "2026-11-22T05:00:00Z",
            "Completed",
            "2026-11-22T05:30:00Z",
        );
        view.backups.push(Arc::new(backup));
        view.restores.push(Arc::new(restore));
    }
    view
}

/// A backup Velero made from `schedule`, labelled from its template, completed at `done`.
fn completed_backup(
    schedule: &ft_core::backup::velero::Schedule,
    stamp: &str,
    done: &str,
) -> Backup {
    let mut backup = Backup::new(
        &format!(
            "{}-{stamp}",
            schedule.metadata.name.as_deref().unwrap_or_default()
        ),
        BackupSpec {
            metadata: None,
            ..schedule.spec.template.clone()
        },
    );
    backup.metadata.namespace = Some("velero".into());
    backup.metadata.labels = schedule
        .spec
        .template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone());
    backup.metadata.creation_timestamp = Some(Time(at(done) - SignedDuration::from_mins(5)));
    backup.status = Some(BackupStatus {
        phase: Some("Completed".into()),
        completion_timestamp: Some(Time(at(done))),
        errors: None,
    });
    backup
}

/// The operator's restore test of `backup`, started at `started`, in `phase`.
fn restore_test(
    tenant: &FranceTravailTenant,
    env: &ft_core::api::Environment,
    backup: &str,
    started: &str,
    phase: &str,
    done: &str,
) -> Restore {
    let mut restore = backup::restore(tenant, env, backup, at(started), "velero");
    restore.metadata.creation_timestamp = Some(Time(at(started)));
    restore.status = Some(RestoreStatus {
        phase: Some(phase.into()),
        completion_timestamp: Some(Time(at(done))),
        errors: Some(0),
        progress: Some(RestoreProgress {
            total_items: Some(12),
            items_restored: Some(12),
        }),
        ..Default::default()
    });
    restore
}

// ---------------------------------------------------------------------------------------------
// A tenant, what was built for it, and what the cluster holds
// ---------------------------------------------------------------------------------------------

struct Case {
    tenant: FranceTravailTenant,
    desired: Desired,
    view: TenantView,
    facts: ClusterFacts,
    now: Timestamp,
}

impl Case {
    /// examples/tenant.yaml, everything built for it in place and unchanged, two healthy pods
    /// (production on its pool, development on a general node, both in Paris), one encrypted
    /// volume in Paris, the workloads' own bindings, and Velero installed.
    fn healthy() -> Self {
        Self::of(common::tenant("examples/tenant.yaml"))
    }

    fn of(tenant: FranceTravailTenant) -> Self {
        // Placement admission confines pods to Paris, where both healthy nodes are.
        let desired = common::desired_with(&tenant, &BuildSettings::default(), Some(true), now());
        let fixed = ft_core::admission::fixed();
        let view = TenantView {
            namespaces: desired
                .namespaces
                .iter()
                .map(|ns| Arc::new(applied(ns)))
                .collect(),
            network_policies: arcs(&desired.network_policies),
            resource_quotas: arcs(&desired.resource_quotas),
            limit_ranges: arcs(&desired.limit_ranges),
            pods: pick(
                "pods.yaml",
                &["offres-emploi-prod/web-1", "offres-emploi-dev/api-1"],
            ),
            pool_pods: Vec::new(),
            persistent_volume_claims: pick("storage.yaml", &["offres-emploi-prod/data"]),
            persistent_volumes: pick("storage.yaml", &["pv-paris"]),
            // The workload's own bindings, and the operator's for the grants in force.
            role_bindings: pick(
                "bindings.yaml",
                &[
                    "offres-emploi-prod/web-workload",
                    "offres-emploi-prod/web-workload-local",
                ],
            )
            .into_iter()
            .chain(desired.role_bindings.iter().map(|b| Arc::new(managed(b))))
            .collect(),
            nodes: pick("nodes.yaml", &["prod-paris-1", "general-paris-1"]),
            // The cluster's classes, and the tenant's own as the operator made it.
            storage_classes: objects::<StorageClass>("storage.yaml")
                .into_iter()
                .chain(desired.storage_classes.iter().map(|c| Arc::new(managed(c))))
                .collect(),
            // What the cluster-wide admission policies enforce, and the policies as installed.
            environment_policies: arcs(&desired.environment_policies),
            validating_admission_policies: arcs(&fixed.validating_admission_policies),
            validating_admission_policy_bindings: arcs(&fixed.validating_admission_policy_bindings),
            mutating_admission_policies: arcs(&fixed.mutating_admission_policies),
            mutating_admission_policy_bindings: arcs(&fixed.mutating_admission_policy_bindings),
            key_fingerprint: Some("sha256:0123456789abcdef".into()),
            velero: backed_up(&tenant),
        };
        let facts = ClusterFacts {
            regions: Arc::new(RegionCatalogue::embedded().expect("embedded region catalogue")),
            provider: None,
            backup_engine: Some(true),
            confinement: Default::default(),
        };
        Self {
            tenant,
            desired,
            view,
            facts,
            now: now(),
        }
    }

    /// The healthy case for a changed tenant, rebuilt from it.
    fn with_tenant(change: impl FnOnce(&mut FranceTravailTenant)) -> Self {
        let mut tenant = common::tenant("examples/tenant.yaml");
        change(&mut tenant);
        Self::of(tenant)
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            tenant: &self.tenant,
            desired: Ok(&self.desired),
            observed: &self.view,
            facts: &self.facts,
            now: self.now,
        }
    }

    fn judge(&self, id: &str) -> Finding {
        judge(id, &self.inputs())
    }
}

/// The finding of one control.
#[track_caller]
fn judge(id: &str, inputs: &Inputs) -> Finding {
    let judged: Vec<Evaluation> = evaluate(inputs)
        .into_iter()
        .filter(|e| e.id == id)
        .collect();
    match judged.as_slice() {
        [only] => only.finding.clone(),
        _ => panic!("{id} is evaluated {} times", judged.len()),
    }
}

#[track_caller]
fn assert_result(finding: &Finding, result: ControlResult, reason: &str) {
    assert_eq!(
        (finding.result, finding.reason.as_str()),
        (result, reason),
        "message: {}",
        finding.message
    );
}

/// Fails with `reason`, and the message names every one of `named`.
#[track_caller]
fn assert_fails(finding: &Finding, reason: &str, named: &[&str]) {
    assert_result(finding, Fail, reason);
    for name in named {
        assert!(
            finding.message.contains(name),
            "the message does not name {name}: {}",
            finding.message
        );
    }
}

fn labels_of(ns: &mut PartialObjectMeta<Namespace>) -> &mut BTreeMap<String, String> {
    ns.metadata.labels.get_or_insert_with(BTreeMap::new)
}

// ---------------------------------------------------------------------------------------------
// The healthy baseline
// ---------------------------------------------------------------------------------------------

/// What the healthy case is, control by control, as the catalogue describes it.
const BASELINE: [(&str, ControlResult, &str); 18] = [
    ("CLS-1", Pass, "Marked"),
    ("ISO-1", Pass, "Isolated"),
    ("ISO-2", Pass, "QuotasInPlace"),
    ("NET-1", Pass, "DenyByDefault"),
    ("NET-2", Pass, "FlowMatrixOnly"),
    ("SEP-1", Pass, "ProductionSeparated"),
    ("GEO-1", Pass, "InAllowedCountries"),
    ("GEO-2", Pass, "InAllowedCountries"),
    ("GEO-3", Pass, "EnforcedAtAdmission"),
    ("ENC-1", Pass, "Encrypted"),
    ("ENC-2", Pass, "OwnKey"),
    ("BAK-1", Pass, "BackedUp"),
    ("BAK-2", Pass, "RestoreTested"),
    ("ACC-1", Pass, "OnlyDeclaredRights"),
    ("ACC-2", Pass, "RevokedOnTime"),
    ("ACC-3", Pass, "Reviewed"),
    ("DEL-1", Pass, "ShreddableKey"),
    ("REV-1", Pass, "ExportPathReady"),
];

#[test]
fn a_healthy_tenant_passes_every_control() {
    let case = Case::healthy();
    let found: Vec<(&str, ControlResult, String)> = evaluate(&case.inputs())
        .into_iter()
        .map(|e| (e.id, e.finding.result, e.finding.reason))
        .collect();
    for (id, result, reason) in &found {
        let acceptable = matches!(result, Pass | NotApplicable);
        assert!(
            acceptable,
            "{id} is {result:?} ({reason}) on a healthy tenant"
        );
    }
    let expected: Vec<(&str, ControlResult, String)> = BASELINE
        .iter()
        .map(|(id, result, reason)| (*id, *result, reason.to_string()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_healthy_tenant_is_compliant() {
    let case = Case::healthy();
    let evaluations = evaluate(&case.inputs());
    let catalogue = Catalogue::embedded().expect("embedded catalogue");
    let report = next_report(
        &catalogue,
        &evaluations,
        None,
        Some(3),
        &Time(case.now),
        None,
        Vec::new(),
    );
    assert_eq!(report.result, Some(Verdict::Compliant));
    // All 18 of BASELINE pass.
    assert_eq!(report.passed, "18/18");
    assert_eq!(report.failing, "");
    assert_eq!(report.observed_generation, Some(3));
    let (status, reason, message) = compliant_condition(&report);
    assert_eq!((status, reason), ("True", "ControlsPass"));
    assert_eq!(message, "18/18 controls pass");
}

// ---------------------------------------------------------------------------------------------
// CLS-1: every namespace is marked with the tenant's data classification
// ---------------------------------------------------------------------------------------------

#[test]
fn cls1_passes_when_every_namespace_carries_its_marks() {
    let finding = Case::healthy().judge("CLS-1");
    assert_result(&finding, Pass, "Marked");
    assert_eq!(finding.message, "every namespace is marked personal");
}

#[test]
fn cls1_fails_when_a_classification_label_is_changed_by_hand() {
    let mut case = Case::healthy();
    edit(&mut case.view.namespaces, "offres-emploi-dev", |ns| {
        labels_of(ns).insert(labels::DATA_CLASSIFICATION.into(), "public".into());
    });
    assert_fails(
        &case.judge("CLS-1"),
        "Unmarked",
        &[
            "Namespace/offres-emploi-dev has hosting.francetravail.fr/data-classification=public, expected personal",
        ],
    );
}

#[test]
fn cls1_fails_when_a_mark_is_removed() {
    let mut case = Case::healthy();
    edit(&mut case.view.namespaces, "offres-emploi-prod", |ns| {
        labels_of(ns).remove(labels::ENVIRONMENT_KIND);
    });
    assert_fails(
        &case.judge("CLS-1"),
        "Unmarked",
        &[
            "Namespace/offres-emploi-prod has hosting.francetravail.fr/environment-kind=(none), expected production",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ISO-1: one isolated namespace per environment
// ---------------------------------------------------------------------------------------------

#[test]
fn iso1_passes_with_one_restricted_namespace_per_environment() {
    let finding = Case::healthy().judge("ISO-1");
    assert_result(&finding, Pass, "Isolated");
    assert!(
        finding.message.starts_with("2 namespace(s)"),
        "{}",
        finding.message
    );
}

#[test]
fn iso1_fails_when_a_namespace_is_missing() {
    let mut case = Case::healthy();
    remove(&mut case.view.namespaces, "offres-emploi-dev");
    assert_fails(
        &case.judge("ISO-1"),
        "NotIsolated",
        &["Namespace/offres-emploi-dev is missing"],
    );
    // The marks of a namespace that is not there are missing too.
    assert_fails(
        &case.judge("CLS-1"),
        "Unmarked",
        &["Namespace/offres-emploi-dev is missing"],
    );
}

#[test]
fn iso1_fails_without_pod_security_enforce_label() {
    let mut case = Case::healthy();
    edit(&mut case.view.namespaces, "offres-emploi-prod", |ns| {
        labels_of(ns).remove("pod-security.kubernetes.io/enforce");
    });
    assert_fails(
        &case.judge("ISO-1"),
        "NotIsolated",
        &["Namespace/offres-emploi-prod does not enforce Pod Security restricted"],
    );
}

#[test]
fn iso1_fails_when_pod_security_is_lowered() {
    let mut case = Case::healthy();
    edit(&mut case.view.namespaces, "offres-emploi-dev", |ns| {
        labels_of(ns).insert(
            "pod-security.kubernetes.io/enforce".into(),
            "privileged".into(),
        );
    });
    assert_fails(
        &case.judge("ISO-1"),
        "NotIsolated",
        &["Namespace/offres-emploi-dev does not enforce Pod Security restricted"],
    );
}

#[test]
fn iso1_fails_when_a_namespace_is_terminating() {
    let mut case = Case::healthy();
    let since = Time(case.now - SignedDuration::from_mins(5));
    edit(&mut case.view.namespaces, "offres-emploi-prod", |ns| {
        ns.metadata.deletion_timestamp = Some(since);
    });
    assert_fails(
        &case.judge("ISO-1"),
        "NotIsolated",
        &["Namespace/offres-emploi-prod is being deleted"],
    );
}

#[test]
fn iso1_fails_when_the_namespace_is_not_the_tenants_own() {
    // Same name and labels, but the operator never applied it: someone made it first.
    let mut case = Case::healthy();
    edit(&mut case.view.namespaces, "offres-emploi-dev", |ns| {
        ns.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-create".into()),
            ..Default::default()
        }]);
    });
    assert_fails(
        &case.judge("ISO-1"),
        "NotIsolated",
        &["Namespace/offres-emploi-dev is not marked as the tenant's own"],
    );
}

// ---------------------------------------------------------------------------------------------
// ISO-2: quotas
// ---------------------------------------------------------------------------------------------

#[test]
fn iso2_passes_with_the_declared_quotas_and_limits() {
    let finding = Case::healthy().judge("ISO-2");
    assert_result(&finding, Pass, "QuotasInPlace");
}

#[test]
fn iso2_fails_when_a_quota_is_raised_by_hand() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.resource_quotas,
        "offres-emploi-prod/ft-quota",
        |q: &mut ResourceQuota| {
            let hard = q.spec.as_mut().and_then(|s| s.hard.as_mut()).expect("hard");
            hard.insert("requests.cpu".into(), Quantity("64".into()));
        },
    );
    assert_fails(
        &case.judge("ISO-2"),
        "QuotaDrift",
        &["ResourceQuota/offres-emploi-prod/ft-quota was changed by hand"],
    );
}

#[test]
fn iso2_fails_when_a_quota_limit_is_removed_by_hand() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.resource_quotas,
        "offres-emploi-dev/ft-quota",
        |q: &mut ResourceQuota| {
            let hard = q.spec.as_mut().and_then(|s| s.hard.as_mut()).expect("hard");
            assert!(hard.remove("limits.memory").is_some());
        },
    );
    assert_fails(
        &case.judge("ISO-2"),
        "QuotaDrift",
        &["ResourceQuota/offres-emploi-dev/ft-quota was changed by hand"],
    );
}

#[test]
fn iso2_compares_quantities_by_value_not_by_text() {
    // The API server stores quantities in its canonical form: what was applied as `16` may
    // read back as `16000m`, `32Gi` as bytes, `500m` as `0.5`. Same values: no drift.
    let mut case = Case::healthy();
    edit(
        &mut case.view.resource_quotas,
        "offres-emploi-prod/ft-quota",
        |q: &mut ResourceQuota| {
            let hard = q.spec.as_mut().and_then(|s| s.hard.as_mut()).expect("hard");
            assert_eq!(hard["requests.cpu"], Quantity("16".into()));
            hard.insert("requests.cpu".into(), Quantity("16000m".into()));
            assert_eq!(hard["limits.memory"], Quantity("32Gi".into()));
            hard.insert("limits.memory".into(), Quantity("34359738368".into()));
        },
    );
    edit(
        &mut case.view.limit_ranges,
        "offres-emploi-prod/ft-limits",
        |l: &mut LimitRange| {
            let container = &mut l.spec.as_mut().expect("spec").limits[0];
            let default = container.default.as_mut().expect("default");
            assert_eq!(default["cpu"], Quantity("500m".into()));
            default.insert("cpu".into(), Quantity("0.5".into()));
        },
    );
    assert_result(&case.judge("ISO-2"), Pass, "QuotasInPlace");
}

#[test]
fn iso2_fails_when_the_limits_are_missing() {
    let mut case = Case::healthy();
    remove(&mut case.view.limit_ranges, "offres-emploi-dev/ft-limits");
    assert_fails(
        &case.judge("ISO-2"),
        "QuotaDrift",
        &["LimitRange/offres-emploi-dev/ft-limits is missing"],
    );
}

// ---------------------------------------------------------------------------------------------
// NET-1: everything not declared is denied
// ---------------------------------------------------------------------------------------------

#[test]
fn net1_passes_with_the_default_deny_in_every_namespace() {
    let finding = Case::healthy().judge("NET-1");
    assert_result(&finding, Pass, "DenyByDefault");
    assert!(
        finding.message.contains("each of 2 namespace(s)"),
        "{}",
        finding.message
    );
}

#[test]
fn net1_fails_when_the_default_deny_is_missing() {
    let mut case = Case::healthy();
    remove(
        &mut case.view.network_policies,
        "offres-emploi-dev/ft-default-deny",
    );
    assert_fails(
        &case.judge("NET-1"),
        "DefaultDenyMissing",
        &["NetworkPolicy/offres-emploi-dev/ft-default-deny is missing"],
    );
}

#[test]
fn net1_fails_when_the_default_deny_is_opened() {
    // An empty ingress rule allows everything in.
    let mut case = Case::healthy();
    edit(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-default-deny",
        |np: &mut NetworkPolicy| {
            np.spec.as_mut().expect("spec").ingress =
                Some(vec![NetworkPolicyIngressRule::default()]);
        },
    );
    assert_fails(
        &case.judge("NET-1"),
        "DefaultDenyMissing",
        &["NetworkPolicy/offres-emploi-prod/ft-default-deny was changed by hand"],
    );
}

#[test]
fn net1_fails_when_the_default_deny_no_longer_covers_egress() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-default-deny",
        |np: &mut NetworkPolicy| {
            np.spec.as_mut().expect("spec").policy_types = Some(vec!["Ingress".into()]);
        },
    );
    assert_fails(
        &case.judge("NET-1"),
        "DefaultDenyMissing",
        &["NetworkPolicy/offres-emploi-prod/ft-default-deny was changed by hand"],
    );
}

#[test]
fn net1_fails_when_the_default_deny_selects_no_pod() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-default-deny",
        |np: &mut NetworkPolicy| {
            np.spec.as_mut().expect("spec").pod_selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "example.org/no-such-pod".into(),
                    "true".into(),
                )])),
                ..Default::default()
            });
        },
    );
    assert_fails(
        &case.judge("NET-1"),
        "DefaultDenyMissing",
        &["NetworkPolicy/offres-emploi-prod/ft-default-deny was changed by hand"],
    );
}

#[test]
fn net_controls_fail_when_no_pod_is_isolated_any_more() {
    let mut case = Case::healthy();
    for name in ["ft-default-deny", "ft-allow-dns", "ft-allow-same-namespace"] {
        edit(
            &mut case.view.network_policies,
            &format!("offres-emploi-prod/{name}"),
            |np: &mut NetworkPolicy| {
                np.spec.as_mut().expect("spec").pod_selector = Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "example.org/no-such-pod".into(),
                        "true".into(),
                    )])),
                    ..Default::default()
                });
            },
        );
    }
    assert_fails(
        &case.judge("NET-1"),
        "DefaultDenyMissing",
        &["NetworkPolicy/offres-emploi-prod/ft-default-deny was changed by hand"],
    );
    assert_fails(
        &case.judge("NET-2"),
        "UndeclaredFlows",
        &["NetworkPolicy/offres-emploi-prod/ft-allow-same-namespace was changed by hand"],
    );
}

// ---------------------------------------------------------------------------------------------
// NET-2: only the declared flow matrix is open
// ---------------------------------------------------------------------------------------------

#[test]
fn net2_passes_with_only_the_rendered_policies() {
    let finding = Case::healthy().judge("NET-2");
    assert_result(&finding, Pass, "FlowMatrixOnly");
    // Two ingress and two egress flows are declared in examples/tenant.yaml.
    assert!(
        finding.message.contains("only the 4 declared flow(s)"),
        "{}",
        finding.message
    );
}

#[test]
fn net2_warns_of_an_acknowledged_egress_to_every_address() {
    let case = Case::with_tenant(|t| {
        let flow = &mut t.spec.network.egress[1];
        flow.to[0].cidr = Some("0.0.0.0/0".into());
        flow.acknowledge_any_destination = true;
    });
    let finding = case.judge("NET-2");
    // Declared and acknowledged: the control keeps its result, and says so.
    assert_result(&finding, Pass, "FlowMatrixOnly");
    assert!(
        finding.message.contains(
            "warning: egress flow(s) database-dev reach every address, as acknowledged by acknowledgeAnyDestination"
        ),
        "{}",
        finding.message
    );
    // An ordinary block is no warning.
    assert!(
        !Case::healthy().judge("NET-2").message.contains("warning"),
        "no warning without an egress to every address"
    );
}

#[test]
fn net2_fails_on_a_policy_made_by_hand_in_a_tenant_namespace() {
    let mut case = Case::healthy();
    case.view
        .network_policies
        .extend(objects::<NetworkPolicy>("policies-by-hand.yaml"));
    let finding = case.judge("NET-2");
    assert_fails(
        &finding,
        "UndeclaredFlows",
        &[
            "NetworkPolicy/offres-emploi-prod/allow-all-from-anywhere was not rendered from the flow matrix",
        ],
    );
    // The one being deleted no longer opens anything.
    assert!(
        !finding.message.contains("allow-debug-egress"),
        "{}",
        finding.message
    );
    // A policy added by hand does not touch the default deny.
    assert_result(&case.judge("NET-1"), Pass, "DenyByDefault");
}

#[test]
fn net2_ignores_a_policy_made_by_hand_that_is_being_deleted() {
    let mut case = Case::healthy();
    case.view.network_policies.push(one::<NetworkPolicy>(
        "policies-by-hand.yaml",
        "offres-emploi-dev/allow-debug-egress",
    ));
    assert_result(&case.judge("NET-2"), Pass, "FlowMatrixOnly");
}

#[test]
fn net2_fails_when_a_flow_policy_is_missing() {
    let mut case = Case::healthy();
    remove(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-egress-database",
    );
    assert_fails(
        &case.judge("NET-2"),
        "UndeclaredFlows",
        &["NetworkPolicy/offres-emploi-prod/ft-egress-database is missing"],
    );
}

#[test]
fn net2_fails_when_a_flow_policy_is_widened_by_hand() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-ingress-web",
        |np: &mut NetworkPolicy| {
            let rule = &mut np
                .spec
                .as_mut()
                .expect("spec")
                .ingress
                .as_mut()
                .expect("ingress")[0];
            rule.from.as_mut().expect("from").push(NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: None,
                }),
                ..Default::default()
            });
        },
    );
    assert_fails(
        &case.judge("NET-2"),
        "UndeclaredFlows",
        &["NetworkPolicy/offres-emploi-prod/ft-ingress-web was changed by hand"],
    );
}

#[test]
fn net2_fails_when_a_port_range_is_opened_by_hand() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.network_policies,
        "offres-emploi-prod/ft-ingress-web",
        |np: &mut NetworkPolicy| {
            let rule = &mut np
                .spec
                .as_mut()
                .expect("spec")
                .ingress
                .as_mut()
                .expect("ingress")[0];
            rule.ports.as_mut().expect("ports")[0].end_port = Some(65535);
        },
    );
    assert_fails(
        &case.judge("NET-2"),
        "UndeclaredFlows",
        &["NetworkPolicy/offres-emploi-prod/ft-ingress-web was changed by hand"],
    );
}

// ---------------------------------------------------------------------------------------------
// SEP-1: production runs on its own node pool
// ---------------------------------------------------------------------------------------------

#[test]
fn sep1_passes_with_production_on_its_pool_and_nothing_else_there() {
    let finding = Case::healthy().judge("SEP-1");
    assert_result(&finding, Pass, "ProductionSeparated");
}

#[test]
fn sep1_fails_when_a_production_pod_runs_off_its_pool() {
    let mut case = Case::healthy();
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-prod/web-2"));
    assert_fails(
        &case.judge("SEP-1"),
        "ProductionNotSeparated",
        &[
            "Pod/offres-emploi-prod/web-2 runs on Node/general-paris-1, outside the production pool node-pool.example.org/name=production",
        ],
    );
}

#[test]
fn sep1_fails_when_a_development_pod_runs_on_the_production_pool() {
    let mut case = Case::healthy();
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/api-2"));
    assert_fails(
        &case.judge("SEP-1"),
        "ProductionNotSeparated",
        &[
            "Pod/offres-emploi-dev/api-2 is not production but runs on Node/prod-paris-1 of the production pool",
        ],
    );
}

#[test]
fn sep1_fails_when_no_node_carries_the_pool_labels() {
    let mut case = Case::healthy();
    case.view.pods.clear();
    remove(&mut case.view.nodes, "prod-paris-1");
    assert_fails(
        &case.judge("SEP-1"),
        "ProductionNotSeparated",
        &[
            "no node carries node-pool.example.org/name=production, the pool of production environment prod",
        ],
    );
}

#[test]
fn sep1_does_not_apply_to_a_tenant_without_production() {
    let case = Case::with_tenant(|t| {
        t.spec.environments.retain(|e| e.name != "prod");
        // What named production alone goes with it, as in a valid tenant.
        let prod = ["prod".to_string()];
        t.spec.network.egress.retain(|f| f.environments != prod);
        t.spec.network.ingress.retain(|f| f.environments != prod);
        t.spec.access.grants.retain(|g| g.environments != prod);
        for grant in &mut t.spec.access.grants {
            grant.environments.retain(|e| e != "prod");
        }
    });
    assert_eq!(case.desired.namespaces.len(), 1);
    assert_result(&case.judge("SEP-1"), NotApplicable, "NoProduction");
}

// ---------------------------------------------------------------------------------------------
// GEO-1: pods run only in allowed countries
// ---------------------------------------------------------------------------------------------

#[test]
fn geo1_passes_with_every_pod_on_a_node_in_france() {
    let finding = Case::healthy().judge("GEO-1");
    assert_result(&finding, Pass, "InAllowedCountries");
    assert!(finding.message.contains("(FR, DE)"), "{}", finding.message);
}

#[test]
fn geo1_ignores_pods_not_scheduled_yet() {
    let mut case = Case::healthy();
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/pending-1"));
    assert_result(&case.judge("GEO-1"), Pass, "InAllowedCountries");
}

#[test]
fn geo1_fails_for_a_pod_on_a_node_in_the_us() {
    let mut case = Case::healthy();
    case.view.nodes.push(one("nodes.yaml", "virginia-1"));
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/batch-1"));
    let finding = case.judge("GEO-1");
    assert_fails(
        &finding,
        "PodsOutsideAllowedCountries",
        &[
            "Pod/offres-emploi-dev/batch-1 runs on Node/virginia-1: region us-east-1 (aws) in US, not an allowed country",
        ],
    );
    // Only the offending pod is named.
    assert!(!finding.message.contains("web-1"), "{}", finding.message);
}

#[test]
fn geo1_fails_for_a_pod_on_a_node_without_region() {
    let mut case = Case::healthy();
    case.view.nodes.push(one("nodes.yaml", "unlabelled-1"));
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/batch-2"));
    assert_fails(
        &case.judge("GEO-1"),
        "PodsOutsideAllowedCountries",
        &[
            "Pod/offres-emploi-dev/batch-2 runs on Node/unlabelled-1: its location cannot be established",
            "topology.kubernetes.io/region",
        ],
    );
}

#[test]
fn geo1_fails_for_a_pod_on_a_node_not_in_the_cluster() {
    let mut case = Case::healthy();
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/batch-3"));
    assert_fails(
        &case.judge("GEO-1"),
        "PodsOutsideAllowedCountries",
        &["Pod/offres-emploi-dev/batch-3 runs on Node/gone-1, which is not in the cluster"],
    );
}

#[test]
fn geo1_fails_when_no_schedulable_node_is_in_an_allowed_country() {
    // One node in the US, and one in Paris that is cordoned: the tenant's pods have nowhere to
    // go, even though none runs anywhere wrong yet.
    let mut case = Case::healthy();
    case.view.pods.clear();
    case.view.nodes = pick("nodes.yaml", &["virginia-1", "cordoned-paris-1"]);
    let finding = case.judge("GEO-1");
    assert_fails(&finding, "NoAllowedNodes", &["(FR, DE)"]);

    // The same Paris node, schedulable again: the pods have somewhere to run.
    edit(&mut case.view.nodes, "cordoned-paris-1", |n: &mut Node| {
        n.spec.as_mut().expect("spec").unschedulable = Some(false);
    });
    assert_result(&case.judge("GEO-1"), Pass, "InAllowedCountries");
}

#[test]
fn geo1_fails_when_the_tenants_regions_exclude_the_pods_region() {
    // France is allowed, but the tenant narrowed its regions to Frankfurt.
    let mut case = Case::with_tenant(|t| t.spec.placement.regions = vec!["eu-central-1".into()]);
    case.view.nodes.push(one("nodes.yaml", "frankfurt-1"));
    assert_fails(
        &case.judge("GEO-1"),
        "PodsOutsideAllowedCountries",
        &[
            "Pod/offres-emploi-prod/web-1 runs on Node/prod-paris-1: region eu-west-3 is not among the tenant's regions",
            "Pod/offres-emploi-dev/api-1 runs on Node/general-paris-1",
        ],
    );

    // With no pod yet, the Paris nodes do not count as somewhere the tenant may run.
    case.view.pods.clear();
    remove(&mut case.view.nodes, "frankfurt-1");
    assert_fails(&case.judge("GEO-1"), "NoAllowedNodes", &[]);
}

#[test]
fn geo1_passes_when_the_tenants_regions_include_the_pods_region() {
    let case = Case::with_tenant(|t| t.spec.placement.regions = vec!["eu-west-3".into()]);
    assert_result(&case.judge("GEO-1"), Pass, "InAllowedCountries");
}

// ---------------------------------------------------------------------------------------------
// GEO-2: volumes are stored only in allowed countries
// ---------------------------------------------------------------------------------------------

#[test]
fn geo2_passes_for_a_volume_pinned_to_paris() {
    let finding = Case::healthy().judge("GEO-2");
    assert_result(&finding, Pass, "InAllowedCountries");
}

#[test]
fn geo2_passes_for_a_volume_labelled_in_frankfurt() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-dev/scratch"));
    case.view
        .persistent_volumes
        .push(one("storage.yaml", "pv-frankfurt"));
    assert_result(&case.judge("GEO-2"), Pass, "InAllowedCountries");
}

#[test]
fn geo2_fails_for_a_claim_bound_to_a_volume_in_the_us() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-dev/archive"));
    case.view
        .persistent_volumes
        .push(one("storage.yaml", "pv-virginia"));
    let finding = case.judge("GEO-2");
    assert_fails(
        &finding,
        "VolumesOutsideAllowedCountries",
        &[
            "PersistentVolumeClaim/offres-emploi-dev/archive is stored on PersistentVolume/pv-virginia: region us-east-1 (aws) in US, not an allowed country",
        ],
    );
    assert!(!finding.message.contains("pv-paris"), "{}", finding.message);
}

#[test]
fn geo2_fails_for_a_claim_bound_to_a_volume_not_in_the_cluster() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-dev/lost"));
    assert_fails(
        &case.judge("GEO-2"),
        "VolumesOutsideAllowedCountries",
        &[
            "PersistentVolumeClaim/offres-emploi-dev/lost is bound to PersistentVolume/pv-gone, which is not in the cluster",
        ],
    );
}

#[test]
fn geo2_does_not_apply_without_a_bound_claim() {
    let mut case = Case::healthy();
    case.view.persistent_volume_claims.clear();
    case.view.persistent_volumes.clear();
    assert_result(&case.judge("GEO-2"), NotApplicable, "NoVolumes");

    // A claim waiting for its volume is stored nowhere yet.
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-prod/data-gce"));
    assert_result(&case.judge("GEO-2"), NotApplicable, "NoVolumes");
}

// ---------------------------------------------------------------------------------------------
// GEO-3, ENC-2: not in this version
// ---------------------------------------------------------------------------------------------

#[test]
fn geo3_passes_with_the_admission_policies_of_every_environment() {
    assert_result(&Case::healthy().judge("GEO-3"), Pass, "EnforcedAtAdmission");
}

#[test]
fn geo3_fails_when_a_validating_binding_is_deleted() {
    let mut case = Case::healthy();
    remove(
        &mut case.view.validating_admission_policy_bindings,
        "ft-placement",
    );
    assert_fails(
        &case.judge("GEO-3"),
        "AdmissionPolicyMissing",
        &["ValidatingAdmissionPolicyBinding/ft-placement is missing"],
    );
}

#[test]
fn geo3_fails_when_an_environment_policy_is_deleted_or_edited() {
    let mut case = Case::healthy();
    case.view
        .environment_policies
        .retain(|p| p.metadata.namespace.as_deref() != Some("offres-emploi-dev"));
    assert_fails(
        &case.judge("GEO-3"),
        "AdmissionPolicyMissing",
        &["EnvironmentPolicy/offres-emploi-dev/ft-environment is missing"],
    );
    let mut case = Case::healthy();
    for policy in &mut case.view.environment_policies {
        if policy.metadata.namespace.as_deref() == Some("offres-emploi-prod") {
            let mut edited = (**policy).clone();
            edited.spec.regions.push("us-east-1".into());
            *policy = std::sync::Arc::new(edited);
        }
    }
    assert_fails(
        &case.judge("GEO-3"),
        "AdmissionPolicyMissing",
        &["EnvironmentPolicy/offres-emploi-prod/ft-environment was changed by hand"],
    );
}

#[test]
fn geo3_fails_when_a_validation_is_removed_by_hand() {
    let mut case = Case::healthy();
    edit(
        &mut case.view.validating_admission_policies,
        "ft-placement",
        |policy| {
            if let Some(v) = policy.spec.as_mut().and_then(|s| s.validations.as_mut()) {
                v.pop();
            }
        },
    );
    assert_fails(
        &case.judge("GEO-3"),
        "AdmissionPolicyMissing",
        &["ValidatingAdmissionPolicy/ft-placement was changed by hand"],
    );
}

#[test]
fn geo3_fails_when_a_mutating_policy_is_missing() {
    let mut case = Case::healthy();
    remove(&mut case.view.mutating_admission_policies, "ft-placement");
    assert_fails(
        &case.judge("GEO-3"),
        "AdmissionPolicyMissing",
        &["MutatingAdmissionPolicy/ft-placement is missing"],
    );
}

#[test]
fn geo3_is_unknown_when_no_admission_policy_was_built() {
    let mut case = Case::healthy();
    // Built without placement: no EnvironmentPolicy.
    case.desired.environment_policies.clear();
    assert_result(&case.judge("GEO-3"), Unknown, "NotBuilt");
}

#[test]
fn enc2_passes_with_the_tenant_key_its_class_and_its_claims_policy() {
    let finding = Case::healthy().judge("ENC-2");
    assert_result(&finding, Pass, "OwnKey");
    assert!(
        finding.message.contains("sha256:0123456789abcdef"),
        "{}",
        finding.message
    );
}

#[test]
fn enc2_fails_without_a_key_or_storage() {
    let mut case = Case::healthy();
    case.view.key_fingerprint = None;
    assert_result(&case.judge("ENC-2"), Fail, "NoTenantKey");
    let case = Case::with_tenant(|t| t.spec.storage = None);
    assert_result(&case.judge("ENC-2"), Fail, "NoStorageDeclared");
}

#[test]
fn enc2_fails_for_a_volume_not_provisioned_by_the_tenant_class() {
    let mut case = Case::healthy();
    // Volumes of encrypting classes, but not the tenant's own: not encrypted with its key.
    case.view
        .persistent_volumes
        .extend(pick("storage.yaml", &["pv-frankfurt"]));
    remove(&mut case.view.storage_classes, "ft-offres-emploi-encrypted");
    let finding = case.judge("ENC-2");
    assert_fails(
        &finding,
        "NotEncryptedWithTenantKey",
        &[
            "StorageClass/ft-offres-emploi-encrypted is missing",
            "PersistentVolume/pv-frankfurt was provisioned by gp3-encrypted, not by the tenant's ft-offres-emploi-encrypted",
        ],
    );
    assert!(!finding.message.contains("pv-paris"), "{}", finding.message);
}

#[test]
fn enc2_fails_when_the_claims_policy_is_missing() {
    let mut case = Case::healthy();
    remove(&mut case.view.validating_admission_policies, "ft-claims");
    assert_fails(
        &case.judge("ENC-2"),
        "AdmissionPolicyMissing",
        &["ValidatingAdmissionPolicy/ft-claims is missing"],
    );
}

#[test]
fn enc2_fails_when_an_environment_admits_claims_on_another_class() {
    let mut case = Case::healthy();
    for policy in &mut case.view.environment_policies {
        if policy.metadata.namespace.as_deref() == Some("offres-emploi-dev") {
            let mut edited = (**policy).clone();
            edited.spec.storage_class = Some("gp3-encrypted".into());
            *policy = std::sync::Arc::new(edited);
        }
    }
    assert_fails(
        &case.judge("ENC-2"),
        "NotEncryptedWithTenantKey",
        &[
            "EnvironmentPolicy/offres-emploi-dev/ft-environment admits claims on gp3-encrypted instead of ft-offres-emploi-encrypted",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ENC-1: every volume is encrypted
// ---------------------------------------------------------------------------------------------

#[test]
fn enc1_passes_for_the_encryption_parameters_of_common_drivers() {
    // Longhorn `encrypted`, GCE PD `disk-encryption-kms-key`, Azure Disk `diskEncryptionSetID`.
    let mut case = Case::healthy();
    case.view.persistent_volume_claims = pick(
        "storage.yaml",
        &[
            "offres-emploi-prod/data",
            "offres-emploi-prod/data-gce",
            "offres-emploi-prod/data-azure",
            "offres-emploi-dev/archive",
        ],
    );
    assert_result(&case.judge("ENC-1"), Pass, "Encrypted");
}

#[test]
fn encrypts_reads_each_drivers_parameter() {
    let classes: BTreeMap<String, bool> = objects::<StorageClass>("storage.yaml")
        .iter()
        .map(|c| (key_of(&**c), encrypts(c)))
        .collect();
    let expected: BTreeMap<String, bool> = [
        ("gp3-encrypted", true),
        ("longhorn-encrypted", true),
        ("longhorn-plain", false),
        ("longhorn-off", false),
        ("gce-cmek", true),
        ("azure-des", true),
    ]
    .into_iter()
    .map(|(name, on)| (name.to_string(), on))
    .collect();
    assert_eq!(classes, expected);
}

#[test]
fn enc1_fails_for_a_claim_on_an_unencrypted_class() {
    let mut case = Case::healthy();
    case.view.persistent_volume_claims.extend(pick(
        "storage.yaml",
        &[
            "offres-emploi-prod/data-plain",
            "offres-emploi-prod/data-off",
        ],
    ));
    let finding = case.judge("ENC-1");
    assert_fails(
        &finding,
        "UnencryptedVolumes",
        &[
            "PersistentVolumeClaim/offres-emploi-prod/data-plain uses StorageClass/longhorn-plain, which does not encrypt",
            "PersistentVolumeClaim/offres-emploi-prod/data-off uses StorageClass/longhorn-off, which does not encrypt",
        ],
    );
    assert!(
        !finding.message.contains("prod/data "),
        "{}",
        finding.message
    );
}

#[test]
fn enc1_judges_a_claim_without_class_by_the_default_class() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-dev/cache"));
    // The default is gp3-encrypted.
    assert_result(&case.judge("ENC-1"), Pass, "Encrypted");

    // The default moved to a class that does not encrypt.
    const DEFAULT: &str = "storageclass.kubernetes.io/is-default-class";
    edit(
        &mut case.view.storage_classes,
        "gp3-encrypted",
        |c: &mut StorageClass| {
            c.metadata.annotations = None;
        },
    );
    edit(
        &mut case.view.storage_classes,
        "longhorn-plain",
        |c: &mut StorageClass| {
            c.metadata.annotations = Some(BTreeMap::from([(DEFAULT.into(), "true".into())]));
        },
    );
    assert_fails(
        &case.judge("ENC-1"),
        "UnencryptedVolumes",
        &[
            "PersistentVolumeClaim/offres-emploi-dev/cache uses StorageClass/longhorn-plain, which does not encrypt",
        ],
    );

    // No default at all.
    edit(
        &mut case.view.storage_classes,
        "longhorn-plain",
        |c: &mut StorageClass| {
            c.metadata.annotations = Some(BTreeMap::from([(DEFAULT.into(), "false".into())]));
        },
    );
    assert_fails(
        &case.judge("ENC-1"),
        "UnencryptedVolumes",
        &[
            "PersistentVolumeClaim/offres-emploi-dev/cache names no StorageClass and the cluster has no default one",
        ],
    );
}

#[test]
fn enc1_fails_for_a_claim_with_an_empty_class() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-prod/data-no-class"));
    assert_fails(
        &case.judge("ENC-1"),
        "UnencryptedVolumes",
        &["PersistentVolumeClaim/offres-emploi-prod/data-no-class uses no StorageClass"],
    );
}

#[test]
fn enc1_fails_when_the_class_is_not_in_the_cluster() {
    let mut case = Case::healthy();
    case.view
        .persistent_volume_claims
        .push(one("storage.yaml", "offres-emploi-prod/data-vanished"));
    assert_fails(
        &case.judge("ENC-1"),
        "UnencryptedVolumes",
        &[
            "PersistentVolumeClaim/offres-emploi-prod/data-vanished uses StorageClass/vanished, which is not in the cluster",
        ],
    );
}

#[test]
fn enc1_does_not_apply_without_a_claim() {
    let mut case = Case::healthy();
    case.view.persistent_volume_claims.clear();
    assert_result(&case.judge("ENC-1"), NotApplicable, "NoVolumes");
}

// ---------------------------------------------------------------------------------------------
// BAK-1, BAK-2: backups and restore tests
// ---------------------------------------------------------------------------------------------

#[test]
fn bak1_fails_when_no_backup_is_declared() {
    let case = Case::with_tenant(|t| t.spec.backup = None);
    assert_fails(&case.judge("BAK-1"), "NoBackupDeclared", &["spec.backup"]);
}

#[test]
fn bak1_fails_when_the_cluster_has_no_backup_engine() {
    let mut case = Case::healthy();
    case.facts.backup_engine = Some(false);
    assert_fails(
        &case.judge("BAK-1"),
        "NoBackupEngine",
        &["backup engine not installed", "velero.io/v1"],
    );
}

#[test]
fn bak1_is_unknown_when_the_backup_engine_could_not_be_checked() {
    let mut case = Case::healthy();
    case.facts.backup_engine = None;
    let finding = case.judge("BAK-1");
    assert_result(&finding, Unknown, "BackupEngineUnchecked");
    assert_ne!(finding.reason, NOT_IN_THIS_VERSION);

    // Undetermined, unlike a control this version does not have: the tenant is not Compliant.
    let catalogue = Catalogue::embedded().expect("embedded catalogue");
    let report = next_report(
        &catalogue,
        &evaluate(&case.inputs()),
        None,
        None,
        &Time(case.now),
        None,
        Vec::new(),
    );
    assert_eq!(report.result, Some(Verdict::Unknown));
    let (status, reason, message) = compliant_condition(&report);
    assert_eq!((status, reason), ("Unknown", "ControlsUndetermined"));
    // The restore tests and the final export depend on the engine too.
    assert_eq!(message, "could not evaluate: BAK-1, BAK-2, REV-1");
}

#[test]
fn bak1_passes_when_every_environment_is_backed_up_away_from_the_primary_region() {
    let finding = Case::healthy().judge("BAK-1");
    assert_result(&finding, Pass, "BackedUp");
    for named in [
        "velero/backups-gra",
        "GRA7",
        "prod at 2026-11-22 02:05",
        "dev at",
    ] {
        assert!(
            finding.message.contains(named),
            "{named}: {}",
            finding.message
        );
    }
}

fn with_location(name: &str) -> Case {
    let mut case = Case::with_tenant(|t| {
        t.spec.backup.as_mut().expect("backup").storage_location = name.into();
    });
    case.view.velero.location =
        objects::<ft_core::backup::velero::BackupStorageLocation>("velero.yaml")
            .into_iter()
            .find(|l| l.metadata.name.as_deref() == Some(name));
    case
}

#[test]
fn bak1_fails_for_a_location_missing_unavailable_abroad_beside_the_nodes_or_nowhere() {
    assert_fails(
        &with_location("backups-lost").judge("BAK-1"),
        "BackupsNotAssured",
        &["BackupStorageLocation velero/backups-lost does not exist"],
    );
    assert_fails(
        &with_location("backups-virginia").judge("BAK-1"),
        "BackupsNotAssured",
        &["us-east-1", "in US, not an allowed country", "CLD-74"],
    );
    assert_fails(
        &with_location("backups-paris").judge("BAK-1"),
        "BackupsNotAssured",
        &["eu-west-3", "primary site", "CLD-26"],
    );
    // Marseille is in France and away from Paris; but Velero cannot reach it.
    let marseille = with_location("backups-marseille").judge("BAK-1");
    assert_fails(
        &marseille,
        "BackupsNotAssured",
        &["not Available", "container ft-backups not found"],
    );
    assert!(
        !marseille.message.contains("allowed country"),
        "{}",
        marseille.message
    );
    assert_fails(
        &with_location("backups-nowhere").judge("BAK-1"),
        "BackupsNotAssured",
        &["declares no region", "topology.kubernetes.io/region"],
    );
}

/// The healthy case, with production's only backup completed at `done`.
fn with_prod_backup(stamp: &str, done: &str) -> Case {
    let mut case = Case::healthy();
    let backup = completed_backup(
        &case.desired.schedules.as_ref().expect("schedules")[0],
        stamp,
        done,
    );
    case.view.velero.backups.retain(|b| !of_prod(&b.metadata));
    case.view.velero.backups.push(Arc::new(backup));
    case
}

fn of_prod(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(labels::ENVIRONMENT))
        .is_some_and(|e| e == "prod")
}

#[test]
fn bak1_fails_when_a_backup_is_older_than_twice_the_schedules_period() {
    // Daily at 02:00: at noon, a backup of 2026-11-20 02:05 is 58 hours old, over 48.
    let case = with_prod_backup("20261120020000", "2026-11-20T02:05:00Z");
    assert_fails(
        &case.judge("BAK-1"),
        "BackupsNotAssured",
        &[
            "environment prod",
            "ft-offres-emploi-prod-20261120020000",
            "48h",
        ],
    );
    // One of the day before yesterday at 12:05 is under 48 hours old: it still holds.
    let case = with_prod_backup("20261120120000", "2026-11-20T12:05:00Z");
    assert_result(&case.judge("BAK-1"), Pass, "BackedUp");
}

#[test]
fn bak1_waits_for_the_first_backup_then_fails_without_one() {
    let mut case = Case::healthy();
    case.view.velero.backups.clear();
    // Schedules made an hour ago: the first run may not have come yet.
    for schedule in &mut case.view.velero.schedules {
        Arc::make_mut(schedule).metadata.creation_timestamp =
            Some(Time(at("2026-11-22T11:00:00Z")));
    }
    assert_result(&case.judge("BAK-1"), Unknown, "AwaitingFirstBackup");
    // Made three weeks ago, and still nothing.
    for schedule in &mut case.view.velero.schedules {
        Arc::make_mut(schedule).metadata.creation_timestamp =
            Some(Time(at("2026-11-01T00:00:00Z")));
    }
    assert_fails(
        &case.judge("BAK-1"),
        "BackupsNotAssured",
        &["no backup completed since Schedule ft-offres-emploi-prod"],
    );
}

#[test]
fn bak1_fails_when_a_schedule_is_missing_or_refused_by_velero() {
    let mut case = Case::healthy();
    case.view.velero.schedules.remove(1);
    assert_fails(
        &case.judge("BAK-1"),
        "BackupsNotAssured",
        &["Schedule velero/ft-offres-emploi-dev is missing"],
    );
    let mut case = Case::healthy();
    let schedule = Arc::make_mut(&mut case.view.velero.schedules[0]);
    schedule.status = Some(ft_core::backup::velero::ScheduleStatus {
        phase: Some("FailedValidation".into()),
        validation_errors: vec!["backup storage location not found".into()],
        ..Default::default()
    });
    assert_fails(
        &case.judge("BAK-1"),
        "BackupsNotAssured",
        &["Velero refused", "backup storage location not found"],
    );
}

#[test]
fn bak2_fails_without_a_restore_test_schedule() {
    let case = Case::with_tenant(|t| {
        t.spec
            .backup
            .as_mut()
            .expect("backup")
            .restore_test_schedule = None;
    });
    assert_fails(
        &case.judge("BAK-2"),
        "NoRestoreTest",
        &["spec.backup.restoreTestSchedule"],
    );
    // Without any backup there is no restore test either.
    let case = Case::with_tenant(|t| t.spec.backup = None);
    assert_result(&case.judge("BAK-2"), Fail, "NoRestoreTest");
}

#[test]
fn bak2_passes_when_the_latest_restore_test_of_each_environment_passed() {
    let finding = Case::healthy().judge("BAK-2");
    assert_result(&finding, Pass, "RestoreTested");
    assert!(
        finding.message.contains("prod on 2026-11-22 05:30"),
        "{}",
        finding.message
    );
}

fn with_prod_test(
    phase: &str,
    started: &str,
    done: &str,
    change: impl FnOnce(&mut RestoreStatus),
) -> Case {
    let mut case = Case::healthy();
    let prod = case.tenant.spec.environments[0].clone();
    let mut test = restore_test(
        &case.tenant,
        &prod,
        "ft-offres-emploi-prod-20261122020000",
        started,
        phase,
        done,
    );
    if let Some(status) = &mut test.status {
        change(status);
    }
    case.view.velero.restores.retain(|r| !of_prod(&r.metadata));
    case.view.velero.restores.push(Arc::new(test));
    case
}

#[test]
fn bak2_fails_when_the_last_restore_test_failed() {
    let case = with_prod_test(
        "PartiallyFailed",
        "2026-11-22T05:00:00Z",
        "2026-11-22T05:40:00Z",
        |s| s.errors = Some(3),
    );
    assert_fails(
        &case.judge("BAK-2"),
        "RestoreNotAssured",
        &["environment prod", "partially failed with 3 error(s)"],
    );
    let case = with_prod_test(
        "Completed",
        "2026-11-22T05:00:00Z",
        "2026-11-22T05:40:00Z",
        |s| {
            s.progress = Some(RestoreProgress {
                total_items: Some(12),
                items_restored: Some(7),
            });
        },
    );
    assert_fails(
        &case.judge("BAK-2"),
        "RestoreNotAssured",
        &["restored 7 of 12 item(s)"],
    );
    // Still running after six hours: failed.
    let case = with_prod_test(
        "InProgress",
        "2026-11-22T04:00:00Z",
        "2026-11-22T04:00:00Z",
        |s| s.completion_timestamp = None,
    );
    assert_fails(
        &case.judge("BAK-2"),
        "RestoreNotAssured",
        &["did not finish within 6h"],
    );
}

#[test]
fn bak2_fails_when_the_last_restore_test_is_overdue() {
    // Weekly on Sundays: a test of 15 days ago is older than twice that.
    let case = with_prod_test(
        "Completed",
        "2026-11-07T05:00:00Z",
        "2026-11-07T05:30:00Z",
        |_| {},
    );
    assert_fails(
        &case.judge("BAK-2"),
        "RestoreNotAssured",
        &["overdue", "336h"],
    );
}

#[test]
fn bak2_is_unknown_while_the_first_restore_test_runs() {
    let mut case = with_prod_test(
        "InProgress",
        "2026-11-22T11:00:00Z",
        "2026-11-22T11:00:00Z",
        |s| s.completion_timestamp = None,
    );
    case.view
        .velero
        .restores
        .retain(|r| r.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("InProgress"));
    let finding = case.judge("BAK-2");
    assert_result(&finding, Unknown, "AwaitingRestoreTest");
    assert!(
        finding.message.contains("is running"),
        "{}",
        finding.message
    );
}

#[test]
fn bak2_fails_when_production_is_restored_outside_production() {
    let mut case = Case::healthy();
    let mut by_hand = Restore::new(
        "copy-prod-to-dev",
        ft_core::backup::velero::RestoreSpec {
            backup_name: "ft-offres-emploi-prod-20261122020000".into(),
            included_namespaces: vec!["offres-emploi-prod".into()],
            namespace_mapping: BTreeMap::from([(
                "offres-emploi-prod".into(),
                "offres-emploi-dev".into(),
            )]),
        },
    );
    by_hand.metadata.namespace = Some("velero".into());
    case.view.velero.foreign_restores.push(Arc::new(by_hand));
    assert_fails(
        &case.judge("BAK-2"),
        "RestoreNotAssured",
        &[
            "Restore velero/copy-prod-to-dev restores the production namespace offres-emploi-prod into offres-emploi-dev",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// ACC-1: only declared, personal rights are bound
// ---------------------------------------------------------------------------------------------

#[test]
fn acc1_passes_for_bindings_of_the_namespaces_own_service_accounts() {
    let finding = Case::healthy().judge("ACC-1");
    assert_result(&finding, Pass, "OnlyDeclaredRights");
}

#[test]
fn acc1_fails_for_a_binding_to_a_user() {
    let mut case = Case::healthy();
    case.view
        .role_bindings
        .push(one("bindings.yaml", "offres-emploi-prod/debug-claire"));
    let finding = case.judge("ACC-1");
    assert_fails(
        &finding,
        "UndeclaredBindings",
        &[
            "RoleBinding/offres-emploi-prod/debug-claire grants edit to User claire.martin@example.org",
        ],
    );
    assert!(
        !finding.message.contains("web-workload"),
        "{}",
        finding.message
    );
}

#[test]
fn acc1_fails_for_a_service_account_of_another_namespace() {
    let mut case = Case::healthy();
    case.view
        .role_bindings
        .push(one("bindings.yaml", "offres-emploi-dev/ci-deployer"));
    assert_fails(
        &case.judge("ACC-1"),
        "UndeclaredBindings",
        &["RoleBinding/offres-emploi-dev/ci-deployer grants admin to ServiceAccount ci/deployer"],
    );
}

// ---------------------------------------------------------------------------------------------
// ACC-2: rights expire and are revoked on time
// ---------------------------------------------------------------------------------------------

#[test]
fn acc2_does_not_apply_without_grants() {
    let case = Case::with_tenant(|t| t.spec.access.grants.clear());
    assert_result(&case.judge("ACC-2"), NotApplicable, "NoGrants");
}

// The operator's bindings of examples/tenant.yaml. The ids are the first ten hex digits of
// SHA-256("<kind>\n<name>\n<role>"), worked out with `sha256sum`.
const DEV_DEVELOPERS: &str = "offres-emploi-dev/ft-developer-7d7b824377";
const PROD_DEVELOPERS: &str = "offres-emploi-prod/ft-viewer-7d7b824377";
const PROD_ADMIN: &str = "offres-emploi-prod/ft-admin-172aef385e";

#[test]
fn acc2_passes_when_each_grant_in_force_is_bound_as_declared() {
    let finding = Case::healthy().judge("ACC-2");
    assert_result(&finding, Pass, "RevokedOnTime");
    assert!(
        finding.message.starts_with("2 grant(s) in force"),
        "{}",
        finding.message
    );
    assert!(!finding.message.contains("Warning"), "{}", finding.message);
}

#[test]
fn acc2_fails_when_a_grant_in_force_is_not_bound() {
    let mut case = Case::healthy();
    case.view
        .role_bindings
        .retain(|b| key_of(&**b) != PROD_ADMIN);
    assert_fails(
        &case.judge("ACC-2"),
        "RightsNotRevoked",
        &[&format!("RoleBinding/{PROD_ADMIN} is missing")],
    );
}

#[test]
fn acc2_fails_when_an_expired_or_suspended_grant_is_still_bound() {
    // The bindings of the healthy case, judged after the developers' grant expired.
    let healthy = Case::healthy();
    let mut case = Case::with_tenant(|t| t.spec.access.grants[0].expires = Time(now()));
    case.view.role_bindings = healthy.view.role_bindings.clone();
    let finding = case.judge("ACC-2");
    assert_fails(
        &finding,
        "RightsNotRevoked",
        &[
            &format!(
                "RoleBinding/{DEV_DEVELOPERS} still binds Group offres-emploi-developpeurs, whose grant is expired"
            ),
            &format!(
                "RoleBinding/{PROD_DEVELOPERS} still binds Group offres-emploi-developpeurs, whose grant is expired"
            ),
        ],
    );
    assert!(!finding.message.contains("claire"), "{}", finding.message);

    let mut case = Case::with_tenant(|t| t.spec.access.grants[1].suspended = true);
    case.view.role_bindings = healthy.view.role_bindings.clone();
    assert_fails(
        &case.judge("ACC-2"),
        "RightsNotRevoked",
        &[&format!(
            "RoleBinding/{PROD_ADMIN} still binds User claire.martin@example.org, whose grant is suspended"
        )],
    );
}

#[test]
fn acc2_warns_of_grants_expiring_within_30_days() {
    // Ten days from 2026-11-22 is 2026-12-02; 31 days is past the warning window.
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[1].expires = Time(now() + days(10));
        t.spec.access.grants[0].expires = Time(now() + days(31));
    });
    let finding = case.judge("ACC-2");
    assert_result(&finding, Pass, "RevokedOnTime");
    assert!(
        finding.message.ends_with(
            "Warning, expiring within 30 days: User claire.martin@example.org (admin, 2026-12-02)"
        ),
        "{}",
        finding.message
    );
}

#[test]
fn acc1_fails_for_an_operator_binding_widened_by_hand() {
    let mut case = Case::healthy();
    edit(&mut case.view.role_bindings, PROD_ADMIN, |b| {
        b.subjects.get_or_insert_with(Vec::new).push(RbacSubject {
            kind: "User".into(),
            name: "mallory@example.org".into(),
            ..Default::default()
        });
    });
    assert_fails(
        &case.judge("ACC-1"),
        "UndeclaredBindings",
        &[&format!(
            "RoleBinding/{PROD_ADMIN} grants ft-tenant-admin to User claire.martin@example.org, User mallory@example.org"
        )],
    );
}

#[test]
fn acc1_judges_access_even_when_the_spec_is_refused() {
    let mut case = Case::healthy();
    case.view
        .role_bindings
        .push(one("bindings.yaml", "offres-emploi-prod/debug-claire"));
    let inputs = Inputs {
        desired: Err("spec.network: invalid"),
        ..case.inputs()
    };
    assert_result(&judge("ACC-1", &inputs), Fail, "UndeclaredBindings");
    assert_result(&judge("ACC-2", &inputs), Pass, "RevokedOnTime");
}

// ---------------------------------------------------------------------------------------------
// ACC-3: rights are reviewed at least once a year
// ---------------------------------------------------------------------------------------------

#[test]
fn acc3_passes_when_every_right_was_reviewed_this_year() {
    // Both grants were reviewed on 2026-09-01, 82 days before now.
    let finding = Case::healthy().judge("ACC-3");
    assert_result(&finding, Pass, "Reviewed");
}

#[test]
fn acc3_fails_for_a_right_never_reviewed() {
    let case = Case::with_tenant(|t| t.spec.access.grants[0].reviewed_at = None);
    let finding = case.judge("ACC-3");
    assert_fails(
        &finding,
        "ReviewOverdue",
        &["the right of Group offres-emploi-developpeurs was never reviewed"],
    );
    assert!(!finding.message.contains("claire"), "{}", finding.message);
}

#[test]
fn acc3_fails_for_a_review_over_a_year_old() {
    // 400 days before 2026-11-22 is 2025-10-18.
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[1].reviewed_at = Some(Time(now() - days(400)));
    });
    assert_fails(
        &case.judge("ACC-3"),
        "ReviewOverdue",
        &[
            "the right of User claire.martin@example.org was last reviewed on 2025-10-18, over a year ago",
        ],
    );
}

#[test]
fn acc3_passes_for_a_review_364_days_old() {
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[1].reviewed_at = Some(Time(now() - days(364)));
    });
    assert_result(&case.judge("ACC-3"), Pass, "Reviewed");
}

#[test]
fn acc3_fails_for_a_review_exactly_365_days_old() {
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[1].reviewed_at = Some(Time(now() - days(365)));
    });
    assert_fails(
        &case.judge("ACC-3"),
        "ReviewOverdue",
        &["the right of User claire.martin@example.org was last reviewed on 2025-11-22"],
    );
}

#[test]
fn acc3_ignores_expired_and_suspended_rights() {
    // Expired and never reviewed; suspended and reviewed long ago: nothing is in force.
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[0].expires = Time(now() - days(1));
        t.spec.access.grants[0].reviewed_at = None;
        t.spec.access.grants[1].suspended = true;
        t.spec.access.grants[1].reviewed_at = Some(Time(at("2024-01-15T00:00:00Z")));
    });
    assert_result(&case.judge("ACC-3"), NotApplicable, "NoGrantsInForce");

    // A right that expires right now is no longer in force either.
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[0].expires = Time(now());
        t.spec.access.grants[0].reviewed_at = None;
        t.spec.access.grants[1].suspended = true;
    });
    assert_result(&case.judge("ACC-3"), NotApplicable, "NoGrantsInForce");

    // The expired one stays out of the judgement when the other is in force.
    let case = Case::with_tenant(|t| {
        t.spec.access.grants[0].expires = Time(now() - days(1));
        t.spec.access.grants[0].reviewed_at = None;
    });
    assert_result(&case.judge("ACC-3"), Pass, "Reviewed");
}

// ---------------------------------------------------------------------------------------------
// DEL-1, REV-1: deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn del1_fails_when_deletion_retains_the_data() {
    let case = Case::with_tenant(|t| t.spec.deletion.policy = DeletionPolicy::Retain);
    assert_fails(
        &case.judge("DEL-1"),
        "RetainOnDeletion",
        &["spec.deletion.policy is Retain"],
    );
}

#[test]
fn del1_passes_when_the_key_to_destroy_first_exists() {
    let case = Case::healthy();
    assert_eq!(
        case.tenant.spec.deletion.policy,
        DeletionPolicy::CryptoShred
    );
    assert_result(&case.judge("DEL-1"), Pass, "ShreddableKey");
    let mut case = Case::healthy();
    case.view.key_fingerprint = None;
    assert_result(&case.judge("DEL-1"), Fail, "NoTenantKey");
}

#[test]
fn del1_fails_for_a_key_in_the_providers_kms_and_says_what_to_do() {
    // A KMS profile: the operator's key store holds a key, but the disks use the provider's.
    let arn = "arn:aws:kms:eu-west-3:111122223333:key/1234abcd";
    let case = Case::with_tenant(|t| {
        let storage = t.spec.storage.as_mut().expect("storage");
        storage.profile = "aws-ebs".into();
        storage.key_reference = Some(arn.into());
    });
    assert!(case.view.key_fingerprint.is_some());
    assert_fails(
        &case.judge("DEL-1"),
        "ExternalKey",
        &[
            arn,
            "which the operator cannot destroy",
            "The platform team must schedule the destruction of that KMS key",
            "shredding record",
        ],
    );
}

#[test]
fn rev1_does_not_apply_without_a_final_export() {
    let case = Case::with_tenant(|t| t.spec.deletion.final_export = false);
    assert_result(&case.judge("REV-1"), NotApplicable, "NoFinalExport");
}

#[test]
fn rev1_passes_when_the_export_location_is_valid_and_fails_otherwise() {
    let finding = Case::healthy().judge("REV-1");
    assert_result(&finding, Pass, "ExportPathReady");
    assert!(
        finding.message.contains("velero/backups-gra"),
        "{}",
        finding.message
    );
    assert_fails(
        &with_location("backups-virginia").judge("REV-1"),
        "NoExportPath",
        &["us-east-1"],
    );
    let mut case = Case::healthy();
    case.facts.backup_engine = Some(false);
    assert_fails(
        &case.judge("REV-1"),
        "NoExportPath",
        &["backup engine not installed"],
    );
}

// ---------------------------------------------------------------------------------------------
// An invalid spec
// ---------------------------------------------------------------------------------------------

#[test]
fn an_invalid_spec_leaves_the_drift_controls_unknown() {
    let case = Case::healthy();
    let why = "spec.environments[0].quota.cpu: not a quantity";
    let inputs = Inputs {
        desired: Err(why),
        ..case.inputs()
    };
    let drift = [
        "CLS-1", "ISO-1", "ISO-2", "NET-1", "NET-2", "GEO-3", "ENC-2",
    ];
    for id in drift {
        let finding = judge(id, &inputs);
        assert_result(&finding, Unknown, "InvalidSpec");
        assert!(finding.message.contains(why), "{id}: {}", finding.message);
    }
    // The others are judged from the tenant and the cluster as before.
    for (id, result, reason) in BASELINE.iter().filter(|(id, ..)| !drift.contains(id)) {
        assert_result(&judge(id, &inputs), *result, reason);
    }

    let catalogue = Catalogue::embedded().expect("embedded catalogue");
    let report = next_report(
        &catalogue,
        &evaluate(&inputs),
        None,
        Some(4),
        &Time(case.now),
        None,
        Vec::new(),
    );
    assert_eq!(report.result, Some(Verdict::Unknown));
    assert_eq!(report.failing, "");
    let (status, reason, message) = compliant_condition(&report);
    assert_eq!((status, reason), ("Unknown", "ControlsUndetermined"));
    assert_eq!(
        message,
        "could not evaluate: CLS-1, ISO-1, ISO-2, NET-1, NET-2, GEO-3, ENC-2"
    );
}

#[test]
fn an_invalid_spec_with_a_failing_control_is_non_compliant() {
    let mut case = Case::healthy();
    case.view.nodes.push(one("nodes.yaml", "virginia-1"));
    case.view
        .pods
        .push(one("pods.yaml", "offres-emploi-dev/batch-1"));
    let inputs = Inputs {
        desired: Err("invalid"),
        ..case.inputs()
    };
    let catalogue = Catalogue::embedded().expect("embedded catalogue");
    let report = next_report(
        &catalogue,
        &evaluate(&inputs),
        None,
        None,
        &Time(case.now),
        None,
        Vec::new(),
    );
    assert_eq!(report.result, Some(Verdict::NonCompliant));
    assert_eq!(report.failing, "GEO-1");
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

fn evaluation(id: &'static str, result: ControlResult, reason: &str) -> Evaluation {
    Evaluation {
        id,
        finding: Finding {
            result,
            reason: reason.into(),
            message: format!("{id} is {result:?}"),
        },
    }
}

fn catalogue() -> Catalogue {
    Catalogue::embedded().expect("embedded catalogue")
}

fn times() -> [Time; 4] {
    [
        Time(at("2026-11-22T12:00:00Z")),
        Time(at("2026-11-22T12:01:00Z")),
        Time(at("2026-11-22T12:02:00Z")),
        Time(at("2026-11-22T12:03:00Z")),
    ]
}

fn transition_times(report: &ReportStatus) -> BTreeMap<&str, &Time> {
    report
        .controls
        .iter()
        .map(|c| (c.id.as_str(), &c.last_transition_time))
        .collect()
}

#[test]
fn report_carries_each_controls_catalogue_entry() {
    let [t0, ..] = times();
    let report = next_report(
        &catalogue(),
        &[evaluation("NET-1", Fail, "DefaultDenyMissing")],
        None,
        Some(1),
        &t0,
        None,
        Vec::new(),
    );
    let net1 = &report.controls[0];
    assert_eq!(net1.id, "NET-1");
    assert_eq!(net1.rules, ["CLD-20", "CLD-36"]);
    assert_eq!(net1.title, "Everything not declared is denied");
    assert_eq!(net1.severity, "critical");
    assert_eq!(
        (net1.result, net1.reason.as_str()),
        (Fail, "DefaultDenyMissing")
    );
    assert_eq!(net1.message, "NET-1 is Fail");
    assert_eq!(net1.last_transition_time, t0);
}

#[test]
fn report_is_not_rewritten_while_nothing_changes() {
    let [t0, t1, t2, _] = times();
    let evaluations = [
        evaluation("CLS-1", Pass, "Marked"),
        evaluation("NET-1", Pass, "DenyByDefault"),
        evaluation("GEO-3", Unknown, NOT_IN_THIS_VERSION),
    ];
    let first = next_report(
        &catalogue(),
        &evaluations,
        None,
        Some(1),
        &t0,
        None,
        Vec::new(),
    );
    assert_eq!(first.last_evaluated.as_ref(), Some(&t0));
    assert!(first.controls.iter().all(|c| c.last_transition_time == t0));

    let second = next_report(
        &catalogue(),
        &evaluations,
        Some(&first),
        Some(1),
        &t1,
        None,
        Vec::new(),
    );
    assert_eq!(
        second, first,
        "an unchanged report must compare equal, times included"
    );
    let third = next_report(
        &catalogue(),
        &evaluations,
        Some(&second),
        Some(1),
        &t2,
        None,
        Vec::new(),
    );
    assert_eq!(third.last_evaluated.as_ref(), Some(&t0));
    assert_eq!(third, first);
}

#[test]
fn report_moves_the_times_of_what_changed_only() {
    let [t0, t1, t2, t3] = times();
    let before = [
        evaluation("CLS-1", Pass, "Marked"),
        evaluation("NET-1", Pass, "DenyByDefault"),
        evaluation("GEO-1", Pass, "InAllowedCountries"),
    ];
    let first = next_report(&catalogue(), &before, None, Some(1), &t0, None, Vec::new());

    let after = [
        evaluation("CLS-1", Pass, "Marked"),
        evaluation("NET-1", Fail, "DefaultDenyMissing"),
        evaluation("GEO-1", Pass, "InAllowedCountries"),
    ];
    let second = next_report(
        &catalogue(),
        &after,
        Some(&first),
        Some(1),
        &t1,
        None,
        Vec::new(),
    );
    assert_eq!(second.last_evaluated.as_ref(), Some(&t1));
    assert_eq!(
        transition_times(&second),
        BTreeMap::from([("CLS-1", &t0), ("NET-1", &t1), ("GEO-1", &t0)])
    );
    assert_eq!(second.result, Some(Verdict::NonCompliant));

    // Still failing, for another reason: the message changed, not the result. The report is
    // rewritten (lastEvaluated moves) but NET-1 has been failing since t1.
    let mut still = after.clone();
    still[1].finding.message = "NetworkPolicy/offres-emploi-dev/ft-default-deny is missing".into();
    let third = next_report(
        &catalogue(),
        &still,
        Some(&second),
        Some(1),
        &t2,
        None,
        Vec::new(),
    );
    assert_eq!(third.last_evaluated.as_ref(), Some(&t2));
    assert_eq!(
        transition_times(&third),
        BTreeMap::from([("CLS-1", &t0), ("NET-1", &t1), ("GEO-1", &t0)])
    );

    // Nothing changes any more: the previous report is kept as is.
    let fourth = next_report(
        &catalogue(),
        &still,
        Some(&third),
        Some(1),
        &t3,
        None,
        Vec::new(),
    );
    assert_eq!(fourth, third);

    // A new generation of the tenant with the same results is still news.
    let fifth = next_report(
        &catalogue(),
        &still,
        Some(&fourth),
        Some(2),
        &t3,
        None,
        Vec::new(),
    );
    assert_eq!(fifth.last_evaluated.as_ref(), Some(&t3));
    assert_eq!(fifth.observed_generation, Some(2));
    assert_eq!(transition_times(&fifth)["NET-1"], &t1);
}

#[test]
fn report_counts_passes_out_of_the_controls_that_apply() {
    let [t0, ..] = times();
    // By hand: 4 Pass, 2 Fail, 2 NotApplicable, 2 Unknown; 10 controls, 8 apply.
    let evaluations = [
        evaluation("CLS-1", Pass, "Marked"),
        evaluation("ISO-1", Pass, "Isolated"),
        evaluation("ISO-2", Fail, "QuotaDrift"),
        evaluation("NET-1", Pass, "DenyByDefault"),
        evaluation("NET-2", Fail, "UndeclaredFlows"),
        evaluation("SEP-1", NotApplicable, "NoProduction"),
        evaluation("GEO-1", Pass, "InAllowedCountries"),
        evaluation("GEO-2", NotApplicable, "NoVolumes"),
        evaluation("GEO-3", Unknown, NOT_IN_THIS_VERSION),
        evaluation("BAK-1", Unknown, "BackupEngineUnchecked"),
    ];
    let report = next_report(
        &catalogue(),
        &evaluations,
        None,
        None,
        &t0,
        None,
        Vec::new(),
    );
    assert_eq!(report.passed, "4/8");
    assert_eq!(report.failing, "ISO-2,NET-2");
    assert_eq!(report.result, Some(Verdict::NonCompliant));
    let (status, reason, message) = compliant_condition(&report);
    assert_eq!((status, reason), ("False", "ControlsFail"));
    assert_eq!(
        message,
        "failing: ISO-2, NET-2; see kubectl describe compliancereport"
    );
}

#[test]
fn report_verdict_follows_the_worst_result() {
    let [t0, ..] = times();
    let verdict = |evaluations: &[Evaluation]| {
        next_report(&catalogue(), evaluations, None, None, &t0, None, Vec::new()).result
    };
    // Not in this version does not by itself make a tenant Unknown.
    assert_eq!(
        verdict(&[
            evaluation("CLS-1", Pass, "Marked"),
            evaluation("SEP-1", NotApplicable, "NoProduction"),
            evaluation("GEO-3", Unknown, NOT_IN_THIS_VERSION),
        ]),
        Some(Verdict::Compliant)
    );
    assert_eq!(
        verdict(&[
            evaluation("CLS-1", Pass, "Marked"),
            evaluation("BAK-1", Unknown, "BackupEngineUnchecked"),
        ]),
        Some(Verdict::Unknown)
    );
    assert_eq!(
        verdict(&[
            evaluation("CLS-1", Fail, "Unmarked"),
            evaluation("BAK-1", Unknown, "BackupEngineUnchecked"),
        ]),
        Some(Verdict::NonCompliant)
    );
}

#[test]
fn transitions_tell_failures_from_recoveries() {
    let [t0, t1, ..] = times();
    let before = [
        evaluation("CLS-1", Pass, "Marked"),
        evaluation("NET-1", Fail, "DefaultDenyMissing"),
        evaluation("GEO-1", Pass, "InAllowedCountries"),
        evaluation("GEO-2", Fail, "VolumesOutsideAllowedCountries"),
    ];
    let previous = next_report(&catalogue(), &before, None, Some(1), &t0, None, Vec::new());

    // The first report: every control is new; only failing ones are failures.
    let first = transitions(None, &previous);
    let summary: Vec<(&str, Option<ControlResult>, bool, bool)> = first
        .iter()
        .map(|t| {
            (
                t.control.id.as_str(),
                t.from,
                t.is_failure(),
                t.is_recovery(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("CLS-1", None, false, false),
            ("NET-1", None, true, false),
            ("GEO-1", None, false, false),
            ("GEO-2", None, true, false),
        ]
    );

    let after = [
        evaluation("CLS-1", Fail, "Unmarked"),
        evaluation("NET-1", Pass, "DenyByDefault"),
        evaluation("GEO-1", Pass, "InAllowedCountries"),
        evaluation("GEO-2", NotApplicable, "NoVolumes"),
    ];
    let next = next_report(
        &catalogue(),
        &after,
        Some(&previous),
        Some(1),
        &t1,
        None,
        Vec::new(),
    );
    let changed = transitions(Some(&previous), &next);
    let summary: Vec<(&str, Option<ControlResult>, bool, bool)> = changed
        .iter()
        .map(|t| {
            (
                t.control.id.as_str(),
                t.from,
                t.is_failure(),
                t.is_recovery(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("CLS-1", Some(Pass), true, false),
            ("NET-1", Some(Fail), false, true),
            ("GEO-2", Some(Fail), false, true),
        ]
    );

    // Nothing changed: no transition.
    assert!(transitions(Some(&next), &next).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The catalogue
// ---------------------------------------------------------------------------------------------

#[test]
fn the_embedded_catalogue_loads() {
    let catalogue = Catalogue::embedded().unwrap_or_else(|e| panic!("{e}"));
    assert!(!catalogue.controls.is_empty());
    assert!(catalogue.control("NET-1").is_some());
    assert!(catalogue.control("NET-99").is_none());
}

#[test]
fn every_evaluator_is_a_catalogue_control_and_back() {
    let catalogue = Catalogue::embedded().unwrap_or_else(|e| panic!("{e}"));
    let evaluated: BTreeSet<&str> = EVALUATORS.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        evaluated.len(),
        EVALUATORS.len(),
        "an id is evaluated twice"
    );
    let listed: BTreeSet<&str> = catalogue.controls.iter().map(|c| c.id.as_str()).collect();
    let unlisted: Vec<&&str> = evaluated.difference(&listed).collect();
    let unevaluated: Vec<&&str> = listed.difference(&evaluated).collect();
    assert!(
        unlisted.is_empty() && unevaluated.is_empty(),
        "evaluated but not in policies/controls.yaml: {unlisted:?}; \
         in policies/controls.yaml but not evaluated: {unevaluated:?}"
    );
}

/// A small valid catalogue, for the checks of `Catalogue::parse` one at a time.
const SMALL: &str = "
rules:
  - id: CLD-20
    summary: tenants isolated
    checkable: true
  - id: CLD-28
    summary: events logged
    checkable: false
    evidence: the operator's log lines
controls:
  - id: NET-1
    rules: [CLD-20]
    title: Everything not declared is denied
    severity: critical
    enforced: a default deny
    checked: the default deny is there
";

const CONTROL_ISO: &str = "
  - id: ISO-1
    rules: [CLD-20]
    title: One namespace per environment
    severity: high
    enforced: namespaces
    checked: namespaces exist
";

#[track_caller]
fn refused(yaml: &str) -> String {
    match Catalogue::parse(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_small_catalogue_parses() {
    let catalogue = Catalogue::parse(SMALL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(catalogue.rules.len(), 2);
    assert_eq!(catalogue.controls.len(), 1);
    let with_iso = format!("{SMALL}{CONTROL_ISO}");
    assert!(Catalogue::parse(&with_iso).is_ok());
}

#[test]
fn the_catalogue_refuses_a_control_listed_twice() {
    let twice = format!("{SMALL}{}", CONTROL_ISO.replace("ISO-1", "NET-1"));
    let error = refused(&twice);
    assert!(error.contains("control NET-1 is listed twice"), "{error}");
}

#[test]
fn the_catalogue_refuses_a_control_citing_an_unknown_rule() {
    let unknown = format!(
        "{SMALL}{}",
        CONTROL_ISO.replace("[CLD-20]", "[CLD-20, CLD-99]")
    );
    let error = refused(&unknown);
    assert!(
        error.contains("control ISO-1 cites CLD-99, which is not a rule in scope"),
        "{error}"
    );
}

#[test]
fn the_catalogue_refuses_a_checkable_rule_no_control_cites() {
    let uncited = SMALL.replace(
        "controls:",
        "  - id: CLD-21\n    summary: data encrypted\n    checkable: true\ncontrols:",
    );
    let error = refused(&uncited);
    assert!(
        error.contains("rule CLD-21 is checkable but no control cites it"),
        "{error}"
    );
}

#[test]
fn the_catalogue_refuses_a_rule_not_checkable_without_evidence() {
    let bare = SMALL.replace("    evidence: the operator's log lines\n", "");
    let error = refused(&bare);
    assert!(
        error.contains("rule CLD-28 is not checkable but gives no evidence"),
        "{error}"
    );
    let empty = SMALL.replace("the operator's log lines", "\"\"");
    let error = refused(&empty);
    assert!(
        error.contains("rule CLD-28 is not checkable but gives no evidence"),
        "{error}"
    );
}
