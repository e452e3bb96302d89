//! The evaluate step: gathers what the controls need, runs the pure evaluator
//! (`ft_core::controls`), and writes the ComplianceReport only when a result changed,
//! announcing each control that starts failing (CLD-61) with a Warning Event on the tenant and
//! on the report.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use ft_core::access;
use ft_core::api::{
    ComplianceReport, ControlResult, FIELD_MANAGER, FranceTravailTenant, GROUP, ReportStatus,
};
use ft_core::backup::{self, VeleroView};
use ft_core::controls::{Inputs, Transition, evaluate as judge, next_report, transitions};
use ft_core::desired::Desired;
use ft_core::meta::{object_key, tenant_namespaces};

use crate::context::Context;
use crate::error::{Error, Result};

/// Evaluates the tenant and brings its report up to date. Returns the report's status, or
/// `None` when the tenant has no report to write to yet. `key_fingerprint` is what the
/// key store answered earlier in the same pass, `velero` what Velero held for the tenant.
pub(super) async fn evaluate(
    tenant: &FranceTravailTenant,
    desired: std::result::Result<&Desired, &str>,
    key_fingerprint: &str,
    velero: &VeleroView,
    ctx: &Context,
) -> Result<Option<ReportStatus>> {
    let name = tenant.name_any();
    let Some(stored) = ctx.observed.compliance_reports.get(&ObjectRef::new(&name)) else {
        return Ok(None);
    };
    let report_key = object_key(&*stored);
    let previous = ctx.compliance.previous(&name, Some(&stored));

    let namespaces = tenant_namespaces(tenant);
    let mut observed = ctx.observed.view(&name, &namespaces);
    observed.pool_pods = ctx.observed.pods_on_pools(
        &ft_core::placement::production_pools(tenant),
        &namespaces,
        &ctx.settings.platform_namespaces,
    );
    observed.key_fingerprint = Some(key_fingerprint.to_string());
    observed.velero = velero.clone();
    let facts = ctx.compliance.facts(ctx.settings.confinement);
    let now = jiff::Timestamp::now();
    let evaluations = judge(&Inputs {
        tenant,
        desired,
        observed: &observed,
        facts: &facts,
        now,
    });
    let next = next_report(
        &ctx.compliance.catalogue,
        &evaluations,
        previous.as_ref(),
        tenant.metadata.generation,
        &Time(now),
        Some(access::summary(tenant, now)),
        if facts.backup_engine == Some(true) {
            backup::report(tenant, &observed.velero, now)
        } else {
            Vec::new()
        },
    );

    for control in &next.controls {
        let passed = match control.result {
            ControlResult::Pass => Some(true),
            ControlResult::Fail => Some(false),
            _ => None,
        };
        ctx.metrics.control(&name, &control.id, passed);
    }
    // When the grants in force lapse, for the alert 30 days ahead (2.4.c).
    ctx.metrics.grants(tenant, now);
    ctx.metrics
        .last_evaluation
        .get_or_create(&crate::metrics::TenantLabels {
            tenant: name.clone(),
        })
        .set(now.as_second());

    let changed = previous.as_ref() != Some(&next);
    if ctx.compliance.openreports_due(&name, changed) {
        write_openreports(tenant, &next, ctx).await;
    }
    if !changed {
        return Ok(Some(next));
    }
    let api: Api<ComplianceReport> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "ComplianceReport",
        "status": next,
    });
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube("write status of", &report_key, e))?;
    ctx.metrics.write("ComplianceReport", "status");
    if let Some(version) = written.resource_version() {
        ctx.observed
            .echoes
            .expect(report_key.clone(), version.clone());
        ctx.compliance.remember(&name, version, &next);
    }

    let changes = transitions(previous.as_ref(), &next);
    announce(tenant, &written, &changes, ctx).await;
    Ok(Some(next))
}

/// One log line per control that changed (CLD-28), and an Event on the tenant and the report for
/// each control that starts failing or holds again (CLD-61).
async fn announce(
    tenant: &FranceTravailTenant,
    report: &ComplianceReport,
    changes: &[Transition<'_>],
    ctx: &Context,
) {
    let name = tenant.name_any();
    let targets: [ObjectReference; 2] = [tenant.object_ref(&()), report.object_ref(&())];
    for change in changes {
        let control = change.control;
        let rules = control.rules.join(", ");
        info!(
            tenant = %name,
            control = %control.id,
            rules = %rules,
            from = change.from.map(ControlResult::as_str).unwrap_or("none"),
            to = control.result.as_str(),
            reason = %control.reason,
            "control result changed"
        );
        let (type_, reason, verb) = if change.is_failure() {
            (EventType::Warning, "ControlFailed", "fails")
        } else if change.is_recovery() {
            (EventType::Normal, "ControlPassed", "holds again")
        } else {
            continue;
        };
        let note = format!("{} ({rules}) {verb}: {}", control.id, control.message);
        for target in &targets {
            ctx.publish_on(target, type_, reason, note.clone()).await;
        }
    }
}

/// The control results as an OpenReports `Report` in each of the tenant's namespaces, for the
/// tools that read them (Policy Reporter). A failure is logged and retried at the next pass: the
/// ComplianceReport stays the record.
async fn write_openreports(tenant: &FranceTravailTenant, status: &ReportStatus, ctx: &Context) {
    use ft_core::openreports::{GROUP, KIND, PLURAL, VERSION, reports};
    let resource = kube::core::ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    };
    let mut all_written = true;
    for report in reports(tenant, status) {
        let namespace = report.metadata.namespace.clone().unwrap_or_default();
        let name = report.metadata.name.clone().unwrap_or_default();
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&report),
            )
            .await
        {
            Ok(_) => ctx.metrics.write("Report", "apply"),
            // The namespace is not there yet, or going: the next pass writes it.
            Err(e) => {
                all_written = false;
                warn!(tenant = %tenant.name_any(), namespace = %namespace, error = %e, "could not write the OpenReports Report");
            }
        }
    }
    if all_written {
        ctx.compliance.openreports_done(&tenant.name_any());
    }
}
