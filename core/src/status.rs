//! Status: computed purely from the tenant and the outcome of a pass, and written only when it
//! changes. `lastTransitionTime` moves only when a condition flips, so an idle tenant's status
//! is stable and its writes never retrigger the controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::access;
use crate::api::{ControlResult, ExportStatus, FranceTravailTenant, ReportStatus, TenantStatus};
use crate::controls::{ADMISSION_POLICY_MISSING, compliant_condition};
use crate::meta::namespace_name;
use crate::shredding::{self, Consent};
use crate::validate::InvalidTenant;

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const COMPLIANT: &str = "Compliant";

/// How a reconciliation pass ended.
pub enum Outcome<'a> {
    /// Every child is in place.
    Applied,
    /// The spec is refused: it waits for a change.
    Invalid(&'a InvalidTenant),
    /// The pass failed; `category` is the error's stable name (`namespace_terminating`), and
    /// `waiting` says it is an expected state rather than a failure (no Degraded).
    Failed {
        category: &'a str,
        waiting: bool,
        message: String,
    },
}

/// The tenant's status after a pass; `Compliant` mirrors its report, when it has one.
pub fn next_status(
    tenant: &FranceTravailTenant,
    outcome: Outcome<'_>,
    report: Option<&ReportStatus>,
    now: &Time,
) -> TenantStatus {
    let generation = tenant.metadata.generation;
    let previous = tenant
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        let mut c = Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        };
        if let Some(old) = previous.iter().find(|o| o.type_ == type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
        c
    };

    let (ready, degraded) = match outcome {
        Outcome::Applied => (
            condition(
                READY,
                "True",
                "Reconciled",
                format!(
                    "{} environment(s) isolated, with their network policies, quota and limits in place",
                    tenant.spec.environments.len()
                ),
            ),
            condition(DEGRADED, "False", "AsExpected", String::new()),
        ),
        Outcome::Invalid(invalid) => {
            let message = invalid
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            (
                condition(READY, "False", "InvalidSpec", message.clone()),
                condition(DEGRADED, "True", "InvalidSpec", message),
            )
        }
        Outcome::Failed {
            category,
            waiting,
            message,
        } => {
            let reason = reason_for(category);
            let degraded = if waiting { "False" } else { "True" };
            (
                condition(READY, "False", &reason, message.clone()),
                condition(DEGRADED, degraded, &reason, message),
            )
        }
    };
    let compliant = match report {
        Some(report) => {
            let (status, reason, message) = compliant_condition(report);
            condition(COMPLIANT, status, reason, message)
        }
        None => condition(
            COMPLIANT,
            "Unknown",
            "NotEvaluated",
            "the controls have not been evaluated yet".into(),
        ),
    };

    TenantStatus {
        observed_generation: generation,
        conditions: vec![ready, degraded, compliant],
        environments: tenant
            .spec
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
        namespaces: tenant
            .spec
            .environments
            .iter()
            .map(|e| namespace_name(&tenant.name_any(), &e.name))
            .collect(),
        grants: access::in_force(tenant, now.0),
        // The controller sets it from the key store; until then the last one known stands.
        key_fingerprint: tenant
            .status
            .as_ref()
            .and_then(|s| s.key_fingerprint.clone()),
        shredding: None,
        // The controller sets it from the export's backups; until then the last one stands.
        export: tenant.status.as_ref().and_then(|s| s.export.clone()),
        // The controller sets them from the environments it holds; until then they stand.
        removals: tenant
            .status
            .as_ref()
            .map(|s| s.removals.clone())
            .unwrap_or_default(),
    }
}

/// `namespace_terminating` becomes `NamespaceTerminating`: condition reasons are CamelCase.
fn reason_for(category: &str) -> String {
    category
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The condition of a type, if present.
pub fn condition<'a>(status: Option<&'a TenantStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// The Ready condition after a pass, when it differs from before in status or reason: one
/// state change, one Event. Degraded only ever moves with Ready.
pub fn ready_transition<'a>(
    before: Option<&TenantStatus>,
    after: &'a TenantStatus,
) -> Option<&'a Condition> {
    let after = condition(Some(after), READY)?;
    let before = condition(before, READY);
    (before.map(|b| (&b.status, &b.reason)) != Some((&after.status, &after.reason)))
        .then_some(after)
}

/// The status a pass leaves: [`next_status`], with the key the store answered (CLD-40) and the
/// export's progress when one is asked for (CLD-73).
pub fn after_pass(
    tenant: &FranceTravailTenant,
    outcome: Outcome<'_>,
    report: Option<&ReportStatus>,
    key_fingerprint: String,
    export: Option<ExportStatus>,
    now: &Time,
) -> TenantStatus {
    let applied = matches!(outcome, Outcome::Applied);
    let mut status = next_status(tenant, outcome, report, now);
    // The cluster-wide admission policies missing or changed: the tenant is no longer
    // protected at admission, whatever the operator applies.
    let unprotected = report.and_then(|r| {
        r.controls
            .iter()
            .find(|c| c.result == ControlResult::Fail && c.reason == ADMISSION_POLICY_MISSING)
    });
    if let (true, Some(control)) = (applied, unprotected)
        && let Some(degraded) = status.conditions.iter_mut().find(|c| c.type_ == DEGRADED)
    {
        let was = condition(tenant.status.as_ref(), DEGRADED);
        degraded.status = "True".into();
        degraded.reason = ADMISSION_POLICY_MISSING.into();
        degraded.message = format!("{} ({}): {}", control.id, control.title, control.message);
        if was.is_none_or(|w| w.status != "True") {
            degraded.last_transition_time = now.clone();
        } else if let Some(w) = was {
            degraded.last_transition_time = w.last_transition_time.clone();
        }
    }
    status.key_fingerprint = Some(key_fingerprint);
    if export.is_some() {
        status.export = export;
    }
    // A deletion nobody confirmed: the tenant is enforced as before, and says why it stays.
    if tenant.metadata.deletion_timestamp.is_some()
        && let Consent::Held { message } = shredding::consent(tenant)
    {
        let since = condition(tenant.status.as_ref(), shredding::DELETION_HELD)
            .filter(|c| c.status == "True")
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        status.conditions.push(Condition {
            type_: shredding::DELETION_HELD.into(),
            status: "True".into(),
            reason: shredding::DELETION_NOT_CONFIRMED.into(),
            message,
            observed_generation: tenant.metadata.generation,
            last_transition_time: since,
        });
    }
    status
}
