//! The tenant's control results as standard OpenReports `Report`s (`openreports.io/v1alpha1`,
//! the successor of the policy working group's PolicyReport), one in each tenant namespace, so
//! that Policy Reporter and the tools that read Kyverno's reports show them with no adapter.
//! Pure: the operator writes them where the cluster serves the API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::{ControlResult, ControlStatus, FranceTravailTenant, ReportStatus};
use crate::meta::{child_labels, namespace_name};

pub const GROUP: &str = "openreports.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "Report";
pub const PLURAL: &str = "reports";
/// The name of the operator's Report in each tenant namespace.
pub const REPORT_NAME: &str = "ft-compliance";
/// The source every result names: the engine that produced it.
pub const SOURCE: &str = "ft-operator";

/// An OpenReports `Report`: the fields the operator writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    /// The namespace the results are about.
    pub scope: ObjectReference,
    pub source: String,
    pub summary: Summary,
    pub results: Vec<ReportResult>,
}

/// How many results of each kind the report holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub pass: u32,
    pub fail: u32,
    pub warn: u32,
    pub error: u32,
    pub skip: u32,
}

/// One control's result: `policy` the control, `rule` the rules it checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    pub source: String,
    pub policy: String,
    pub rule: String,
    pub category: String,
    pub result: String,
    pub severity: String,
    pub scored: bool,
    pub message: String,
    pub timestamp: Timestamp,
    pub properties: BTreeMap<String, String>,
}

/// A protobuf-style timestamp, as the OpenReports schema has it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

/// The OpenReports result of a control: `Unknown` could not be evaluated (`error`); `NotApplicable`
/// was not selected for this tenant (`skip`).
pub fn result_of(result: ControlResult) -> &'static str {
    match result {
        ControlResult::Pass => "pass",
        ControlResult::Fail => "fail",
        ControlResult::NotApplicable => "skip",
        ControlResult::Unknown => "error",
    }
}

/// The catalogue's severities are OpenReports' own; anything else is `info`.
fn severity_of(severity: &str) -> String {
    match severity {
        "critical" | "high" | "medium" | "low" | "info" => severity.into(),
        _ => "info".into(),
    }
}

fn result(tenant: &str, control: &ControlStatus) -> ReportResult {
    let time = control.last_transition_time.0;
    ReportResult {
        source: SOURCE.into(),
        policy: control.id.clone(),
        rule: control.rules.join(", "),
        category: control.title.clone(),
        result: result_of(control.result).into(),
        severity: severity_of(&control.severity),
        scored: true,
        message: control.message.clone(),
        timestamp: Timestamp {
            seconds: time.as_second(),
            nanos: time.subsec_nanosecond(),
        },
        properties: BTreeMap::from([
            ("tenant".into(), tenant.into()),
            ("reason".into(), control.reason.clone()),
        ]),
    }
}

/// One Report per environment's namespace, each holding every control of the tenant, as the
/// ComplianceReport's status has them.
pub fn reports(tenant: &FranceTravailTenant, status: &ReportStatus) -> Vec<Report> {
    let name = tenant.name_any();
    let results: Vec<ReportResult> = status.controls.iter().map(|c| result(&name, c)).collect();
    let mut summary = Summary::default();
    for r in &results {
        match r.result.as_str() {
            "pass" => summary.pass += 1,
            "fail" => summary.fail += 1,
            "warn" => summary.warn += 1,
            "error" => summary.error += 1,
            _ => summary.skip += 1,
        }
    }
    tenant
        .spec
        .environments
        .iter()
        .map(|env| {
            let namespace = namespace_name(&name, &env.name);
            // The tenant's labels, `managed-by` among them.
            let labels = child_labels(tenant, env);
            Report {
                api_version: format!("{GROUP}/{VERSION}"),
                kind: KIND.into(),
                metadata: ObjectMeta {
                    name: Some(REPORT_NAME.into()),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                scope: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Namespace".into()),
                    name: Some(namespace),
                    ..Default::default()
                },
                source: SOURCE.into(),
                summary: summary.clone(),
                results: results.clone(),
            }
        })
        .collect()
}
