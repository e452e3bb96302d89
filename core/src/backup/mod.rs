//! Backups, restore tests and exports through Velero (CLD-26, CLD-54, CLD-73): the Velero
//! objects a tenant wants, where its restore tests stand, and the rules its backups are judged
//! by. Pure: the time, the cluster's Velero objects and its nodes are inputs.
//!
//! Carried out by the operator's `reconcile/backup.rs`; checked by `controls/backup.rs` (BAK-1,
//! BAK-2) and, for the final export, `controls/shredding.rs` (REV-1).

pub mod velero;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Resource, ResourceExt};

use self::velero::{
    Backup, BackupMetadata, BackupSpec, BackupStorageLocation, Restore, RestoreSpec, Schedule,
    ScheduleSpec, is_finished,
};
use crate::api::{
    Environment, EnvironmentBackups, EnvironmentKind, ExportStatus, FranceTravailTenant,
    annotations, labels,
};
use crate::digest::sha256_hex;
use crate::meta::{child_labels, namespace_name};
use crate::placement::regions::{Location, REGION_LABEL, RegionCatalogue};

/// Where Velero runs unless the platform team says otherwise.
pub const DEFAULT_VELERO_NAMESPACE: &str = "velero";
/// A restore test still unfinished after this long has failed.
pub const RESTORE_TEST_DEADLINE: SignedDuration = SignedDuration::from_hours(6);
/// Restore tests kept per environment, the latest ones; older ones are deleted.
pub const RESTORE_TESTS_KEPT: usize = 3;
/// What the backup control and the exports say when Velero is absent.
pub const NO_ENGINE: &str = "backup engine not installed: the cluster does not serve velero.io/v1";
/// The token of the export taken before a tenant is shredded.
pub const FINAL_EXPORT: &str = "final";

/// Why the operator made a Velero object: the value of `labels::BACKUP_PURPOSE`.
pub mod purpose {
    pub const SCHEDULED: &str = "schedule";
    pub const RESTORE_TEST: &str = "restore-test";
    pub const EXPORT: &str = "export";
}

/// Parses a five-field cron expression or a shorthand such as `@daily`, as Velero does.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())?;
    // A valid expression that never fires (30 February) would never back anything up.
    cron.find_next_occurrence(&Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC), false)
        .map_err(|_| "it never fires".to_string())?;
    Ok(cron)
}

/// The gap between the two latest runs of `expression` at or before `now`: the schedule's
/// period, as it stands at `now` (a weekdays-only schedule has a longer one on Mondays).
pub fn period(expression: &str, now: Timestamp) -> Option<SignedDuration> {
    let cron = parse_cron(expression).ok()?;
    let last = cron
        .find_previous_occurrence(&now.to_zoned(TimeZone::UTC), true)
        .ok()?;
    let before = cron.find_previous_occurrence(&last, false).ok()?;
    Some(last.timestamp().duration_since(before.timestamp()))
}

/// The first run of `expression` strictly after `after`.
pub fn next_run(expression: &str, after: Timestamp) -> Option<Timestamp> {
    let cron = parse_cron(expression).ok()?;
    cron.find_next_occurrence(&after.to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|z| z.timestamp())
}

/// A retention such as `720h` as Velero writes it back (`720h0m0s`), so that what is applied
/// is what is read and no difference is seen where there is none. `None` when it is not an
/// hours-minutes-seconds duration.
pub fn go_duration(retention: &str) -> Option<String> {
    let seconds = duration_seconds(retention)?;
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    Some(match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    })
}

/// A duration of hours, minutes and seconds (`36h30m`), in seconds.
pub fn duration_seconds(retention: &str) -> Option<u64> {
    let mut seconds: u64 = 0;
    let mut digits = String::new();
    for c in retention.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        seconds = seconds.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() || retention.is_empty() {
        return None;
    }
    Some(seconds)
}

fn short_hash(parts: &[&str], hex_digits: usize) -> String {
    sha256_hex(parts.join("\n").as_bytes(), hex_digits)
}

/// `ft-<tenant>-<environment>`, in Velero's namespace.
pub fn schedule_name(tenant: &str, environment: &str) -> String {
    format!("ft-{tenant}-{environment}")
}

fn velero_meta(
    name: String,
    tenant: &FranceTravailTenant,
    env: &Environment,
    purpose: &str,
    velero_namespace: &str,
) -> ObjectMeta {
    let mut labels = child_labels(tenant, env);
    labels.insert(labels::BACKUP_PURPOSE.into(), purpose.into());
    ObjectMeta {
        name: Some(name),
        namespace: Some(velero_namespace.into()),
        labels: Some(labels),
        owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The labels Velero puts on each backup made from a template: whose it is and why.
fn backup_labels(tenant: &FranceTravailTenant, env: &Environment, purpose: &str) -> BackupMetadata {
    let mut labels = child_labels(tenant, env);
    labels.insert(labels::BACKUP_PURPOSE.into(), purpose.into());
    BackupMetadata { labels }
}

/// One Velero Schedule per environment, backing up that environment's namespace alone to the
/// tenant's location (CLD-26). Backups do not belong to their Schedule: an environment that is
/// removed keeps its backups until their retention ends.
pub fn schedules(tenant: &FranceTravailTenant, velero_namespace: &str) -> Vec<Schedule> {
    let Some(backup) = &tenant.spec.backup else {
        return Vec::new();
    };
    let name = tenant.name_any();
    tenant
        .spec
        .environments
        .iter()
        .map(|env| Schedule {
            metadata: velero_meta(
                schedule_name(&name, &env.name),
                tenant,
                env,
                purpose::SCHEDULED,
                velero_namespace,
            ),
            spec: ScheduleSpec {
                schedule: backup.schedule.clone(),
                template: BackupSpec {
                    metadata: Some(backup_labels(tenant, env, purpose::SCHEDULED)),
                    included_namespaces: vec![namespace_name(&name, &env.name)],
                    ttl: Some(go_duration(&backup.retention).unwrap_or(backup.retention.clone())),
                    storage_location: Some(backup.storage_location.clone()),
                },
                use_owner_references_in_backup: Some(false),
            },
            status: None,
        })
        .collect()
}

/// The environment a restore test of `env` restores into: same kind, node pool, quota and
/// defaults, hence the same placement and isolation, under a name that cannot be a real
/// environment's (`validate` keeps `-restore` and `restore-` for it).
pub fn scratch_environment(env: &Environment) -> Environment {
    const SUFFIX: &str = "-restore";
    let name = if env.name.len() + SUFFIX.len() <= 20 {
        format!("{}{SUFFIX}", env.name)
    } else {
        format!("restore-{}", short_hash(&[&env.name], 8))
    };
    Environment {
        name,
        ..env.clone()
    }
}

/// The scratch namespace of `env`'s restore tests.
pub fn scratch_namespace(tenant: &str, env: &Environment) -> String {
    namespace_name(tenant, &scratch_environment(env).name)
}

/// The tenant as built while restore tests of `environments` run: each gets its scratch
/// environment. Declared flows stay with the environments they were declared for, so a scratch
/// namespace has none: restored workloads reach nothing outside it but DNS.
pub fn with_scratch(
    tenant: &FranceTravailTenant,
    environments: &BTreeSet<String>,
) -> FranceTravailTenant {
    let mut effective = tenant.clone();
    if environments.is_empty() {
        return effective;
    }
    let real: Vec<String> = tenant
        .spec
        .environments
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let network = &mut effective.spec.network;
    for flow in &mut network.ingress {
        if flow.environments.is_empty() {
            flow.environments = real.clone();
        }
    }
    for flow in &mut network.egress {
        if flow.environments.is_empty() {
            flow.environments = real.clone();
        }
    }
    for env in &tenant.spec.environments {
        if environments.contains(&env.name) {
            effective.spec.environments.push(scratch_environment(env));
        }
    }
    effective
}

/// What the cluster's Velero holds for one tenant.
#[derive(Clone, Debug, Default)]
pub struct VeleroView {
    /// Velero's namespace.
    pub namespace: String,
    /// The tenant's location, when it exists.
    pub location: Option<Arc<BackupStorageLocation>>,
    /// The operator's Schedules, Backups and Restores for the tenant.
    pub schedules: Vec<Arc<Schedule>>,
    pub backups: Vec<Arc<Backup>>,
    pub restores: Vec<Arc<Restore>>,
    /// Restores made by anyone else that take one of the tenant's namespaces as their source.
    pub foreign_restores: Vec<Arc<Restore>>,
}

impl VeleroView {
    /// The tenant's location, for people: `velero/backups-gra, bucket b/p (aws)`; empty when
    /// it does not exist.
    pub fn location_description(&self) -> String {
        self.location
            .as_ref()
            .map(|l| format!("{}/{}, {}", self.namespace, l.name_any(), l.describe()))
            .unwrap_or_default()
    }
}

fn label<'a, K: Resource>(object: &'a K, key: &str) -> Option<&'a str> {
    object.meta().labels.as_ref()?.get(key).map(String::as_str)
}

fn created(meta: &ObjectMeta) -> Timestamp {
    meta.creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

fn of_environment<'a, K: Resource>(
    objects: &'a [Arc<K>],
    env: &str,
    purpose: &str,
) -> impl Iterator<Item = &'a Arc<K>> {
    objects.iter().filter(move |o| {
        label(&***o, labels::ENVIRONMENT) == Some(env)
            && label(&***o, labels::BACKUP_PURPOSE) == Some(purpose)
    })
}

/// The latest backup of `env` that Velero completed, with its completion time.
pub fn last_completed_backup<'a>(
    view: &'a VeleroView,
    env: &str,
) -> Option<(&'a Arc<Backup>, Timestamp)> {
    of_environment(&view.backups, env, purpose::SCHEDULED)
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            (status.phase.as_deref() == Some("Completed")).then_some(())?;
            let at = status
                .completion_timestamp
                .as_ref()
                .map_or_else(|| created(&b.metadata), |t| t.0);
            Some((b, at))
        })
        .max_by_key(|(_, at)| *at)
}

/// The restore tests of `env`, oldest first.
pub fn restore_tests<'a>(view: &'a VeleroView, env: &str) -> Vec<&'a Arc<Restore>> {
    let mut tests: Vec<_> = of_environment(&view.restores, env, purpose::RESTORE_TEST).collect();
    tests.sort_by_key(|r| (created(&r.metadata), r.name_any()));
    tests
}

/// Where the restore tests of one environment stand.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreTest {
    /// Nothing to do now: no test declared, no backup to test yet, or the next one not due.
    Idle { next: Option<Timestamp> },
    /// A test of `backup` is due, for the run of the schedule at `at`.
    Due { backup: String, at: Timestamp },
    /// A test is running: its scratch namespace must stay.
    Running { restore: String },
}

/// Whether a restore test of `env` is due, running or neither, at `now`. The first test is due
/// as soon as a backup has completed; then one per run of the restore-test schedule.
pub fn restore_test(
    tenant: &FranceTravailTenant,
    env: &str,
    view: &VeleroView,
    now: Timestamp,
) -> RestoreTest {
    let Some(expression) = tenant
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.restore_test_schedule.as_deref())
    else {
        return RestoreTest::Idle { next: None };
    };
    let tests = restore_tests(view, env);
    if let Some(latest) = tests.last()
        && outcome(latest, now).is_none()
    {
        return RestoreTest::Running {
            restore: latest.name_any(),
        };
    }
    let Some((backup, completed)) = last_completed_backup(view, env) else {
        return RestoreTest::Idle { next: None };
    };
    let at = match tests.last() {
        None => completed,
        Some(latest) => match next_run(expression, created(&latest.metadata)) {
            Some(at) => at,
            None => return RestoreTest::Idle { next: None },
        },
    };
    if at > now {
        return RestoreTest::Idle { next: Some(at) };
    }
    RestoreTest::Due {
        backup: backup.name_any(),
        at,
    }
}

/// `ft-rt-<12 hex digits>`, from the tenant, the environment and the run it is for: a pass
/// that retries creates the same Restore, never a second one.
pub fn restore_test_name(tenant: &str, env: &str, at: Timestamp) -> String {
    format!(
        "ft-rt-{}",
        short_hash(&[tenant, env, &at.as_second().to_string()], 12)
    )
}

/// The Velero Restore of a restore test: `backup` of `env`, restored into its scratch
/// namespace and nowhere else. The scratch namespace has the kind of its source, so a
/// production backup is never restored into a development namespace (CLD-54).
pub fn restore(
    tenant: &FranceTravailTenant,
    env: &Environment,
    backup: &str,
    at: Timestamp,
    velero_namespace: &str,
) -> Restore {
    let name = tenant.name_any();
    let source = namespace_name(&name, &env.name);
    let scratch = scratch_namespace(&name, env);
    let mut metadata = velero_meta(
        restore_test_name(&name, &env.name, at),
        tenant,
        env,
        purpose::RESTORE_TEST,
        velero_namespace,
    );
    metadata.annotations = Some(BTreeMap::from([(
        annotations::SCRATCH_NAMESPACE.into(),
        scratch.clone(),
    )]));
    Restore {
        metadata,
        spec: RestoreSpec {
            backup_name: backup.into(),
            included_namespaces: vec![source.clone()],
            namespace_mapping: BTreeMap::from([(source, scratch)]),
        },
        status: None,
    }
}

/// How a finished restore test went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub passed: bool,
    pub message: String,
    pub at: Timestamp,
}

/// The outcome of a restore test, `None` while it runs. It passes when Velero completed it
/// without errors and restored every item of the backup, at least one.
pub fn outcome(restore: &Restore, now: Timestamp) -> Option<TestOutcome> {
    let name = restore.name_any();
    let status = restore.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref();
    let started = created(&restore.metadata);
    let at = status.completion_timestamp.as_ref().map_or(now, |t| t.0);
    let failed = |message: String| {
        Some(TestOutcome {
            passed: false,
            message,
            at,
        })
    };
    if !is_finished(phase) {
        if now.duration_since(started) > RESTORE_TEST_DEADLINE {
            return Some(TestOutcome {
                passed: false,
                message: format!(
                    "restore {name} did not finish within {}h (phase {})",
                    RESTORE_TEST_DEADLINE.as_hours(),
                    phase.unwrap_or("none")
                ),
                at: started.saturating_add(RESTORE_TEST_DEADLINE).unwrap_or(now),
            });
        }
        return None;
    }
    let errors = status.errors.unwrap_or(0);
    let progress = status.progress.unwrap_or_default();
    let (restored, total) = (
        progress.items_restored.unwrap_or(0),
        progress.total_items.unwrap_or(0),
    );
    match phase {
        Some("Completed") if errors > 0 => {
            failed(format!("restore {name} completed with {errors} error(s)"))
        }
        Some("Completed") if restored == 0 || restored < total => failed(format!(
            "restore {name} completed but restored {restored} of {total} item(s)"
        )),
        Some("Completed") => Some(TestOutcome {
            passed: true,
            message: format!("restore {name} restored all {restored} item(s) without error"),
            at,
        }),
        Some("PartiallyFailed") => failed(format!(
            "restore {name} partially failed with {errors} error(s)"
        )),
        Some("FailedValidation") => failed(format!(
            "restore {name} failed validation: {}",
            status.validation_errors.join("; ")
        )),
        _ => failed(format!(
            "restore {name} failed: {}",
            status
                .failure_reason
                .as_deref()
                .unwrap_or("no reason given")
        )),
    }
}

/// The latest finished restore test of `env`, and how it went.
pub fn last_outcome<'a>(
    view: &'a VeleroView,
    env: &str,
    now: Timestamp,
) -> Option<(&'a Arc<Restore>, TestOutcome)> {
    restore_tests(view, env)
        .into_iter()
        .rev()
        .find_map(|r| outcome(r, now).map(|o| (r, o)))
}

/// Restore tests beyond the latest `RESTORE_TESTS_KEPT` of each environment: to delete.
pub fn stale_restore_tests(tenant: &FranceTravailTenant, view: &VeleroView) -> Vec<String> {
    tenant
        .spec
        .environments
        .iter()
        .flat_map(|env| {
            let tests = restore_tests(view, &env.name);
            let stale = tests.len().saturating_sub(RESTORE_TESTS_KEPT);
            tests
                .into_iter()
                .take(stale)
                .map(|r| r.name_any())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Restores that take a production namespace of the tenant somewhere other than one of its
/// production namespaces (CLD-54), each described.
pub fn production_restored_outside(tenant: &FranceTravailTenant, view: &VeleroView) -> Vec<String> {
    let name = tenant.name_any();
    let production: BTreeSet<String> = tenant
        .spec
        .environments
        .iter()
        .filter(|e| e.kind == EnvironmentKind::Production)
        .flat_map(|e| [namespace_name(&name, &e.name), scratch_namespace(&name, e)])
        .collect();
    let mut found = Vec::new();
    for restore in view.restores.iter().chain(&view.foreign_restores) {
        for (from, to) in &restore.spec.namespace_mapping {
            if production.contains(from) && !production.contains(to) {
                found.push(format!(
                    "Restore {}/{} restores the production namespace {from} into {to}",
                    view.namespace,
                    restore.name_any()
                ));
            }
        }
    }
    found
}

/// The region of a backup location: `spec.config.region`, as S3-compatible stores declare it,
/// else its `topology.kubernetes.io/region` label, which the platform team sets for the others.
pub fn location_region(location: &BackupStorageLocation) -> Option<&str> {
    location
        .spec
        .config
        .get("region")
        .or_else(|| location.labels().get(REGION_LABEL))
        .map(String::as_str)
        .filter(|r| !r.is_empty())
}

/// The regions the tenant's environments run in: the regions of the nodes that host its pods,
/// or, for an environment with none yet, of every node in an allowed region.
pub fn primary_regions(
    allowed_regions: &BTreeSet<String>,
    nodes: &[Arc<Node>],
    pod_nodes: &BTreeSet<String>,
) -> BTreeSet<String> {
    let region_of = |n: &Arc<Node>| n.labels().get(REGION_LABEL).cloned();
    let hosting: BTreeSet<String> = nodes
        .iter()
        .filter(|n| pod_nodes.contains(&n.name_any()))
        .filter_map(region_of)
        .collect();
    if !hosting.is_empty() {
        return hosting;
    }
    nodes
        .iter()
        .filter_map(region_of)
        .filter(|r| allowed_regions.contains(r))
        .collect()
}

/// What is wrong with the tenant's backup location, if anything: it must exist, be available,
/// be in an allowed country, and not in a region the tenant runs in (CLD-26, CLD-74).
pub fn location_problems(
    tenant: &FranceTravailTenant,
    view: &VeleroView,
    catalogue: &RegionCatalogue,
    primary: &BTreeSet<String>,
) -> Vec<String> {
    let Some(wanted) = tenant.spec.backup.as_ref().map(|b| &b.storage_location) else {
        return Vec::new();
    };
    let key = format!("BackupStorageLocation {}/{wanted}", view.namespace);
    let Some(location) = &view.location else {
        return vec![format!("{key} does not exist")];
    };
    let mut problems = Vec::new();
    let status = location.status.clone().unwrap_or_default();
    if status.phase.as_deref() != Some("Available") {
        problems.push(format!(
            "{key} is not Available (phase {}{})",
            status.phase.as_deref().unwrap_or("none"),
            status.message.map(|m| format!(": {m}")).unwrap_or_default()
        ));
    }
    let Some(region) = location_region(location) else {
        problems.push(format!(
            "{key} declares no region (spec.config.region, or the label {REGION_LABEL}): its country cannot be told (CLD-74)"
        ));
        return problems;
    };
    let allowed = &tenant.spec.placement.allowed_countries;
    match catalogue.country_of(None, region) {
        Location::Placed(places) => {
            for place in places {
                if !allowed.iter().any(|c| c.code() == place.country) {
                    problems.push(format!(
                        "{key} is in region {region}, in {}, not an allowed country (CLD-74)",
                        place.country
                    ));
                }
            }
        }
        Location::Ambiguous { countries, .. } => problems.push(format!(
            "{key} is in region {region}, which providers place in different countries ({}): its country cannot be told (CLD-74)",
            countries
                .iter()
                .map(|(p, c)| format!("{p}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => problems.push(format!(
            "{key} is in region {region}, which the region catalogue does not know: its country cannot be told (CLD-74)"
        )),
    }
    if primary.iter().any(|p| p.eq_ignore_ascii_case(region)) {
        problems.push(format!(
            "{key} is in region {region}, where the tenant runs: backups must be kept away from the primary site (CLD-26)"
        ));
    }
    problems
}

/// The id of an export: from the tenant's uid and the token that requested it, so each new
/// request is a new export and a repeated pass makes the same one.
pub fn export_id(tenant: &FranceTravailTenant, token: &str) -> String {
    let uid = tenant.metadata.uid.as_deref().unwrap_or_default();
    short_hash(&[uid, token], 10)
}

/// One Velero Backup per environment, to the tenant's location: everything the tenant has,
/// handed back on request (CLD-73).
pub fn export_backups(
    tenant: &FranceTravailTenant,
    token: &str,
    velero_namespace: &str,
) -> Vec<Backup> {
    let Some(backup) = &tenant.spec.backup else {
        return Vec::new();
    };
    let id = export_id(tenant, token);
    let name = tenant.name_any();
    tenant
        .spec
        .environments
        .iter()
        .map(|env| {
            let mut metadata = velero_meta(
                format!("ft-export-{id}-{}", env.name),
                tenant,
                env,
                purpose::EXPORT,
                velero_namespace,
            );
            if let Some(labels) = &mut metadata.labels {
                labels.insert(labels::EXPORT.into(), id.clone());
            }
            // An export outlives the tenant: it is what France Travail takes back.
            metadata.owner_references = None;
            Backup {
                metadata,
                spec: BackupSpec {
                    metadata: None,
                    included_namespaces: vec![namespace_name(&name, &env.name)],
                    ttl: Some(go_duration(&backup.retention).unwrap_or(backup.retention.clone())),
                    storage_location: Some(backup.storage_location.clone()),
                },
                status: None,
            }
        })
        .collect()
}

/// Where an export stands: every backup of it, with its phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportProgress {
    /// `Backup velero/<name>: <phase>`, per environment.
    pub backups: Vec<(String, String)>,
    /// Every backup completed.
    pub completed: bool,
    /// Backups that failed, named.
    pub failed: Vec<String>,
}

pub fn export_progress(wanted: &[Backup], observed: &[Arc<Backup>]) -> ExportProgress {
    let mut progress = ExportProgress {
        backups: Vec::new(),
        completed: !wanted.is_empty(),
        failed: Vec::new(),
    };
    for backup in wanted {
        let name = backup.name_any();
        let phase = observed
            .iter()
            .find(|o| o.name_any() == name)
            .and_then(|o| o.status.as_ref()?.phase.clone())
            .unwrap_or_else(|| "New".into());
        progress.completed &= phase == "Completed";
        if is_finished(Some(&phase)) && phase != "Completed" {
            progress.failed.push(format!("{name} ({phase})"));
        }
        progress.backups.push((name, phase));
    }
    progress
}

/// Each environment's latest backup and restore test, for the report (CLD-26).
pub fn report(
    tenant: &FranceTravailTenant,
    view: &VeleroView,
    now: Timestamp,
) -> Vec<EnvironmentBackups> {
    let name = tenant.name_any();
    if tenant.spec.backup.is_none() {
        return Vec::new();
    }
    tenant
        .spec
        .environments
        .iter()
        .map(|env| {
            let schedule = schedule_name(&name, &env.name);
            let mut entry = EnvironmentBackups {
                environment: env.name.clone(),
                schedule: view
                    .schedules
                    .iter()
                    .any(|s| s.name_any() == schedule)
                    .then(|| format!("{}/{schedule}", view.namespace)),
                ..Default::default()
            };
            if let Some((backup, at)) = last_completed_backup(view, &env.name) {
                entry.last_backup = Some(format!("{}/{}", view.namespace, backup.name_any()));
                entry.last_backup_at = Some(Time(at));
            }
            if let Some((restore, outcome)) = last_outcome(view, &env.name, now) {
                entry.last_restore_test =
                    Some(format!("{}/{}", view.namespace, restore.name_any()));
                entry.last_restore_test_at = Some(Time(outcome.at));
                entry.restore_test_result =
                    Some(if outcome.passed { "Passed" } else { "Failed" }.into());
                entry.restore_test_message = outcome.message;
            }
            if let RestoreTest::Running { restore } = restore_test(tenant, &env.name, view, now) {
                entry.running_restore_test = Some(format!("{}/{restore}", view.namespace));
            }
            entry
        })
        .collect()
}

/// What an export request (the `EXPORT_REQUEST` annotation) asks of the operator now (CLD-73).
#[derive(Debug, PartialEq)]
pub enum ExportStep {
    /// No export is asked for.
    None,
    /// Nothing to do but show this status: the export is blocked, or whether Velero is served
    /// is not known yet and the last status stands.
    Show(Option<ExportStatus>),
    /// Make the export's Backups (`create`; once it has finished they are Velero's, and one
    /// deleted by retention is not made again), then report their progress.
    Run {
        token: String,
        wanted: Vec<Backup>,
        create: bool,
    },
}

pub fn export_step(
    tenant: &FranceTravailTenant,
    engine: Option<bool>,
    velero_namespace: &str,
) -> ExportStep {
    let Some(token) = tenant.annotations().get(annotations::EXPORT_REQUEST) else {
        return ExportStep::None;
    };
    let previous = tenant.status.as_ref().and_then(|s| s.export.as_ref());
    if tenant.spec.backup.is_none() {
        return ExportStep::Show(Some(export_blocked(
            token,
            "the tenant declares no backup location (spec.backup) to export to",
        )));
    }
    match engine {
        Some(true) => {}
        Some(false) => return ExportStep::Show(Some(export_blocked(token, NO_ENGINE))),
        None => return ExportStep::Show(previous.cloned()),
    }
    let finished = previous.is_some_and(|p| {
        p.requested == *token && matches!(p.phase.as_str(), "Completed" | "Failed")
    });
    ExportStep::Run {
        token: token.clone(),
        wanted: export_backups(tenant, token, velero_namespace),
        create: !finished,
    }
}

/// An export that cannot proceed, and why.
pub fn export_blocked(token: &str, message: &str) -> ExportStatus {
    ExportStatus {
        requested: token.into(),
        phase: "Blocked".into(),
        message: message.into(),
        ..Default::default()
    }
}

/// Where the export asked for by `token` stands, from its Backups.
pub fn export_status(token: &str, progress: &ExportProgress, view: &VeleroView) -> ExportStatus {
    let mut status = ExportStatus {
        requested: token.into(),
        location: view.location_description(),
        backups: progress
            .backups
            .iter()
            .map(|(name, phase)| format!("{}/{name}: {phase}", view.namespace))
            .collect(),
        ..Default::default()
    };
    status.phase = if !progress.failed.is_empty() {
        status.message = format!("failed: {}", progress.failed.join(", "));
        "Failed"
    } else if progress.completed {
        "Completed"
    } else {
        "InProgress"
    }
    .into();
    status
}

/// Whether the export completed in this pass: announced once.
pub fn export_completed(previous: Option<&ExportStatus>, status: &ExportStatus) -> bool {
    status.phase == "Completed"
        && previous.is_none_or(|p| p.phase != "Completed" || p.requested != status.requested)
}
