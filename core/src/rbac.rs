//! The operator's own permissions, least privilege: exactly the verbs and resources the code
//! calls, nothing with `*`, no `escalate`, `bind` only on the ClusterRoles access grants bind,
//! and Secrets only in its own namespace, by name, never listed or watched. `ft-operator rbac`
//! prints them; a test checks every call the reconciler makes against them, and the e2e suite
//! runs the operator under them.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::access::{ADMIN_ROLE, DEVELOPER_ROLE, VIEWER_ROLE};
use crate::api::{GROUP, labels};
use crate::placement::review::WEBHOOK_CONFIGURATION;

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

/// What the operator does across the cluster. `webhook`: it also registers its placement
/// webhook, on clusters without MutatingAdmissionPolicies (the limits policy holds it to its
/// own configuration).
pub fn cluster_rules(webhook: bool) -> Vec<PolicyRule> {
    let mut bind = rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"]);
    bind.resource_names = Some(vec![
        ADMIN_ROLE.into(),
        DEVELOPER_ROLE.into(),
        VIEWER_ROLE.into(),
    ]);
    let mut rules = vec![
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
        // What the cluster-wide admission policies enforce in each tenant namespace.
        rule(&[GROUP], &["environmentpolicies"], OWN),
        // The cluster-wide admission policies themselves: installed with the chart, read only.
        rule(
            &["admissionregistration.k8s.io"],
            &[
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
                "mutatingadmissionpolicies",
                "mutatingadmissionpolicybindings",
            ],
            &["get", "list", "watch"],
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
        // The control results as OpenReports Reports, where the cluster serves them.
        rule(&["openreports.io"], &["reports"], &["create", "patch"]),
    ];
    if webhook {
        // The placement webhook's configuration, where policies cannot confine pods.
        rules.push(rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            &["create", "patch"],
        ));
    }
    rules
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
/// and exports it starts, the locations and backups it reads (CLD-26, CLD-73), and the
/// deletion of a shredded tenant's backups (CLD-47).
pub fn velero_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["velero.io"], &["schedules"], OWN),
        rule(&["velero.io"], &["backups"], &["list", "watch", "create"]),
        rule(&["velero.io"], &["deletebackuprequests"], &["create"]),
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
    webhook: bool,
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
            rules: Some(cluster_rules(webhook)),
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

/// The name of the policy that holds the operator to tenant namespaces, and of its binding.
pub const LIMITS: &str = "ft-operator-limits";

/// What RBAC cannot say, having no label selectors: a ValidatingAdmissionPolicy that holds the
/// operator's own ServiceAccount to tenant namespaces. Its namespaces are those labelled as a
/// tenant's (the label already there before a change or a deletion); its namespaced children
/// only in such namespaces; RoleBindings only to the three access ClusterRoles; StorageClasses
/// only a tenant's own; Velero objects only of its tenant's namespaces, and deletions only of
/// its own backups (a tenant's schedules' and the exports); the webhook
/// configuration only its own. Whoever holds the operator's token gains no power over
/// `kube-system`, Velero's or the operator's namespace, nor over any pod outside tenants.
pub fn limits(
    namespace: &str,
    service_account: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    const TENANT: &str = "'hosting.francetravail.fr/tenant'";
    let rules = |group: &str, resources: &[&str]| NamedRuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec!["*".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        ..Default::default()
    };
    let check = |expression: String, message: &str| Validation {
        expression,
        message: Some(format!("{service_account}: {message}")),
        reason: Some("Forbidden".into()),
        ..Default::default()
    };
    // The object as it is after the request, or before a deletion; and as it was before.
    let after = "(request.operation == 'DELETE' ? oldObject : object)";
    let labelled =
        |o: &str| format!("(has({o}.metadata.labels) && {TENANT} in {o}.metadata.labels)");
    let tenant_of = |o: &str| format!("{o}.metadata.labels[{TENANT}]");
    let resource = "request.resource.resource";
    let velero_namespaces = |list: &str| {
        format!(
            "(has({list}) && size({list}) > 0 && {list}.all(n, n.startsWith({} + '-')))",
            tenant_of(after)
        )
    };
    let validations = vec![
        check(
            format!(
                "{resource} != 'namespaces' || ({} && (request.operation == 'CREATE' || {}))",
                labelled(after),
                labelled("oldObject")
            ),
            "only namespaces labelled as a tenant's, the label already there before a change",
        ),
        check(
            format!(
                "!({resource} in ['resourcequotas', 'limitranges', 'networkpolicies', 'rolebindings', 'environmentpolicies', 'reports']) || (namespaceObject != null && {})",
                labelled("namespaceObject")
            ),
            "only in tenant namespaces",
        ),
        check(
            format!(
                "{resource} != 'rolebindings' || request.operation == 'DELETE' || (object.roleRef.kind == 'ClusterRole' && object.roleRef.name in ['{ADMIN_ROLE}', '{DEVELOPER_ROLE}', '{VIEWER_ROLE}'])"
            ),
            "RoleBindings only to the access ClusterRoles",
        ),
        check(
            format!(
                "{resource} != 'storageclasses' || ({} && {after}.metadata.name == 'ft-' + {} + '-encrypted')",
                labelled(after),
                tenant_of(after)
            ),
            "only a tenant's own StorageClass",
        ),
        check(
            format!(
                "!({resource} in ['backups', 'restores']) || ({} && {})",
                labelled(after),
                velero_namespaces(&format!("{after}.spec.includedNamespaces"))
            ),
            "Velero backups and restores only of the namespaces of the tenant they are labelled with",
        ),
        check(
            format!(
                "{resource} != 'schedules' || ({} && {})",
                labelled(after),
                velero_namespaces(&format!("{after}.spec.template.includedNamespaces"))
            ),
            "Velero schedules only of the namespaces of the tenant they are labelled with",
        ),
        check(
            format!(
                "{resource} != 'restores' || request.operation == 'DELETE' || !has(object.spec.namespaceMapping) || object.spec.namespaceMapping.all(k, object.spec.namespaceMapping[k].startsWith({} + '-'))",
                tenant_of("object")
            ),
            "Velero restores only into the tenant's own namespaces",
        ),
        check(
            format!(
                "{resource} != 'deletebackuprequests' || ({} && has({after}.spec.backupName) && ({after}.spec.backupName.startsWith('ft-' + {} + '-') || {after}.spec.backupName.matches('^ft-export-[0-9a-f]{{10}}-')))",
                labelled(after),
                tenant_of(after)
            ),
            "Velero backup deletions only of a backup of the tenant they are labelled with, or of an export",
        ),
        check(
            format!(
                "{resource} != 'mutatingwebhookconfigurations' || {after}.metadata.name == '{WEBHOOK_CONFIGURATION}'"
            ),
            "only its own webhook configuration",
        ),
    ];
    let mut meta = ObjectMeta {
        name: Some(LIMITS.into()),
        ..Default::default()
    };
    meta.labels = Some(BTreeMap::from([(
        labels::MANAGED_BY.into(),
        labels::MANAGED_BY_VALUE.into(),
    )]));
    (
        ValidatingAdmissionPolicy {
            metadata: meta.clone(),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![
                        rules("", &["namespaces", "resourcequotas", "limitranges"]),
                        rules("networking.k8s.io", &["networkpolicies"]),
                        rules("rbac.authorization.k8s.io", &["rolebindings"]),
                        rules("storage.k8s.io", &["storageclasses"]),
                        rules(GROUP, &["environmentpolicies"]),
                        rules("openreports.io", &["reports"]),
                        rules(
                            "velero.io",
                            &["backups", "restores", "schedules", "deletebackuprequests"],
                        ),
                        rules(
                            "admissionregistration.k8s.io",
                            &["mutatingwebhookconfigurations"],
                        ),
                    ]),
                    ..Default::default()
                }),
                match_conditions: Some(vec![MatchCondition {
                    name: "the-operator".into(),
                    expression: format!(
                        "request.userInfo.username == 'system:serviceaccount:{namespace}:{service_account}'"
                    ),
                }]),
                validations: Some(validations),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: meta,
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: LIMITS.into(),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}

/// The limits policy with placeholders for the chart, which puts in the release's namespace
/// and ServiceAccount: `charts/ft-operator/files/operator-limits.yaml`, checked by a test.
pub fn limits_template() -> Result<String, serde_saphyr::SerializeError> {
    let (policy, binding) = limits(NAMESPACE_PLACEHOLDER, SERVICE_ACCOUNT_PLACEHOLDER);
    Ok(format!(
        "---\n{}---\n{}",
        serde_saphyr::to_string(&policy)?,
        serde_saphyr::to_string(&binding)?
    ))
}

pub const NAMESPACE_PLACEHOLDER: &str = "FT_OPERATOR_NAMESPACE";
pub const SERVICE_ACCOUNT_PLACEHOLDER: &str = "FT_OPERATOR_SERVICE_ACCOUNT";
