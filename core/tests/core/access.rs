//! Access grants: the bindings they render, when the operator wakes to revoke them, the
//! inventory, the journal, and the ClusterRoles they bind.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ft_core::access::{
    ADMIN_ROLE, DEVELOPER_ROLE, VIEWER_ROLE, cluster_roles, expiring_soon, in_force, journal,
    next_expiry, role_bindings, summary, wake_after,
};
use ft_core::api::{FranceTravailTenant, Role, annotations, labels};
use ft_core::applied::ApplyReport;
use ft_core::status::{Outcome, next_status};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

fn now() -> Timestamp {
    "2026-11-22T12:00:00Z".parse().expect("a valid timestamp")
}

fn tenant() -> FranceTravailTenant {
    common::tenant("examples/tenant.yaml")
}

/// `namespace/name → (ClusterRole, subject kind and name)` of every binding.
fn rendered(bindings: &[RoleBinding]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = bindings
        .iter()
        .map(|b| {
            let subjects: Vec<String> = b
                .subjects
                .iter()
                .flatten()
                .map(|s| format!("{} {}", s.kind, s.name))
                .collect();
            (
                format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any()),
                b.role_ref.name.clone(),
                subjects.join(","),
            )
        })
        .collect();
    out.sort();
    out
}

fn triple(key: &str, role: &str, subject: &str) -> (String, String, String) {
    (key.into(), role.into(), subject.into())
}

#[test]
fn each_grant_in_force_is_bound_once_per_environment_and_developers_only_read_production() {
    // Ids: the first ten hex digits of SHA-256("<kind>\n<name>\n<role>"), from `sha256sum`.
    assert_eq!(
        rendered(&role_bindings(&tenant(), now())),
        [
            triple(
                "offres-emploi-dev/ft-developer-7d7b824377",
                DEVELOPER_ROLE,
                "Group offres-emploi-developpeurs"
            ),
            triple(
                "offres-emploi-prod/ft-admin-172aef385e",
                ADMIN_ROLE,
                "User claire.martin@example.org"
            ),
            triple(
                "offres-emploi-prod/ft-viewer-7d7b824377",
                VIEWER_ROLE,
                "Group offres-emploi-developpeurs"
            ),
        ]
    );
}

#[test]
fn bindings_carry_the_grant_for_audit_and_pruning() {
    let bindings = role_bindings(&tenant(), now());
    let admin = bindings
        .iter()
        .find(|b| b.role_ref.name == ADMIN_ROLE)
        .expect("the administrator's binding");
    let labels_of = admin.labels();
    assert_eq!(labels_of[labels::TENANT], "offres-emploi");
    assert_eq!(labels_of[labels::ENVIRONMENT], "prod");
    assert_eq!(labels_of[labels::ACCESS_ROLE], "admin");
    assert_eq!(labels_of[labels::GRANT], "172aef385e");
    assert_eq!(labels_of[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
    assert_eq!(
        admin.annotations()[annotations::SUBJECT],
        "User claire.martin@example.org"
    );
    assert_eq!(
        admin.annotations()[annotations::EXPIRES],
        "2027-03-31T00:00:00Z"
    );
    assert_eq!(admin.role_ref.kind, "ClusterRole");
    let subject = &admin.subjects.as_ref().expect("a subject")[0];
    assert_eq!(
        subject.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(subject.namespace, None);
}

#[test]
fn expired_and_suspended_grants_are_not_bound() {
    let mut t = tenant();
    t.spec.access.grants[0].expires = Time(now());
    t.spec.access.grants[1].suspended = true;
    assert!(role_bindings(&t, now()).is_empty());

    // One second before its expiry the developers' grant is still bound, in both environments.
    let before = now() - SignedDuration::from_secs(1);
    let mut t = tenant();
    t.spec.access.grants[0].expires = Time(now());
    assert_eq!(
        rendered(&role_bindings(&t, before))
            .into_iter()
            .filter(|(_, _, s)| s.starts_with("Group"))
            .count(),
        2
    );
}

#[test]
fn a_role_change_renames_the_binding_since_a_role_ref_cannot_change() {
    let mut t = tenant();
    t.spec.access.grants[1].role = Role::Viewer;
    let names: BTreeSet<String> = role_bindings(&t, now())
        .iter()
        .map(|b| b.name_any())
        .collect();
    assert!(!names.contains("ft-admin-172aef385e"), "{names:?}");
    // SHA-256("User\nclaire.martin@example.org\nviewer") starts with 48f403633b.
    assert!(names.contains("ft-viewer-48f403633b"), "{names:?}");
}

#[test]
fn the_next_wake_up_is_the_earliest_expiry_of_a_grant_in_force() {
    let mut t = tenant();
    let soon = now() + SignedDuration::from_secs(5);
    let later = now() + SignedDuration::from_secs(50);
    t.spec.access.grants[0].expires = Time(later);
    t.spec.access.grants[1].expires = Time(soon);
    assert_eq!(next_expiry(&t, now()), Some(soon));

    // A suspended grant grants nothing, so its expiry is no reason to wake.
    t.spec.access.grants[1].suspended = true;
    assert_eq!(next_expiry(&t, now()), Some(later));

    // Once the instant is reached, the grant is expired and the next one counts.
    t.spec.access.grants[1].suspended = false;
    assert_eq!(next_expiry(&t, soon), Some(later));
    assert_eq!(next_expiry(&t, later), None);
}

#[test]
fn the_reconciler_waits_until_the_earliest_expiry_and_never_longer_than_its_period() {
    let period = Duration::from_secs(60);
    let mut t = tenant();
    assert_eq!(wake_after(&t, now(), period), period);
    t.spec.access.grants[1].expires = Time(now() + SignedDuration::from_millis(2500));
    assert_eq!(wake_after(&t, now(), period), Duration::from_millis(2500));
    // A grant lapsing after the period does not delay the resync.
    t.spec.access.grants[1].expires = Time(now() + SignedDuration::from_secs(600));
    assert_eq!(wake_after(&t, now(), period), period);
}

#[test]
fn the_inventory_lists_rights_in_force_and_names_privileged_holders() {
    let mut t = tenant();
    let listed = in_force(&t, now());
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].subject.name, "claire.martin@example.org");
    assert_eq!(listed[1].environments, ["prod"]);

    let counted = summary(&t, now());
    assert_eq!(counted.grants_in_force, 2);
    assert_eq!(counted.privileged_holders, 1);
    assert_eq!(counted.privileged, ["User claire.martin@example.org"]);

    t.spec.access.grants[1].suspended = true;
    let counted = summary(&t, now());
    assert_eq!(
        (counted.grants_in_force, counted.privileged_holders),
        (1, 0)
    );

    // The status carries the same list.
    let status = next_status(&t, Outcome::Applied, None, &Time(now()));
    assert_eq!(status.grants.len(), 1);
    assert_eq!(status.grants[0].subject.name, "offres-emploi-developpeurs");
}

#[test]
fn grants_expiring_within_thirty_days_are_listed_soonest_first() {
    let mut t = tenant();
    assert!(expiring_soon(&t, now()).is_empty());
    t.spec.access.grants[0].expires = Time(now() + SignedDuration::from_hours(24 * 29));
    t.spec.access.grants[1].expires = Time(now() + SignedDuration::from_hours(24));
    let soon: Vec<&str> = expiring_soon(&t, now())
        .iter()
        .map(|g| g.subject.name.as_str())
        .collect();
    assert_eq!(
        soon,
        ["claire.martin@example.org", "offres-emploi-developpeurs"]
    );
}

fn key(b: &RoleBinding) -> String {
    format!(
        "RoleBinding/{}/{}",
        b.namespace().unwrap_or_default(),
        b.name_any()
    )
}

#[test]
fn the_journal_names_subject_role_environment_and_rule_of_each_change() {
    let t = tenant();
    let bound = role_bindings(&t, now());
    let admin = bound
        .iter()
        .find(|b| b.role_ref.name == ADMIN_ROLE)
        .expect("admin binding")
        .clone();

    // First pass: every binding is new.
    let created = ApplyReport {
        created: bound.iter().map(key).collect(),
        ..Default::default()
    };
    let changes = journal(&t, now(), &created, &bound, &[]);
    assert_eq!(changes.len(), 3);
    let granted = changes
        .iter()
        .find(|c| c.subject == "User claire.martin@example.org")
        .expect("the administrator's grant is journalled");
    assert_eq!(
        (
            granted.reason,
            granted.rule,
            granted.role.as_str(),
            granted.environment.as_str()
        ),
        ("AccessGranted", "CLD-16", "admin", "prod")
    );
    assert!(!granted.warning);
    assert!(
        granted.note.contains("until 2027-03-31T00:00:00Z"),
        "{}",
        granted.note
    );

    // The grant expired: its binding is pruned, journalled as an expiry under 2.4.c.
    let mut expired = t.clone();
    expired.spec.access.grants[1].expires = Time(now());
    let pruned = ApplyReport {
        pruned: vec![key(&admin)],
        ..Default::default()
    };
    let before = [Arc::new(admin.clone())];
    let changes = journal(&expired, now(), &pruned, &[], &before);
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.reason, c.rule))
            .collect::<Vec<_>>(),
        [("AccessExpired", "2.4.c")]
    );

    // Suspended, or removed from the spec.
    let mut suspended = t.clone();
    suspended.spec.access.grants[1].suspended = true;
    assert_eq!(
        journal(&suspended, now(), &pruned, &[], &before)[0].reason,
        "AccessSuspended"
    );
    let mut removed = t.clone();
    removed.spec.access.grants.remove(1);
    let revoked = &journal(&removed, now(), &pruned, &[], &before)[0];
    assert_eq!((revoked.reason, revoked.rule), ("AccessRevoked", "CLD-14"));

    // The expiry moved: the binding is rewritten, journalled as a change, not as drift.
    let mut extended = t.clone();
    extended.spec.access.grants[1].expires = Time("2027-12-31T00:00:00Z".parse().expect("time"));
    let rebound = role_bindings(&extended, now());
    let restored = ApplyReport {
        restored: vec![key(&admin)],
        ..Default::default()
    };
    let changed = &journal(&extended, now(), &restored, &rebound, &before)[0];
    assert_eq!(changed.reason, "AccessChanged");
    assert!(
        changed.note.contains("2027-12-31T00:00:00Z") && changed.note.contains("was 2027-03-31"),
        "{}",
        changed.note
    );

    // Same expiry, rewritten anyway: someone edited it by hand.
    let redone = &journal(&t, now(), &restored, &bound, &before)[0];
    assert_eq!((redone.reason, redone.warning), ("AccessRestored", true));
}

#[test]
fn a_binding_made_by_hand_and_deleted_is_journalled_as_undeclared() {
    let by_hand: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "debug", "namespace": "offres-emploi-prod"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "User", "name": "mallory@example.org"}]
    }))
    .expect("a RoleBinding");
    let report = ApplyReport {
        pruned: vec!["RoleBinding/offres-emploi-prod/debug".into()],
        ..Default::default()
    };
    let changes = journal(&tenant(), now(), &report, &[], &[Arc::new(by_hand)]);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(
        (c.reason, c.rule, c.warning),
        ("UndeclaredAccessRemoved", "CLD-14", true)
    );
    assert!(
        c.note.contains("edit to User mallory@example.org"),
        "{}",
        c.note
    );
}

// -------------------------------------------------------------------------------------------
// The ClusterRoles grants bind (policies/access-roles.yaml)
// -------------------------------------------------------------------------------------------

fn role(roles: &[ClusterRole], name: &str) -> ClusterRole {
    roles
        .iter()
        .find(|r| r.name_any() == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name}"))
        .clone()
}

/// Every `(group, resource, verb)` a role allows.
fn allowed(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

fn allows(role: &ClusterRole, group: &str, resource: &str, verb: &str) -> bool {
    allowed(role).contains(&(group.into(), resource.into(), verb.into()))
}

#[test]
fn the_three_roles_tell_read_update_and_execute_apart() {
    let roles = cluster_roles().expect("policies/access-roles.yaml parses");
    let names: BTreeSet<String> = roles.iter().map(|r| r.name_any()).collect();
    assert_eq!(
        names,
        BTreeSet::from([ADMIN_ROLE.into(), DEVELOPER_ROLE.into(), VIEWER_ROLE.into()])
    );
    let (viewer, developer, admin) = (
        role(&roles, VIEWER_ROLE),
        role(&roles, DEVELOPER_ROLE),
        role(&roles, ADMIN_ROLE),
    );

    // Read only, secrets excepted.
    for (_, _, verb) in allowed(&viewer) {
        assert!(
            ["get", "list", "watch"].contains(&verb.as_str()),
            "viewer may {verb}"
        );
    }
    assert!(allows(&viewer, "", "pods", "list"));
    assert!(!allows(&viewer, "", "secrets", "get"));
    assert!(!allows(&viewer, "", "pods/exec", "create"));

    // Update and execute.
    assert!(allows(&developer, "apps", "deployments", "update"));
    assert!(allows(&developer, "", "pods/exec", "create"));
    assert!(!allows(&developer, "", "serviceaccounts", "create"));

    // The privileged role holds everything the developer does, and identities.
    let (dev, adm) = (allowed(&developer), allowed(&admin));
    assert!(
        dev.is_subset(&adm),
        "missing from admin: {:?}",
        dev.difference(&adm)
    );
    assert!(allows(&admin, "", "serviceaccounts", "create"));
}

#[test]
fn no_role_can_undo_the_isolation_or_grant_itself_more() {
    let roles = cluster_roles().expect("policies/access-roles.yaml parses");
    let writes = ["create", "update", "patch", "delete", "deletecollection"];
    for r in &roles {
        for (group, resource, verb) in allowed(r) {
            let name = r.name_any();
            assert!(
                group != "*" && resource != "*" && verb != "*",
                "{name}: wildcard"
            );
            assert!(
                !["bind", "escalate", "impersonate"].contains(&verb.as_str()),
                "{name} may {verb} {resource}"
            );
            let guarded = [
                "networkpolicies",
                "resourcequotas",
                "limitranges",
                "roles",
                "rolebindings",
                "namespaces",
            ];
            assert!(
                !(guarded.contains(&resource.as_str()) && writes.contains(&verb.as_str())),
                "{name} may {verb} {resource}"
            );
        }
        assert!(r.aggregation_rule.is_none(), "{}: aggregated", r.name_any());
    }
}
