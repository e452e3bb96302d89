//! The journal of a pass (CLD-28): one Event and one log line per change, per right, and per
//! change of the tenant's state.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use ft_core::access;
use ft_core::api::{FranceTravailTenant, TenantStatus};
use ft_core::applied::ApplyReport;
use ft_core::status::{self};

use crate::context::Context;
use crate::metrics::TenantLabels;

/// One Event and one log line per right granted, changed, restored, expired, suspended or
/// revoked (CLD-28), with the subject, the role, the environment and the rule.
pub(super) async fn access(
    tenant: &FranceTravailTenant,
    now: jiff::Timestamp,
    report: &ApplyReport,
    wanted: &[RoleBinding],
    before: &[Arc<RoleBinding>],
    ctx: &Context,
) {
    let name = tenant.name_any();
    for change in access::journal(tenant, now, report, wanted, before) {
        let type_ = if change.warning {
            warn!(tenant = %name, subject = %change.subject, role = %change.role, environment = %change.environment, rule = change.rule, reason = change.reason, "{}", change.note);
            EventType::Warning
        } else {
            info!(tenant = %name, subject = %change.subject, role = %change.role, environment = %change.environment, rule = change.rule, reason = change.reason, "{}", change.note);
            EventType::Normal
        };
        let (namespace, binding) = change.binding;
        let related = ObjectReference {
            api_version: Some("rbac.authorization.k8s.io/v1".into()),
            kind: Some("RoleBinding".into()),
            namespace: Some(namespace),
            name: Some(binding),
            ..Default::default()
        };
        ctx.publish_related(
            &tenant.object_ref(&()),
            Some(related),
            type_,
            change.reason,
            format!("{} ({})", change.note, change.rule),
        )
        .await;
    }
}

/// One Event and one log line per kind of change (CLD-28): what was created, restored, pruned.
/// RoleBindings are journalled one by one, by `journal_access`.
pub(super) async fn changes(tenant: &FranceTravailTenant, report: &ApplyReport, ctx: &Context) {
    let name = tenant.name_any();
    let report = &report.without_bindings();
    if !report.created.is_empty() {
        info!(tenant = %name, objects = ?report.created, "created");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Created",
            format!("created {}", report.created.join(", ")),
        )
        .await;
    }
    if !report.restored.is_empty() {
        warn!(tenant = %name, objects = ?report.restored, control = "CLD-20", "reverted changes made by hand");
        ctx.metrics
            .drift_repairs
            .get_or_create(&TenantLabels {
                tenant: name.clone(),
            })
            .inc_by(report.restored.len() as u64);
        ctx.publish(
            tenant,
            EventType::Warning,
            "DriftReverted",
            format!(
                "restored what was changed or deleted by hand: {}",
                report.restored.join(", ")
            ),
        )
        .await;
    }
    if !report.pruned.is_empty() {
        info!(tenant = %name, objects = ?report.pruned, "pruned");
        ctx.publish(
            tenant,
            EventType::Normal,
            "Pruned",
            format!(
                "deleted what the tenant no longer declares: {}",
                report.pruned.join(", ")
            ),
        )
        .await;
    }
}

/// An Event on each transition of Ready, not on each pass.
pub(super) async fn transition(tenant: &FranceTravailTenant, next: &TenantStatus, ctx: &Context) {
    let Some(after) = status::ready_transition(tenant.status.as_ref(), next) else {
        return;
    };
    let event_type = if after.status == "True" {
        EventType::Normal
    } else {
        EventType::Warning
    };
    info!(tenant = %tenant.name_any(), ready = %after.status, reason = %after.reason, "tenant state changed");
    ctx.publish(
        tenant,
        event_type,
        &after.reason,
        format!("Ready is {}: {}", after.status, after.message),
    )
    .await;
}

/// The tenant's key was destroyed outside the operator: what it encrypted is unreadable now.
pub(super) async fn key_replaced(
    tenant: &FranceTravailTenant,
    lost: &str,
    key: &str,
    ctx: &Context,
) {
    let name = tenant.name_any();
    warn!(tenant = %name, lost, key = %key, control = "CLD-40", "tenant key replaced: the previous one was deleted outside the operator");
    ctx.publish(
        tenant,
        EventType::Warning,
        "KeyReplaced",
        format!(
            "the tenant key {lost} was deleted outside the operator ({}); volumes encrypted with it can no longer be read. New volumes are encrypted with a new key {key} (CLD-40)",
            ctx.keys.location(&name)
        ),
    )
    .await;
}
