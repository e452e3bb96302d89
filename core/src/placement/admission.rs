//! The admission policies that keep tenant pods where they may run (CLD-74, CLD-25): one
//! MutatingAdmissionPolicy that confines new pods, and one ValidatingAdmissionPolicy that
//! refuses, failing closed, any pod that could still reach a node outside its placement. Both
//! are cluster-wide and fixed: bound to tenant namespaces by label, they read what to enforce
//! in each from its [`EnvironmentPolicy`] (`paramRef`), and refuse every pod of a tenant
//! namespace that has none. The operator writes the parameters, never the policies.
//!
//! Node affinity terms are atomic lists, so the mutation is a JSON patch built in CEL, from
//! the parameter's terms.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    JSONPatch, MatchResources, MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
    MutatingAdmissionPolicyBindingSpec, MutatingAdmissionPolicySpec, Mutation,
    NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec,
};

use crate::api::{
    ENVIRONMENT_POLICY, EnvironmentKind, EnvironmentPolicy, EnvironmentPolicySpec, ExposedService,
    Requirement,
};
use crate::meta::{
    environment_policy_kind, environment_policy_ref, fixed_meta, refuse_for_tenant,
    tenant_namespace_selector,
};
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

/// The name of the placement policies and of their bindings.
pub const PLACEMENT_POLICY: &str = "ft-placement";

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

/// The parameter of one environment's namespace: what the placement policies (and the claims
/// policy, `storage_class`) enforce there.
pub fn environment_policy(
    placement: &PodPlacement,
    namespace: &str,
    object_labels: &BTreeMap<String, String>,
    kind: EnvironmentKind,
    storage_class: Option<String>,
    exposed_services: Vec<ExposedService>,
) -> EnvironmentPolicy {
    let terms = placement
        .terms()
        .iter()
        .map(|term| {
            term.iter()
                .map(|r| Requirement {
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    values: r.values.clone().unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    let mut policy = EnvironmentPolicy::new(
        ENVIRONMENT_POLICY,
        EnvironmentPolicySpec {
            tenant: placement.tenant.clone(),
            environment: placement.environment.clone(),
            kind,
            regions: placement.regions.iter().cloned().collect(),
            terms,
            placement: placement.describe(),
            rules: match placement.pool {
                crate::placement::Pool::Any => "CLD-74".into(),
                _ => "CLD-74, CLD-25".into(),
            },
            storage_class,
            exposed_services,
        },
    );
    policy.metadata.namespace = Some(namespace.into());
    policy.metadata.labels = Some(object_labels.clone());
    policy
}

/// The JSON patch, in CEL, that confines a pod to the parameter's terms: ours where it declares
/// no required node affinity, else ours appended to each of its terms. Several terms of ours (a
/// production pool of several labels to avoid) would multiply the pod's terms, which a patch
/// cannot express; such pods are left to the validating policy.
pub fn confine_expression() -> String {
    let expression = |e: &str| {
        format!("{T_EXPRESSION}{{key: {e}.key, operator: {e}.operator, values: {e}.values}}")
    };
    let fresh = format!(
        "params.spec.terms.map(t, {T_TERM}{{matchExpressions: t.map(e, {})}})",
        expression("e")
    );
    let terms = format!("{REQUIRED}.nodeSelectorTerms");
    let base = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/";
    let indices = format!(
        "[{}].filter(i, i < size({terms}))",
        (0..MAX_TERMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let appended = format!(
        "{indices}.filter(i, !has({terms}[i].matchExpressions)).map(i, JSONPatch{{op: \"add\", path: \"{base}\" + string(i) + \"/matchExpressions\", value: []}}) + \
         {indices}.map(i, params.spec.terms[0].map(e, JSONPatch{{op: \"add\", path: \"{base}\" + string(i) + \"/matchExpressions/-\", value: {}}})).flatten()",
        expression("e")
    );
    let required = format!("{T_REQUIRED}{{nodeSelectorTerms: {fresh}}}");
    format!(
        "size(params.spec.regions) == 0 ? [] : \
         !has({AFFINITY}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity\", value: \
         {T_AFFINITY}{{nodeAffinity: {T_NODE_AFFINITY}{{requiredDuringSchedulingIgnoredDuringExecution: {required}}}}}}}] : \
         !has({NODE_AFFINITY}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity/nodeAffinity\", value: \
         {T_NODE_AFFINITY}{{requiredDuringSchedulingIgnoredDuringExecution: {required}}}}}] : \
         !has({REQUIRED}) ? [JSONPatch{{op: \"add\", path: \"/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution\", value: {required}}}] : \
         size(params.spec.terms) != 1 ? [] : {appended}"
    )
}

/// The CEL condition that every required term of the pod holds one of the parameter's terms:
/// the same judgement as `PodPlacement::violations`.
pub fn confined_expression() -> String {
    format!(
        "has({AFFINITY}) && has({NODE_AFFINITY}) && has({REQUIRED}) && size({REQUIRED}.nodeSelectorTerms) > 0 && \
         {REQUIRED}.nodeSelectorTerms.all(t, has(t.matchExpressions) && params.spec.terms.exists(o, o.all(r, \
         t.matchExpressions.exists(e, e.key == r.key && (r.operator == 'In' ? \
         (e.operator == 'In' && e.values.all(v, v in r.values)) : \
         ((e.operator == 'NotIn' && r.values.all(v, v in e.values)) || (e.operator == 'In' && e.values.all(v, !(v in r.values)))))))))"
    )
}

/// The CEL condition that the pod's `nodeSelector` agrees with one of the parameter's terms:
/// a region outside the placement, or a production pool the environment must avoid, is
/// refused at once rather than left Pending for ever.
pub fn node_selector_expression() -> String {
    "!has(object.spec.nodeSelector) || params.spec.terms.exists(t, t.all(r, \
     !(r.key in object.spec.nodeSelector) || ((r.operator == 'In') == (object.spec.nodeSelector[r.key] in r.values))))"
        .into()
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

/// The validating backstop, refusing what could still run outside the placement, and its
/// binding to every tenant namespace.
pub fn placement_validation() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let refuse = refuse_for_tenant;
    let placed = "size(params.spec.regions) == 0 || ";
    (
        ValidatingAdmissionPolicy {
            metadata: fixed_meta(PLACEMENT_POLICY),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                param_kind: Some(environment_policy_kind()),
                match_constraints: Some(pod_creation()),
                validations: Some(vec![
                    refuse(
                        "size(params.spec.regions) > 0".into(),
                        "': no node of the cluster is in a country or region the tenant allows, so its pods may run nowhere (' + params.spec.rules + ')'",
                    ),
                    refuse(
                        format!("{placed}!has(object.spec.nodeName)"),
                        "\": spec.nodeName bypasses the scheduler and the tenant's placement; pods must stay on nodes in regions \" + params.spec.placement + ' (' + params.spec.rules + ')'",
                    ),
                    refuse(
                        format!("{placed}({})", node_selector_expression()),
                        "': spec.nodeSelector asks for nodes the placement excludes, so the pod could never be scheduled; pods must stay on nodes in regions ' + params.spec.placement + ' (' + params.spec.rules + ')'",
                    ),
                    refuse(
                        format!("{placed}({})", confined_expression()),
                        "': every required node affinity term must keep the pod on nodes in regions ' + params.spec.placement + ' (' + params.spec.rules + ')'",
                    ),
                ]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: fixed_meta(PLACEMENT_POLICY),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: PLACEMENT_POLICY.into(),
                param_ref: Some(environment_policy_ref()),
                match_resources: Some(tenant_namespace_selector()),
                validation_actions: vec!["Deny".into()],
            },
        },
    )
}

/// The mutation that confines new pods, and its binding to every tenant namespace. Only on API
/// servers that serve MutatingAdmissionPolicies; elsewhere the operator's webhook confines pods.
pub fn placement_mutation() -> (MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding) {
    (
        MutatingAdmissionPolicy {
            metadata: fixed_meta(PLACEMENT_POLICY),
            spec: Some(MutatingAdmissionPolicySpec {
                // A failing mutation leaves the pod unconfined, which the validating policy
                // then refuses: fail closed without blocking on the mutation itself.
                failure_policy: Some("Ignore".into()),
                param_kind: Some(environment_policy_kind()),
                match_constraints: Some(pod_creation()),
                reinvocation_policy: Some("Never".into()),
                mutations: Some(vec![Mutation {
                    patch_type: "JSONPatch".into(),
                    json_patch: Some(JSONPatch {
                        expression: Some(confine_expression()),
                    }),
                    apply_configuration: None,
                }]),
                ..Default::default()
            }),
        },
        MutatingAdmissionPolicyBinding {
            metadata: fixed_meta(PLACEMENT_POLICY),
            spec: Some(MutatingAdmissionPolicyBindingSpec {
                policy_name: Some(PLACEMENT_POLICY.into()),
                param_ref: Some(environment_policy_ref()),
                match_resources: Some(tenant_namespace_selector()),
            }),
        },
    )
}
