//! The report: the catalogue joined with the evaluation, written only when a result changes.
//! Times move only with a change, so an idle tenant's report is never rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::catalogue::Catalogue;
use super::view::{Evaluation, NOT_IN_THIS_VERSION};
use crate::api::{
    AccessSummary, ControlResult, ControlStatus, EnvironmentBackups, ReportStatus, Verdict,
};

/// The report status for `evaluations`, the access inventory and the backups, keeping `previous`'s times
/// where nothing changed.
pub fn next_report(
    catalogue: &Catalogue,
    evaluations: &[Evaluation],
    previous: Option<&ReportStatus>,
    generation: Option<i64>,
    now: &Time,
    access: Option<AccessSummary>,
    backups: Vec<EnvironmentBackups>,
) -> ReportStatus {
    let before = |id: &str| previous.and_then(|p| p.controls.iter().find(|c| c.id == id));
    let controls: Vec<ControlStatus> = evaluations
        .iter()
        .map(|e| {
            let entry = catalogue.control(e.id);
            let last_transition_time = match before(e.id) {
                Some(old) if old.result == e.finding.result => old.last_transition_time.clone(),
                _ => now.clone(),
            };
            ControlStatus {
                id: e.id.to_string(),
                rules: entry.map(|c| c.rules.clone()).unwrap_or_default(),
                title: entry.map(|c| c.title.clone()).unwrap_or_default(),
                severity: entry
                    .map(|c| c.severity.as_str().to_string())
                    .unwrap_or_default(),
                result: e.finding.result,
                reason: e.finding.reason.clone(),
                message: e.finding.message.clone(),
                last_transition_time,
            }
        })
        .collect();

    let count = |r: ControlResult| controls.iter().filter(|c| c.result == r).count();
    let failing: Vec<&str> = controls
        .iter()
        .filter(|c| c.result == ControlResult::Fail)
        .map(|c| c.id.as_str())
        .collect();
    let undetermined = controls
        .iter()
        .any(|c| c.result == ControlResult::Unknown && c.reason != NOT_IN_THIS_VERSION);
    let verdict = if !failing.is_empty() {
        Verdict::NonCompliant
    } else if undetermined {
        Verdict::Unknown
    } else {
        Verdict::Compliant
    };

    let mut next = ReportStatus {
        result: Some(verdict),
        passed: format!(
            "{}/{}",
            count(ControlResult::Pass),
            controls.len() - count(ControlResult::NotApplicable)
        ),
        failing: failing.join(","),
        last_evaluated: Some(now.clone()),
        observed_generation: generation,
        controls,
        access,
        backups,
    };
    // Unchanged results keep the time they were first found, so nothing is rewritten.
    if let Some(previous) = previous {
        let unchanged = ReportStatus {
            last_evaluated: previous.last_evaluated.clone(),
            ..next.clone()
        };
        if &unchanged == previous {
            next = unchanged;
        }
    }
    next
}

/// A control whose result changed, for Events, logs and alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<'a> {
    pub control: &'a ControlStatus,
    pub from: Option<ControlResult>,
}

impl Transition<'_> {
    /// A control entering Fail: what CLD-61 asks to raise.
    pub fn is_failure(&self) -> bool {
        self.control.result == ControlResult::Fail
    }

    /// A failing control that holds again.
    pub fn is_recovery(&self) -> bool {
        self.from == Some(ControlResult::Fail)
            && matches!(
                self.control.result,
                ControlResult::Pass | ControlResult::NotApplicable
            )
    }
}

/// The controls whose result differs between `previous` and `next`.
pub fn transitions<'a>(
    previous: Option<&ReportStatus>,
    next: &'a ReportStatus,
) -> Vec<Transition<'a>> {
    next.controls
        .iter()
        .filter_map(|control| {
            let from = previous
                .and_then(|p| p.controls.iter().find(|c| c.id == control.id))
                .map(|c| c.result);
            (from != Some(control.result)).then_some(Transition { control, from })
        })
        .collect()
}

/// The tenant's `Compliant` condition, mirroring its report: status, reason, message.
pub fn compliant_condition(report: &ReportStatus) -> (&'static str, &'static str, String) {
    let ids = |wanted: fn(&ControlStatus) -> bool| {
        report
            .controls
            .iter()
            .filter(|c| wanted(c))
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let not_built = ids(|c| c.result == ControlResult::Unknown && c.reason == NOT_IN_THIS_VERSION);
    let pending = if not_built.is_empty() {
        String::new()
    } else {
        format!("; not evaluated by this version of the operator: {not_built}")
    };
    match report.result {
        Some(Verdict::Compliant) => (
            "True",
            "ControlsPass",
            format!("{} controls pass{pending}", report.passed),
        ),
        Some(Verdict::NonCompliant) => (
            "False",
            "ControlsFail",
            format!(
                "failing: {}; see kubectl describe compliancereport",
                report.failing.replace(',', ", ")
            ),
        ),
        _ => (
            "Unknown",
            "ControlsUndetermined",
            format!(
                "could not evaluate: {}",
                ids(|c| c.result == ControlResult::Unknown && c.reason != NOT_IN_THIS_VERSION)
            ),
        ),
    }
}
