//! Keeps each tenant's ComplianceReport current: gathers what the controls need, runs the pure
//! evaluator, and writes the report only when a result changed, announcing each control that
//! starts failing (CLD-61) with a Warning Event on the tenant and on the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::access;
use crate::api::{
    ComplianceReport, ControlResult, FIELD_MANAGER, FranceTravailTenant, GROUP, ReportStatus,
};
use crate::apply::object_key;
use crate::backup::{self, VeleroView};
use crate::build::{Desired, tenant_namespaces};
use crate::controller::Context;
use crate::controls::{
    Catalogue, ClusterFacts, Inputs, Transition, evaluate, next_report, transitions,
};
use crate::error::{Error, Result};
use crate::observe::Observed;
use crate::regions::RegionCatalogue;

/// The catalogues and cluster facts the evaluator needs, and what was last written.
pub struct Compliance {
    pub catalogue: Catalogue,
    pub regions: Arc<RegionCatalogue>,
    /// The `--provider` flag: which provider's region codes the nodes carry.
    pub provider: Option<String>,
    backup_engine: Mutex<Option<bool>>,
    /// The last report status written per tenant, with the resourceVersion it got: the
    /// reflector may not have seen that write yet when the tenant is next evaluated.
    written: Mutex<HashMap<String, (String, ReportStatus)>>,
}

impl Compliance {
    pub fn new(catalogue: Catalogue, regions: RegionCatalogue, provider: Option<String>) -> Self {
        Self {
            catalogue,
            regions: Arc::new(regions),
            provider,
            backup_engine: Mutex::default(),
            written: Mutex::default(),
        }
    }

    /// The catalogues compiled into the binary.
    pub fn embedded(provider: Option<String>) -> Result<Self> {
        Self::load(provider, None)
    }

    /// The embedded catalogues, with the region catalogue replaced by `regions_yaml` when the
    /// platform team gives its own (a provider or region the embedded one lacks).
    pub fn load(provider: Option<String>, regions_yaml: Option<&str>) -> Result<Self> {
        let catalogue = Catalogue::embedded().map_err(|e| Error::Catalogue(e.to_string()))?;
        let regions = match regions_yaml {
            Some(yaml) => RegionCatalogue::parse(yaml),
            None => RegionCatalogue::embedded(),
        }
        .map_err(|e| Error::Catalogue(e.to_string()))?;
        if let Some(p) = &provider
            && !regions.providers().any(|known| known == p)
        {
            let known: Vec<&str> = regions.providers().collect();
            return Err(Error::Catalogue(format!(
                "--provider {p} is not in the region catalogue; it knows {}",
                known.join(", ")
            )));
        }
        Ok(Self::new(catalogue, regions, provider))
    }

    pub fn forget(&self, tenant: &str) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// Whether the cluster serves Velero's API and the operator sees its objects: `None` while
    /// that cannot be told (discovery failed, or Velero appeared and is being listed).
    pub fn backup_engine(&self) -> Option<bool> {
        *self.backup_engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set by the task that follows Velero's API (`controller::follow_velero`), or by tests.
    pub fn set_backup_engine(&self, engine: Option<bool>) {
        *self.backup_engine.lock().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    fn facts(&self) -> ClusterFacts {
        ClusterFacts {
            regions: self.regions.clone(),
            provider: self.provider.clone(),
            backup_engine: self.backup_engine(),
        }
    }

    /// What the report held before this evaluation: the reflector's copy, unless the operator's
    /// own last write is newer than it.
    fn previous(&self, tenant: &str, stored: Option<&ComplianceReport>) -> Option<ReportStatus> {
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let stored_status = stored.and_then(|r| r.status.clone());
        let Some((written_version, written_status)) = written.get(tenant) else {
            return stored_status;
        };
        let stored_version = stored.and_then(|r| r.resource_version());
        // resourceVersions are etcd revisions in practice; when they do not parse, trust the
        // reflector.
        let stale = match (
            stored_version.as_deref().map(str::parse::<u64>),
            written_version.parse::<u64>(),
        ) {
            (None, _) => true,
            (Some(Ok(seen)), Ok(ours)) => seen < ours,
            _ => false,
        };
        if stale {
            Some(written_status.clone())
        } else {
            stored_status
        }
    }

    /// The report's status as last written, without evaluating.
    pub fn current(&self, tenant: &str, observed: &Observed) -> Option<ReportStatus> {
        let stored = observed.compliance_reports.get(&ObjectRef::new(tenant));
        self.previous(tenant, stored.as_deref())
    }

    /// Evaluates the tenant and brings its report up to date. Returns the report's status, or
    /// `None` when the tenant has no report to write to yet. `key_fingerprint` is what the
    /// key store answered earlier in the same pass, `velero` what Velero held for the tenant.
    pub async fn assess(
        &self,
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
        let previous = self.previous(&name, Some(&stored));

        let namespaces = tenant_namespaces(tenant);
        let mut observed = ctx.observed.view(&name, &namespaces);
        observed.key_fingerprint = Some(key_fingerprint.to_string());
        observed.velero = velero.clone();
        let facts = self.facts();
        let now = jiff::Timestamp::now();
        let evaluations = evaluate(&Inputs {
            tenant,
            desired,
            observed: &observed,
            facts: &facts,
            now,
        });
        let next = next_report(
            &self.catalogue,
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
        ctx.metrics
            .last_evaluation
            .get_or_create(&crate::metrics::TenantLabels {
                tenant: name.clone(),
            })
            .set(now.as_second());

        if previous.as_ref() == Some(&next) {
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
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), (version, next.clone()));
        }

        let changes = transitions(previous.as_ref(), &next);
        announce(tenant, &written, &changes, ctx).await;
        Ok(Some(next))
    }
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
