//! Protection against an accidental deletion (CLD-47): one cluster-wide policy that refuses to
//! delete a tenant whose deletion was not confirmed, and one that records who confirmed it.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchCondition, MatchResources, MutatingAdmissionPolicy,
    MutatingAdmissionPolicyBinding, MutatingAdmissionPolicyBindingSpec,
    MutatingAdmissionPolicySpec, Mutation, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{GROUP, annotations, labels};
use crate::meta::fixed_meta;

/// The cluster-wide policy refusing unconfirmed tenant deletions, and its binding.
pub const DELETION_PROTECTION: &str = "ft-tenant-deletion-protection";

/// Refuses `DELETE` of a tenant that does not carry the annotation
/// `hosting.francetravail.fr/confirm-deletion: <its name>`, with the command to run. Deleting a
/// tenant shreds its data: it must never happen by accident (CLD-47).
pub fn deletion_protection() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let key = annotations::CONFIRM_DELETION;
    let by = annotations::DELETION_CONFIRMED_BY;
    (
        ValidatingAdmissionPolicy {
            metadata: protection_meta(),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(tenant_requests(&["DELETE", "UPDATE"])),
                validations: Some(vec![
                    Validation {
                        expression: format!(
                            "request.operation != 'DELETE' || (has(oldObject.metadata.annotations) && '{key}' in oldObject.metadata.annotations && oldObject.metadata.annotations['{key}'] == oldObject.metadata.name)"
                        ),
                        message_expression: Some(format!(
                            "'deleting tenant ' + oldObject.metadata.name + ' destroys its key and every namespace and volume it owns (CLD-47). If that is meant, first run: kubectl annotate francetravailtenant ' + oldObject.metadata.name + ' {key}=' + oldObject.metadata.name"
                        )),
                        reason: Some("Forbidden".into()),
                        ..Default::default()
                    },
                    // Who confirmed is written at admission only: never set or changed by hand.
                    Validation {
                        expression: format!(
                            "request.operation != 'UPDATE' || object.metadata.?annotations[?'{by}'] == oldObject.metadata.?annotations[?'{by}'] || object.metadata.?annotations[?'{key}'] != oldObject.metadata.?annotations[?'{key}']"
                        ),
                        message: Some(format!(
                            "{by} records who confirmed the deletion; it is written by the API server's admission, not by hand"
                        )),
                        reason: Some("Forbidden".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: protection_meta(),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: DELETION_PROTECTION.into(),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}

/// Records who confirms a tenant's deletion: when `CONFIRM_DELETION` is set or changed, writes
/// the authenticated user into `DELETION_CONFIRMED_BY`, for the shredding record. Needs
/// MutatingAdmissionPolicies; where they are not served the record names the field manager.
pub fn deletion_confirmation_recorder() -> (MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding)
{
    let key = annotations::CONFIRM_DELETION;
    let by = annotations::DELETION_CONFIRMED_BY;
    (
        MutatingAdmissionPolicy {
            metadata: protection_meta(),
            spec: Some(MutatingAdmissionPolicySpec {
                // Should it fail, the record falls back to the field manager.
                failure_policy: Some("Ignore".into()),
                match_constraints: Some(tenant_requests(&["CREATE", "UPDATE"])),
                match_conditions: Some(vec![MatchCondition {
                    name: "confirmation-set".into(),
                    expression: format!(
                        "object.metadata.?annotations[?'{key}'].hasValue() && (oldObject == null || object.metadata.?annotations[?'{key}'] != oldObject.metadata.?annotations[?'{key}'])"
                    ),
                }]),
                reinvocation_policy: Some("Never".into()),
                mutations: Some(vec![Mutation {
                    patch_type: "JSONPatch".into(),
                    json_patch: Some(JSONPatch {
                        expression: Some(format!(
                            "[JSONPatch{{op: 'add', path: '/metadata/annotations/' + jsonpatch.escapeKey('{by}'), value: request.userInfo.username}}]"
                        )),
                    }),
                    apply_configuration: None,
                }]),
                ..Default::default()
            }),
        },
        MutatingAdmissionPolicyBinding {
            metadata: protection_meta(),
            spec: Some(MutatingAdmissionPolicyBindingSpec {
                policy_name: Some(DELETION_PROTECTION.into()),
                ..Default::default()
            }),
        },
    )
}

fn protection_meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(DELETION_PROTECTION.into()),
        labels: Some(BTreeMap::from([(
            labels::MANAGED_BY.into(),
            labels::MANAGED_BY_VALUE.into(),
        )])),
        ..Default::default()
    }
}

/// Requests on tenants, of any version, with these operations.
fn tenant_requests(operations: &[&str]) -> MatchResources {
    MatchResources {
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![GROUP.into()]),
            api_versions: Some(vec!["*".into()]),
            operations: Some(operations.iter().map(|o| o.to_string()).collect()),
            resources: Some(vec!["francetravailtenants".into()]),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The policy refusing an unconfirmed deletion of the operator's CustomResourceDefinitions.
pub const CRD_PROTECTION: &str = "ft-crd-deletion-protection";

/// The CustomResourceDefinitions whose deletion deletes tenants' objects without any admission
/// of theirs: every tenant, or every namespace's EnvironmentPolicy, or every report.
pub const PROTECTED_CRDS: [&str; 3] = [
    "francetravailtenants.hosting.francetravail.fr",
    "environmentpolicies.hosting.francetravail.fr",
    "compliancereports.hosting.francetravail.fr",
];

/// Refuses `DELETE` of the operator's CustomResourceDefinitions unless the definition carries
/// `hosting.francetravail.fr/confirm-deletion: <its name>`. Deleting the tenants' definition
/// deletes every tenant at once, past the tenant deletion protection (CLD-47); the operator's
/// finalizer still shreds none that was not confirmed, but the tenants are gone from the API.
pub fn crd_protection() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let key = annotations::CONFIRM_DELETION;
    let names = PROTECTED_CRDS
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    (
        ValidatingAdmissionPolicy {
            metadata: fixed_meta(CRD_PROTECTION),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec!["apiextensions.k8s.io".into()]),
                        api_versions: Some(vec!["*".into()]),
                        operations: Some(vec!["DELETE".into()]),
                        resources: Some(vec!["customresourcedefinitions".into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                match_conditions: Some(vec![MatchCondition {
                    name: "the-operators-definitions".into(),
                    expression: format!("oldObject.metadata.name in [{names}]"),
                }]),
                validations: Some(vec![Validation {
                    expression: format!(
                        "oldObject.metadata.?annotations[?'{key}'].orValue('') == oldObject.metadata.name"
                    ),
                    message_expression: Some(format!(
                        "'deleting CustomResourceDefinition ' + oldObject.metadata.name + ' deletes every object of its kind at once, with no admission of theirs: every tenant, and the enforcement of its rules (CLD-47). If that is meant, first run: kubectl annotate crd ' + oldObject.metadata.name + ' {key}=' + oldObject.metadata.name"
                    )),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: fixed_meta(CRD_PROTECTION),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: CRD_PROTECTION.into(),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}
