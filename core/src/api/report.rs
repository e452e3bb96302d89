//! `ComplianceReport`: one per tenant, named like it and owned by it, written by the operator
//! only. `kubectl get compliance` gives one row per tenant; `-o yaml` or `describe` give each
//! control with its evidence.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The result of every control of the catalogue for one tenant.
// Printer columns repeat `type_ = "string"`, which is not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hosting.francetravail.fr",
    version = "v1alpha1",
    kind = "ComplianceReport",
    plural = "compliancereports",
    singular = "compliancereport",
    shortname = "compliance",
    category = "francetravail",
    doc = "Control-by-control compliance of one France Travail tenant with the hosting rules, written by ft-operator.",
    status = "ReportStatus",
    derive = "PartialEq",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Passed", type_ = "string", json_path = ".status.passed"),
    printcolumn(name = "Failing", type_ = "string", json_path = ".status.failing"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(
        name = "Last Evaluated",
        type_ = "date",
        json_path = ".status.lastEvaluated"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReportSpec {
    /// The FranceTravailTenant this report is about.
    pub tenant: String,
}

/// Whether the tenant complies, overall.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No control fails, and every control this version of the operator evaluates passes or
    /// does not apply.
    Compliant,
    /// At least one control fails.
    NonCompliant,
    /// No control fails, but some could not be evaluated (see their reason).
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compliant => "Compliant",
            Self::NonCompliant => "NonCompliant",
            Self::Unknown => "Unknown",
        }
    }
}

/// The result of one control.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlResult {
    Pass,
    Fail,
    /// The tenant has nothing the control checks (no volumes, no production environment, …).
    NotApplicable,
    /// Could not be evaluated; the reason says why.
    Unknown,
}

impl ControlResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "Pass",
            Self::Fail => "Fail",
            Self::NotApplicable => "NotApplicable",
            Self::Unknown => "Unknown",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportStatus {
    /// Overall result: `Compliant`, `NonCompliant` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Verdict>,
    /// Controls passing, out of those that apply to the tenant, such as `12/15`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub passed: String,
    /// Ids of the failing controls, comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failing: String,
    /// When a result last changed. Controls are re-evaluated on every change and at least once
    /// a minute; the report is rewritten only when a result differs, so this is also the time
    /// since which every result has held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Time>,
    /// The generation of the tenant the results describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One entry per control of the catalogue.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub controls: Vec<ControlStatus>,
    /// Who holds rights on the tenant's environments, counted (CLD-16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSummary>,
    /// Each environment's latest backup and restore test (CLD-26).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub backups: Vec<EnvironmentBackups>,
}

/// Where one environment's backups and restore tests stand (CLD-26).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentBackups {
    pub environment: String,
    /// The Velero Schedule, `<velero namespace>/<name>`, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The latest backup Velero completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<Time>,
    /// The latest finished restore test: its Velero Restore, when it finished, and how it went
    /// (`Passed` or `Failed`, with why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_test_result: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub restore_test_message: String,
    /// A restore test running now, its Velero Restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_restore_test: Option<String>,
}

/// The inventory of rights in force, privileged ones named (CLD-16).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessSummary {
    /// Grants neither expired nor suspended.
    pub grants_in_force: u32,
    /// Distinct holders of the `admin` role in force.
    pub privileged_holders: u32,
    /// Those holders, such as `User claire.martin@example.org`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privileged: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlStatus {
    /// Stable id of the control in the catalogue, such as `NET-1`.
    pub id: String,
    /// The hosting rules it evidences, such as `CLD-36`.
    pub rules: Vec<String>,
    pub title: String,
    /// `critical`, `high` or `medium`.
    pub severity: String,
    pub result: ControlResult,
    /// CamelCase reason for the result.
    pub reason: String,
    /// What was found, naming the offending objects.
    pub message: String,
    /// When the result last changed.
    pub last_transition_time: Time,
}
