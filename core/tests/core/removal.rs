//! Removing an environment: its namespace is held until confirmed, then exported, deleted and
//! recorded, step by step; `plan` shows a rename as a removal and an addition.

use std::collections::{BTreeMap, BTreeSet};

use ft_core::api::{EnvironmentRemoval, FranceTravailTenant, TenantStatus};
use ft_core::removal::{
    self, OwnedNamespace, Step, confirmations_after, environment_changes, held_namespaces,
    next_step, removals,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

use crate::common;

const CONFIRM: &str = "hosting.francetravail.fr/confirm-environment-removal";

fn at(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(second).unwrap())
}

/// The example tenant (`prod` and `dev`), with `prod` renamed `production`.
fn renamed() -> FranceTravailTenant {
    let mut t = common::tenant("examples/tenant.yaml");
    t.metadata.uid = Some("uid-1".into());
    t.spec.environments[0].name = "production".into();
    t
}

fn owned(name: &str, environment: &str) -> OwnedNamespace {
    OwnedNamespace {
        name: name.into(),
        environment: environment.into(),
        kind: "production".into(),
        terminating: false,
    }
}

/// The namespaces the operator made for the example before the rename, and a restore test's.
fn cluster() -> Vec<OwnedNamespace> {
    vec![
        owned("offres-emploi-prod", "prod"),
        owned("offres-emploi-dev", "dev"),
        owned("offres-emploi-production", "production"),
        owned("offres-emploi-dev-restore", "dev-restore"),
    ]
}

fn held_entry() -> EnvironmentRemoval {
    EnvironmentRemoval {
        environment: "prod".into(),
        namespace: "offres-emploi-prod".into(),
        step: "Held".into(),
        kind: "production".into(),
        held_since: Some(at(1_000)),
        ..Default::default()
    }
}

fn with_status(
    mut t: FranceTravailTenant,
    removals: Vec<EnvironmentRemoval>,
) -> FranceTravailTenant {
    t.status = Some(TenantStatus {
        removals,
        ..Default::default()
    });
    t
}

fn confirming(mut t: FranceTravailTenant, value: &str) -> FranceTravailTenant {
    t.metadata.annotations = Some(BTreeMap::from([(CONFIRM.to_string(), value.to_string())]));
    let fields = serde_json::json!({"f:metadata": {"f:annotations": {format!("f:{CONFIRM}"): {}}}});
    t.metadata.managed_fields = Some(vec![
        ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {}}))),
            ..Default::default()
        },
        ManagedFieldsEntry {
            manager: Some("kubectl-annotate".into()),
            operation: Some("Update".into()),
            time: Some(at(2_000)),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        },
    ]);
    t
}

#[test]
fn a_namespace_of_an_environment_no_longer_declared_is_held_a_scratch_one_is_not() {
    let desired: BTreeSet<String> = ["offres-emploi-dev", "offres-emploi-production"]
        .map(String::from)
        .into();
    assert_eq!(
        held_namespaces(&desired, &cluster()),
        BTreeSet::from(["offres-emploi-prod".to_string()])
    );
}

#[test]
fn an_owned_namespace_without_its_environment_label_is_read_from_its_name() {
    let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some("offres-emploi-prod".into()),
        ..Default::default()
    };
    let ns = OwnedNamespace::from_meta("offres-emploi", &meta);
    assert_eq!(ns.environment, "prod");
    assert!(!ns.terminating);
}

#[test]
fn a_renamed_environment_is_held_from_now_even_when_the_annotation_already_names_it() {
    // Confirmed in the same edit as the rename: still held, and shown, for one pass first.
    let t = confirming(renamed(), "prod");
    let got = removals(&t, &cluster(), &at(5_000));
    assert_eq!(
        got,
        [EnvironmentRemoval {
            environment: "prod".into(),
            namespace: "offres-emploi-prod".into(),
            step: "Held".into(),
            kind: "production".into(),
            held_since: Some(at(5_000)),
            ..Default::default()
        }]
    );
    assert_eq!(removal::newly_held(&t, &got).len(), 1);
}

#[test]
fn a_held_environment_stays_held_until_the_annotation_names_it() {
    let t = with_status(renamed(), vec![held_entry()]);
    assert_eq!(removals(&t, &cluster(), &at(5_000)), [held_entry()]);
    let t = confirming(t, "dev,staging");
    assert_eq!(removals(&t, &cluster(), &at(5_000)), [held_entry()]);
    assert!(removal::newly_held(&t, &[held_entry()]).is_empty());
}

#[test]
fn a_confirmed_removal_records_who_and_when_and_exports_first_when_asked() {
    let t = confirming(with_status(renamed(), vec![held_entry()]), " dev , prod");
    let got = removals(&t, &cluster(), &at(5_000));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].confirmed_at, Some(at(5_000)));
    assert_eq!(got[0].held_since, Some(at(1_000)));
    assert!(
        got[0]
            .confirmed_by
            .starts_with("field manager kubectl-annotate (Update) at 1970-01-01T00:33:20"),
        "{}",
        got[0].confirmed_by
    );
    // The example asks for final exports.
    assert_eq!(got[0].step, "FinalExport");

    let mut t = t;
    t.spec.deletion.final_export = false;
    assert_eq!(
        removals(&t, &cluster(), &at(5_000))[0].step,
        "DeleteNamespace"
    );
}

#[test]
fn the_steps_follow_one_another_each_once_its_time_is_set() {
    let t = renamed();
    let mut r = held_entry();
    assert_eq!(next_step(&t, &r), Step::Held);
    r.confirmed_at = Some(at(2_000));
    assert_eq!(next_step(&t, &r), Step::FinalExport);
    r.final_export_at = Some(at(3_000));
    assert_eq!(next_step(&t, &r), Step::DeleteNamespace);
    r.namespace_deleted_at = Some(at(4_000));
    assert_eq!(next_step(&t, &r), Step::WriteRecord);
    r.record = Some("ConfigMap ft-system/x".into());
    assert_eq!(next_step(&t, &r), Step::Done);

    let mut no_export = t.clone();
    no_export.spec.deletion.final_export = false;
    let mut r = held_entry();
    r.confirmed_at = Some(at(2_000));
    assert_eq!(next_step(&no_export, &r), Step::DeleteNamespace);
}

#[test]
fn a_confirmed_removal_whose_namespace_is_gone_resumes_until_recorded() {
    let mut r = held_entry();
    r.confirmed_at = Some(at(2_000));
    r.final_export_at = Some(at(3_000));
    r.namespace_deleted_at = Some(at(4_000));
    r.step = "WriteRecord".into();
    let t = with_status(renamed(), vec![r.clone()]);
    let without_prod: Vec<OwnedNamespace> = cluster()
        .into_iter()
        .filter(|n| n.environment != "prod")
        .collect();
    assert_eq!(removals(&t, &without_prod, &at(5_000)), [r]);
}

#[test]
fn an_environment_declared_again_before_its_namespace_is_deleted_is_no_longer_removed() {
    // Held, then declared again: the namespace is the environment's again.
    let before_rename: Vec<OwnedNamespace> = cluster()
        .into_iter()
        .filter(|n| n.environment != "production")
        .collect();
    let t = with_status(common::tenant("examples/tenant.yaml"), vec![held_entry()]);
    assert!(removals(&t, &before_rename, &at(5_000)).is_empty());
    // Even once confirmed, as long as the namespace is there.
    let mut r = held_entry();
    r.confirmed_at = Some(at(2_000));
    let t = with_status(common::tenant("examples/tenant.yaml"), vec![r]);
    assert!(removals(&t, &before_rename, &at(5_000)).is_empty());
}

#[test]
fn an_unconfirmed_hold_whose_namespace_went_otherwise_is_dropped() {
    let t = with_status(renamed(), vec![held_entry()]);
    assert!(removals(&t, &[], &at(5_000)).is_empty());
}

#[test]
fn the_condition_names_each_held_environment_its_namespace_and_the_command() {
    let t = renamed();
    let c = removal::condition(&t, &[held_entry()], &at(5_000)).expect("a condition");
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("EnvironmentRemoval", "True", "EnvironmentRemovalHeld")
    );
    for part in [
        "environment prod",
        "offres-emploi-prod",
        "kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/confirm-environment-removal=prod",
    ] {
        assert!(
            c.message.contains(part),
            "{part} missing from {}",
            c.message
        );
    }
    assert_eq!(c.last_transition_time, at(5_000));

    // No removal ever: no condition. Once there was one: False.
    assert!(removal::condition(&t, &[], &at(6_000)).is_none());
    let mut status = TenantStatus::default();
    removal::into_status(&t, &mut status, vec![held_entry()], &at(5_000));
    assert_eq!(status.removals, [held_entry()]);
    let before = with_status(t, vec![held_entry()]);
    let mut before = before;
    before.status.as_mut().unwrap().conditions = status.conditions.clone();
    let again = removal::condition(&before, &[held_entry()], &at(9_000)).unwrap();
    assert_eq!(
        again.last_transition_time,
        at(5_000),
        "unchanged status keeps its time"
    );
    let gone = removal::condition(&before, &[], &at(9_000)).unwrap();
    assert_eq!(
        (gone.status.as_str(), gone.reason.as_str()),
        ("False", "NoEnvironmentRemoval")
    );
    assert_eq!(gone.last_transition_time, at(9_000));
}

#[test]
fn a_removal_under_way_is_in_progress_with_its_step_and_what_it_waits_for() {
    let mut r = held_entry();
    r.confirmed_at = Some(at(2_000));
    r.confirmed_by = "field manager kubectl-annotate (Update) at x".into();
    r.step = "DeleteNamespace".into();
    r.message = "waiting for namespace offres-emploi-prod to disappear".into();
    let c = removal::condition(&renamed(), &[r], &at(5_000)).unwrap();
    assert_eq!(c.reason, "EnvironmentRemovalInProgress");
    assert!(
        c.message
            .contains("step DeleteNamespace: waiting for namespace offres-emploi-prod")
    );
    assert!(!c.message.contains("kubectl annotate"));
}

#[test]
fn a_confirmation_is_used_once() {
    let t = confirming(renamed(), "prod,staging");
    assert_eq!(
        confirmations_after(&t, &BTreeSet::from(["prod".to_string()])).as_deref(),
        Some("staging")
    );
    assert_eq!(
        confirmations_after(&t, &BTreeSet::from(["prod".into(), "staging".into()])),
        None
    );
}

#[test]
fn the_final_export_is_one_backup_of_the_held_namespace_to_the_tenants_location() {
    let t = renamed();
    let backups = removal::export_backups(&t, &held_entry(), "velero");
    assert_eq!(backups.len(), 1);
    let b = &backups[0];
    assert_eq!(b.spec.included_namespaces, ["offres-emploi-prod"]);
    assert_eq!(b.spec.storage_location.as_deref(), Some("backups-gra"));
    assert_eq!(b.metadata.namespace.as_deref(), Some("velero"));
    let labels = b.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["hosting.francetravail.fr/environment"], "prod");
    assert_eq!(
        labels["hosting.francetravail.fr/environment-kind"],
        "production"
    );
    assert!(
        b.metadata.owner_references.is_none(),
        "it outlives the tenant"
    );
    // A retried pass asks for the same Backup.
    assert_eq!(
        removal::export_backups(&t, &held_entry(), "velero")[0]
            .metadata
            .name,
        b.metadata.name
    );

    let mut no_location = t.clone();
    no_location.spec.backup = None;
    assert!(
        removal::final_export_blocked(&no_location, Some(true))
            .unwrap()
            .contains("spec.backup")
    );
    assert!(
        removal::final_export_blocked(&t, Some(false))
            .unwrap()
            .contains("velero.io/v1")
    );
    assert_eq!(removal::final_export_blocked(&t, Some(true)), None);
}

#[test]
fn the_record_names_the_environment_who_confirmed_the_times_and_keeps_the_key() {
    let mut r = held_entry();
    r.confirmed_at = Some(at(2_000));
    r.confirmed_by = "field manager kubectl-annotate (Update) at then".into();
    r.final_export_at = Some(at(3_000));
    r.exports = vec!["Backup velero/ft-export-x-prod in velero/backups-gra".into()];
    r.namespace_deleted_at = Some(at(4_000));
    let cm = removal::record(
        &renamed(),
        &r,
        "Secret ft-system/k".into(),
        "ft-system",
        &at(5_000),
    )
    .unwrap();
    assert_eq!(cm.metadata.namespace.as_deref(), Some("ft-system"));
    assert!(
        cm.metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("ft-removal-offres-emploi-prod-")
    );
    let labels = cm.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[removal::RECORD_LABEL], "true");
    assert_eq!(labels["hosting.francetravail.fr/tenant"], "offres-emploi");
    assert_eq!(labels["hosting.francetravail.fr/environment"], "prod");
    assert!(cm.metadata.owner_references.is_none());
    assert_eq!(cm.immutable, Some(true));
    let body: serde_json::Value =
        serde_saphyr::from_str(&cm.data.as_ref().unwrap()["record.yaml"]).unwrap();
    for (field, value) in [
        ("tenant", "offres-emploi"),
        ("environment", "prod"),
        ("namespace", "offres-emploi-prod"),
        (
            "confirmedBy",
            "field manager kubectl-annotate (Update) at then",
        ),
        ("heldSince", "1970-01-01T00:16:40Z"),
        ("confirmedAt", "1970-01-01T00:33:20Z"),
        ("finalExportAt", "1970-01-01T00:50:00Z"),
        ("namespaceDeletedAt", "1970-01-01T01:06:40Z"),
        ("recordedAt", "1970-01-01T01:23:20Z"),
    ] {
        assert_eq!(body[field], value, "{field} in {body}");
    }
    assert_eq!(
        body["finalExport"][0],
        "Backup velero/ft-export-x-prod in velero/backups-gra"
    );
    assert_eq!(body["rules"][2], "CLD-73");
    assert!(
        body["tenantKey"]
            .as_str()
            .unwrap()
            .starts_with("kept (Secret ft-system/k)"),
        "{body}"
    );
}

#[test]
fn a_rename_is_a_removal_and_an_addition_against_the_stored_tenant() {
    let stored = common::tenant("examples/tenant.yaml");
    let changes = environment_changes(&stored, &renamed());
    assert_eq!(changes.removed, ["prod"]);
    assert_eq!(changes.added, ["production"]);
    // Held by the operator, still listed as removed when the stored spec already dropped it.
    let held = with_status(renamed(), vec![held_entry()]);
    let changes = environment_changes(&held, &renamed());
    assert_eq!(changes.removed, ["prod"]);
    assert!(changes.added.is_empty());
}

#[test]
fn plan_lists_the_environments_removed_held_until_confirmed_and_added() {
    let stored = common::tenant("examples/tenant.yaml");
    let notes = ft_core::plan::environment_notes(&renamed(), std::slice::from_ref(&stored));
    assert_eq!(
        notes,
        "# offres-emploi: remove environment prod: its namespace offres-emploi-prod is held, nothing in it deleted, until its removal is confirmed with: kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/confirm-environment-removal=prod --overwrite\n\
         # offres-emploi: add environment production: namespace offres-emploi-production\n"
    );
    // Without the stored tenant, nothing to compare with.
    assert_eq!(ft_core::plan::environment_notes(&renamed(), &[]), "");
    let stranger = {
        let mut s = stored.clone();
        s.metadata.name = Some("another".into());
        s
    };
    assert_eq!(
        ft_core::plan::environment_notes(&renamed(), &[stranger]),
        ""
    );
}

#[test]
fn the_plan_against_the_stored_tenant_starts_with_its_notes_then_the_objects() {
    let yaml = common::read("examples/tenant.yaml")
        .replace("- name: prod\n", "- name: production\n")
        .replace("[prod]", "[production]")
        .replace("[dev, prod]", "[dev, production]");
    let stored = common::tenant("examples/tenant.yaml");
    let catalogue = ft_core::placement::regions::RegionCatalogue::embedded().unwrap();
    let facts = ft_core::desired::Facts {
        settings: &ft_core::settings::BuildSettings::default(),
        nodes: &[common::paris_node()],
        catalogue: &catalogue,
        provider: None,
        velero: Some(true),
        restoring: &BTreeSet::new(),
        production_pools: &[],
    };
    let out = ft_core::plan::plan_against(
        &yaml,
        std::slice::from_ref(&stored),
        &facts,
        jiff::Timestamp::now(),
    )
    .unwrap();
    assert!(
        out.starts_with("# offres-emploi: remove environment prod: "),
        "{}",
        &out[..200.min(out.len())]
    );
    assert!(out.contains("# offres-emploi: add environment production: "));
    assert!(out.contains("name: offres-emploi-production"));
    assert!(!out.contains("name: offres-emploi-prod\n"));
    // Still the objects alone, for YAML readers.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert!(docs.iter().all(|d| d["kind"].is_string()));
}
