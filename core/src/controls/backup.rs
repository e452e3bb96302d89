//! The checks of backups (BAK-1, BAK-2; CLD-26, CLD-54): backups taken where they may be
//! kept, and restores tested.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::finding::*;
use super::view::*;
use crate::api::{Backup, ControlResult};
use crate::backup;
use crate::placement::allowed_regions;

/// Whether Velero's objects can be judged: the tenant declares backups and the cluster serves
/// Velero. Otherwise, the finding that says why not.
pub(super) fn backup_engine<'a>(inputs: &Inputs<'a>) -> Result<&'a Backup, Finding> {
    let Some(backup) = inputs.tenant.spec.backup.as_ref() else {
        return Err(finding(
            ControlResult::Fail,
            "NoBackupDeclared",
            "the tenant declares no backup (spec.backup): CLD-26 requires one",
        ));
    };
    match inputs.facts.backup_engine {
        Some(true) => Ok(backup),
        Some(false) => Err(finding(
            ControlResult::Fail,
            "NoBackupEngine",
            "backup engine not installed: the cluster does not serve velero.io/v1; install Velero so that backups can be scheduled",
        )),
        None => Err(finding(
            ControlResult::Unknown,
            "BackupEngineUnchecked",
            "could not yet tell whether the cluster serves velero.io/v1",
        )),
    }
}

/// What is wrong with the tenant's backup location, judged against the regions it runs in.
pub(super) fn location_problems(inputs: &Inputs) -> Vec<String> {
    let facts = inputs.facts;
    let allowed = allowed_regions(
        inputs.tenant,
        &inputs.observed.nodes,
        &facts.regions,
        facts.provider.as_deref(),
    );
    let pod_nodes: BTreeSet<String> = inputs
        .observed
        .pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let primary = backup::primary_regions(&allowed, &inputs.observed.nodes, &pod_nodes);
    backup::location_problems(
        inputs.tenant,
        &inputs.observed.velero,
        &facts.regions,
        &primary,
    )
}

/// Every environment has a schedule to a valid location, and a backup younger than twice the
/// schedule's period (CLD-26, CLD-74).
pub(super) fn backups(inputs: &Inputs) -> Finding {
    let backup = match backup_engine(inputs) {
        Ok(backup) => backup,
        Err(finding) => return finding,
    };
    let view = &inputs.observed.velero;
    let name = inputs.tenant.name_any();
    let mut problems = location_problems(inputs);
    let mut pending = Vec::new();
    let mut fresh = Vec::new();
    let period = backup::period(&backup.schedule, inputs.now);
    for env in &inputs.tenant.spec.environments {
        let schedule_name = backup::schedule_name(&name, &env.name);
        let Some(schedule) = view
            .schedules
            .iter()
            .find(|s| s.name_any() == schedule_name)
        else {
            problems.push(format!(
                "environment {}: Schedule {}/{schedule_name} is missing",
                env.name, view.namespace
            ));
            continue;
        };
        if let Some(status) = &schedule.status
            && status.phase.as_deref() == Some("FailedValidation")
        {
            problems.push(format!(
                "environment {}: Velero refused Schedule {}/{schedule_name}: {}",
                env.name,
                view.namespace,
                status.validation_errors.join("; ")
            ));
            continue;
        }
        let Some(period) = period else {
            problems.push(format!(
                "spec.backup.schedule {} never fires",
                backup.schedule
            ));
            break;
        };
        let allowed_age = period.saturating_mul(2);
        match backup::last_completed_backup(view, &env.name) {
            Some((last, at)) if inputs.now.duration_since(at) > allowed_age => {
                problems.push(format!(
                    "environment {}: the last completed backup, {}, is from {}, older than twice the schedule's period ({}h)",
                    env.name,
                    last.name_any(),
                    at.strftime("%Y-%m-%d %H:%M UTC"),
                    allowed_age.as_hours()
                ))
            }
            Some((last, at)) => fresh.push(format!(
                "{} at {} ({})",
                env.name,
                at.strftime("%Y-%m-%d %H:%M UTC"),
                last.name_any()
            )),
            None => {
                let since = schedule
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(inputs.now, |t| t.0);
                if inputs.now.duration_since(since) > allowed_age {
                    problems.push(format!(
                        "environment {}: no backup completed since Schedule {schedule_name} was made on {}",
                        env.name,
                        since.strftime("%Y-%m-%d %H:%M UTC")
                    ));
                } else {
                    pending.push(env.name.clone());
                }
            }
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "BackupsNotAssured", listing(&problems));
    }
    if !pending.is_empty() {
        return finding(
            ControlResult::Unknown,
            "AwaitingFirstBackup",
            format!(
                "scheduled, but no backup has completed yet for: {}",
                pending.join(", ")
            ),
        );
    }
    let location = view
        .location
        .as_ref()
        .map(|l| {
            format!(
                "{}/{} in {}",
                view.namespace,
                backup.storage_location,
                backup::location_region(l).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    pass(
        "BackedUp",
        format!(
            "every environment is backed up on schedule to {location}, away from the primary region; last backups: {}",
            fresh.join(", ")
        ),
    )
}

/// The latest restore test of every environment passed and is not overdue, and no production
/// backup was restored outside production (CLD-26, CLD-54).
pub(super) fn restore_tests(inputs: &Inputs) -> Finding {
    // Without a restore-test schedule, the missing declaration is the finding.
    let declared = inputs.tenant.spec.backup.as_ref();
    let Some(schedule) = declared.and_then(|b| b.restore_test_schedule.as_deref()) else {
        return no_restore_test();
    };
    if let Err(finding) = backup_engine(inputs) {
        return finding;
    }
    let view = &inputs.observed.velero;
    let mut problems = backup::production_restored_outside(inputs.tenant, view);
    let mut waiting = Vec::new();
    let mut passed = Vec::new();
    let allowed_age = backup::period(schedule, inputs.now).map(|p| p.saturating_mul(2));
    for env in &inputs.tenant.spec.environments {
        match backup::last_outcome(view, &env.name, inputs.now) {
            None => waiting.push(match backup::restore_test(inputs.tenant, &env.name, view, inputs.now) {
                backup::RestoreTest::Running { restore } => {
                    format!("{}: the first restore test ({restore}) is running", env.name)
                }
                _ => format!("{}: no backup to test yet", env.name),
            }),
            Some((_, outcome)) if !outcome.passed => problems.push(format!(
                "environment {}: the last restore test failed on {}: {}",
                env.name,
                outcome.at.strftime("%Y-%m-%d %H:%M UTC"),
                outcome.message
            )),
            Some((restore, outcome)) => match allowed_age {
                Some(age) if inputs.now.duration_since(outcome.at) > age => {
                    problems.push(format!(
                        "environment {}: the last restore test, {}, is from {}: overdue, older than twice the restore-test schedule's period ({}h)",
                        env.name,
                        restore.name_any(),
                        outcome.at.strftime("%Y-%m-%d %H:%M UTC"),
                        age.as_hours()
                    ))
                }
                _ => passed.push(format!(
                    "{} on {}",
                    env.name,
                    outcome.at.strftime("%Y-%m-%d %H:%M UTC")
                )),
            },
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "RestoreNotAssured", listing(&problems));
    }
    if !waiting.is_empty() {
        return finding(
            ControlResult::Unknown,
            "AwaitingRestoreTest",
            format!("no restore test has finished yet: {}", waiting.join("; ")),
        );
    }
    pass(
        "RestoreTested",
        format!(
            "the latest backup of every environment was restored into an isolated scratch namespace and checked: {}",
            passed.join(", ")
        ),
    )
}

pub(super) fn no_restore_test() -> Finding {
    finding(
        ControlResult::Fail,
        "NoRestoreTest",
        "the tenant declares no restore test (spec.backup.restoreTestSchedule): CLD-26 requires regular ones",
    )
}
