//! Where a tenant's pods may run (CLD-74, CLD-25): the region label values of the nodes the
//! region catalogue places in an allowed country, and, per environment, the production pool a
//! production pod must use or a non-production pod must avoid. One model, pure, shared by the
//! admission policies, the webhook and the audit.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::{Environment, EnvironmentKind, FranceTravailTenant};
use crate::placement::regions::{Location, REGION_LABEL, RegionCatalogue};

/// The placement rules of one environment's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPlacement {
    pub tenant: String,
    pub environment: String,
    /// Region label values of the nodes in an allowed country (and region, when the tenant
    /// narrows them). Empty: no node may take the tenant's pods.
    pub regions: BTreeSet<String>,
    /// The production pool: required in production, avoided elsewhere.
    pub pool: Pool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pool {
    #[default]
    Any,
    /// Node labels a production pod's node must carry.
    Required(BTreeMap<String, String>),
    /// Pools a non-production pod's node must not belong to (CLD-25).
    Excluded(Vec<BTreeMap<String, String>>),
}

/// The region values of `nodes` whose location is allowed for `tenant`. Pods are confined by
/// the label value alone, so a value is allowed only if every node carrying it is placed in an
/// allowed country: one node of another provider, or unknown to the catalogue, under the same
/// code, and the value is not allowed.
pub fn allowed_regions(
    tenant: &FranceTravailTenant,
    nodes: &[impl AsRef<Node>],
    catalogue: &RegionCatalogue,
    provider: Option<&str>,
) -> BTreeSet<String> {
    let placement = &tenant.spec.placement;
    let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
    for node in nodes {
        let node = node.as_ref();
        let Some(value) = node.labels().get(REGION_LABEL) else {
            continue;
        };
        let allowed = match catalogue.locate_node(node, provider) {
            Location::Placed(places) => {
                !places.is_empty()
                    && places.iter().all(|p| {
                        placement
                            .allowed_countries
                            .iter()
                            .any(|c| c.code() == p.country)
                            && (placement.regions.is_empty()
                                || placement
                                    .regions
                                    .iter()
                                    .any(|r| r.eq_ignore_ascii_case(&p.region)))
                    })
            }
            _ => false,
        };
        *verdicts.entry(value.clone()).or_insert(true) &= allowed;
    }
    verdicts
        .into_iter()
        .filter_map(|(value, allowed)| allowed.then_some(value))
        .collect()
}

/// The node pools of the tenant's production environments.
pub fn production_pools(tenant: &FranceTravailTenant) -> Vec<BTreeMap<String, String>> {
    tenant
        .spec
        .environments
        .iter()
        .filter(|e| e.kind == EnvironmentKind::Production)
        .filter_map(|e| e.node_pool.as_ref().map(|p| p.match_labels.clone()))
        .collect()
}

/// The placement of each environment of the tenant, given the allowed regions. Production
/// pools are exclusive cluster-wide (CLD-25): a non-production environment avoids the
/// tenant's own pools and `other_pools`, every other tenant's.
pub fn placements(
    tenant: &FranceTravailTenant,
    regions: &BTreeSet<String>,
    other_pools: &[BTreeMap<String, String>],
) -> Vec<PodPlacement> {
    let pools: Vec<BTreeMap<String, String>> = production_pools(tenant)
        .into_iter()
        .chain(other_pools.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    tenant
        .spec
        .environments
        .iter()
        .map(|env| PodPlacement {
            tenant: tenant.name_any(),
            environment: env.name.clone(),
            regions: regions.clone(),
            pool: pool_rule(env, &pools),
        })
        .collect()
}

fn pool_rule(env: &Environment, production_pools: &[BTreeMap<String, String>]) -> Pool {
    match (&env.kind, &env.node_pool) {
        (EnvironmentKind::Production, Some(pool)) => Pool::Required(pool.match_labels.clone()),
        (EnvironmentKind::Production, None) => Pool::Any,
        _ if production_pools.is_empty() => Pool::Any,
        _ => Pool::Excluded(production_pools.to_vec()),
    }
}

fn requirement(key: &str, operator: &str, values: Vec<String>) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values),
    }
}

impl PodPlacement {
    /// The node selector terms every pod must be confined to: each is ANDed with every term
    /// the pod declares. Excluding a pool of several labels needs one term per label, since a
    /// node is outside the pool when any one of them differs.
    pub fn terms(&self) -> Vec<Vec<NodeSelectorRequirement>> {
        let region = requirement(REGION_LABEL, "In", self.regions.iter().cloned().collect());
        let mut terms = vec![vec![region]];
        match &self.pool {
            Pool::Any => {}
            Pool::Required(labels) => {
                for (k, v) in labels {
                    terms[0].push(requirement(k, "In", vec![v.clone()]));
                }
            }
            Pool::Excluded(pools) => {
                for pool in pools {
                    terms = terms
                        .iter()
                        .flat_map(|term| {
                            pool.iter().map(move |(k, v)| {
                                let mut t = term.clone();
                                t.push(requirement(k, "NotIn", vec![v.clone()]));
                                t
                            })
                        })
                        .collect();
                }
            }
        }
        terms
    }

    /// What the pod's required node affinity becomes: each term it declares, intersected with
    /// each of ours. A pod that declares none gets ours.
    pub fn confine(&self, pod: &Pod) -> Vec<NodeSelectorTerm> {
        let declared: Vec<NodeSelectorTerm> = required_terms(pod)
            .filter(|terms| !terms.is_empty())
            .unwrap_or_else(|| vec![NodeSelectorTerm::default()]);
        let ours = self.terms();
        declared
            .iter()
            .flat_map(|term| {
                ours.iter().map(move |extra| {
                    let mut t = term.clone();
                    let mut expressions = t.match_expressions.take().unwrap_or_default();
                    for requirement in extra {
                        if !expressions.contains(requirement) {
                            expressions.push(requirement.clone());
                        }
                    }
                    t.match_expressions = Some(expressions);
                    t
                })
            })
            .collect()
    }

    /// The JSON patch that confines the pod, for a mutating webhook; empty when it already is.
    pub fn patch(&self, pod: &Pod) -> Vec<Value> {
        if self.is_confined(pod) {
            return Vec::new();
        }
        let required = NodeSelector {
            node_selector_terms: self.confine(pod),
        };
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        let (path, value) = match (affinity, node_affinity) {
            (None, _) => (
                "/spec/affinity",
                json!(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(required),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            ),
            (Some(_), None) => (
                "/spec/affinity/nodeAffinity",
                json!(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(required),
                    ..Default::default()
                }),
            ),
            (Some(_), Some(_)) => (
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!(required),
            ),
        };
        // `add` replaces a member that exists, so one operation fits every case.
        vec![json!({"op": "add", "path": path, "value": value})]
    }

    /// Why the pod could run outside its placement, or nothing. The same judgement as the
    /// ValidatingAdmissionPolicy: every required term must hold one of our terms.
    pub fn violations(&self, pod: &Pod) -> Vec<String> {
        let mut problems = Vec::new();
        let rule = self.rule();
        if self.regions.is_empty() {
            problems.push(format!(
                "no node of the cluster is in a region tenant {} allows ({rule})",
                self.tenant
            ));
        }
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            problems.push(format!(
                "spec.nodeName {node} bypasses the scheduler and the placement of tenant {}",
                self.tenant
            ));
        }
        if !self.is_confined(pod) {
            problems.push(format!(
                "the pod's required node affinity must keep it on nodes in regions {} ({rule})",
                self.describe()
            ));
        }
        problems
    }

    /// Whether every required term of the pod holds one of our terms.
    pub fn is_confined(&self, pod: &Pod) -> bool {
        let ours = self.terms();
        required_terms(pod).is_some_and(|terms| {
            !terms.is_empty()
                && terms.iter().all(|term| {
                    let have = term.match_expressions.as_deref().unwrap_or_default();
                    ours.iter()
                        .any(|extra| extra.iter().all(|r| implied(have, r)))
                })
        })
    }

    fn rule(&self) -> &'static str {
        match self.pool {
            Pool::Any => "CLD-74",
            _ => "CLD-74, CLD-25",
        }
    }

    /// `eu-west-3, francecentral, production pool node-pool=production`.
    pub fn describe(&self) -> String {
        let regions = self.regions.iter().cloned().collect::<Vec<_>>().join(", ");
        let pool = |labels: &BTreeMap<String, String>| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.pool {
            Pool::Any => format!("[{regions}]"),
            Pool::Required(labels) => {
                format!("[{regions}] on the production pool {}", pool(labels))
            }
            Pool::Excluded(pools) => format!(
                "[{regions}] off the production pool {}",
                pools.iter().map(pool).collect::<Vec<_>>().join("; ")
            ),
        }
    }
}

fn required_terms(pod: &Pod) -> Option<Vec<NodeSelectorTerm>> {
    Some(
        pod.spec
            .as_ref()?
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()?
            .node_selector_terms
            .clone(),
    )
}

/// Whether the requirements `have` imply `wanted`: an `In` is implied by an `In` on the same
/// key with a subset of its values; a `NotIn` by a `NotIn` with a superset.
fn implied(have: &[NodeSelectorRequirement], wanted: &NodeSelectorRequirement) -> bool {
    let values = |r: &NodeSelectorRequirement| -> BTreeSet<String> {
        r.values.iter().flatten().cloned().collect()
    };
    let want = values(wanted);
    have.iter().filter(|r| r.key == wanted.key).any(|r| {
        match (wanted.operator.as_str(), r.operator.as_str()) {
            ("In", "In") => values(r).is_subset(&want),
            ("NotIn", "NotIn") => values(r).is_superset(&want),
            ("NotIn", "In") => values(r).is_disjoint(&want),
            _ => false,
        }
    })
}

/// The placement of every tenant namespace, kept by the controller and read by the webhook.
#[derive(Clone, Default)]
pub struct PlacementIndex(
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, PodPlacement>>>,
);

impl PlacementIndex {
    /// The placement of pods created in `namespace`, if it is a tenant namespace.
    pub fn get(&self, namespace: &str) -> Option<PodPlacement> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .cloned()
    }

    pub fn set(&self, namespace: String, placement: PodPlacement) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace, placement);
    }

    pub fn remove(&self, namespace: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(namespace);
    }

    /// Records the placements of a tenant's environments, each under its namespace.
    pub fn extend(&self, tenant: &str, placements: &[PodPlacement]) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        for placement in placements {
            index.insert(
                crate::meta::namespace_name(tenant, &placement.environment),
                placement.clone(),
            );
        }
    }
}
