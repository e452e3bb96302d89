//! The control results as OpenReports `Report`s: one per tenant namespace, each control a
//! result, the summary counting them. (The API server validates them against the upstream
//! definition in the e2e suite.)

use ft_core::api::{ControlResult, ControlStatus, ReportStatus};
use ft_core::openreports::reports;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::common;

fn control(id: &str, result: ControlResult, severity: &str) -> ControlStatus {
    ControlStatus {
        id: id.into(),
        rules: vec!["CLD-20".into(), "CLD-36".into()],
        title: format!("{id} title"),
        severity: severity.into(),
        result,
        reason: format!("{id}Reason"),
        message: format!("{id}: Pod/offres-emploi-dev/api-1 says so"),
        last_transition_time: Time("2026-11-22T12:00:00.5Z".parse().expect("a time")),
    }
}

#[test]
fn each_namespace_gets_every_control_as_a_result() {
    let tenant = common::tenant("examples/tenant.yaml");
    let status = ReportStatus {
        controls: vec![
            control("NET-1", ControlResult::Pass, "critical"),
            control("SEP-1", ControlResult::Fail, "high"),
            control("BAK-2", ControlResult::NotApplicable, "medium"),
            control("GEO-2", ControlResult::Unknown, "unheard-of"),
        ],
        ..Default::default()
    };
    let found = reports(&tenant, &status);
    let places: Vec<_> = found
        .iter()
        .map(|r| {
            (
                r.metadata.namespace.clone().unwrap_or_default(),
                r.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            (
                "offres-emploi-prod".to_string(),
                "ft-compliance".to_string()
            ),
            ("offres-emploi-dev".to_string(), "ft-compliance".to_string()),
        ]
    );
    let prod = &found[0];
    assert_eq!(prod.api_version, "openreports.io/v1alpha1");
    assert_eq!(prod.kind, "Report");
    assert_eq!(prod.source, "ft-operator");
    assert_eq!(prod.scope.kind.as_deref(), Some("Namespace"));
    assert_eq!(prod.scope.name.as_deref(), Some("offres-emploi-prod"));
    let labels = prod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("hosting.francetravail.fr/tenant")
            .map(String::as_str),
        Some("offres-emploi")
    );
    let rows: Vec<_> = prod
        .results
        .iter()
        .map(|r| (r.policy.as_str(), r.result.as_str(), r.severity.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("NET-1", "pass", "critical"),
            ("SEP-1", "fail", "high"),
            ("BAK-2", "skip", "medium"),
            ("GEO-2", "error", "info"),
        ]
    );
    let sep = &prod.results[1];
    assert_eq!(sep.rule, "CLD-20, CLD-36");
    assert_eq!(sep.message, "SEP-1: Pod/offres-emploi-dev/api-1 says so");
    assert_eq!(sep.source, "ft-operator");
    assert_eq!(sep.timestamp.seconds, 1_795_348_800);
    assert_eq!(sep.timestamp.nanos, 500_000_000);
    assert_eq!(
        sep.properties.get("reason").map(String::as_str),
        Some("SEP-1Reason")
    );
    let summary = &prod.summary;
    assert_eq!(
        (
            summary.pass,
            summary.fail,
            summary.warn,
            summary.error,
            summary.skip
        ),
        (1, 1, 0, 1, 1)
    );
    // The same results in every namespace: the controls are the tenant's.
    assert_eq!(found[1].results, prod.results);
}
