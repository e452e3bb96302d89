//! The operator's own RBAC is least privilege by construction: no wildcard, no escalate, `bind`
//! only on the ClusterRoles grants bind, and Secrets only in its own namespace, by name. That it
//! is also enough is shown by `e2e/tests/rbac.rs`, which runs the operator under it.

use ft_core::access::{ADMIN_ROLE, DEVELOPER_ROLE, VIEWER_ROLE};
use ft_core::rbac::{allows, cluster_rules, namespace_rules, objects, velero_rules};

#[test]
fn no_wildcard_no_escalate_no_impersonate() {
    for rule in cluster_rules(true)
        .iter()
        .chain(namespace_rules().iter())
        .chain(velero_rules().iter())
    {
        for list in [&rule.api_groups, &rule.resources] {
            assert!(!list.iter().flatten().any(|v| v == "*"), "{rule:?}");
        }
        for verb in &rule.verbs {
            assert!(
                !["*", "escalate", "impersonate"].contains(&verb.as_str()),
                "{rule:?}"
            );
        }
    }
}

#[test]
fn bind_only_on_the_roles_access_grants_bind() {
    let rules = cluster_rules(true);
    for role in [ADMIN_ROLE, DEVELOPER_ROLE, VIEWER_ROLE] {
        assert!(allows(
            &rules,
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            Some(role)
        ));
    }
    assert!(!allows(
        &rules,
        "bind",
        "rbac.authorization.k8s.io",
        "clusterroles",
        Some("cluster-admin")
    ));
    assert!(!allows(
        &rules,
        "bind",
        "rbac.authorization.k8s.io",
        "clusterroles",
        None
    ));
    assert!(!allows(
        &rules,
        "create",
        "rbac.authorization.k8s.io",
        "clusterroles",
        None
    ));
}

#[test]
fn secrets_only_in_its_own_namespace_by_name() {
    let cluster = cluster_rules(true);
    for verb in ["get", "list", "watch", "create", "delete"] {
        assert!(
            !allows(&cluster, verb, "", "secrets", None),
            "cluster-wide {verb}"
        );
    }
    let own = namespace_rules();
    for verb in ["get", "create", "delete"] {
        assert!(allows(&own, verb, "", "secrets", None), "{verb}");
    }
    for verb in ["list", "watch", "update", "patch"] {
        assert!(!allows(&own, verb, "", "secrets", None), "{verb}");
    }
}

#[test]
fn what_the_reconciler_writes_is_allowed() {
    let rules = cluster_rules(true);
    for (group, resource) in [
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
        ("", "resourcequotas"),
        ("", "limitranges"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("storage.k8s.io", "storageclasses"),
        ("hosting.francetravail.fr", "environmentpolicies"),
        ("hosting.francetravail.fr", "compliancereports"),
    ] {
        for verb in ["create", "patch", "delete"] {
            assert!(
                allows(&rules, verb, group, resource, None),
                "{verb} {resource}"
            );
        }
    }
    // What it only reads.
    for resource in [
        "pods",
        "nodes",
        "persistentvolumes",
        "persistentvolumeclaims",
    ] {
        assert!(allows(&rules, "watch", "", resource, None));
        assert!(!allows(&rules, "patch", "", resource, None), "{resource}");
    }
}

#[test]
fn the_admission_policies_are_read_never_written() {
    let rules = cluster_rules(true);
    for resource in [
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingadmissionpolicies",
        "mutatingadmissionpolicybindings",
    ] {
        assert!(allows(
            &rules,
            "watch",
            "admissionregistration.k8s.io",
            resource,
            None
        ));
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            assert!(
                !allows(&rules, verb, "admissionregistration.k8s.io", resource, None),
                "{verb} {resource}"
            );
        }
    }
    // Nor a webhook on anything but pods: no validating webhook configuration at all.
    for verb in ["create", "patch", "delete"] {
        assert!(
            !allows(
                &rules,
                verb,
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                None
            ),
            "{verb}"
        );
    }
}

#[test]
fn no_webhook_configuration_is_written_where_policies_confine_pods() {
    for verb in ["create", "patch", "update", "delete"] {
        assert!(
            !allows(
                &cluster_rules(false),
                verb,
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                None
            ),
            "{verb}"
        );
    }
    assert!(allows(
        &cluster_rules(true),
        "create",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None
    ));
}

#[test]
fn velero_objects_only_in_velero_namespace_and_backups_never_deleted() {
    let cluster = cluster_rules(true);
    for resource in ["schedules", "backups", "restores", "backupstoragelocations"] {
        for verb in ["list", "create", "delete"] {
            assert!(
                !allows(&cluster, verb, "velero.io", resource, None),
                "cluster-wide {verb} {resource}"
            );
        }
    }
    let velero = velero_rules();
    for verb in ["create", "patch", "delete", "watch"] {
        assert!(
            allows(&velero, verb, "velero.io", "schedules", None),
            "{verb}"
        );
    }
    assert!(allows(&velero, "create", "velero.io", "restores", None));
    assert!(allows(&velero, "create", "velero.io", "backups", None));
    // Backups are Velero's to expire, and locations the platform team's to manage.
    for verb in ["delete", "patch", "update"] {
        assert!(
            !allows(&velero, verb, "velero.io", "backups", None),
            "{verb}"
        );
        assert!(
            !allows(&velero, verb, "velero.io", "backupstoragelocations", None),
            "{verb}"
        );
    }
}

#[test]
fn the_printed_objects_bind_the_service_account_in_its_namespace() {
    let printed = objects("ft-system", "ft-operator", "backup-system", true);
    let kinds: Vec<&str> = printed.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Role",
            "RoleBinding"
        ]
    );
    for binding in [&printed[2], &printed[4], &printed[6]] {
        assert_eq!(binding["subjects"][0]["name"], "ft-operator");
        assert_eq!(binding["subjects"][0]["namespace"], "ft-system");
    }
    assert_eq!(printed[3]["metadata"]["namespace"], "ft-system");
    assert_eq!(printed[5]["metadata"]["namespace"], "backup-system");
    assert_eq!(printed[6]["metadata"]["namespace"], "backup-system");
    assert_eq!(printed[5]["rules"][0]["apiGroups"][0], "velero.io");
}
