//! Admission policies that keep each environment's pods where they may run (CLD-74, CLD-25):
//! a MutatingAdmissionPolicy that confines new pods, and a ValidatingAdmissionPolicy that
//! refuses, failing closed, any pod that could still reach a node outside its placement. Both
//! are bound to one tenant namespace by its labels, so nothing else in the cluster is touched.
//!
//! Node affinity terms are atomic lists, so the mutation is a JSON patch built in CEL. Pure:
//! the policies are built from a `PodPlacement`; the operator applies them.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchResources, MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
    MutatingAdmissionPolicyBindingSpec, MutatingAdmissionPolicySpec, Mutation,
    NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::api::labels;
use crate::placement::PodPlacement;

/// How pods are confined when they are created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Confinement {
    /// The API server serves `admissionregistration.k8s.io/v1` MutatingAdmissionPolicies.
    #[default]
    Native,
    /// It does not: the operator's webhook confines pods.
    Webhook,
}

impl Confinement {
    /// What the API server's discovery of `admissionregistration.k8s.io/v1` says.
    pub fn from_resources<'a>(served: impl IntoIterator<Item = &'a str>) -> Self {
        if served.into_iter().any(|r| r == "mutatingadmissionpolicies") {
            Self::Native
        } else {
            Self::Webhook
        }
    }
}

/// The admission objects of one environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlacementPolicies {
    pub mutating: Option<(MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding)>,
    pub validating: (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding),
}

/// `ft-placement-<namespace>`: one name for the policies and bindings of an environment.
pub fn policy_name(namespace: &str) -> String {
    format!("ft-placement-{namespace}")
}

/// Required node selector terms a pod may declare and still be confined by the mutation.
const MAX_TERMS: usize = 16;
const AFFINITY: &str = "object.spec.affinity";
const NODE_AFFINITY: &str = "object.spec.affinity.nodeAffinity";
const REQUIRED: &str =
    "object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";
// CEL object types of a MutatingAdmissionPolicy are named by their path in the object.
const T_AFFINITY: &str = "Object.spec.affinity";
const T_NODE_AFFINITY: &str = "Object.spec.affinity.nodeAffinity";
const T_REQUIRED: &str =
    "Object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";
const T_TERM: &str = "Object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
const T_EXPRESSION: &str = "Object.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms.matchExpressions";

/// A CEL string literal.
fn string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn strings<'a>(values: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<String> = values.into_iter().map(|v| string(v)).collect();
    format!("[{}]", items.join(", "))
}

fn expressions(term: &[NodeSelectorRequirement]) -> String {
    let items: Vec<String> = term
        .iter()
        .map(|r| {
            format!(
                "{T_EXPRESSION}{{key: {}, operator: {}, values: {}}}",
                string(&r.key),
                string(&r.operator),
                strings(r.values.iter().flatten())
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The CEL expression of the JSON patch that confines a pod: our terms where it declares no
/// required node affinity, else each of its terms intersected with each of ours.
pub fn confine_expression(placement: &PodPlacement) -> String {
    let ours = placement.terms();
    let fresh: Vec<String> = ours
        .iter()
        .map(|term| format!("{T_TERM}{{matchExpressions: {}}}", expressions(term)))
        .collect();
    let fresh = format!("[{}]", fresh.join(", "));
    // A pod with required terms of its own gets ours appended to each of them, one `add` per
    // requirement and term: list values computed in CEL cannot be handed to a JSON patch.
    // Several terms of ours (a production pool of several labels to avoid) would multiply the
    // pod's terms, which a patch cannot express; such pods are left to the validating policy.
    let terms = format!("{REQUIRED}.nodeSelectorTerms");
    let base = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/";
    let indices = format!(
        "[{}].filter(i, i < size({terms}))",
        (0..MAX_TERMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let appended = match ours.as_slice() {
        [term] => {
            let mut ops = vec![format!(
                "{indices}.filter(i, !has({terms}[i].matchExpressions)).map(i, JSONPatch{{op: \"add\", path: \"{base}\" + string(i) + \"/matchExpressions\", value: []}})"
            )];
            for requirement in term {
                let one = expressions(std::slice::from_ref(requirement));
                let one = one.trim_start_matches('[').trim_end_matches(']');
                ops.push(format!(
                    "{indices}.map(i, JSONPatch{{op: \"add\", path: \"{base}\" + string(i) + \"/matchExpressions/-\", value: {one}}})"
                ));
            }
            ops.join(" + ")
        }
        _ => "[]".to_string(),
    };
    let required = format!("{T_REQUIRED}{{nodeSelectorTerms: {fresh}}}");
    format!(
        "!has({AFFINITY}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity\", value: \
         {T_AFFINITY}{{nodeAffinity: {T_NODE_AFFINITY}{{requiredDuringSchedulingIgnoredDuringExecution: {required}}}}}}}] : \
         !has({NODE_AFFINITY}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity/nodeAffinity\", value: \
         {T_NODE_AFFINITY}{{requiredDuringSchedulingIgnoredDuringExecution: {required}}}}}] : \
         !has({REQUIRED}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution\", value: {required}}}] : \
         {appended}"
    )
}

/// The CEL condition that every required term of the pod holds one of our terms: the same
/// judgement as `PodPlacement::violations`.
pub fn confined_expression(placement: &PodPlacement) -> String {
    let holds = |r: &NodeSelectorRequirement| {
        let values = strings(r.values.iter().flatten());
        match r.operator.as_str() {
            "In" => format!(
                "t.matchExpressions.exists(e, e.key == {k} && e.operator == 'In' && e.values.all(v, v in {values}))",
                k = string(&r.key)
            ),
            _ => format!(
                "t.matchExpressions.exists(e, e.key == {k} && ((e.operator == 'NotIn' && {values}.all(v, v in e.values)) || (e.operator == 'In' && e.values.all(v, !(v in {values})))))",
                k = string(&r.key)
            ),
        }
    };
    let any_term: Vec<String> = placement
        .terms()
        .iter()
        .map(|term| {
            let all: Vec<String> = term.iter().map(holds).collect();
            format!("({})", all.join(" && "))
        })
        .collect();
    format!(
        "has({AFFINITY}) && has({NODE_AFFINITY}) && has({REQUIRED}) && size({REQUIRED}.nodeSelectorTerms) > 0 && \
         {REQUIRED}.nodeSelectorTerms.all(t, has(t.matchExpressions) && ({}))",
        any_term.join(" || ")
    )
}

fn pod_creation() -> MatchResources {
    MatchResources {
        resource_rules: Some(vec![NamedRuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The namespace of this environment only, by the labels the operator keeps on it.
fn this_namespace(placement: &PodPlacement) -> MatchResources {
    MatchResources {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (labels::TENANT.into(), placement.tenant.clone()),
                (labels::ENVIRONMENT.into(), placement.environment.clone()),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn meta(name: &str, object_labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(object_labels.clone()),
        ..Default::default()
    }
}

/// The policies of one environment's namespace, labelled with `object_labels`.
pub fn placement_policies(
    placement: &PodPlacement,
    namespace: &str,
    object_labels: &BTreeMap<String, String>,
    confinement: Confinement,
) -> PlacementPolicies {
    let name = policy_name(namespace);
    let rule = match placement.pool {
        crate::placement::Pool::Any => "CLD-74",
        _ => "CLD-74, CLD-25",
    };
    let validations = if placement.regions.is_empty() {
        vec![Validation {
            expression: "false".into(),
            message: Some(format!(
                "tenant {}: no node of the cluster is in a country or region the tenant allows, so its pods may run nowhere ({rule})",
                placement.tenant
            )),
            reason: Some("Forbidden".into()),
            ..Default::default()
        }]
    } else {
        vec![
            Validation {
                expression: "!has(object.spec.nodeName)".into(),
                message: Some(format!(
                    "tenant {}: spec.nodeName bypasses the scheduler and the tenant's placement; pods must stay on nodes in regions {} ({rule})",
                    placement.tenant,
                    placement.describe()
                )),
                reason: Some("Forbidden".into()),
                ..Default::default()
            },
            Validation {
                expression: confined_expression(placement),
                message: Some(format!(
                    "tenant {}: every required node affinity term must keep the pod on nodes in regions {} ({rule})",
                    placement.tenant,
                    placement.describe()
                )),
                reason: Some("Forbidden".into()),
                ..Default::default()
            },
        ]
    };
    let validating = (
        ValidatingAdmissionPolicy {
            metadata: meta(&name, object_labels),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(pod_creation()),
                validations: Some(validations),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: meta(&name, object_labels),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: name.clone(),
                match_resources: Some(this_namespace(placement)),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    );
    // With no allowed region there is nothing to confine a pod to: the validating policy
    // refuses it with a message that says why.
    let mutating =
        (confinement == Confinement::Native && !placement.regions.is_empty()).then(|| {
            (
                MutatingAdmissionPolicy {
                    metadata: meta(&name, object_labels),
                    spec: Some(MutatingAdmissionPolicySpec {
                        // A failing mutation leaves the pod unconfined, which the validating policy
                        // then refuses: fail closed without blocking on the mutation itself.
                        failure_policy: Some("Ignore".into()),
                        match_constraints: Some(pod_creation()),
                        reinvocation_policy: Some("Never".into()),
                        mutations: Some(vec![Mutation {
                            patch_type: "JSONPatch".into(),
                            json_patch: Some(JSONPatch {
                                expression: Some(confine_expression(placement)),
                            }),
                            apply_configuration: None,
                        }]),
                        ..Default::default()
                    }),
                },
                MutatingAdmissionPolicyBinding {
                    metadata: meta(&name, object_labels),
                    spec: Some(MutatingAdmissionPolicyBindingSpec {
                        policy_name: Some(name.clone()),
                        match_resources: Some(this_namespace(placement)),
                        ..Default::default()
                    }),
                },
            )
        });
    PlacementPolicies {
        mutating,
        validating,
    }
}
