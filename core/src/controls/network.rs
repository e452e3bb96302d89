//! The checks of the network (NET-1, NET-2; CLD-20, CLD-36): the default deny, and no flow
//! beyond the declared matrix.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use serde_json::json;

use super::finding::*;
use super::view::*;
use crate::applied::differs;
use crate::meta::object_key;
use crate::network::DEFAULT_DENY;
use crate::validate::reaches_every_address;

/// A policy differs when either side has what the other lacks: a selector narrowed or a port
/// range widened by hand opens flows as surely as a rule removed. The builder sets every field
/// the API server would default (policy types, protocols), so nothing is added on the way back.
pub(super) fn policy_differs(want: &NetworkPolicy, have: &NetworkPolicy) -> bool {
    let spec = |np: &NetworkPolicy| serde_json::to_value(&np.spec).map(|s| json!({ "spec": s }));
    match (spec(want), spec(have)) {
        (Ok(want), Ok(have)) => differs(&want, &have) || differs(&have, &want),
        _ => true,
    }
}

pub(super) fn default_deny(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let deny: Vec<NetworkPolicy> = desired
        .network_policies
        .iter()
        .filter(|np| np.name_any() == DEFAULT_DENY)
        .cloned()
        .collect();
    judge(
        drift(&deny, &inputs.observed.network_policies, policy_differs),
        "DefaultDenyMissing",
        "DenyByDefault",
        format!(
            "{DEFAULT_DENY} denies every flow not declared, in each of {} namespace(s)",
            deny.len()
        ),
    )
}

pub(super) fn flow_matrix(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let wanted: Vec<NetworkPolicy> = desired
        .network_policies
        .iter()
        .filter(|np| np.name_any() != DEFAULT_DENY)
        .cloned()
        .collect();
    let mut problems = drift(&wanted, &inputs.observed.network_policies, policy_differs);
    for have in &inputs.observed.network_policies {
        let declared = desired.network_policies.iter().any(|want| {
            want.metadata.name == have.metadata.name
                && want.metadata.namespace == have.metadata.namespace
        });
        if !declared && have.metadata.deletion_timestamp.is_none() {
            problems.push(format!(
                "{} was not rendered from the flow matrix: it may open flows nobody declared",
                object_key(&**have)
            ));
        }
    }
    let mut finding = judge(
        problems,
        "UndeclaredFlows",
        "FlowMatrixOnly",
        format!(
            "only the {} declared flow(s), DNS and same-namespace traffic are open",
            inputs.tenant.spec.network.ingress.len() + inputs.tenant.spec.network.egress.len()
        ),
    );
    // Declared and acknowledged, so not a failure; but a reviewer must see it (CLD-36).
    let anywhere: Vec<&str> = inputs
        .tenant
        .spec
        .network
        .egress
        .iter()
        .filter(|flow| flow.to.iter().any(reaches_every_address))
        .map(|flow| flow.name.as_str())
        .collect();
    if !anywhere.is_empty() {
        finding.message.push_str(&format!(
            "; warning: egress flow(s) {} reach every address, as acknowledged by acknowledgeAnyDestination",
            anywhere.join(", ")
        ));
    }
    finding
}
