//! Removing an environment (CLD-47, CLD-73, CLD-76): an environment gone from the spec takes
//! its namespace, and every claim in it, with it; a one-line edit (`prod` renamed `production`)
//! must not erase production. Its namespace is held, isolated as it was, until the tenant's
//! `confirm-environment-removal` annotation names it; then, as for a tenant's deletion, a final
//! export when the tenant asks for one, the namespace's deletion, and a record that outlives
//! it. The tenant's `status.removals` is the journal: a step is done once its time is set there.
//! The tenant key stays: the other environments share it. Pure.
//!
//! Carried out by the operator's `reconcile/removal.rs`; the held namespaces are kept out of
//! the pruning in `apply.rs`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    Environment, EnvironmentKind, EnvironmentRemoval, FranceTravailTenant, TenantStatus,
    annotations,
    labels::{ENVIRONMENT, MANAGED_BY, MANAGED_BY_VALUE, TENANT},
};
use crate::backup::{self, ExportProgress, VeleroView, velero::Backup};
use crate::digest::sha256_hex;
use crate::meta::{annotation_set_by, namespace_name, tenant_namespaces};
use crate::shredding;

/// Marks the ConfigMaps that are environment removal records.
pub const RECORD_LABEL: &str = "hosting.francetravail.fr/environment-removal-record";
/// The condition that tells which environments are held or being removed.
pub const CONDITION: &str = "EnvironmentRemoval";
pub const HELD: &str = "EnvironmentRemovalHeld";
pub const IN_PROGRESS: &str = "EnvironmentRemovalInProgress";
pub const NONE: &str = "NoEnvironmentRemoval";

/// A namespace the tenant owns, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedNamespace {
    pub name: String,
    /// Its environment label, or, without one, what its name says after `<tenant>-`.
    pub environment: String,
    /// Its environment-kind label, if any.
    pub kind: String,
    pub terminating: bool,
}

impl OwnedNamespace {
    /// Reads a namespace's metadata; `tenant` is the owner `meta::owned_by` found.
    pub fn from_meta(tenant: &str, meta: &ObjectMeta) -> Self {
        let name = meta.name.clone().unwrap_or_default();
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let environment = label(ENVIRONMENT).unwrap_or_else(|| {
            name.strip_prefix(&format!("{tenant}-"))
                .unwrap_or(&name)
                .to_string()
        });
        OwnedNamespace {
            environment,
            kind: label(crate::api::labels::ENVIRONMENT_KIND).unwrap_or_default(),
            terminating: meta.deletion_timestamp.is_some(),
            name,
        }
    }
}

/// The scratch environments of restore tests (`backup::scratch_environment`): names no real
/// environment may have, pruned once their test is over.
pub fn is_scratch(environment: &str) -> bool {
    environment.ends_with("-restore") || environment.starts_with("restore-")
}

/// The namespaces among `owned` that nothing desired names and that are not a restore test's
/// scratch namespace: those of environments removed from the spec. They are held: neither
/// they nor anything in them is pruned.
pub fn held_namespaces(desired: &BTreeSet<String>, owned: &[OwnedNamespace]) -> BTreeSet<String> {
    owned
        .iter()
        .filter(|ns| !desired.contains(&ns.name) && !is_scratch(&ns.environment))
        .map(|ns| ns.name.clone())
        .collect()
}

/// The environments the confirmation annotation names.
pub fn confirmations(tenant: &FranceTravailTenant) -> BTreeSet<String> {
    tenant
        .annotations()
        .get(annotations::CONFIRM_ENVIRONMENT_REMOVAL)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The annotation's value once the removals of `done` are recorded: a confirmation is used
/// once. `None` when nothing is left, and the annotation goes.
pub fn confirmations_after(
    tenant: &FranceTravailTenant,
    done: &BTreeSet<String>,
) -> Option<String> {
    let left: Vec<String> = confirmations(tenant).difference(done).cloned().collect();
    (!left.is_empty()).then(|| left.join(","))
}

/// Who set the confirmation annotation, as the API server recorded it: the field manager that
/// owns it, and when.
pub fn confirmed_by(tenant: &FranceTravailTenant) -> String {
    annotation_set_by(tenant, annotations::CONFIRM_ENVIRONMENT_REMOVAL)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is done until the removal is confirmed.
    Held,
    /// Export the namespace first, when the tenant asks for final exports (CLD-73).
    FinalExport,
    /// Delete the namespace and wait until it is gone.
    DeleteNamespace,
    /// Write the record that outlives the namespace.
    WriteRecord,
    /// Use the confirmation up and forget the removal.
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "Held",
            Self::FinalExport => "FinalExport",
            Self::DeleteNamespace => "DeleteNamespace",
            Self::WriteRecord => "WriteRecord",
            Self::Done => "Done",
        }
    }
}

/// The first step of `removal` not done yet.
pub fn next_step(tenant: &FranceTravailTenant, removal: &EnvironmentRemoval) -> Step {
    if removal.confirmed_at.is_none() {
        return Step::Held;
    }
    if removal.namespace_deleted_at.is_none() {
        if tenant.spec.deletion.final_export && removal.final_export_at.is_none() {
            return Step::FinalExport;
        }
        return Step::DeleteNamespace;
    }
    if removal.record.is_none() {
        return Step::WriteRecord;
    }
    Step::Done
}

/// The removals after what this pass observes, before any step is carried out: one per held
/// namespace (new ones held from `now`), and those already confirmed whose namespace is gone
/// but whose record is not written. A removal is confirmed when the annotation names it and
/// its hold was already in the status: a removal is always held, and shown, before anything
/// is destroyed. An environment declared again is no longer removed, unless its namespace is
/// already deleted (its record is still due).
pub fn removals(
    tenant: &FranceTravailTenant,
    owned: &[OwnedNamespace],
    now: &Time,
) -> Vec<EnvironmentRemoval> {
    let name = tenant.name_any();
    let previous = tenant
        .status
        .as_ref()
        .map(|s| s.removals.as_slice())
        .unwrap_or_default();
    let declared: BTreeSet<&str> = tenant
        .spec
        .environments
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let held = held_namespaces(&tenant_namespaces(tenant), owned);
    let confirmed = confirmations(tenant);
    let mut out: Vec<EnvironmentRemoval> = Vec::new();
    for ns in owned.iter().filter(|ns| held.contains(&ns.name)) {
        let entry = match previous.iter().find(|p| p.namespace == ns.name) {
            Some(p) => {
                let mut p = p.clone();
                if p.confirmed_at.is_none() && confirmed.contains(&p.environment) {
                    p.confirmed_at = Some(now.clone());
                    p.confirmed_by = confirmed_by(tenant);
                }
                p
            }
            None => EnvironmentRemoval {
                environment: ns.environment.clone(),
                namespace: ns.name.clone(),
                kind: ns.kind.clone(),
                held_since: Some(now.clone()),
                ..Default::default()
            },
        };
        out.push(entry);
    }
    for p in previous {
        let seen = out.iter().any(|o| o.namespace == p.namespace);
        let redeclared = declared.contains(p.environment.as_str());
        let under_way =
            p.confirmed_at.is_some() && (!redeclared || p.namespace_deleted_at.is_some());
        if !seen && under_way {
            out.push(p.clone());
        }
    }
    for entry in &mut out {
        let step = next_step(tenant, entry).as_str();
        if entry.step != step {
            entry.step = step.into();
            entry.message.clear();
        }
        if entry.namespace.is_empty() {
            entry.namespace = namespace_name(&name, &entry.environment);
        }
    }
    out.sort_by(|a, b| a.environment.cmp(&b.environment));
    out
}

/// The removals newly held by this pass, to announce once.
pub fn newly_held<'a>(
    tenant: &FranceTravailTenant,
    removals: &'a [EnvironmentRemoval],
) -> Vec<&'a EnvironmentRemoval> {
    let previous = tenant.status.as_ref().map(|s| s.removals.as_slice());
    removals
        .iter()
        .filter(|r| previous.is_none_or(|p| !p.iter().any(|o| o.namespace == r.namespace)))
        .collect()
}

/// The command that confirms the removal of `environments`.
pub fn confirm_command(tenant: &str, environments: &[&str]) -> String {
    format!(
        "kubectl annotate francetravailtenant {tenant} {}={} --overwrite",
        annotations::CONFIRM_ENVIRONMENT_REMOVAL,
        environments.join(",")
    )
}

/// The `EnvironmentRemoval` condition: True while any environment is held or being removed,
/// naming each, its namespace and, for those held, the command that confirms their removal.
/// Absent until the first removal; False once none is left.
pub fn condition(
    tenant: &FranceTravailTenant,
    removals: &[EnvironmentRemoval],
    now: &Time,
) -> Option<Condition> {
    let previous = crate::status::condition(tenant.status.as_ref(), CONDITION);
    if removals.is_empty() && previous.is_none() {
        return None;
    }
    let name = tenant.name_any();
    let held: Vec<&EnvironmentRemoval> = removals
        .iter()
        .filter(|r| r.step == Step::Held.as_str())
        .collect();
    let mut parts: Vec<String> = held
        .iter()
        .map(|r| {
            format!(
                "environment {} is no longer declared: its namespace {} and everything in it are held, isolated as they were, until its removal is confirmed",
                r.environment, r.namespace
            )
        })
        .collect();
    if !held.is_empty() {
        let names: Vec<&str> = held.iter().map(|r| r.environment.as_str()).collect();
        parts.push(format!(
            "to export (when spec.deletion.finalExport), delete and record them: {} (CLD-47, CLD-76); to keep one, declare it again",
            confirm_command(&name, &names)
        ));
    }
    for r in removals.iter().filter(|r| r.step != Step::Held.as_str()) {
        parts.push(format!(
            "environment {} (namespace {}): removal confirmed by {}, step {}{}",
            r.environment,
            r.namespace,
            r.confirmed_by,
            r.step,
            if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            }
        ));
    }
    let (status, reason, message) = match (removals.is_empty(), held.is_empty()) {
        (true, _) => (
            "False",
            NONE,
            "no environment is held or being removed".to_string(),
        ),
        (false, false) => ("True", HELD, parts.join("; ")),
        (false, true) => ("True", IN_PROGRESS, parts.join("; ")),
    };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Some(Condition {
        type_: CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: tenant.metadata.generation,
        last_transition_time,
    })
}

/// Puts the removals and their condition in the status a pass leaves.
pub fn into_status(
    tenant: &FranceTravailTenant,
    status: &mut TenantStatus,
    removals: Vec<EnvironmentRemoval>,
    now: &Time,
) {
    status.conditions.retain(|c| c.type_ != CONDITION);
    if let Some(condition) = condition(tenant, &removals, now) {
        status.conditions.push(condition);
    }
    status.removals = removals;
}

fn environment_of(removal: &EnvironmentRemoval) -> Environment {
    let kind = match removal.kind.as_str() {
        "production" => EnvironmentKind::Production,
        "preproduction" => EnvironmentKind::Preproduction,
        "test" => EnvironmentKind::Test,
        _ => EnvironmentKind::Development,
    };
    Environment {
        name: removal.environment.clone(),
        kind,
        node_pool: None,
        quota: Default::default(),
        container_defaults: Default::default(),
    }
}

/// The token of a removal's final export: one per hold, so a retried pass makes the same one.
pub fn export_token(removal: &EnvironmentRemoval) -> String {
    format!(
        "removal:{}:{}",
        removal.environment,
        removal.held_since.as_ref().map_or(0, |t| t.0.as_second())
    )
}

/// The Velero Backup of a removed environment's namespace, to the tenant's location, made by
/// the same machinery as every export (`backup::export_backups`).
pub fn export_backups(
    tenant: &FranceTravailTenant,
    removal: &EnvironmentRemoval,
    velero_namespace: &str,
) -> Vec<Backup> {
    let mut only = tenant.clone();
    only.spec.environments = vec![environment_of(removal)];
    backup::export_backups(&only, &export_token(removal), velero_namespace)
}

const NOTHING_DELETED: &str =
    "the namespace is kept. To remove it without an export, set spec.deletion.finalExport to false";

/// Why the final export of a removed environment cannot start, if it cannot.
pub fn final_export_blocked(tenant: &FranceTravailTenant, engine: Option<bool>) -> Option<String> {
    shredding::export_blocked(tenant, engine, NOTHING_DELETED)
}

/// The final export's Backup once completed, or what it waits for.
pub fn final_export_outcome(
    progress: &ExportProgress,
    view: &VeleroView,
) -> Result<Vec<String>, String> {
    shredding::export_outcome(progress, view, NOTHING_DELETED)
}

/// `ft-removal-<tenant>-<environment>-<8 hex digits>`: unique per tenant and hold, so an
/// environment removed again gets a record of its own.
pub fn record_name(tenant: &FranceTravailTenant, removal: &EnvironmentRemoval) -> String {
    let uid = tenant.metadata.uid.as_deref().unwrap_or("nouid");
    let hash = sha256_hex(format!("{uid}\n{}", export_token(removal)).as_bytes(), 8);
    format!(
        "ft-removal-{}-{}-{hash}",
        tenant.name_any(),
        removal.environment
    )
}

/// What the removal record says, as YAML.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    tenant: String,
    uid: String,
    environment: String,
    namespace: String,
    rules: Vec<&'static str>,
    held_since: Option<String>,
    confirmed_at: Option<String>,
    confirmed_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    final_export_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    final_export: Vec<String>,
    namespace_deleted_at: Option<String>,
    recorded_at: String,
    tenant_key: String,
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

/// The record of a finished removal, in the operator's namespace, with no owner: it outlives
/// the namespace and the tenant.
pub fn record(
    tenant: &FranceTravailTenant,
    removal: &EnvironmentRemoval,
    key_store: String,
    namespace: &str,
    now: &Time,
) -> Result<ConfigMap, serde_saphyr::ser::Error> {
    let name = tenant.name_any();
    let body = Record {
        tenant: name.clone(),
        uid: tenant.metadata.uid.clone().unwrap_or_default(),
        environment: removal.environment.clone(),
        namespace: removal.namespace.clone(),
        rules: if removal.final_export_at.is_some() {
            vec!["CLD-47", "CLD-76", "CLD-73"]
        } else {
            vec!["CLD-47", "CLD-76"]
        },
        held_since: time(&removal.held_since),
        confirmed_at: time(&removal.confirmed_at),
        confirmed_by: removal.confirmed_by.clone(),
        final_export_at: time(&removal.final_export_at),
        final_export: removal.exports.clone(),
        namespace_deleted_at: time(&removal.namespace_deleted_at),
        recorded_at: now.0.to_string(),
        tenant_key: format!(
            "kept ({key_store}): the tenant's other environments share it; it is destroyed when the tenant is shredded"
        ),
    };
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(tenant, removal)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (TENANT.into(), name),
                (ENVIRONMENT.into(), removal.environment.clone()),
                (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
                (RECORD_LABEL.into(), "true".into()),
            ])),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            "record.yaml".to_string(),
            serde_saphyr::to_string(&body)?,
        )])),
        ..Default::default()
    })
}

/// What changes in a tenant's environments between what the cluster holds for it (`stored`,
/// as read from the cluster) and `tenant`: the environments removed, held until confirmed,
/// and those added. A rename shows as one of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentChanges {
    pub removed: Vec<String>,
    pub added: Vec<String>,
}

pub fn environment_changes(
    stored: &FranceTravailTenant,
    tenant: &FranceTravailTenant,
) -> EnvironmentChanges {
    let status = stored.status.as_ref();
    // What the cluster has: what the stored spec declares, what the operator last built, and
    // what it still holds.
    let mut before: BTreeSet<String> = stored
        .spec
        .environments
        .iter()
        .map(|e| e.name.clone())
        .collect();
    if let Some(s) = status {
        before.extend(
            s.environments
                .split(',')
                .filter(|e| !e.is_empty())
                .map(String::from),
        );
        before.extend(s.removals.iter().map(|r| r.environment.clone()));
    }
    let after: BTreeSet<String> = tenant
        .spec
        .environments
        .iter()
        .map(|e| e.name.clone())
        .collect();
    EnvironmentChanges {
        removed: before.difference(&after).cloned().collect(),
        added: after.difference(&before).cloned().collect(),
    }
}
