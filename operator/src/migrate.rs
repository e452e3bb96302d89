//! `ft-operator migrate`: removes the per-environment and per-tenant admission policies that
//! versions before the cluster-wide ones made (`ft-placement-<namespace>`,
//! `ft-claims-<tenant>`), each only once the cluster-wide policies are in place and every
//! namespace it covered has its EnvironmentPolicy: at no moment is a tenant pod unconfined or
//! a claim unchecked. Run once, with rights the operator does not hold (deleting admission
//! policies), by the platform team or the chart's upgrade hook.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use ft_core::api::{ENVIRONMENT_POLICY, EnvironmentPolicy, FranceTravailTenant, labels};
use ft_core::placement::Confinement;

/// What a migration removed, and what it left because its namespaces are not covered yet.
#[derive(Debug, Default)]
pub struct Migration {
    pub removed: Vec<String>,
    pub waiting: Vec<String>,
}

/// The old objects: the operator's, of one tenant, named like the per-environment or
/// per-tenant policies.
fn old<K: Resource>(object: &K) -> bool {
    let labels = object.meta().labels.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    labels.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE)
        && labels.contains_key(labels::TENANT)
        && (name.starts_with("ft-placement-") || name.starts_with("ft-claims-"))
}

/// The namespaces an old object covered: its environment's namespace, or every namespace of
/// its tenant for a claims policy.
fn covered<K: Resource>(
    object: &K,
    tenant_namespaces: &dyn Fn(&str) -> Vec<String>,
) -> Vec<String> {
    let name = object.meta().name.clone().unwrap_or_default();
    match name.strip_prefix("ft-placement-") {
        Some(namespace) => vec![namespace.to_string()],
        None => {
            let labels = object.meta().labels.clone().unwrap_or_default();
            tenant_namespaces(
                labels
                    .get(labels::TENANT)
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
        }
    }
}

pub async fn migrate(client: &Client, confinement: Confinement) -> anyhow::Result<Migration> {
    let problems = crate::admission::problems(client, confinement).await;
    if !problems.is_empty() {
        bail!(
            "the cluster-wide admission policies are not in place ({}): install admission/ first; nothing was removed",
            problems.join("; ")
        );
    }
    let policies: Api<EnvironmentPolicy> = Api::all(client.clone());
    let with_policy: BTreeSet<String> = policies
        .list(&ListParams::default())
        .await
        .context("listing EnvironmentPolicies")?
        .items
        .into_iter()
        .filter(|p| p.name_any() == ENVIRONMENT_POLICY)
        .filter_map(|p| p.namespace())
        .collect();
    // Every namespace of each tenant, from its spec: a claims policy goes only once all have
    // their EnvironmentPolicy.
    let tenants: Vec<FranceTravailTenant> = Api::<FranceTravailTenant>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing tenants")?
        .items;
    let tenant_namespaces = |tenant: &str| -> Vec<String> {
        tenants
            .iter()
            .find(|t| t.name_any() == tenant)
            .map(|t| ft_core::meta::tenant_namespaces(t).into_iter().collect())
            .unwrap_or_default()
    };
    let mut migration = Migration::default();
    // Bindings before their policies, mutating before validating: the refusal goes last.
    remove::<MutatingAdmissionPolicyBinding>(
        client,
        &with_policy,
        &tenant_namespaces,
        &mut migration,
    )
    .await?;
    remove::<MutatingAdmissionPolicy>(client, &with_policy, &tenant_namespaces, &mut migration)
        .await?;
    remove::<ValidatingAdmissionPolicyBinding>(
        client,
        &with_policy,
        &tenant_namespaces,
        &mut migration,
    )
    .await?;
    remove::<ValidatingAdmissionPolicy>(client, &with_policy, &tenant_namespaces, &mut migration)
        .await?;
    Ok(migration)
}

async fn remove<K>(
    client: &Client,
    with_policy: &BTreeSet<String>,
    tenant_namespaces: &dyn Fn(&str) -> Vec<String>,
    migration: &mut Migration,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    let served = match api
        .list(&ListParams::default().labels(labels::MANAGED_SELECTOR))
        .await
    {
        Ok(list) => list.items,
        // A kind the API server does not serve has nothing to migrate.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", K::kind(&()))),
    };
    for object in served.iter().filter(|o| old(*o)) {
        let key = format!("{}/{}", K::kind(&()), object.name_any());
        let namespaces = covered(object, tenant_namespaces);
        if namespaces.is_empty() || !namespaces.iter().all(|ns| with_policy.contains(ns)) {
            migration.waiting.push(key);
            continue;
        }
        match api
            .delete(&object.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => migration.removed.push(key),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {key}")),
        }
    }
    Ok(())
}
