//! The checks of access rights (ACC-1, ACC-2, ACC-3; CLD-14, CLD-16, CLD-17, 2.4.a, 2.4.c):
//! only declared bindings, personal and expiring rights, reviewed within the year.

use jiff::SignedDuration;
use kube::ResourceExt;

use super::finding::*;
use super::view::*;
use crate::access;
use crate::api::{ControlResult, labels};
use crate::meta::{object_key, owned_by};

/// A right not reviewed for this long fails CLD-17.
pub(super) const REVIEW_PERIOD: SignedDuration = SignedDuration::from_hours(365 * 24);

/// Judged against the bindings the grants want at `now`, which do not depend on the rest of
/// the spec: a tenant whose spec is refused is still judged on who can act on it.
pub(super) fn declared_bindings(inputs: &Inputs) -> Finding {
    let declared = access::role_bindings(inputs.tenant, inputs.now);
    let mut problems = Vec::new();
    for binding in &inputs.observed.role_bindings {
        let undeclared = access::undeclared_subjects(binding, &declared);
        if !undeclared.is_empty() {
            problems.push(format!(
                "{} grants {} to {}: no access grant declares it",
                object_key(&**binding),
                binding.role_ref.name,
                undeclared.join(", ")
            ));
        }
    }
    judge(
        problems,
        "UndeclaredBindings",
        "OnlyDeclaredRights",
        "no RoleBinding gives anyone a right the tenant did not declare".into(),
    )
}

/// Every grant in force is bound in each of its environments, with the role its function calls
/// for; no grant expired or suspended still is.
pub(super) fn expiring_rights(inputs: &Inputs) -> Finding {
    let grants = &inputs.tenant.spec.access.grants;
    if grants.is_empty() {
        return not_applicable("NoGrants", "the tenant declares no access grant");
    }
    let declared = access::role_bindings(inputs.tenant, inputs.now);
    let observed = |ns: Option<&String>, name: Option<&String>| {
        inputs
            .observed
            .role_bindings
            .iter()
            .find(|b| b.metadata.namespace.as_ref() == ns && b.metadata.name.as_ref() == name)
    };
    let mut problems = Vec::new();
    for want in &declared {
        let key = object_key(want);
        match observed(
            want.metadata.namespace.as_ref(),
            want.metadata.name.as_ref(),
        ) {
            None => problems.push(format!("{key} is missing: a grant in force is not bound")),
            Some(have) if have.role_ref != want.role_ref || have.subjects != want.subjects => {
                problems.push(format!(
                    "{key} binds {} to other subjects or another role than its grant declares",
                    have.role_ref.name
                ))
            }
            Some(_) => {}
        }
    }
    for grant in grants {
        let lapsed = match access::state(grant, inputs.now) {
            access::GrantState::InForce => continue,
            access::GrantState::Expired => "expired",
            access::GrantState::Suspended => "suspended",
        };
        let id = access::grant_id(grant);
        for binding in inputs.observed.role_bindings.iter().filter(|b| {
            owned_by(&b.metadata, &inputs.tenant.name_any())
                && b.labels().get(labels::GRANT) == Some(&id)
        }) {
            problems.push(format!(
                "{} still binds {}, whose grant is {lapsed}",
                object_key(&**binding),
                grant.subject
            ));
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "RightsNotRevoked", listing(&problems));
    }
    let in_force = access::in_force(inputs.tenant, inputs.now).len();
    if in_force == 0 {
        return pass(
            "NoRightInForce",
            "no grant is in force, and none of the expired or suspended ones is bound",
        );
    }
    let mut message =
        format!("{in_force} grant(s) in force, each bound as declared; none lapsed is bound");
    let soon = access::expiring_soon(inputs.tenant, inputs.now);
    if !soon.is_empty() {
        let listed: Vec<String> = soon
            .iter()
            .map(|g| {
                format!(
                    "{} ({}, {})",
                    g.subject,
                    g.role.as_str(),
                    g.expires.0.strftime("%Y-%m-%d")
                )
            })
            .collect();
        message.push_str(&format!(
            ". Warning, expiring within 30 days: {}",
            listed.join(", ")
        ));
    }
    pass("RevokedOnTime", message)
}

pub(super) fn reviewed_rights(inputs: &Inputs) -> Finding {
    let in_force: Vec<_> = inputs
        .tenant
        .spec
        .access
        .grants
        .iter()
        .filter(|g| access::state(g, inputs.now) == access::GrantState::InForce)
        .collect();
    if in_force.is_empty() {
        return not_applicable("NoGrantsInForce", "no access grant is in force");
    }
    let mut problems = Vec::new();
    for grant in in_force {
        let who = grant.subject.to_string();
        match &grant.reviewed_at {
            None => problems.push(format!("the right of {who} was never reviewed")),
            Some(at) if inputs.now.duration_since(at.0) >= REVIEW_PERIOD => problems.push(format!(
                "the right of {who} was last reviewed on {}, over a year ago",
                at.0.strftime("%Y-%m-%d")
            )),
            Some(_) => {}
        }
    }
    judge(
        problems,
        "ReviewOverdue",
        "Reviewed",
        "every right in force was reviewed within the last year".into(),
    )
}
