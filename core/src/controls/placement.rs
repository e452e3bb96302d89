//! The checks of placement (SEP-1, GEO-1, GEO-2, GEO-3; CLD-25, CLD-74): production on its
//! own pool, pods and volumes in allowed countries, the admission policies in place.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use super::finding::*;
use super::view::*;
use crate::api::{ControlResult, EnvironmentKind};
use crate::meta::namespace_name;
use crate::meta::object_key;
use crate::placement::regions::{Location, REGION_LABEL};
use crate::placement::{Confinement, PLACEMENT_POLICY};

pub(super) fn node_labels(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

pub(super) fn node_named<'a>(observed: &'a TenantView, name: &str) -> Option<&'a Node> {
    observed
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .map(|n| &**n)
}

/// The pods of a namespace that are bound to a node, with that node's name.
pub(super) fn bound_pods<'a>(
    observed: &'a TenantView,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = (&'a Pod, &'a str)> {
    observed.pods.iter().filter_map(move |pod| {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        (namespace.is_none() || pod.metadata.namespace.as_deref() == namespace)
            .then_some((&**pod, node))
    })
}

pub(super) fn production_pool(inputs: &Inputs) -> Finding {
    let tenant = inputs.tenant;
    let name = tenant.name_any();
    let pools: Vec<_> = tenant
        .spec
        .environments
        .iter()
        .filter(|e| e.kind == EnvironmentKind::Production)
        .collect();
    if pools.is_empty() {
        return not_applicable(
            "NoProduction",
            "the tenant declares no production environment",
        );
    }
    let in_pool = |node: &Node, labels: &BTreeMap<String, String>| {
        let have = node_labels(node);
        labels.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    let mut problems = Vec::new();
    for env in &pools {
        let Some(pool) = &env.node_pool else {
            problems.push(format!(
                "production environment {} declares no node pool",
                env.name
            ));
            continue;
        };
        let selector = selector_text(&pool.match_labels);
        if !inputs
            .observed
            .nodes
            .iter()
            .any(|n| in_pool(n, &pool.match_labels))
        {
            problems.push(format!(
                "no node carries {selector}, the pool of production environment {}",
                env.name
            ));
        }
        let ns = namespace_name(&name, &env.name);
        for (pod, node) in bound_pods(inputs.observed, Some(&ns)) {
            if !node_named(inputs.observed, node).is_some_and(|n| in_pool(n, &pool.match_labels)) {
                problems.push(format!(
                    "{} runs on Node/{node}, outside the production pool {selector}",
                    object_key(pod)
                ));
            }
        }
    }
    let production: BTreeSet<String> = pools
        .iter()
        .map(|e| namespace_name(&name, &e.name))
        .collect();
    for (pod, node) in bound_pods(inputs.observed, None) {
        if production.contains(pod.metadata.namespace.as_deref().unwrap_or_default()) {
            continue;
        }
        let on_pool = node_named(inputs.observed, node).is_some_and(|n| {
            pools
                .iter()
                .filter_map(|e| e.node_pool.as_ref())
                .any(|p| in_pool(n, &p.match_labels))
        });
        if on_pool {
            problems.push(format!(
                "{} is not production but runs on Node/{node} of the production pool",
                object_key(pod)
            ));
        }
    }
    // Pools are exclusive cluster-wide: any other namespace's pod there is named, the
    // platform's daemons excepted (the operator's `--platform-namespaces`).
    for pod in &inputs.observed.pool_pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        problems.push(format!(
            "{} of another namespace runs on Node/{node} of the tenant's production pool",
            object_key(&**pod)
        ));
    }
    judge(
        problems,
        "ProductionNotSeparated",
        "ProductionSeparated",
        "production pods run on their own pool, and nothing else runs there but the platform's daemons".into(),
    )
}

pub(super) fn selector_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a location is not allowed for the tenant, or `None` if it is. A location the region
/// catalogue cannot establish is not allowed: CLD-74 needs proof, not absence of evidence.
pub(super) fn outside(inputs: &Inputs, location: &Location) -> Option<String> {
    let placement = &inputs.tenant.spec.placement;
    let places = match location {
        Location::Placed(places) if !places.is_empty() => places,
        _ => return Some(format!("its location cannot be established: {location}")),
    };
    places.iter().find_map(|place| {
        if !placement
            .allowed_countries
            .iter()
            .any(|c| c.code() == place.country)
        {
            Some(format!("{place}, not an allowed country"))
        } else if !placement.regions.is_empty()
            && !placement
                .regions
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&place.region))
        {
            Some(format!(
                "region {} is not among the tenant's regions",
                place.region
            ))
        } else {
            None
        }
    })
}

pub(super) fn node_outside(inputs: &Inputs, node: &Node) -> Option<String> {
    let location = inputs
        .facts
        .regions
        .locate_node(node, inputs.facts.provider.as_deref());
    outside(inputs, &location)
}

pub(super) fn allowed_countries(inputs: &Inputs) -> String {
    inputs
        .tenant
        .spec
        .placement
        .allowed_countries
        .iter()
        .map(|c| c.code())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn pods_in_allowed_countries(inputs: &Inputs) -> Finding {
    let mut problems = Vec::new();
    for (pod, node_name) in bound_pods(inputs.observed, None) {
        match node_named(inputs.observed, node_name) {
            None => problems.push(format!(
                "{} runs on Node/{node_name}, which is not in the cluster",
                object_key(pod)
            )),
            Some(node) => {
                if let Some(why) = node_outside(inputs, node) {
                    problems.push(format!(
                        "{} runs on Node/{node_name}: {why}",
                        object_key(pod)
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return finding(
            ControlResult::Fail,
            "PodsOutsideAllowedCountries",
            listing(&problems),
        );
    }
    let schedulable_here = inputs.observed.nodes.iter().any(|n| {
        !n.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
            && node_outside(inputs, n).is_none()
    });
    if !schedulable_here {
        return finding(
            ControlResult::Fail,
            "NoAllowedNodes",
            format!(
                "no schedulable node is in an allowed country ({}): the tenant's pods have nowhere they may run. Label nodes with {REGION_LABEL} from the region catalogue, or add nodes there",
                allowed_countries(inputs)
            ),
        );
    }
    pass(
        "InAllowedCountries",
        format!(
            "every pod runs on a node in an allowed country ({})",
            allowed_countries(inputs)
        ),
    )
}

pub(super) fn volumes_in_allowed_countries(inputs: &Inputs) -> Finding {
    let bound: Vec<_> = inputs
        .observed
        .persistent_volume_claims
        .iter()
        .filter_map(|pvc| Some((pvc, pvc.spec.as_ref()?.volume_name.as_deref()?)))
        .collect();
    if bound.is_empty() {
        return not_applicable("NoVolumes", "the tenant has no bound volume");
    }
    let mut problems = Vec::new();
    for (pvc, volume) in bound {
        let pv = inputs
            .observed
            .persistent_volumes
            .iter()
            .find(|pv| pv.metadata.name.as_deref() == Some(volume));
        let Some(pv) = pv else {
            problems.push(format!(
                "{} is bound to PersistentVolume/{volume}, which is not in the cluster",
                object_key(&**pvc)
            ));
            continue;
        };
        let location = inputs
            .facts
            .regions
            .locate_volume(pv, inputs.facts.provider.as_deref());
        if let Some(why) = outside(inputs, &location) {
            problems.push(format!(
                "{} is stored on PersistentVolume/{volume}: {why}",
                object_key(&**pvc)
            ));
        }
    }
    judge(
        problems,
        "VolumesOutsideAllowedCountries",
        "InAllowedCountries",
        format!(
            "every volume is pinned to an allowed country ({})",
            allowed_countries(inputs)
        ),
    )
}

pub(super) fn placement_admission(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    if desired.environment_policies.is_empty() {
        return finding(
            ControlResult::Unknown,
            "NotBuilt",
            "no EnvironmentPolicy was built for the tenant",
        );
    }
    let native = inputs.facts.confinement == Confinement::Native;
    let mut problems = fixed_drift(inputs, PLACEMENT_POLICY, native);
    problems.extend(drift(
        &desired.environment_policies,
        &inputs.observed.environment_policies,
        spec_mismatch,
    ));
    let confined = if native {
        "confined by the cluster's MutatingAdmissionPolicy"
    } else {
        "confined by the operator's webhook"
    };
    judge(
        problems,
        ADMISSION_POLICY_MISSING,
        "EnforcedAtAdmission",
        format!(
            "new pods of each environment are {confined} and refused by its ValidatingAdmissionPolicy if they could leave the allowed regions, both reading each namespace's EnvironmentPolicy"
        ),
    )
}
