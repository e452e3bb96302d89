//! Deletion: carried out only with the tenant's consent, and reaching its Velero backups.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use ft_core::api::{FranceTravailTenant, ShreddingStatus, TenantStatus, annotations, labels};
use ft_core::backup::velero::{Backup, BackupStatus};
use ft_core::backup::{VeleroView, export_backups};
use ft_core::rbac::{LIMITS, allows, limits, velero_rules};
use ft_core::shredding::backups::{BackupsDeletion, backups_deletion, deletable, request_name};
use ft_core::shredding::{Consent, consent};
use ft_core::status::{Outcome, after_pass, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

fn tenant() -> FranceTravailTenant {
    let mut t = common::tenant("examples/tenant.yaml");
    t.metadata.uid = Some("0f3e8a52-7c1d-4e39-9a51-5b2d6c7e8f90".into());
    t
}

fn annotate(t: &mut FranceTravailTenant, key: &str, value: &str) {
    t.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

fn with_shredding(t: &mut FranceTravailTenant, progress: ShreddingStatus) {
    t.status.get_or_insert_with(TenantStatus::default).shredding = Some(progress);
}

fn held(t: &FranceTravailTenant) -> String {
    match consent(t) {
        Consent::Held { message } => message,
        Consent::Confirmed => panic!("the deletion of {} is not held", t.name_any()),
    }
}

// -------------------------------------------------------------------------------------------
// Consent
// -------------------------------------------------------------------------------------------

#[test]
fn an_unconfirmed_deletion_is_held_and_says_how_to_confirm() {
    let t = tenant();
    let message = held(&t);
    for said in [
        "not confirmed",
        "hosting.francetravail.fr/confirm-deletion",
        "kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/confirm-deletion=offres-emploi",
        "key is kept",
    ] {
        assert!(message.contains(said), "{said}: {message}");
    }
}

#[test]
fn a_confirmation_must_name_the_tenant() {
    let mut t = tenant();
    annotate(&mut t, annotations::CONFIRM_DELETION, "yes");
    let message = held(&t);
    assert!(message.contains("\"yes\""), "{message}");
    annotate(&mut t, annotations::CONFIRM_DELETION, "offres-emploi");
    assert_eq!(consent(&t), Consent::Confirmed);
}

#[test]
fn a_shredding_past_the_final_export_resumes_without_confirmation() {
    // Still at the final export: nothing destroyed, the hold applies.
    let mut t = tenant();
    with_shredding(
        &mut t,
        ShreddingStatus {
            step: "FinalExport".into(),
            ..Default::default()
        },
    );
    held(&t);

    for step in [
        "DestroyKey",
        "DeleteNamespaces",
        "DeleteBackups",
        "WriteRecord",
    ] {
        let mut t = tenant();
        with_shredding(
            &mut t,
            ShreddingStatus {
                step: step.into(),
                ..Default::default()
            },
        );
        assert_eq!(consent(&t), Consent::Confirmed, "{step}");
    }

    let mut t = tenant();
    with_shredding(
        &mut t,
        ShreddingStatus {
            step: "FinalExport".into(),
            key_destroyed_at: Some(Time("2026-11-22T10:00:00Z".parse().expect("time"))),
            ..Default::default()
        },
    );
    assert_eq!(consent(&t), Consent::Confirmed);
}

#[test]
fn a_held_deletion_shows_in_the_status_until_confirmed() {
    let mut t = tenant();
    let now = Time("2026-11-22T10:00:00Z".parse().expect("time"));
    let pass = |t: &FranceTravailTenant, now: &Time| {
        after_pass(t, Outcome::Applied, None, "sha256:k".into(), None, now)
    };
    // A live tenant has no such condition.
    assert!(condition(Some(&pass(&t, &now)), "DeletionHeld").is_none());

    t.metadata.deletion_timestamp = Some(now.clone());
    let status = pass(&t, &now);
    let c = condition(Some(&status), "DeletionHeld").expect("DeletionHeld");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "DeletionNotConfirmed")
    );
    assert!(
        c.message.contains("confirm-deletion=offres-emploi"),
        "{}",
        c.message
    );
    // Still enforced: Ready as for any tenant.
    assert_eq!(
        condition(Some(&status), "Ready").expect("Ready").status,
        "True"
    );

    // A later pass keeps the time the hold began: the status does not change.
    t.status = Some(status.clone());
    let later = Time("2026-11-22T10:05:00Z".parse().expect("time"));
    let again = pass(&t, &later);
    assert_eq!(
        condition(Some(&again), "DeletionHeld")
            .expect("DeletionHeld")
            .last_transition_time,
        now
    );
}

// -------------------------------------------------------------------------------------------
// The tenant's backups
// -------------------------------------------------------------------------------------------

fn backup(name: &str, phase: Option<&str>, extra: &[(&str, &str)]) -> Arc<Backup> {
    let mut labels = BTreeMap::from([(labels::TENANT.to_string(), "offres-emploi".to_string())]);
    for (k, v) in extra {
        labels.insert(k.to_string(), v.to_string());
    }
    Arc::new(Backup {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("velero".into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Default::default(),
        status: phase.map(|p| BackupStatus {
            phase: Some(p.into()),
            ..Default::default()
        }),
    })
}

fn view(backups: Vec<Arc<Backup>>) -> VeleroView {
    VeleroView {
        namespace: "velero".into(),
        backups,
        ..Default::default()
    }
}

/// The final export's Backups, as the operator names and labels them.
fn final_export(t: &FranceTravailTenant) -> Vec<Arc<Backup>> {
    export_backups(t, "final", "velero")
        .into_iter()
        .map(|mut b| {
            b.status = Some(BackupStatus {
                phase: Some("Completed".into()),
                ..Default::default()
            });
            Arc::new(b)
        })
        .collect()
}

fn waiting(outcome: BackupsDeletion) -> (Vec<(String, String)>, Vec<String>, String) {
    match outcome {
        BackupsDeletion::Waiting {
            requests,
            deleting,
            message,
        } => (
            requests
                .iter()
                .map(|r| (r.name_any(), r.spec.backup_name.clone()))
                .collect(),
            deleting,
            message,
        ),
        done => panic!("not waiting: {done:?}"),
    }
}

#[test]
fn every_finished_backup_of_the_tenant_gets_one_deletion_request() {
    let t = tenant();
    let v = view(vec![
        backup(
            "ft-offres-emploi-prod-20261121020000",
            Some("Completed"),
            &[],
        ),
        backup(
            "ft-offres-emploi-dev-20261121020000",
            Some("PartiallyFailed"),
            &[],
        ),
        backup(
            "ft-offres-emploi-prod-20261122020000",
            Some("InProgress"),
            &[],
        ),
    ]);
    let outcome = backups_deletion(&t, &v, Some(true));
    let BackupsDeletion::Waiting { requests, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    for request in requests {
        assert_eq!(request.namespace().as_deref(), Some("velero"));
        assert_eq!(request.labels()[labels::TENANT], "offres-emploi");
        assert_eq!(request.labels()[labels::MANAGED_BY], "ft-operator");
    }
    let (requests, deleting, message) = waiting(outcome);
    assert_eq!(
        requests,
        [
            (
                "ft-offres-emploi-prod-20261121020000-ft-delete".to_string(),
                "ft-offres-emploi-prod-20261121020000".to_string()
            ),
            (
                "ft-offres-emploi-dev-20261121020000-ft-delete".to_string(),
                "ft-offres-emploi-dev-20261121020000".to_string()
            ),
        ]
    );
    assert_eq!(
        deleting,
        [
            "Backup velero/ft-offres-emploi-prod-20261121020000",
            "Backup velero/ft-offres-emploi-dev-20261121020000"
        ]
    );
    // The one still being taken waits for Velero to finish it.
    assert!(
        message.contains("velero/ft-offres-emploi-prod-20261122020000 still in progress"),
        "{message}"
    );

    // The same backups, the same requests: a repeated pass asks for nothing new.
    let (again, _, _) = waiting(backups_deletion(&t, &v, Some(true)));
    assert_eq!(again, requests);
}

#[test]
fn request_names_are_derived_from_the_backup_and_bounded() {
    assert_eq!(request_name("ft-a-prod-1"), "ft-a-prod-1-ft-delete");
    let long = "b".repeat(250);
    let name = request_name(&long);
    assert!(
        name.len() <= 253 && name.starts_with("ft-delete-"),
        "{name}"
    );
    assert_eq!(name, request_name(&long));
    assert_ne!(name, request_name(&"c".repeat(250)));
}

#[test]
fn the_final_export_is_deleted_only_once_handed_over() {
    let mut t = tenant();
    let exports = final_export(&t);
    assert_eq!(exports.len(), 2);
    let mut backups = exports.clone();
    backups.push(backup(
        "ft-offres-emploi-prod-20261121020000",
        Some("Completed"),
        &[],
    ));
    let v = view(backups);

    // Not handed over: the scheduled backup goes, the export stays, and the step says why.
    let (requests, _, message) = waiting(backups_deletion(&t, &v, Some(true)));
    assert_eq!(
        requests.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["ft-offres-emploi-prod-20261121020000"]
    );
    for said in [
        "final export",
        exports[0].name_any().as_str(),
        "CLD-73",
        "kubectl annotate francetravailtenant offres-emploi hosting.francetravail.fr/final-export-handed-over=offres-emploi",
    ] {
        assert!(message.contains(said), "{said}: {message}");
    }

    // Handed over (the annotation names the tenant): the export goes too.
    annotate(
        &mut t,
        annotations::FINAL_EXPORT_HANDED_OVER,
        "someone-else",
    );
    let (requests, _, _) = waiting(backups_deletion(&t, &v, Some(true)));
    assert_eq!(requests.len(), 1);
    annotate(
        &mut t,
        annotations::FINAL_EXPORT_HANDED_OVER,
        "offres-emploi",
    );
    let (requests, _, message) = waiting(backups_deletion(&t, &v, Some(true)));
    assert_eq!(requests.len(), 3);
    assert!(!message.contains("CLD-73"), "{message}");
}

#[test]
fn a_backup_not_named_as_the_operators_is_left_to_a_person() {
    let t = tenant();
    let v = view(vec![backup(
        "manual-before-upgrade",
        Some("Completed"),
        &[],
    )]);
    let (requests, deleting, message) = waiting(backups_deletion(&t, &v, Some(true)));
    assert!(requests.is_empty() && deleting.is_empty());
    assert!(
        message.contains("velero/manual-before-upgrade")
            && message.contains("velero backup delete"),
        "{message}"
    );
    assert!(deletable("offres-emploi", "ft-offres-emploi-prod-1"));
    assert!(deletable("offres-emploi", "ft-export-0123456789-prod"));
    assert!(!deletable("offres-emploi", "ft-other-prod-1"));
}

#[test]
fn the_step_is_done_when_nothing_is_left_or_velero_is_not_served() {
    let t = tenant();
    assert_eq!(
        backups_deletion(&t, &view(vec![]), Some(true)),
        BackupsDeletion::Done {
            none: Some("none: Velero holds no backup of the tenant".into())
        }
    );
    let BackupsDeletion::Done { none: Some(none) } =
        backups_deletion(&t, &view(vec![]), Some(false))
    else {
        panic!("without Velero there is nothing to delete");
    };
    assert!(none.contains("does not serve velero.io/v1"), "{none}");
    // Not known yet: it waits, whatever the stores show.
    let (requests, _, message) = waiting(backups_deletion(
        &t,
        &view(vec![backup(
            "ft-offres-emploi-prod-1",
            Some("Completed"),
            &[],
        )]),
        None,
    ));
    assert!(requests.is_empty());
    assert!(
        message.contains("whether the cluster serves Velero"),
        "{message}"
    );
}

// -------------------------------------------------------------------------------------------
// The operator's permission, and its limit
// -------------------------------------------------------------------------------------------

#[test]
fn the_operator_may_only_create_deletion_requests_for_its_tenants_backups() {
    let rules = velero_rules();
    assert!(allows(
        &rules,
        "create",
        "velero.io",
        "deletebackuprequests",
        None
    ));
    for verb in ["get", "list", "patch", "update", "delete"] {
        assert!(
            !allows(&rules, verb, "velero.io", "deletebackuprequests", None),
            "{verb}"
        );
    }
    // Nor may it delete Backups itself (that would leave their data in the object store).
    assert!(!allows(&rules, "delete", "velero.io", "backups", None));

    let (policy, _) = limits("ft-system", "ft-operator");
    assert_eq!(policy.metadata.name.as_deref(), Some(LIMITS));
    let spec = policy.spec.expect("spec");
    let matched = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .unwrap_or_default();
    assert!(
        matched.iter().any(|r| r
            .resources
            .iter()
            .flatten()
            .any(|x| x == "deletebackuprequests")),
        "the limits policy sees DeleteBackupRequests"
    );
    let check = spec
        .validations
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.expression.contains("'deletebackuprequests'"))
        .expect("a check of DeleteBackupRequests");
    for part in [
        "spec.backupName.startsWith('ft-' + ",
        "'^ft-export-[0-9a-f]{10}-'",
        "'hosting.francetravail.fr/tenant' in",
    ] {
        assert!(
            check.expression.contains(part),
            "{part}: {}",
            check.expression
        );
    }
}
