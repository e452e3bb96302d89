//! How a control's finding is put together, and how what is observed is compared with what
//! was built: shared by every capability's checks.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::Resource;
use kube::core::PartialObjectMeta;
use serde::Serialize;
use serde_json::{Value, json};

use super::view::*;
use crate::api::ControlResult;
use crate::applied::differs;
use crate::desired::Desired;
use crate::meta::object_key;
use crate::validate::quantity_nanos;

/// Offending objects named in one message, at most.
pub(super) const NAMED: usize = 10;

pub(super) fn finding(result: ControlResult, reason: &str, message: impl Into<String>) -> Finding {
    Finding {
        result,
        reason: reason.into(),
        message: message.into(),
    }
}

pub(super) fn pass(reason: &str, message: impl Into<String>) -> Finding {
    finding(ControlResult::Pass, reason, message)
}

pub(super) fn not_applicable(reason: &str, message: impl Into<String>) -> Finding {
    finding(ControlResult::NotApplicable, reason, message)
}

/// Fails with every problem found, or passes with `ok`.
pub(super) fn judge(
    problems: Vec<String>,
    fail_reason: &str,
    pass_reason: &str,
    ok: String,
) -> Finding {
    if problems.is_empty() {
        return pass(pass_reason, ok);
    }
    finding(ControlResult::Fail, fail_reason, listing(&problems))
}

/// `a; b; c; and 4 more`: messages stay short enough for `kubectl describe`.
pub(super) fn listing(problems: &[String]) -> String {
    let mut message = problems
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > NAMED {
        message.push_str(&format!("; and {} more", problems.len() - NAMED));
    }
    message
}

/// Controls judged by comparing the cluster with what was built cannot be judged from an
/// invalid spec: nothing was built.
pub(super) fn built<'a>(inputs: &Inputs<'a>) -> Result<&'a Desired, Finding> {
    inputs.desired.map_err(|why| {
        finding(
            ControlResult::Unknown,
            "InvalidSpec",
            format!("the tenant's spec is invalid, so nothing was built to compare with: {why}"),
        )
    })
}

pub(super) fn namespace<'a>(
    observed: &'a TenantView,
    name: &str,
) -> Option<&'a PartialObjectMeta<Namespace>> {
    observed
        .namespaces
        .iter()
        .find(|ns| ns.metadata.name.as_deref() == Some(name))
        .map(|ns| &**ns)
}

pub(super) fn find<'a, K: Resource>(objects: &'a [Arc<K>], like: &impl Resource) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| o.meta().name == like.meta().name && o.meta().namespace == like.meta().namespace)
        .map(|o| &**o)
}

/// Quantities read back from the API server are in its canonical form (`0.5` becomes `500m`);
/// both sides are reduced to their values before comparing.
pub(super) fn canonical(value: &Value) -> Value {
    match value {
        Value::String(s) => quantity_nanos(s)
            .map(|n| Value::String(n.to_string()))
            .unwrap_or_else(|| value.clone()),
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub(super) fn spec_differs<K: Serialize>(want: &K, have: &K) -> bool {
    let (Ok(want), Ok(have)) = (serde_json::to_value(want), serde_json::to_value(have)) else {
        return true;
    };
    differs(
        &canonical(&Value::Object(
            want.get("spec")
                .map(|s| ("spec".to_string(), s.clone()))
                .into_iter()
                .collect(),
        )),
        &canonical(&have),
    )
}

/// The problems of one kind of built child: missing, or changed by hand.
pub(super) fn drift<K>(
    wanted: &[K],
    observed: &[Arc<K>],
    compare: fn(&K, &K) -> bool,
) -> Vec<String>
where
    K: Resource<DynamicType = ()>,
{
    wanted
        .iter()
        .filter_map(|want| match find(observed, want) {
            None => Some(format!("{} is missing", object_key(want))),
            Some(have) if compare(want, have) => {
                Some(format!("{} was changed by hand", object_key(want)))
            }
            Some(_) => None,
        })
        .collect()
}

/// Whether an admission object lacks what was built, or narrows what it applies to: the API
/// server fills in defaults, so only the selectors and conditions are compared both ways. A
/// validation removed, or a selector added by hand that unbinds the namespace, both count.
pub(super) fn spec_mismatch<K: Serialize>(want: &K, have: &K) -> bool {
    let (Ok(want), Ok(have)) = (serde_json::to_value(want), serde_json::to_value(have)) else {
        return true;
    };
    let scope = |v: &Value| {
        let spec = &v["spec"];
        json!({
            "bindingNamespaces": spec["matchResources"]["namespaceSelector"],
            "bindingObjects": spec["matchResources"]["objectSelector"],
            "policyNamespaces": spec["matchConstraints"]["namespaceSelector"],
            "policyObjects": spec["matchConstraints"]["objectSelector"],
            "conditions": spec["matchConditions"],
        })
    };
    let spec = |v: &Value| json!({ "spec": v["spec"] });
    differs(&spec(&want), &spec(&have)) || differs(&scope(&have), &scope(&want))
}

/// The fixed admission objects named `name` (`crate::admission::fixed`), each as the cluster
/// should hold it: what is missing or was changed by hand. `mutating` for MutatingAdmission
/// objects too.
pub(super) fn fixed_drift(inputs: &Inputs, name: &str, mutating: bool) -> Vec<String> {
    fn named<K: Resource + Clone>(items: &[K], name: &str) -> Vec<K> {
        items
            .iter()
            .filter(|i| i.meta().name.as_deref() == Some(name))
            .cloned()
            .collect()
    }
    // The fixed set is the same for every tenant and every pass: built once.
    static FIXED: std::sync::LazyLock<crate::admission::Fixed> =
        std::sync::LazyLock::new(crate::admission::fixed);
    let fixed = &*FIXED;
    let observed = inputs.observed;
    let mut problems = drift(
        &named(&fixed.validating_admission_policies, name),
        &observed.validating_admission_policies,
        spec_mismatch,
    );
    problems.extend(drift(
        &named(&fixed.validating_admission_policy_bindings, name),
        &observed.validating_admission_policy_bindings,
        spec_mismatch,
    ));
    if mutating {
        problems.extend(drift(
            &named(&fixed.mutating_admission_policies, name),
            &observed.mutating_admission_policies,
            spec_mismatch,
        ));
        problems.extend(drift(
            &named(&fixed.mutating_admission_policy_bindings, name),
            &observed.mutating_admission_policy_bindings,
            spec_mismatch,
        ));
    }
    problems
}
