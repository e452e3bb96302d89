//! Access grants (CLD-14, CLD-16, CLD-17, general rules 2.4.a and 2.4.c), as pure functions of
//! the tenant and the time: the RoleBindings that must exist now, when the next right lapses,
//! which bindings nobody declared, the inventory, and what each change is journalled as.
//!
//! Checked by `controls/access.rs` (ACC-1, ACC-2, ACC-3).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding, RoleRef, Subject as RbacSubject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::{
    AccessGrant, AccessSummary, EnvironmentKind, FranceTravailTenant, GrantInForce, Role,
    annotations, labels,
};
use crate::applied::ApplyReport;
use crate::meta::object_key;
use crate::meta::{child_labels, namespace_name};

pub const ADMIN_ROLE: &str = "ft-tenant-admin";
pub const DEVELOPER_ROLE: &str = "ft-tenant-developer";
pub const VIEWER_ROLE: &str = "ft-tenant-viewer";

/// The ClusterRoles grants bind, as the chart installs them.
pub const ROLES_YAML: &str = include_str!("../../../policies/access-roles.yaml");

/// Grants expiring sooner than this are listed as a warning in the report.
pub const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(30 * 24);

/// Where a grant stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    InForce,
    Suspended,
    /// At or past its `expires` instant: it grants nothing from that instant on (2.4.c).
    Expired,
}

pub fn state(grant: &AccessGrant, now: Timestamp) -> GrantState {
    if grant.expires.0 <= now {
        GrantState::Expired
    } else if grant.suspended {
        GrantState::Suspended
    } else {
        GrantState::InForce
    }
}

/// The ClusterRole a role is bound to in an environment: developers only read production.
pub fn cluster_role(role: Role, kind: EnvironmentKind) -> &'static str {
    match (role, kind) {
        (Role::Admin, _) => ADMIN_ROLE,
        (Role::Developer, EnvironmentKind::Production) => VIEWER_ROLE,
        (Role::Developer, _) => DEVELOPER_ROLE,
        (Role::Viewer, _) => VIEWER_ROLE,
    }
}

/// A stable id for a grant, from who holds it and in which role: subject names (e-mail
/// addresses) cannot be label values, so bindings carry this instead.
pub fn grant_id(grant: &AccessGrant) -> String {
    let identity = format!(
        "{}\n{}\n{}",
        grant.subject.kind.as_str(),
        grant.subject.name,
        grant.role.as_str()
    );
    crate::digest::sha256_hex(identity.as_bytes(), 10)
}

/// `ft-<bound role>-<grant id>`. The bound ClusterRole is in the name because a RoleBinding's
/// roleRef cannot change: a grant whose role changes gets a new binding, the old one is pruned.
pub fn binding_name(grant: &AccessGrant, cluster_role: &str) -> String {
    let short = cluster_role.trim_start_matches("ft-tenant-");
    format!("ft-{short}-{}", grant_id(grant))
}

/// One RoleBinding per grant in force per environment it names.
pub fn role_bindings(tenant: &FranceTravailTenant, now: Timestamp) -> Vec<RoleBinding> {
    let mut bindings = Vec::new();
    for grant in grants_in_force(tenant, now) {
        for env in tenant
            .spec
            .environments
            .iter()
            .filter(|e| grant.environments.contains(&e.name))
        {
            let role = cluster_role(grant.role, env.kind);
            let mut labels = child_labels(tenant, env);
            labels.insert(labels::GRANT.into(), grant_id(grant));
            labels.insert(labels::ACCESS_ROLE.into(), grant.role.as_str().into());
            let annotations = BTreeMap::from([
                (
                    annotations::CONTROL.to_string(),
                    "CLD-14,CLD-16,2.4.a,2.4.c".to_string(),
                ),
                (annotations::SUBJECT.into(), grant.subject.to_string()),
                (annotations::EXPIRES.into(), grant.expires.0.to_string()),
            ]);
            bindings.push(RoleBinding {
                metadata: ObjectMeta {
                    name: Some(binding_name(grant, role)),
                    namespace: Some(namespace_name(&tenant.name_any(), &env.name)),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: role.into(),
                },
                subjects: Some(vec![RbacSubject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: grant.subject.kind.as_str().into(),
                    name: grant.subject.name.clone(),
                    namespace: None,
                }]),
            });
        }
    }
    bindings
}

/// The next instant a grant in force lapses, so the reconciler wakes exactly then.
pub fn next_expiry(tenant: &FranceTravailTenant, now: Timestamp) -> Option<Timestamp> {
    grants_in_force(tenant, now).map(|g| g.expires.0).min()
}

fn grants_in_force(
    tenant: &FranceTravailTenant,
    now: Timestamp,
) -> impl Iterator<Item = &AccessGrant> {
    tenant
        .spec
        .access
        .grants
        .iter()
        .filter(move |g| state(g, now) == GrantState::InForce)
}

/// How long the reconciler may wait before looking at the tenant again: `period`, or less when
/// a right lapses sooner, so that it is revoked at its instant, not at the next resync.
pub fn wake_after(tenant: &FranceTravailTenant, now: Timestamp, period: Duration) -> Duration {
    match next_expiry(tenant, now) {
        Some(at) => Duration::try_from(at.duration_since(now))
            .unwrap_or_default()
            .min(period),
        None => period,
    }
}

/// The rights in force, for the tenant's status.
pub fn in_force(tenant: &FranceTravailTenant, now: Timestamp) -> Vec<GrantInForce> {
    grants_in_force(tenant, now)
        .map(|g| GrantInForce {
            subject: g.subject.clone(),
            role: g.role,
            environments: g.environments.clone(),
            expires: g.expires.clone(),
        })
        .collect()
}

/// The inventory for the report: grants in force, privileged holders named (CLD-16).
pub fn summary(tenant: &FranceTravailTenant, now: Timestamp) -> AccessSummary {
    let grants = in_force(tenant, now);
    let privileged: BTreeSet<String> = grants
        .iter()
        .filter(|g| g.role == Role::Admin)
        .map(|g| g.subject.to_string())
        .collect();
    AccessSummary {
        grants_in_force: u32::try_from(grants.len()).unwrap_or(u32::MAX),
        privileged_holders: u32::try_from(privileged.len()).unwrap_or(u32::MAX),
        privileged: privileged.into_iter().collect(),
    }
}

/// Grants in force that lapse within `EXPIRY_WARNING`, soonest first.
pub fn expiring_soon(tenant: &FranceTravailTenant, now: Timestamp) -> Vec<&AccessGrant> {
    let mut soon: Vec<&AccessGrant> = grants_in_force(tenant, now)
        .filter(|g| g.expires.0.duration_since(now) < EXPIRY_WARNING)
        .collect();
    soon.sort_by_key(|g| g.expires.0);
    soon
}

/// Who a RoleBinding gives a right to that the tenant did not declare: nobody when it is one of
/// the bindings the grants want, as wanted; otherwise every subject but the namespace's own
/// service accounts, which are workload identities, not people.
pub fn undeclared_subjects(binding: &RoleBinding, declared: &[RoleBinding]) -> Vec<String> {
    let ns = binding.metadata.namespace.as_deref().unwrap_or_default();
    let wanted = declared.iter().any(|d| {
        d.metadata.namespace == binding.metadata.namespace
            && d.metadata.name == binding.metadata.name
            && d.role_ref == binding.role_ref
            && d.subjects == binding.subjects
    });
    if wanted {
        return Vec::new();
    }
    binding
        .subjects
        .iter()
        .flatten()
        .filter(|s| !(s.kind == "ServiceAccount" && s.namespace.as_deref().is_none_or(|n| n == ns)))
        .map(|s| match &s.namespace {
            Some(n) if s.kind == "ServiceAccount" => format!("{} {n}/{}", s.kind, s.name),
            _ => format!("{} {}", s.kind, s.name),
        })
        .collect()
}

/// One journal entry (CLD-28): an Event on the tenant and a structured log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessChange {
    /// The Event reason: `AccessGranted`, `AccessChanged`, `AccessRestored`, `AccessExpired`,
    /// `AccessSuspended`, `AccessRevoked` or `UndeclaredAccessRemoved`.
    pub reason: &'static str,
    pub warning: bool,
    /// The hosting rule the change answers to.
    pub rule: &'static str,
    pub subject: String,
    pub role: String,
    pub environment: String,
    pub note: String,
    /// The RoleBinding concerned, as `(namespace, name)`: the Event's related object, which
    /// also keeps the Events of different bindings apart.
    pub binding: (String, String),
}

/// What one apply pass did to the tenant's rights. `desired` are the bindings wanted at `now`;
/// `before` the tenant's RoleBindings as observed before the pass.
pub fn journal(
    tenant: &FranceTravailTenant,
    now: Timestamp,
    report: &ApplyReport,
    desired: &[RoleBinding],
    before: &[Arc<RoleBinding>],
) -> Vec<AccessChange> {
    let find_desired = |key: &str| desired.iter().find(|b| object_key(*b) == key);
    let find_before = |key: &str| before.iter().find(|b| object_key(&***b) == key);
    let mut changes = Vec::new();

    for key in report.created.iter().filter(|k| is_binding(k)) {
        if let Some(b) = find_desired(key) {
            changes.push(entry(
                key,
                b,
                "AccessGranted",
                false,
                "CLD-16",
                |who, role, env| {
                    format!(
                        "granted {role} ({}) on {env} to {who} until {}",
                        b.role_ref.name,
                        annotation(b, annotations::EXPIRES)
                    )
                },
            ));
        }
    }
    for key in report.restored.iter().filter(|k| is_binding(k)) {
        let Some(b) = find_desired(key) else { continue };
        let old_expiry = find_before(key).map(|o| annotation(o, annotations::EXPIRES));
        let new_expiry = annotation(b, annotations::EXPIRES);
        changes.push(match old_expiry {
            Some(old) if !old.is_empty() && old != new_expiry => entry(
                key,
                b,
                "AccessChanged",
                false,
                "CLD-16",
                |who, role, env| {
                    format!(
                        "the {role} right of {who} on {env} now expires at {new_expiry} (was {old})"
                    )
                },
            ),
            _ => entry(
                key,
                b,
                "AccessRestored",
                true,
                "CLD-16",
                |who, role, env| {
                    format!(
                        "restored the {role} binding of {who} on {env}, changed or deleted by hand"
                    )
                },
            ),
        });
    }
    for key in report.pruned.iter().filter(|k| is_binding(k)) {
        let Some(b) = find_before(key) else { continue };
        let ours = b
            .labels()
            .get(labels::MANAGED_BY)
            .is_some_and(|m| m == labels::MANAGED_BY_VALUE)
            && b.labels().contains_key(labels::GRANT);
        if !ours {
            changes.push(entry(key, b, "UndeclaredAccessRemoved", true, "CLD-14", |_, _, _| {
                format!(
                    "deleted {key}, which gave {} to {} without a declared grant (access.pruneUndeclared)",
                    b.role_ref.name,
                    undeclared_subjects(b, desired).join(", ")
                )
            }));
            continue;
        }
        let grant = tenant
            .spec
            .access
            .grants
            .iter()
            .find(|g| Some(&grant_id(g)) == b.labels().get(labels::GRANT));
        let (reason, rule, why) = match grant.map(|g| state(g, now)) {
            Some(GrantState::Expired) => ("AccessExpired", "2.4.c", "the grant expired"),
            Some(GrantState::Suspended) => ("AccessSuspended", "CLD-16", "the grant is suspended"),
            Some(GrantState::InForce) => (
                "AccessRevoked",
                "CLD-16",
                "the grant no longer covers this environment in this role",
            ),
            None => ("AccessRevoked", "CLD-14", "the grant was removed"),
        };
        changes.push(entry(key, b, reason, false, rule, |who, role, env| {
            format!("revoked the {role} right of {who} on {env}: {why}")
        }));
    }
    changes
}

/// One journal entry about the binding `key`, its note written from the subject, the role and
/// the environment.
fn entry(
    key: &str,
    binding: &RoleBinding,
    reason: &'static str,
    warning: bool,
    rule: &'static str,
    note: impl FnOnce(&str, &str, &str) -> String,
) -> AccessChange {
    let (subject, role, environment) = describe(binding);
    AccessChange {
        note: note(&subject, &role, &environment),
        reason,
        warning,
        rule,
        subject,
        role,
        environment,
        binding: split(key),
    }
}

/// `RoleBinding/<namespace>/<name>` into its namespace and name.
fn split(key: &str) -> (String, String) {
    let mut parts = key.splitn(3, '/').skip(1);
    (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    )
}

fn is_binding(key: &str) -> bool {
    key.starts_with("RoleBinding/")
}

fn annotation(binding: &RoleBinding, key: &str) -> String {
    binding.annotations().get(key).cloned().unwrap_or_default()
}

/// Subject, role and environment of a binding, from what the operator wrote on it, or from
/// the binding itself when it was made by hand.
fn describe(binding: &RoleBinding) -> (String, String, String) {
    let subject = binding
        .annotations()
        .get(annotations::SUBJECT)
        .cloned()
        .unwrap_or_else(|| {
            binding
                .subjects
                .iter()
                .flatten()
                .map(|s| format!("{} {}", s.kind, s.name))
                .collect::<Vec<_>>()
                .join(", ")
        });
    let role = binding
        .labels()
        .get(labels::ACCESS_ROLE)
        .cloned()
        .unwrap_or_else(|| binding.role_ref.name.clone());
    let environment = binding
        .labels()
        .get(labels::ENVIRONMENT)
        .cloned()
        .or_else(|| binding.namespace())
        .unwrap_or_default();
    (subject, role, environment)
}

/// The ClusterRoles of `ROLES_YAML`.
pub fn cluster_roles() -> Result<Vec<ClusterRole>, serde_saphyr::Error> {
    let roles: Vec<Option<ClusterRole>> = serde_saphyr::from_multiple(ROLES_YAML)?;
    Ok(roles.into_iter().flatten().collect())
}
