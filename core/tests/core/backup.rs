//! Backups through Velero: the Schedules, restore tests and exports the operator makes, the
//! state of restore tests, freshness, and the cron and retention rules of the schema.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;

use ft_core::api::{CRON_PATTERN, EnvironmentKind, FranceTravailTenant, RETENTION_PATTERN, labels};
use ft_core::backup::velero::{Backup, BackupStatus, Restore, RestoreProgress, RestoreStatus};
use ft_core::backup::{
    self, RestoreTest, VeleroView, export_backups, export_progress, go_duration, next_run,
    parse_cron, period, restore_test, scratch_environment, scratch_namespace,
};
use ft_core::settings::BuildSettings;
use ft_core::validate::validate;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

fn tenant() -> FranceTravailTenant {
    let mut tenant = common::tenant("examples/tenant.yaml");
    tenant.metadata.uid = Some("0f3e8a52-7c1d-4e39-9a51-5b2d6c7e8f90".into());
    tenant
}

fn at(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("{text} is not a timestamp: {e}"))
}

fn hours(n: i64) -> SignedDuration {
    SignedDuration::from_hours(n)
}

#[test]
fn one_schedule_per_environment_backs_up_that_namespace_alone() {
    let tenant = tenant();
    let schedules = backup::schedules(&tenant, "backup-system");
    let names: Vec<String> = schedules.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["ft-offres-emploi-prod", "ft-offres-emploi-dev"]);
    for (schedule, env) in schedules.iter().zip(["prod", "dev"]) {
        assert_eq!(schedule.namespace().as_deref(), Some("backup-system"));
        assert_eq!(schedule.spec.schedule, "0 2 * * *");
        let template = &schedule.spec.template;
        assert_eq!(
            template.included_namespaces,
            [format!("offres-emploi-{env}")]
        );
        assert_eq!(template.storage_location.as_deref(), Some("backups-gra"));
        // 720h, as Velero writes a duration back.
        assert_eq!(template.ttl.as_deref(), Some("720h0m0s"));
        // Backups carry whose they are, and outlive the Schedule.
        let backup_labels = &template.metadata.as_ref().expect("labels").labels;
        assert_eq!(backup_labels[labels::TENANT], "offres-emploi");
        assert_eq!(backup_labels[labels::ENVIRONMENT], env);
        assert_eq!(schedule.spec.use_owner_references_in_backup, Some(false));
        assert_eq!(schedule.labels()[labels::MANAGED_BY], "ft-operator");
    }
    let mut none = tenant.clone();
    none.spec.backup = None;
    assert!(backup::schedules(&none, "velero").is_empty());
}

#[test]
fn schedules_are_built_only_where_velero_is_known() {
    let tenant = tenant();
    let settings = BuildSettings::default();
    let desired = |velero| common::desired_with(&tenant, &settings, velero, jiff::Timestamp::now());
    assert_eq!(desired(Some(true)).schedules.map(|s| s.len()), Some(2));
    // Velero absent: nothing to keep. Unknown: leave Velero's objects as they are.
    assert_eq!(desired(Some(false)).schedules, Some(vec![]));
    assert_eq!(desired(None).schedules, None);
}

#[test]
fn durations_are_written_as_velero_writes_them() {
    for (given, written) in [
        ("720h", Some("720h0m0s")),
        ("36h30m", Some("36h30m0s")),
        ("90m", Some("1h30m0s")),
        ("45s", Some("45s")),
        ("30m", Some("30m0s")),
        ("", None),
        ("7d", None),
        ("12", None),
        ("h", None),
    ] {
        assert_eq!(go_duration(given).as_deref(), written, "{given:?}");
    }
}

#[test]
fn a_schedules_period_is_the_gap_between_its_two_latest_runs() {
    let monday = at("2026-11-23T10:00:00Z");
    let tuesday = at("2026-11-24T10:00:00Z");
    assert_eq!(period("0 2 * * *", tuesday), Some(hours(24)));
    assert_eq!(period("@hourly", tuesday), Some(hours(1)));
    assert_eq!(period("0 5 * * 0", tuesday), Some(hours(7 * 24)));
    // Weekdays only: on a Monday, the last gap spans the weekend.
    assert_eq!(period("0 2 * * 1-5", monday), Some(hours(72)));
    assert_eq!(period("0 2 * * 1-5", tuesday), Some(hours(24)));
    assert_eq!(
        next_run("0 5 * * 0", at("2026-11-22T05:00:01Z")),
        Some(at("2026-11-29T05:00:00Z"))
    );
}

#[test]
fn cron_expressions_are_refused_by_the_schema_and_by_validation_alike() {
    let schema = regex::Regex::new(CRON_PATTERN).expect("the pattern compiles");
    for good in [
        "0 2 * * *",
        "*/15 * * * *",
        "0 2 * * 1-5",
        "30 4 1,15 * *",
        "0 5 * * SUN",
        "0 0 1 JAN *",
        "@daily",
        "@weekly",
    ] {
        assert!(schema.is_match(good), "the schema refuses {good:?}");
        assert!(parse_cron(good).is_ok(), "croner refuses {good:?}");
        let mut tenant = tenant();
        tenant.spec.backup.as_mut().expect("backup").schedule = good.into();
        assert!(validate(&tenant).is_ok(), "{good:?}");
    }
    for bad in [
        "61 * * * *",
        "0 24 * * *",
        "0 2 32 * *",
        "0 2 * 13 *",
        "0 2 * * 8",
        "0 2 * *",
        "0 0 2 * * *",
        "every day",
        "@every 6h",
        "0 2 * * * ; rm",
    ] {
        assert!(!schema.is_match(bad), "the schema accepts {bad:?}");
        let mut tenant = tenant();
        tenant.spec.backup.as_mut().expect("backup").schedule = bad.into();
        let invalid = validate(&tenant).expect_err(bad);
        assert!(
            invalid
                .to_string()
                .contains("spec.backup.schedule: \"".to_string().as_str()),
            "{invalid}"
        );
    }
    // Valid fields, but a date that never comes.
    let mut tenant = tenant();
    tenant
        .spec
        .backup
        .as_mut()
        .expect("backup")
        .restore_test_schedule = Some("0 0 30 2 *".into());
    let invalid = validate(&tenant).expect_err("30 February");
    assert!(
        invalid
            .to_string()
            .contains("spec.backup.restoreTestSchedule"),
        "{invalid}"
    );
}

#[test]
fn retentions_are_durations_of_at_least_an_hour() {
    let schema = regex::Regex::new(RETENTION_PATTERN).expect("the pattern compiles");
    for good in ["720h", "1h", "36h30m", "2160h"] {
        assert!(schema.is_match(good), "{good}");
        let mut tenant = tenant();
        tenant.spec.backup.as_mut().expect("backup").retention = good.into();
        assert!(validate(&tenant).is_ok(), "{good}");
    }
    for bad in ["30d", "1w", "720", "-1h", "1.5h"] {
        assert!(!schema.is_match(bad), "{bad}");
    }
    for short in ["59m", "30s"] {
        let mut tenant = tenant();
        tenant.spec.backup.as_mut().expect("backup").retention = short.into();
        let invalid = validate(&tenant).expect_err(short);
        assert!(
            invalid.to_string().contains("spec.backup.retention"),
            "{invalid}"
        );
    }
}

#[test]
fn environment_names_of_scratch_namespaces_are_reserved() {
    for reserved in ["prod-restore", "restore-1"] {
        let mut tenant = tenant();
        tenant.spec.environments[1].name = reserved.into();
        let invalid = validate(&tenant).expect_err(reserved);
        assert!(
            invalid.to_string().contains("spec.environments[1].name"),
            "{invalid}"
        );
    }
}

#[test]
fn a_scratch_namespace_is_isolated_and_placed_like_its_source() {
    let tenant = tenant();
    let prod = &tenant.spec.environments[0];
    assert_eq!(prod.kind, EnvironmentKind::Production);
    let scratch = scratch_environment(prod);
    assert_eq!(scratch.name, "prod-restore");
    assert_eq!(scratch.kind, EnvironmentKind::Production);
    assert_eq!(scratch.node_pool, prod.node_pool);
    assert_eq!(
        scratch_namespace("offres-emploi", prod),
        "offres-emploi-prod-restore"
    );
    // A long environment name still gives a namespace within 63 characters.
    let mut long = prod.clone();
    long.name = "a".repeat(20);
    let name = scratch_namespace(&"t".repeat(42), &long);
    assert!(name.len() <= 63, "{name}");
    assert!(name.starts_with(&format!("{}-restore-", "t".repeat(42))));

    let desired = common::desired_restoring(
        &tenant,
        &BuildSettings::default(),
        None,
        &BTreeSet::from(["prod".to_string()]),
        jiff::Timestamp::now(),
    );
    let namespace = desired
        .namespaces
        .iter()
        .find(|ns| ns.name_any() == "offres-emploi-prod-restore")
        .expect("the scratch namespace is built");
    assert_eq!(
        namespace.labels()[labels::ENVIRONMENT_KIND],
        "production",
        "a production backup goes into a production namespace (CLD-54)"
    );
    let in_scratch: Vec<String> = desired
        .network_policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some("offres-emploi-prod-restore"))
        .map(|p| p.name_any())
        .collect();
    // Deny by default, DNS and the namespace itself; none of the declared flows.
    assert!(in_scratch.contains(&"ft-default-deny".to_string()));
    assert!(
        in_scratch
            .iter()
            .all(|p| !p.starts_with("ft-ingress-") && !p.starts_with("ft-egress-")),
        "{in_scratch:?}"
    );
    assert!(
        desired
            .network_policies
            .iter()
            .any(|p| p.namespace().as_deref() == Some("offres-emploi-prod")
                && p.name_any().starts_with("ft-ingress-")),
        "the source keeps its flows"
    );
    // The tenant's own spec is untouched.
    assert_eq!(tenant.spec.environments.len(), 2);
}

fn completed_backup(env: &str, stamp: &str, done: Timestamp) -> Backup {
    let tenant = tenant();
    let schedule = backup::schedules(&tenant, "velero")
        .into_iter()
        .find(|s| s.name_any().ends_with(env))
        .expect("schedule");
    let mut backup = Backup::new(
        &format!("{}-{stamp}", schedule.name_any()),
        Default::default(),
    );
    backup.metadata.namespace = Some("velero".into());
    backup.metadata.labels = schedule.spec.template.metadata.map(|m| m.labels);
    backup.status = Some(BackupStatus {
        phase: Some("Completed".into()),
        completion_timestamp: Some(Time(done)),
        errors: None,
    });
    backup
}

fn finished(mut restore: Restore, started: Timestamp, phase: &str, done: Timestamp) -> Restore {
    restore.metadata.creation_timestamp = Some(Time(started));
    restore.status = Some(RestoreStatus {
        phase: Some(phase.into()),
        completion_timestamp: Some(Time(done)),
        errors: Some(0),
        progress: Some(RestoreProgress {
            total_items: Some(5),
            items_restored: Some(5),
        }),
        ..Default::default()
    });
    restore
}

#[test]
fn the_first_restore_test_is_due_once_a_backup_completes_then_on_schedule() {
    let tenant = tenant();
    let prod = tenant.spec.environments[0].clone();
    let mut view = VeleroView {
        namespace: "velero".into(),
        ..Default::default()
    };
    let now = at("2026-11-22T12:00:00Z");
    assert_eq!(
        restore_test(&tenant, "prod", &view, now),
        RestoreTest::Idle { next: None },
        "nothing to test without a backup"
    );

    let done = at("2026-11-22T02:05:00Z");
    view.backups
        .push(Arc::new(completed_backup("prod", "20261122020000", done)));
    let due = restore_test(&tenant, "prod", &view, now);
    let RestoreTest::Due {
        backup: name,
        at: when,
    } = &due
    else {
        panic!("{due:?}");
    };
    assert_eq!(name, "ft-offres-emploi-prod-20261122020000");
    assert_eq!(*when, done);

    // The Restore maps the environment into its scratch namespace, and nowhere else.
    let restore = backup::restore(&tenant, &prod, name, *when, "velero");
    assert_eq!(restore.spec.backup_name, *name);
    assert_eq!(restore.spec.included_namespaces, ["offres-emploi-prod"]);
    assert_eq!(
        restore.spec.namespace_mapping,
        [(
            "offres-emploi-prod".to_string(),
            "offres-emploi-prod-restore".to_string()
        )]
        .into()
    );
    assert!(restore.name_any().starts_with("ft-rt-"));
    // The same run, asked again, names the same Restore: a retried pass makes no second one.
    assert_eq!(
        restore.name_any(),
        backup::restore(&tenant, &prod, name, *when, "velero").name_any()
    );

    // Running: the scratch namespace stays.
    let mut running = restore.clone();
    running.metadata.creation_timestamp = Some(Time(at("2026-11-22T12:00:00Z")));
    view.restores.push(Arc::new(running));
    assert_eq!(
        restore_test(&tenant, "prod", &view, at("2026-11-22T12:10:00Z")),
        RestoreTest::Running {
            restore: restore.name_any()
        }
    );

    // Finished: the next one comes with the weekly schedule, Sundays at 05:00.
    view.restores = vec![Arc::new(finished(
        restore,
        at("2026-11-22T12:00:00Z"),
        "Completed",
        at("2026-11-22T12:20:00Z"),
    ))];
    let later = at("2026-11-22T13:00:00Z");
    assert_eq!(
        restore_test(&tenant, "prod", &view, later),
        RestoreTest::Idle {
            next: Some(at("2026-11-29T05:00:00Z"))
        }
    );
    assert!(matches!(
        restore_test(&tenant, "prod", &view, at("2026-11-29T05:00:00Z")),
        RestoreTest::Due { .. }
    ));
}

#[test]
fn a_restore_test_passes_only_when_every_item_came_back_without_error() {
    let tenant = tenant();
    let prod = tenant.spec.environments[0].clone();
    let start = at("2026-11-22T05:00:00Z");
    let done = at("2026-11-22T05:30:00Z");
    let test = || backup::restore(&tenant, &prod, "b", start, "velero");
    let judged = |restore: Restore, now: Timestamp| backup::outcome(&restore, now);

    let passed = judged(finished(test(), start, "Completed", done), done).expect("finished");
    assert!(passed.passed, "{}", passed.message);
    assert_eq!(passed.at, done);

    let mut with_errors = finished(test(), start, "Completed", done);
    if let Some(s) = &mut with_errors.status {
        s.errors = Some(2);
    }
    assert!(!judged(with_errors, done).expect("finished").passed);

    let mut partial = finished(test(), start, "Completed", done);
    if let Some(s) = &mut partial.status {
        s.progress = Some(RestoreProgress {
            total_items: Some(5),
            items_restored: Some(4),
        });
    }
    let partial = judged(partial, done).expect("finished");
    assert!(!partial.passed);
    assert!(partial.message.contains("4 of 5"), "{}", partial.message);

    for phase in ["PartiallyFailed", "Failed", "FailedValidation"] {
        let outcome = judged(finished(test(), start, phase, done), done).expect(phase);
        assert!(!outcome.passed, "{phase}");
    }
    // Unfinished: running until the deadline, failed after it.
    let mut running = finished(test(), start, "InProgress", done);
    if let Some(s) = &mut running.status {
        s.completion_timestamp = None;
    }
    assert_eq!(judged(running.clone(), start + hours(5)), None);
    let late = judged(running, start + hours(7)).expect("past the deadline");
    assert!(!late.passed);
    assert_eq!(late.at, start + hours(6));
}

#[test]
fn only_the_latest_restore_tests_are_kept() {
    let tenant = tenant();
    let prod = tenant.spec.environments[0].clone();
    let mut view = VeleroView::default();
    let mut names = Vec::new();
    for day in 1..=5 {
        let start = at(&format!("2026-11-0{day}T05:00:00Z"));
        let restore = finished(
            backup::restore(&tenant, &prod, "b", start, "velero"),
            start,
            "Completed",
            start + hours(1),
        );
        names.push(restore.name_any());
        view.restores.push(Arc::new(restore));
    }
    assert_eq!(backup::stale_restore_tests(&tenant, &view), names[..2]);
}

#[test]
fn an_export_is_one_backup_per_environment_that_outlives_the_tenant() {
    let tenant = tenant();
    let backups = export_backups(&tenant, "2026-11-22", "velero");
    assert_eq!(backups.len(), 2);
    for (backup, env) in backups.iter().zip(["prod", "dev"]) {
        assert!(backup.name_any().starts_with("ft-export-"));
        assert!(backup.name_any().ends_with(env));
        assert_eq!(
            backup.spec.included_namespaces,
            [format!("offres-emploi-{env}")]
        );
        assert_eq!(backup.spec.storage_location.as_deref(), Some("backups-gra"));
        assert_eq!(backup.metadata.owner_references, None);
    }
    // Another request is another export; the same request, the same one.
    let again = export_backups(&tenant, "2026-11-22", "velero");
    let other = export_backups(&tenant, "2026-12-01", "velero");
    assert_eq!(backups[0].name_any(), again[0].name_any());
    assert_ne!(backups[0].name_any(), other[0].name_any());

    let observed = |phase: &str| {
        let mut b = backups[0].clone();
        b.status = Some(BackupStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        vec![Arc::new(b)]
    };
    let progress = export_progress(&backups, &observed("Completed"));
    assert!(!progress.completed, "one of two is done");
    assert!(progress.failed.is_empty());
    let progress = export_progress(&backups, &observed("Failed"));
    assert_eq!(progress.failed.len(), 1);
    let both: Vec<Arc<Backup>> = backups
        .iter()
        .map(|b| {
            let mut b = b.clone();
            b.status = Some(BackupStatus {
                phase: Some("Completed".into()),
                ..Default::default()
            });
            Arc::new(b)
        })
        .collect();
    assert!(export_progress(&backups, &both).completed);
}
