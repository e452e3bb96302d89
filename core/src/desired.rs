//! Everything the operator wants for one tenant, from one function: [`desired`] takes a
//! validated tenant, the cluster's facts and the time, and returns every object. `run` applies
//! it, `plan` prints it, the tests and the benchmark call it: what `plan` shows is exactly what
//! `run` applies. No client, no clock, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::access::role_bindings;
use crate::api::{
    ComplianceReport, EnvironmentPolicy, ExposedService, FranceTravailTenant, ReportSpec, labels,
};
use crate::backup::velero::Schedule;
use crate::backup::{schedules, with_scratch};
use crate::encryption::{class_name, storage_class};
use crate::isolation::{limit_range, namespace, resource_quota};
use crate::meta::{child_labels, namespace_name};
use crate::network::network_policies;
use crate::placement::regions::RegionCatalogue;
use crate::placement::{PodPlacement, allowed_regions, environment_policy, placements};
use crate::settings::BuildSettings;
use crate::validate::ValidTenant;

/// What the cluster and the operator's settings tell the builders, besides the tenant.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub settings: &'a BuildSettings,
    /// The cluster's nodes: their regions decide where pods may run (CLD-74).
    pub nodes: &'a [Arc<Node>],
    pub catalogue: &'a RegionCatalogue,
    /// The cluster's provider, when the platform team names it (`--provider`).
    pub provider: Option<&'a str>,
    /// Whether the cluster serves Velero; `None` while not known, and Velero's objects are
    /// then left as they are.
    pub velero: Option<bool>,
    /// The environments whose restore test is in progress: each gets its scratch namespace.
    pub restoring: &'a BTreeSet<String>,
    /// Every tenant's production node pools: no other environment's pod may run there
    /// (CLD-25).
    pub production_pools: &'a [BTreeMap<String, String>],
}

/// Every object the operator wants for `tenant` on a cluster with these `facts` at `now`.
pub fn desired(tenant: ValidTenant<'_>, facts: &Facts<'_>, now: Timestamp) -> Desired {
    let tenant = tenant.tenant();
    // A restore test in progress has its scratch environment, built like any other.
    let effective = with_scratch(tenant, facts.restoring);
    let regions = allowed_regions(&effective, facts.nodes, facts.catalogue, facts.provider);
    let desired = with_placement(
        build(&effective, facts.settings),
        &effective,
        &regions,
        facts.production_pools,
    );
    let desired = with_access(desired, tenant, now);
    with_backups(desired, tenant, facts.settings, facts.velero)
}

/// Every object the operator wants for one tenant. `apply` destructures it field by field, so
/// a kind added here and not applied there fails to compile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub namespaces: Vec<Namespace>,
    pub network_policies: Vec<NetworkPolicy>,
    pub resource_quotas: Vec<ResourceQuota>,
    pub limit_ranges: Vec<LimitRange>,
    /// The access grants in force, one per grant per environment (see `with_access`).
    pub role_bindings: Vec<RoleBinding>,
    /// The tenant's encrypted class (CLD-21), when it declares storage.
    pub storage_classes: Vec<StorageClass>,
    /// The tenant's one report; its status is written by the evaluator, not here.
    pub compliance_reports: Vec<ComplianceReport>,
    /// What the cluster-wide admission policies enforce in each environment's namespace:
    /// placement and storage class (see `with_placement`).
    pub environment_policies: Vec<EnvironmentPolicy>,
    /// The Velero Schedules, one per environment (see `with_backups`). `None` while the
    /// cluster is not known to serve Velero: its objects are then left as they are.
    pub schedules: Option<Vec<Schedule>>,
    /// Where each environment's pods may run, for the webhook. Not an object: never applied,
    /// and left out of `to_values`.
    pub placements: Vec<PodPlacement>,
}

impl Desired {
    /// Every object, in the order they are applied, as plain JSON (for `plan`).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        fn push<T: Serialize>(
            out: &mut Vec<serde_json::Value>,
            items: &[T],
        ) -> Result<(), serde_json::Error> {
            for item in items {
                out.push(serde_json::to_value(item)?);
            }
            Ok(())
        }
        let Desired {
            namespaces,
            network_policies,
            resource_quotas,
            limit_ranges,
            role_bindings,
            storage_classes,
            compliance_reports,
            environment_policies,
            schedules,
            placements: _,
        } = self;
        let mut out = Vec::new();
        push(&mut out, namespaces)?;
        push(&mut out, environment_policies)?;
        push(&mut out, network_policies)?;
        push(&mut out, resource_quotas)?;
        push(&mut out, limit_ranges)?;
        push(&mut out, role_bindings)?;
        push(&mut out, storage_classes)?;
        push(&mut out, compliance_reports)?;
        push(&mut out, schedules.as_deref().unwrap_or_default())?;
        Ok(out)
    }
}

/// The objects that follow from the tenant alone.
fn build(tenant: &FranceTravailTenant, settings: &BuildSettings) -> Desired {
    let mut desired = Desired::default();
    for env in &tenant.spec.environments {
        let ns = namespace_name(&tenant.name_any(), &env.name);
        let labels = child_labels(tenant, env);
        desired.namespaces.push(namespace(&ns, &labels));
        desired
            .network_policies
            .extend(network_policies(tenant, env, &ns, &labels, settings));
        desired
            .resource_quotas
            .push(resource_quota(env, &ns, &labels));
        desired
            .limit_ranges
            .push(limit_range(tenant, env, &ns, &labels));
    }
    desired.compliance_reports.push(build_report(tenant));
    desired.storage_classes.extend(storage_class(
        tenant,
        &settings.profiles,
        &settings.key_namespace,
    ));
    desired
}

/// Adds the EnvironmentPolicy of every environment: where its pods may run (CLD-74, CLD-25),
/// confined to `regions`, the region values of the cluster's nodes in allowed countries (a
/// cluster fact, hence apart from `build`), and the class its claims must use (CLD-21).
fn with_placement(
    mut desired: Desired,
    tenant: &FranceTravailTenant,
    regions: &BTreeSet<String>,
    production_pools: &[BTreeMap<String, String>],
) -> Desired {
    let confined = placements(tenant, regions, production_pools);
    let class = tenant
        .spec
        .storage
        .as_ref()
        .map(|_| class_name(&tenant.name_any()));
    for placement in &confined {
        let Some(env) = tenant
            .spec
            .environments
            .iter()
            .find(|e| e.name == placement.environment)
        else {
            continue;
        };
        let ns = namespace_name(&tenant.name_any(), &env.name);
        desired.environment_policies.push(environment_policy(
            placement,
            &ns,
            &child_labels(tenant, env),
            env.kind,
            class.clone(),
            exposed_services(tenant, &env.name),
        ));
    }
    desired.placements = confined;
    desired
}

/// The Services the ingress flows of `environment` expose outside the cluster (CLD-36).
fn exposed_services(tenant: &FranceTravailTenant, environment: &str) -> Vec<ExposedService> {
    let mut exposed: Vec<ExposedService> = tenant
        .spec
        .network
        .ingress
        .iter()
        .filter(|f| f.environments.is_empty() || f.environments.iter().any(|e| e == environment))
        .filter_map(|f| {
            let expose = f.expose.as_ref()?;
            Some(ExposedService {
                name: expose.service.clone(),
                type_: expose.type_.as_str().into(),
                flow: f.name.clone(),
            })
        })
        .collect();
    exposed.sort();
    exposed
}

/// Adds the RoleBindings of the access grants in force at `now`: time, like the cluster's
/// regions, is an input here, so the builders stay pure.
fn with_access(mut desired: Desired, tenant: &FranceTravailTenant, now: Timestamp) -> Desired {
    desired.role_bindings = role_bindings(tenant, now);
    desired
}

/// Adds the tenant's Velero Schedules, when the cluster serves Velero (`engine`: a cluster
/// fact, like the regions). With `engine` unknown, Velero's objects are left untouched.
fn with_backups(
    mut desired: Desired,
    tenant: &FranceTravailTenant,
    settings: &BuildSettings,
    engine: Option<bool>,
) -> Desired {
    desired.schedules = match engine {
        Some(true) => Some(schedules(tenant, &settings.velero_namespace)),
        // Velero is gone: nothing of it is left to apply or to prune.
        Some(false) => Some(Vec::new()),
        None => None,
    };
    desired
}

/// The report is named like the tenant and owned by it, so it goes when the tenant goes. Offline
/// (`plan`) the tenant has no uid yet, hence no owner reference.
fn build_report(tenant: &FranceTravailTenant) -> ComplianceReport {
    let labels = BTreeMap::from([
        (labels::TENANT.into(), tenant.name_any()),
        (
            labels::DATA_CLASSIFICATION.into(),
            tenant.spec.data_classification.as_str().into(),
        ),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
    ]);
    let mut report = ComplianceReport::new(
        &tenant.name_any(),
        ReportSpec {
            tenant: tenant.name_any(),
        },
    );
    report.metadata.labels = Some(labels);
    report.metadata.owner_references = tenant.controller_owner_ref(&()).map(|o| vec![o]);
    report
}
