//! The operator's own permissions, least privilege: exactly the verbs and resources the code
//! calls, nothing with `*`, no `escalate`, `bind` only on the ClusterRoles access grants bind,
//! and Secrets only in its own namespace, by name, never listed or watched. `ft-operator rbac`
//! prints them; a test checks every call the reconciler makes against them, and the e2e suite
//! runs the operator under them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::access::{ADMIN_ROLE, DEVELOPER_ROLE, VIEWER_ROLE};
use crate::api::{GROUP, labels};

const WATCH: &[&str] = &["list", "watch"];
/// Server-side apply is `patch`, and `create` when the object does not exist yet; pruning is
/// `delete`.
const OWN: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// What the operator does across the cluster.
pub fn cluster_rules() -> Vec<PolicyRule> {
    let mut bind = rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"]);
    bind.resource_names = Some(vec![
        ADMIN_ROLE.into(),
        DEVELOPER_ROLE.into(),
        VIEWER_ROLE.into(),
    ]);
    vec![
        // Its API: tenants (finalizer and status) and reports.
        rule(
            &[GROUP],
            &["francetravailtenants"],
            &["get", "list", "watch", "patch"],
        ),
        rule(&[GROUP], &["francetravailtenants/status"], &["patch"]),
        rule(&[GROUP], &["compliancereports"], OWN),
        rule(&[GROUP], &["compliancereports/status"], &["patch"]),
        // The children of each tenant.
        rule(&[""], &["namespaces", "resourcequotas", "limitranges"], OWN),
        rule(&["networking.k8s.io"], &["networkpolicies"], OWN),
        rule(&["rbac.authorization.k8s.io"], &["rolebindings"], OWN),
        bind,
        rule(&["storage.k8s.io"], &["storageclasses"], OWN),
        rule(
            &["admissionregistration.k8s.io"],
            &[
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
                "mutatingadmissionpolicies",
                "mutatingadmissionpolicybindings",
            ],
            OWN,
        ),
        // The placement webhook's configuration, where policies cannot confine pods.
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            &["create", "patch"],
        ),
        // What the controls judge.
        rule(
            &[""],
            &[
                "pods",
                "persistentvolumeclaims",
                "persistentvolumes",
                "nodes",
            ],
            WATCH,
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

/// What the operator does in its own namespace: its Lease, the tenant keys (by name only), the
/// shredding records, and its pod's leader label.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update", "patch", "delete"],
        ),
        rule(&[""], &["secrets"], &["get", "create", "delete"]),
        rule(&[""], &["configmaps"], &["create"]),
        // Its own pod's leader label, which routes the webhook Service to the leader.
        rule(&[""], &["pods"], &["patch"]),
    ]
}

/// What the operator does in Velero's namespace: each environment's Schedule, the restore tests
/// and exports it starts, and the locations and backups it reads (CLD-26, CLD-73).
pub fn velero_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["velero.io"], &["schedules"], OWN),
        rule(&["velero.io"], &["backups"], &["list", "watch", "create"]),
        rule(
            &["velero.io"],
            &["restores"],
            &["list", "watch", "create", "delete"],
        ),
        rule(&["velero.io"], &["backupstoragelocations"], WATCH),
    ]
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(BTreeMap::from([(
            labels::MANAGED_BY.into(),
            labels::MANAGED_BY_VALUE.into(),
        )])),
        ..Default::default()
    }
}

/// The ServiceAccount, ClusterRole, Roles (its namespace's and Velero's) and their bindings for
/// an operator running as `service_account` in `namespace`, as JSON values in the order to
/// apply them. Velero's namespace must exist.
pub fn objects(
    namespace: &str,
    service_account: &str,
    velero_namespace: &str,
) -> Vec<serde_json::Value> {
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: service_account.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    };
    let role_ref = |kind: &str| RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: service_account.into(),
    };
    let values = [
        serde_json::to_value(ServiceAccount {
            metadata: meta(service_account, Some(namespace)),
            ..Default::default()
        }),
        serde_json::to_value(ClusterRole {
            metadata: meta(service_account, None),
            rules: Some(cluster_rules()),
            aggregation_rule: None,
        }),
        serde_json::to_value(ClusterRoleBinding {
            metadata: meta(service_account, None),
            role_ref: role_ref("ClusterRole"),
            subjects: Some(vec![subject.clone()]),
        }),
        serde_json::to_value(Role {
            metadata: meta(service_account, Some(namespace)),
            rules: Some(namespace_rules()),
        }),
        serde_json::to_value(RoleBinding {
            metadata: meta(service_account, Some(namespace)),
            role_ref: role_ref("Role"),
            subjects: Some(vec![subject.clone()]),
        }),
        serde_json::to_value(Role {
            metadata: meta(service_account, Some(velero_namespace)),
            rules: Some(velero_rules()),
        }),
        serde_json::to_value(RoleBinding {
            metadata: meta(service_account, Some(velero_namespace)),
            role_ref: role_ref("Role"),
            subjects: Some(vec![subject]),
        }),
    ];
    let kinds = [
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ];
    values
        .into_iter()
        .zip(kinds)
        .filter_map(|(value, (api_version, kind))| {
            let mut value = value.ok()?;
            value["apiVersion"] = api_version.into();
            value["kind"] = kind.into();
            Some(value)
        })
        .collect()
}

/// Whether `rules` allow `verb` on `resource` of `group`, optionally by name.
pub fn allows(
    rules: &[PolicyRule],
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    rules.iter().any(|r| {
        let has = |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == v);
        r.verbs.iter().any(|v| v == verb)
            && has(&r.api_groups, group)
            && has(&r.resources, resource)
            && match &r.resource_names {
                None => true,
                Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
            }
    })
}
