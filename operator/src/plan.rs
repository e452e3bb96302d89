//! `ft-operator plan`: what `run` would apply for a tenant, from cluster facts given on the
//! command line (a file of Node objects, the provider, whether Velero is served) or read from
//! the current cluster (`--from-cluster`). The rendering is `ft_core::plan`, over the same
//! `desired` the reconcile pass applies.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use ft_core::api::FranceTravailTenant;
use ft_core::desired::Facts;
use ft_core::placement::Confinement;
use ft_core::plan::{PlanError, parse_tenants, plan_against};
use ft_core::settings::BuildSettings;

use crate::compliance::Compliance;
use crate::watch::{discover_confinement, discover_velero};

/// The cluster facts `plan` renders for, whichever way they were learnt.
pub struct ClusterFacts {
    pub nodes: Vec<Arc<Node>>,
    /// `None` when not known: Velero's objects are then left out, as `run` leaves them alone.
    pub velero: Option<bool>,
    pub confinement: Confinement,
}

/// What the cluster at hand says: its nodes, whether it serves MutatingAdmissionPolicies and
/// Velero, and, when asked by name, the tenants as stored (with their uid, so the owner
/// references are those `run` writes), and those of the tenants in `manifests`, when stored,
/// to tell what changes in their environments.
pub async fn read_cluster(
    client: &Client,
    tenants: &[String],
    manifests: Option<&str>,
) -> Result<(ClusterFacts, Vec<FranceTravailTenant>), kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let api: Api<FranceTravailTenant> = Api::all(client.clone());
    let mut stored = Vec::new();
    for name in tenants {
        stored.push(api.get(name).await?);
    }
    // A manifest that does not parse is reported by the rendering, naming the field.
    let named = manifests
        .and_then(|m| parse_tenants(m).ok())
        .unwrap_or_default();
    for tenant in named {
        if let Some(found) = api.get_opt(&tenant.name_any()).await? {
            stored.push(found);
        }
    }
    Ok((
        ClusterFacts {
            nodes,
            velero: discover_velero(client).await,
            confinement: discover_confinement(client).await,
        },
        stored,
    ))
}

/// Renders `tenants_yaml` for a cluster with these facts, at `now`; against `stored`, the
/// tenants as the cluster holds them, the environments removed and added are listed first.
pub fn render(
    tenants_yaml: &str,
    stored: &[FranceTravailTenant],
    mut settings: BuildSettings,
    cluster: &ClusterFacts,
    compliance: &Compliance,
    now: Timestamp,
) -> Result<String, PlanError> {
    settings.confinement = cluster.confinement;
    let facts = Facts {
        settings: &settings,
        nodes: &cluster.nodes,
        catalogue: &compliance.regions,
        provider: compliance.provider.as_deref(),
        velero: cluster.velero,
        restoring: &BTreeSet::new(),
        production_pools: &[],
    };
    plan_against(tenants_yaml, stored, &facts, now)
}
