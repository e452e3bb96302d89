//! The evaluator: a pure function from the tenant, what the operator built for it, and what is
//! observed in the cluster to one finding per control. No client, no clock: the time is an
//! input, so every control is unit-tested from fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PartialObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::access;
use crate::api::{
    Backup, ControlResult, DeletionPolicy, EnvironmentKind, FranceTravailTenant, labels,
};
use crate::apply::{differs, object_key, owned_by};
use crate::backup;
use crate::backup::VeleroView;
use crate::build::{DEFAULT_DENY, Desired, namespace_name};
use crate::encryption::class_name;
use crate::placement::allowed_regions;
use crate::regions::{Location, REGION_LABEL, RegionCatalogue};
use crate::validate::quantity_nanos;

/// The reason of a control whose capability this version of the operator does not have yet.
/// Such a control is `Unknown`, never `Pass`, and does not by itself make a tenant `Unknown`.
pub const NOT_IN_THIS_VERSION: &str = "NotInThisVersion";

/// The default StorageClass is marked by this annotation.
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// A right not reviewed for this long fails CLD-17.
const REVIEW_PERIOD: SignedDuration = SignedDuration::from_hours(365 * 24);
/// Offending objects named in one message, at most.
const NAMED: usize = 10;

/// What the cluster holds in and for one tenant's namespaces.
#[derive(Clone, Debug, Default)]
pub struct TenantView {
    /// The tenant's namespaces that exist.
    pub namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    /// Every NetworkPolicy in those namespaces, the operator's and any other.
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub resource_quotas: Vec<Arc<ResourceQuota>>,
    pub limit_ranges: Vec<Arc<LimitRange>>,
    pub pods: Vec<Arc<Pod>>,
    pub persistent_volume_claims: Vec<Arc<PersistentVolumeClaim>>,
    /// The volumes bound to those claims.
    pub persistent_volumes: Vec<Arc<PersistentVolume>>,
    pub role_bindings: Vec<Arc<RoleBinding>>,
    /// Every node of the cluster.
    pub nodes: Vec<Arc<Node>>,
    /// Every StorageClass of the cluster.
    pub storage_classes: Vec<Arc<StorageClass>>,
    /// The tenant's placement admission objects.
    pub validating_admission_policies: Vec<Arc<ValidatingAdmissionPolicy>>,
    pub validating_admission_policy_bindings: Vec<Arc<ValidatingAdmissionPolicyBinding>>,
    pub mutating_admission_policies: Vec<Arc<MutatingAdmissionPolicy>>,
    pub mutating_admission_policy_bindings: Vec<Arc<MutatingAdmissionPolicyBinding>>,
    /// The fingerprint of the tenant's key in the key store, if it has one.
    pub key_fingerprint: Option<String>,
    /// What Velero holds for the tenant.
    pub velero: VeleroView,
}

/// Facts about the cluster as a whole.
#[derive(Clone, Debug)]
pub struct ClusterFacts {
    pub regions: Arc<RegionCatalogue>,
    /// The cloud provider named by the platform team, for region codes several providers use.
    pub provider: Option<String>,
    /// Whether the cluster serves Velero's API; `None` when it could not be told.
    pub backup_engine: Option<bool>,
}

pub struct Inputs<'a> {
    pub tenant: &'a FranceTravailTenant,
    /// What `build` made of the tenant, or why it could not: the spec is invalid.
    pub desired: Result<&'a Desired, &'a str>,
    pub observed: &'a TenantView,
    pub facts: &'a ClusterFacts,
    pub now: Timestamp,
}

/// The result of one control, with a reason and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub result: ControlResult,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub id: &'static str,
    pub finding: Finding,
}

/// Judges one control.
pub type Judge = fn(&Inputs) -> Finding;

/// Every control the operator evaluates, by catalogue id. A test checks this list against the
/// catalogue both ways.
pub const EVALUATORS: &[(&str, Judge)] = &[
    ("CLS-1", classification_labels),
    ("ISO-1", isolated_namespaces),
    ("ISO-2", quotas),
    ("NET-1", default_deny),
    ("NET-2", flow_matrix),
    ("SEP-1", production_pool),
    ("GEO-1", pods_in_allowed_countries),
    ("GEO-2", volumes_in_allowed_countries),
    ("GEO-3", placement_admission),
    ("ENC-1", encrypted_volumes),
    ("ENC-2", tenant_key),
    ("BAK-1", backups),
    ("BAK-2", restore_tests),
    ("ACC-1", declared_bindings),
    ("ACC-2", expiring_rights),
    ("ACC-3", reviewed_rights),
    ("DEL-1", crypto_shredding),
    ("REV-1", final_export),
];

pub fn evaluate(inputs: &Inputs) -> Vec<Evaluation> {
    EVALUATORS
        .iter()
        .map(|(id, judge)| Evaluation {
            id,
            finding: judge(inputs),
        })
        .collect()
}

fn finding(result: ControlResult, reason: &str, message: impl Into<String>) -> Finding {
    Finding {
        result,
        reason: reason.into(),
        message: message.into(),
    }
}

fn pass(reason: &str, message: impl Into<String>) -> Finding {
    finding(ControlResult::Pass, reason, message)
}

fn not_applicable(reason: &str, message: impl Into<String>) -> Finding {
    finding(ControlResult::NotApplicable, reason, message)
}

/// Fails with every problem found, or passes with `ok`.
fn judge(problems: Vec<String>, fail_reason: &str, pass_reason: &str, ok: String) -> Finding {
    if problems.is_empty() {
        return pass(pass_reason, ok);
    }
    finding(ControlResult::Fail, fail_reason, listing(&problems))
}

/// `a; b; c; and 4 more`: messages stay short enough for `kubectl describe`.
fn listing(problems: &[String]) -> String {
    let mut message = problems
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > NAMED {
        message.push_str(&format!("; and {} more", problems.len() - NAMED));
    }
    message
}

/// Controls judged by comparing the cluster with what was built cannot be judged from an
/// invalid spec: nothing was built.
fn built<'a>(inputs: &Inputs<'a>) -> Result<&'a Desired, Finding> {
    inputs.desired.map_err(|why| {
        finding(
            ControlResult::Unknown,
            "InvalidSpec",
            format!("the tenant's spec is invalid, so nothing was built to compare with: {why}"),
        )
    })
}

fn namespace<'a>(observed: &'a TenantView, name: &str) -> Option<&'a PartialObjectMeta<Namespace>> {
    observed
        .namespaces
        .iter()
        .find(|ns| ns.metadata.name.as_deref() == Some(name))
        .map(|ns| &**ns)
}

fn find<'a, K: Resource>(objects: &'a [Arc<K>], like: &impl Resource) -> Option<&'a K> {
    objects
        .iter()
        .find(|o| o.meta().name == like.meta().name && o.meta().namespace == like.meta().namespace)
        .map(|o| &**o)
}

fn classification_labels(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    const MARKS: [&str; 4] = [
        labels::TENANT,
        labels::ENVIRONMENT,
        labels::ENVIRONMENT_KIND,
        labels::DATA_CLASSIFICATION,
    ];
    let mut problems = Vec::new();
    for want in &desired.namespaces {
        let name = want.name_any();
        let Some(have) = namespace(inputs.observed, &name) else {
            problems.push(format!("Namespace/{name} is missing"));
            continue;
        };
        for mark in MARKS {
            let expected = want.labels().get(mark);
            let found = have.metadata.labels.as_ref().and_then(|l| l.get(mark));
            if expected != found {
                problems.push(format!(
                    "Namespace/{name} has {mark}={}, expected {}",
                    found.map_or("(none)", String::as_str),
                    expected.map_or("(none)", String::as_str)
                ));
            }
        }
    }
    judge(
        problems,
        "Unmarked",
        "Marked",
        format!(
            "every namespace is marked {}",
            inputs.tenant.spec.data_classification.as_str()
        ),
    )
}

fn isolated_namespaces(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let tenant = inputs.tenant.name_any();
    let mut problems = Vec::new();
    for want in &desired.namespaces {
        let name = want.name_any();
        let Some(have) = namespace(inputs.observed, &name) else {
            problems.push(format!("Namespace/{name} is missing"));
            continue;
        };
        if !owned_by(&have.metadata, &tenant) {
            problems.push(format!(
                "Namespace/{name} is not marked as the tenant's own"
            ));
        }
        if have.metadata.deletion_timestamp.is_some() {
            problems.push(format!("Namespace/{name} is being deleted"));
        }
        let enforce = have
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"));
        if enforce.map(String::as_str) != Some("restricted") {
            problems.push(format!(
                "Namespace/{name} does not enforce Pod Security restricted"
            ));
        }
    }
    judge(
        problems,
        "NotIsolated",
        "Isolated",
        format!(
            "{} namespace(s), one per environment, each enforcing Pod Security restricted",
            desired.namespaces.len()
        ),
    )
}

/// Quantities read back from the API server are in its canonical form (`0.5` becomes `500m`);
/// both sides are reduced to their values before comparing.
fn canonical(value: &Value) -> Value {
    match value {
        Value::String(s) => quantity_nanos(s)
            .map(|n| Value::String(n.to_string()))
            .unwrap_or_else(|| value.clone()),
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn spec_differs<K: Serialize>(want: &K, have: &K) -> bool {
    let (Ok(want), Ok(have)) = (serde_json::to_value(want), serde_json::to_value(have)) else {
        return true;
    };
    differs(
        &canonical(&Value::Object(
            want.get("spec")
                .map(|s| ("spec".to_string(), s.clone()))
                .into_iter()
                .collect(),
        )),
        &canonical(&have),
    )
}

/// The problems of one kind of built child: missing, or changed by hand.
fn drift<K>(wanted: &[K], observed: &[Arc<K>], compare: fn(&K, &K) -> bool) -> Vec<String>
where
    K: Resource<DynamicType = ()>,
{
    wanted
        .iter()
        .filter_map(|want| match find(observed, want) {
            None => Some(format!("{} is missing", object_key(want))),
            Some(have) if compare(want, have) => {
                Some(format!("{} was changed by hand", object_key(want)))
            }
            Some(_) => None,
        })
        .collect()
}

fn quotas(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let mut problems = drift(
        &desired.resource_quotas,
        &inputs.observed.resource_quotas,
        spec_differs,
    );
    problems.extend(drift(
        &desired.limit_ranges,
        &inputs.observed.limit_ranges,
        spec_differs,
    ));
    judge(
        problems,
        "QuotaDrift",
        "QuotasInPlace",
        "every environment has its quota and container limits as declared".into(),
    )
}

/// A policy differs when either side has what the other lacks: a selector narrowed or a port
/// range widened by hand opens flows as surely as a rule removed. The builder sets every field
/// the API server would default (policy types, protocols), so nothing is added on the way back.
fn policy_differs(want: &NetworkPolicy, have: &NetworkPolicy) -> bool {
    let spec = |np: &NetworkPolicy| serde_json::to_value(&np.spec).map(|s| json!({ "spec": s }));
    match (spec(want), spec(have)) {
        (Ok(want), Ok(have)) => differs(&want, &have) || differs(&have, &want),
        _ => true,
    }
}

fn default_deny(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let deny: Vec<NetworkPolicy> = desired
        .network_policies
        .iter()
        .filter(|np| np.name_any() == DEFAULT_DENY)
        .cloned()
        .collect();
    judge(
        drift(&deny, &inputs.observed.network_policies, policy_differs),
        "DefaultDenyMissing",
        "DenyByDefault",
        format!(
            "{DEFAULT_DENY} denies every flow not declared, in each of {} namespace(s)",
            deny.len()
        ),
    )
}

fn flow_matrix(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let wanted: Vec<NetworkPolicy> = desired
        .network_policies
        .iter()
        .filter(|np| np.name_any() != DEFAULT_DENY)
        .cloned()
        .collect();
    let mut problems = drift(&wanted, &inputs.observed.network_policies, policy_differs);
    for have in &inputs.observed.network_policies {
        let declared = desired.network_policies.iter().any(|want| {
            want.metadata.name == have.metadata.name
                && want.metadata.namespace == have.metadata.namespace
        });
        if !declared && have.metadata.deletion_timestamp.is_none() {
            problems.push(format!(
                "{} was not rendered from the flow matrix: it may open flows nobody declared",
                object_key(&**have)
            ));
        }
    }
    judge(
        problems,
        "UndeclaredFlows",
        "FlowMatrixOnly",
        format!(
            "only the {} declared flow(s), DNS and same-namespace traffic are open",
            inputs.tenant.spec.network.ingress.len() + inputs.tenant.spec.network.egress.len()
        ),
    )
}

fn node_labels(node: &Node) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

fn node_named<'a>(observed: &'a TenantView, name: &str) -> Option<&'a Node> {
    observed
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .map(|n| &**n)
}

/// The pods of a namespace that are bound to a node, with that node's name.
fn bound_pods<'a>(
    observed: &'a TenantView,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = (&'a Pod, &'a str)> {
    observed.pods.iter().filter_map(move |pod| {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        (namespace.is_none() || pod.metadata.namespace.as_deref() == namespace)
            .then_some((&**pod, node))
    })
}

fn production_pool(inputs: &Inputs) -> Finding {
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
    judge(
        problems,
        "ProductionNotSeparated",
        "ProductionSeparated",
        "production pods run on their own pool, and nothing else of the tenant runs there".into(),
    )
}

fn selector_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why a location is not allowed for the tenant, or `None` if it is. A location the region
/// catalogue cannot establish is not allowed: CLD-74 needs proof, not absence of evidence.
fn outside(inputs: &Inputs, location: &Location) -> Option<String> {
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

fn node_outside(inputs: &Inputs, node: &Node) -> Option<String> {
    let location = inputs
        .facts
        .regions
        .locate_node(node, inputs.facts.provider.as_deref());
    outside(inputs, &location)
}

fn allowed_countries(inputs: &Inputs) -> String {
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

fn pods_in_allowed_countries(inputs: &Inputs) -> Finding {
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

fn volumes_in_allowed_countries(inputs: &Inputs) -> Finding {
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

/// Whether an admission object lacks what was built, or narrows what it applies to: the API
/// server fills in defaults, so only the selectors and conditions are compared both ways. A
/// validation removed, or a selector added by hand that unbinds the namespace, both count.
fn spec_mismatch<K: Serialize>(want: &K, have: &K) -> bool {
    let (Ok(want), Ok(have)) = (serde_json::to_value(want), serde_json::to_value(have)) else {
        return true;
    };
    let scope = |v: &Value| {
        let spec = &v["spec"];
        json!({
            "bindingNamespaces": spec["matchResources"]["namespaceSelector"],
            "bindingObjects": spec["matchResources"]["objectSelector"],
            "policyNamespaces": spec["matchConstraints"]["namespaceSelector"],
            "policyObjects": spec["matchConstraints"]["objectSelector"],
            "conditions": spec["matchConditions"],
        })
    };
    let spec = |v: &Value| json!({ "spec": v["spec"] });
    differs(&spec(&want), &spec(&have)) || differs(&scope(&have), &scope(&want))
}

fn placement_admission(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let placement: Vec<_> = desired
        .validating_admission_policies
        .iter()
        .filter(|p| is_placement(*p))
        .cloned()
        .collect();
    if placement.is_empty() {
        return finding(
            ControlResult::Unknown,
            "NotBuilt",
            "no placement admission policy was built for the tenant",
        );
    }
    let placement_bindings: Vec<_> = desired
        .validating_admission_policy_bindings
        .iter()
        .filter(|b| is_placement(*b))
        .cloned()
        .collect();
    let observed = inputs.observed;
    let mut problems = drift(
        &placement,
        &observed.validating_admission_policies,
        spec_mismatch,
    );
    problems.extend(drift(
        &placement_bindings,
        &observed.validating_admission_policy_bindings,
        spec_mismatch,
    ));
    problems.extend(drift(
        &desired.mutating_admission_policies,
        &observed.mutating_admission_policies,
        spec_mismatch,
    ));
    problems.extend(drift(
        &desired.mutating_admission_policy_bindings,
        &observed.mutating_admission_policy_bindings,
        spec_mismatch,
    ));
    let confined = if desired.mutating_admission_policies.is_empty() {
        "confined by the operator's webhook"
    } else {
        "confined by a MutatingAdmissionPolicy"
    };
    judge(
        problems,
        "AdmissionPolicyMissing",
        "EnforcedAtAdmission",
        format!(
            "new pods of each environment are {confined} and refused by a ValidatingAdmissionPolicy if they could leave the allowed regions"
        ),
    )
}

fn is_placement<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("ft-placement-"))
}

/// Whether a StorageClass turns encryption on, by the parameters of the common drivers:
/// Longhorn, Ceph RBD and AWS EBS `encrypted`, GCE PD `disk-encryption-kms-key`, Azure Disk
/// `diskEncryptionSetID`. Drivers read their parameters case-insensitively.
pub fn encrypts(class: &StorageClass) -> bool {
    class.parameters.iter().flatten().any(|(k, v)| {
        let k = k.to_ascii_lowercase();
        (k == "encrypted" && v.eq_ignore_ascii_case("true"))
            || ((k == "disk-encryption-kms-key" || k == "diskencryptionsetid") && !v.is_empty())
    })
}

fn encrypted_volumes(inputs: &Inputs) -> Finding {
    let claims = &inputs.observed.persistent_volume_claims;
    if claims.is_empty() {
        return not_applicable("NoVolumes", "the tenant has no volume claim");
    }
    let default_class = inputs
        .observed
        .storage_classes
        .iter()
        .find(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"));
    let mut problems = Vec::new();
    for pvc in claims {
        let class = match pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
        {
            Some("") => {
                problems.push(format!(
                    "{} uses no StorageClass, so nothing shows its volume is encrypted",
                    object_key(&**pvc)
                ));
                continue;
            }
            Some(name) => name.to_string(),
            None => match default_class {
                Some(c) => c.name_any(),
                None => {
                    problems.push(format!(
                        "{} names no StorageClass and the cluster has no default one",
                        object_key(&**pvc)
                    ));
                    continue;
                }
            },
        };
        let found = inputs
            .observed
            .storage_classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(class.as_str()));
        match found {
            None => problems.push(format!(
                "{} uses StorageClass/{class}, which is not in the cluster",
                object_key(&**pvc)
            )),
            Some(c) if !encrypts(c) => problems.push(format!(
                "{} uses StorageClass/{class}, which does not encrypt",
                object_key(&**pvc)
            )),
            Some(_) => {}
        }
    }
    judge(
        problems,
        "UnencryptedVolumes",
        "Encrypted",
        "every volume claim uses a StorageClass that encrypts".into(),
    )
}

/// The tenant's key is in the key store, its class is in place as built, and every volume of
/// the tenant was provisioned by that class (CLD-21, CLD-40).
fn tenant_key(inputs: &Inputs) -> Finding {
    let name = inputs.tenant.name_any();
    let Some(storage) = &inputs.tenant.spec.storage else {
        return finding(
            ControlResult::Fail,
            "NoStorageDeclared",
            "the tenant declares no spec.storage: it has no encrypted class of its own, so none of its volumes can be shown to be encrypted with its key",
        );
    };
    let Some(fingerprint) = &inputs.observed.key_fingerprint else {
        return finding(
            ControlResult::Fail,
            "NoTenantKey",
            format!("tenant {name} has no key in the key store"),
        );
    };
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(unknown) => return unknown,
    };
    let own = class_name(&name);
    let mut problems = Vec::new();
    let want = desired
        .storage_classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(own.as_str()));
    let have = inputs
        .observed
        .storage_classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(own.as_str()));
    match (want, have) {
        (_, None) => problems.push(format!("StorageClass/{own} is missing")),
        (Some(want), Some(have)) => {
            let (w, h) = (json!(want), json!(&**have));
            if differs(&w, &h) {
                problems.push(format!(
                    "StorageClass/{own} differs from the {} profile's",
                    storage.profile
                ));
            }
        }
        (None, Some(_)) => {}
    }
    let claims_policy: Vec<_> = desired
        .validating_admission_policies
        .iter()
        .filter(|p| !is_placement(*p))
        .cloned()
        .collect();
    let claims_binding: Vec<_> = desired
        .validating_admission_policy_bindings
        .iter()
        .filter(|b| !is_placement(*b))
        .cloned()
        .collect();
    problems.extend(drift(
        &claims_policy,
        &inputs.observed.validating_admission_policies,
        spec_mismatch,
    ));
    problems.extend(drift(
        &claims_binding,
        &inputs.observed.validating_admission_policy_bindings,
        spec_mismatch,
    ));
    for pv in &inputs.observed.persistent_volumes {
        let class = pv
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or_default();
        if class != own {
            let claim = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .map(|c| {
                    format!(
                        ", bound to {}/{}",
                        c.namespace.as_deref().unwrap_or_default(),
                        c.name.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            problems.push(format!(
                "{}{claim} was provisioned by {}, not by the tenant's {own}",
                object_key(&**pv),
                if class.is_empty() { "no class" } else { class }
            ));
        }
    }
    judge(
        problems,
        "NotEncryptedWithTenantKey",
        "OwnKey",
        format!(
            "the tenant key {fingerprint} is in the key store; StorageClass/{own} ({}) encrypts every volume of the tenant",
            storage.profile
        ),
    )
}

/// Whether Velero's objects can be judged: the tenant declares backups and the cluster serves
/// Velero. Otherwise, the finding that says why not.
fn backup_engine<'a>(inputs: &Inputs<'a>) -> Result<&'a Backup, Finding> {
    let Some(backup) = inputs.tenant.spec.backup.as_ref() else {
        return Err(finding(
            ControlResult::Fail,
            "NoBackupDeclared",
            "the tenant declares no backup (spec.backup): CLD-26 requires one",
        ));
    };
    match inputs.facts.backup_engine {
        Some(true) => Ok(backup),
        Some(false) => Err(finding(
            ControlResult::Fail,
            "NoBackupEngine",
            "backup engine not installed: the cluster does not serve velero.io/v1; install Velero so that backups can be scheduled",
        )),
        None => Err(finding(
            ControlResult::Unknown,
            "BackupEngineUnchecked",
            "could not yet tell whether the cluster serves velero.io/v1",
        )),
    }
}

/// What is wrong with the tenant's backup location, judged against the regions it runs in.
fn location_problems(inputs: &Inputs) -> Vec<String> {
    let facts = inputs.facts;
    let allowed = allowed_regions(
        inputs.tenant,
        &inputs.observed.nodes,
        &facts.regions,
        facts.provider.as_deref(),
    );
    let pod_nodes: BTreeSet<String> = inputs
        .observed
        .pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let primary = backup::primary_regions(&allowed, &inputs.observed.nodes, &pod_nodes);
    backup::location_problems(
        inputs.tenant,
        &inputs.observed.velero,
        &facts.regions,
        &primary,
    )
}

/// Every environment has a schedule to a valid location, and a backup younger than twice the
/// schedule's period (CLD-26, CLD-74).
fn backups(inputs: &Inputs) -> Finding {
    let backup = match backup_engine(inputs) {
        Ok(backup) => backup,
        Err(finding) => return finding,
    };
    let view = &inputs.observed.velero;
    let name = inputs.tenant.name_any();
    let mut problems = location_problems(inputs);
    let mut pending = Vec::new();
    let mut fresh = Vec::new();
    let period = backup::period(&backup.schedule, inputs.now);
    for env in &inputs.tenant.spec.environments {
        let schedule_name = backup::schedule_name(&name, &env.name);
        let Some(schedule) = view
            .schedules
            .iter()
            .find(|s| s.name_any() == schedule_name)
        else {
            problems.push(format!(
                "environment {}: Schedule {}/{schedule_name} is missing",
                env.name, view.namespace
            ));
            continue;
        };
        if let Some(status) = &schedule.status
            && status.phase.as_deref() == Some("FailedValidation")
        {
            problems.push(format!(
                "environment {}: Velero refused Schedule {}/{schedule_name}: {}",
                env.name,
                view.namespace,
                status.validation_errors.join("; ")
            ));
            continue;
        }
        let Some(period) = period else {
            problems.push(format!(
                "spec.backup.schedule {} never fires",
                backup.schedule
            ));
            break;
        };
        let allowed_age = period.saturating_mul(2);
        match backup::last_completed_backup(view, &env.name) {
            Some((last, at)) if inputs.now.duration_since(at) > allowed_age => {
                problems.push(format!(
                    "environment {}: the last completed backup, {}, is from {}, older than twice the schedule's period ({}h)",
                    env.name,
                    last.name_any(),
                    at.strftime("%Y-%m-%d %H:%M UTC"),
                    allowed_age.as_hours()
                ))
            }
            Some((last, at)) => fresh.push(format!(
                "{} at {} ({})",
                env.name,
                at.strftime("%Y-%m-%d %H:%M UTC"),
                last.name_any()
            )),
            None => {
                let since = schedule
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(inputs.now, |t| t.0);
                if inputs.now.duration_since(since) > allowed_age {
                    problems.push(format!(
                        "environment {}: no backup completed since Schedule {schedule_name} was made on {}",
                        env.name,
                        since.strftime("%Y-%m-%d %H:%M UTC")
                    ));
                } else {
                    pending.push(env.name.clone());
                }
            }
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "BackupsNotAssured", listing(&problems));
    }
    if !pending.is_empty() {
        return finding(
            ControlResult::Unknown,
            "AwaitingFirstBackup",
            format!(
                "scheduled, but no backup has completed yet for: {}",
                pending.join(", ")
            ),
        );
    }
    let location = view
        .location
        .as_ref()
        .map(|l| {
            format!(
                "{}/{} in {}",
                view.namespace,
                backup.storage_location,
                backup::location_region(l).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    pass(
        "BackedUp",
        format!(
            "every environment is backed up on schedule to {location}, away from the primary region; last backups: {}",
            fresh.join(", ")
        ),
    )
}

/// The latest restore test of every environment passed and is not overdue, and no production
/// backup was restored outside production (CLD-26, CLD-54).
fn restore_tests(inputs: &Inputs) -> Finding {
    // Without a restore-test schedule, the missing declaration is the finding.
    let declared = inputs.tenant.spec.backup.as_ref();
    let Some(schedule) = declared.and_then(|b| b.restore_test_schedule.as_deref()) else {
        return no_restore_test();
    };
    if let Err(finding) = backup_engine(inputs) {
        return finding;
    }
    let view = &inputs.observed.velero;
    let mut problems = backup::production_restored_outside(inputs.tenant, view);
    let mut waiting = Vec::new();
    let mut passed = Vec::new();
    let allowed_age = backup::period(schedule, inputs.now).map(|p| p.saturating_mul(2));
    for env in &inputs.tenant.spec.environments {
        match backup::last_outcome(view, &env.name, inputs.now) {
            None => waiting.push(match backup::restore_test(inputs.tenant, &env.name, view, inputs.now) {
                backup::RestoreTest::Running { restore } => {
                    format!("{}: the first restore test ({restore}) is running", env.name)
                }
                _ => format!("{}: no backup to test yet", env.name),
            }),
            Some((_, outcome)) if !outcome.passed => problems.push(format!(
                "environment {}: the last restore test failed on {}: {}",
                env.name,
                outcome.at.strftime("%Y-%m-%d %H:%M UTC"),
                outcome.message
            )),
            Some((restore, outcome)) => match allowed_age {
                Some(age) if inputs.now.duration_since(outcome.at) > age => {
                    problems.push(format!(
                        "environment {}: the last restore test, {}, is from {}: overdue, older than twice the restore-test schedule's period ({}h)",
                        env.name,
                        restore.name_any(),
                        outcome.at.strftime("%Y-%m-%d %H:%M UTC"),
                        age.as_hours()
                    ))
                }
                _ => passed.push(format!(
                    "{} on {}",
                    env.name,
                    outcome.at.strftime("%Y-%m-%d %H:%M UTC")
                )),
            },
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "RestoreNotAssured", listing(&problems));
    }
    if !waiting.is_empty() {
        return finding(
            ControlResult::Unknown,
            "AwaitingRestoreTest",
            format!("no restore test has finished yet: {}", waiting.join("; ")),
        );
    }
    pass(
        "RestoreTested",
        format!(
            "the latest backup of every environment was restored into an isolated scratch namespace and checked: {}",
            passed.join(", ")
        ),
    )
}

fn no_restore_test() -> Finding {
    finding(
        ControlResult::Fail,
        "NoRestoreTest",
        "the tenant declares no restore test (spec.backup.restoreTestSchedule): CLD-26 requires regular ones",
    )
}

/// Judged against the bindings the grants want at `now`, which do not depend on the rest of
/// the spec: a tenant whose spec is refused is still judged on who can act on it.
fn declared_bindings(inputs: &Inputs) -> Finding {
    let declared = access::role_bindings(inputs.tenant, inputs.now);
    let mut problems = Vec::new();
    for binding in &inputs.observed.role_bindings {
        let undeclared = access::undeclared_subjects(binding, &declared);
        if !undeclared.is_empty() {
            problems.push(format!(
                "{} grants {} to {}: no access grant declares it",
                object_key(&**binding),
                binding.role_ref.name,
                undeclared.join(", ")
            ));
        }
    }
    judge(
        problems,
        "UndeclaredBindings",
        "OnlyDeclaredRights",
        "no RoleBinding gives anyone a right the tenant did not declare".into(),
    )
}

/// Every grant in force is bound in each of its environments, with the role its function calls
/// for; no grant expired or suspended still is.
fn expiring_rights(inputs: &Inputs) -> Finding {
    let grants = &inputs.tenant.spec.access.grants;
    if grants.is_empty() {
        return not_applicable("NoGrants", "the tenant declares no access grant");
    }
    let declared = access::role_bindings(inputs.tenant, inputs.now);
    let observed = |ns: Option<&String>, name: Option<&String>| {
        inputs
            .observed
            .role_bindings
            .iter()
            .find(|b| b.metadata.namespace.as_ref() == ns && b.metadata.name.as_ref() == name)
    };
    let mut problems = Vec::new();
    for want in &declared {
        let key = object_key(want);
        match observed(
            want.metadata.namespace.as_ref(),
            want.metadata.name.as_ref(),
        ) {
            None => problems.push(format!("{key} is missing: a grant in force is not bound")),
            Some(have) if have.role_ref != want.role_ref || have.subjects != want.subjects => {
                problems.push(format!(
                    "{key} binds {} to other subjects or another role than its grant declares",
                    have.role_ref.name
                ))
            }
            Some(_) => {}
        }
    }
    for grant in grants {
        let lapsed = match access::state(grant, inputs.now) {
            access::GrantState::InForce => continue,
            access::GrantState::Expired => "expired",
            access::GrantState::Suspended => "suspended",
        };
        let id = access::grant_id(grant);
        for binding in inputs.observed.role_bindings.iter().filter(|b| {
            owned_by(&b.metadata, &inputs.tenant.name_any())
                && b.labels().get(labels::GRANT) == Some(&id)
        }) {
            problems.push(format!(
                "{} still binds {}, whose grant is {lapsed}",
                object_key(&**binding),
                grant.subject
            ));
        }
    }
    if !problems.is_empty() {
        return finding(ControlResult::Fail, "RightsNotRevoked", listing(&problems));
    }
    let in_force = access::in_force(inputs.tenant, inputs.now).len();
    if in_force == 0 {
        return pass(
            "NoRightInForce",
            "no grant is in force, and none of the expired or suspended ones is bound",
        );
    }
    let mut message =
        format!("{in_force} grant(s) in force, each bound as declared; none lapsed is bound");
    let soon = access::expiring_soon(inputs.tenant, inputs.now);
    if !soon.is_empty() {
        let listed: Vec<String> = soon
            .iter()
            .map(|g| {
                format!(
                    "{} ({}, {})",
                    g.subject,
                    g.role.as_str(),
                    g.expires.0.strftime("%Y-%m-%d")
                )
            })
            .collect();
        message.push_str(&format!(
            ". Warning, expiring within 30 days: {}",
            listed.join(", ")
        ));
    }
    pass("RevokedOnTime", message)
}

fn reviewed_rights(inputs: &Inputs) -> Finding {
    let in_force: Vec<_> = inputs
        .tenant
        .spec
        .access
        .grants
        .iter()
        .filter(|g| access::state(g, inputs.now) == access::GrantState::InForce)
        .collect();
    if in_force.is_empty() {
        return not_applicable("NoGrantsInForce", "no access grant is in force");
    }
    let mut problems = Vec::new();
    for grant in in_force {
        let who = grant.subject.to_string();
        match &grant.reviewed_at {
            None => problems.push(format!("the right of {who} was never reviewed")),
            Some(at) if inputs.now.duration_since(at.0) >= REVIEW_PERIOD => problems.push(format!(
                "the right of {who} was last reviewed on {}, over a year ago",
                at.0.strftime("%Y-%m-%d")
            )),
            Some(_) => {}
        }
    }
    judge(
        problems,
        "ReviewOverdue",
        "Reviewed",
        "every right in force was reviewed within the last year".into(),
    )
}

fn crypto_shredding(inputs: &Inputs) -> Finding {
    if inputs.tenant.spec.deletion.policy == DeletionPolicy::Retain {
        return finding(
            ControlResult::Fail,
            "RetainOnDeletion",
            "spec.deletion.policy is Retain: deleting the tenant would leave its data in place (CLD-47)",
        );
    }
    match &inputs.observed.key_fingerprint {
        None => finding(
            ControlResult::Fail,
            "NoTenantKey",
            "the tenant has no key in the key store: deleting it could not make its data unreadable first",
        ),
        Some(fingerprint) => pass(
            "ShreddableKey",
            format!(
                "deleting the tenant destroys its key {fingerprint} before its namespaces, once the deletion is confirmed; a record of each step is kept"
            ),
        ),
    }
}

/// Deleting the tenant would export every environment first: the backup location it would go
/// to is there and valid (CLD-73).
fn final_export(inputs: &Inputs) -> Finding {
    if !inputs.tenant.spec.deletion.final_export {
        return not_applicable(
            "NoFinalExport",
            "the tenant asks for no final export (spec.deletion.finalExport)",
        );
    }
    let backup = match backup_engine(inputs) {
        Ok(backup) => backup,
        Err(why) => {
            return finding(
                why.result,
                "NoExportPath",
                format!("a final export could not be taken: {}", why.message),
            );
        }
    };
    let problems = location_problems(inputs);
    if !problems.is_empty() {
        return finding(
            ControlResult::Fail,
            "NoExportPath",
            format!(
                "a final export could not be trusted: {}",
                listing(&problems)
            ),
        );
    }
    pass(
        "ExportPathReady",
        format!(
            "on deletion, every environment is exported to {}/{} before the tenant key is destroyed",
            inputs.observed.velero.namespace, backup.storage_location
        ),
    )
}
