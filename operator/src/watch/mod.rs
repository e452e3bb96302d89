//! The watches: what wakes a tenant, and the stores its passes read.

mod backoff;
mod tenant;
pub mod trim;
mod velero;

pub use backoff::NoPause;
pub use tenant::{Unreadable, read_tenant, unreadable_conditions};
pub use velero::discover_velero;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::TryStreamExt;
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use ft_core::api::{ComplianceReport, EnvironmentPolicy, FranceTravailTenant, labels};
use ft_core::placement::PlacementIndex;
use ft_core::placement::admission::Confinement;
use ft_core::settings::BuildSettings;

use crate::compliance::Compliance;
use crate::context::{Context, NamespaceIndex};
use crate::health::Liveness;
use crate::keystore::SecretKeyStore;
use crate::metrics::Metrics;
use crate::observe::{CacheInto, Echoes, TenantMeta, TenantRef, empty_stores, tenant_meta};
use crate::reconcile::{error_policy, reconcile_named};
use backoff::Watch;
use tenant::{report_unreadable, tenant_watch};
use trim::{
    annotation_managers_only, managers_only, node_placement, trim_meta, trim_node, trim_pod,
    trim_quota,
};
use velero::{VeleroWriters, follow_velero, mark_listed};

/// What one term of leadership gives the controller besides the cluster.
pub struct Term {
    /// Who acts, in Events.
    pub reporter: Reporter,
    /// Where the controller reports its watches and passes.
    pub liveness: Liveness,
    /// False while the leader cannot confirm it holds its Lease.
    pub acting: tokio::sync::watch::Receiver<bool>,
}

/// Runs the controller until `shutdown` resolves. `placements` is shared with the webhook.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: BuildSettings,
    compliance: Compliance,
    placements: PlacementIndex,
    term: Term,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Term {
        reporter,
        liveness,
        acting,
    } = term;
    let (observed, mut writers) = empty_stores();
    let keys = Arc::new(SecretKeyStore::new(
        client.clone(),
        settings.key_namespace.clone(),
    ));
    let mut ctx = Context::new(
        client.clone(),
        observed,
        metrics,
        settings,
        compliance,
        reporter,
        keys,
    );
    ctx.placements = placements;
    ctx.pools = crate::context::ProductionPools::listing();
    ctx.liveness = liveness.clone();
    ctx.acting = acting;
    let ctx = Arc::new(ctx);
    let ours = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let everything = watcher::Config::default;
    let watch = |resource| Watch {
        client: &client,
        liveness: &liveness,
        resource,
    };

    // Namespaces and NetworkPolicies are watched unfiltered: a label removed by hand, or a
    // policy made by hand in a tenant namespace, must be seen. Namespaces as metadata only.
    let index = ctx.index.clone();
    let namespaces = watch("namespaces")
        .all::<PartialObjectMeta<Namespace>>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.namespaces)
        .inspect_ok(move |event| {
            if let watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) = event {
                index.observe(&ns.metadata);
            }
        });
    let network_policies = watch("networkpolicies")
        .all::<NetworkPolicy>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.network_policies);
    let resource_quotas = watch("resourcequotas")
        .all::<ResourceQuota>(ours())
        .modify(trim_quota)
        .cache_into(writers.resource_quotas);
    let limit_ranges = watch("limitranges")
        .all::<LimitRange>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.limit_ranges);
    let compliance_reports = watch("compliancereports")
        .all::<ComplianceReport>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.compliance_reports)
        .inspect_ok({
            // Once the cache shows a report status the operator wrote, it need not keep it. Not
            // from a relist, which the cache shows only once complete.
            let ctx = ctx.clone();
            move |event| {
                if let watcher::Event::Apply(r) = event {
                    ctx.compliance
                        .seen(&r.name_any(), r.resource_version().as_deref());
                }
            }
        });
    // What the controls judge, trimmed before it is stored: a cluster may hold many pods.
    let pods = watch("pods")
        .all::<Pod>(everything())
        .modify(trim_pod)
        .cache_into(writers.pods);
    let claims = watch("persistentvolumeclaims")
        .all::<PersistentVolumeClaim>(everything())
        .modify(|o| trim_meta(&mut o.metadata))
        .cache_into(writers.persistent_volume_claims);
    let role_bindings = watch("rolebindings")
        .all::<RoleBinding>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.role_bindings);
    let volumes = watch("persistentvolumes")
        .all::<PersistentVolume>(everything())
        .modify(|o| trim_meta(&mut o.metadata))
        .cache_into(writers.persistent_volumes);
    let nodes = watch("nodes")
        .all::<Node>(everything())
        .modify(trim_node)
        .cache_into(writers.nodes);
    let storage_classes = watch("storageclasses")
        .all::<StorageClass>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.storage_classes);
    let environment_policies = watch("environmentpolicies")
        .all::<EnvironmentPolicy>(ours())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.environment_policies);
    // The cluster-wide admission objects, read only: a change to one concerns every tenant.
    // Unfiltered: the chart labels them as Helm's; a cluster holds few of them.
    let validating_policies = watch("validatingadmissionpolicies")
        .all::<ValidatingAdmissionPolicy>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.validating_admission_policies);
    let validating_bindings = watch("validatingadmissionpolicybindings")
        .all::<ValidatingAdmissionPolicyBinding>(everything())
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.validating_admission_policy_bindings);
    mark_listed(&mut writers.schedules);
    mark_listed(&mut writers.backups);
    mark_listed(&mut writers.restores);
    mark_listed(&mut writers.backup_storage_locations);
    // A cluster that does not serve MutatingAdmissionPolicies has none to watch.
    let native = ctx.settings.confinement == Confinement::Native;
    let mutating_policies = if native {
        watch("mutatingadmissionpolicies")
            .all::<MutatingAdmissionPolicy>(everything())
            .modify(|o| managers_only(o.meta_mut()))
            .cache_into(writers.mutating_admission_policies)
            .map_ok(|e| e)
            .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policies);
        futures::stream::pending().boxed()
    };
    let mutating_bindings = if native {
        watch("mutatingadmissionpolicybindings")
            .all::<MutatingAdmissionPolicyBinding>(everything())
            .modify(|o| managers_only(o.meta_mut()))
            .cache_into(writers.mutating_admission_policy_bindings)
            .map_ok(|e| e)
            .boxed()
    } else {
        mark_listed(&mut writers.mutating_admission_policy_bindings);
        futures::stream::pending().boxed()
    };

    // Velero may come after the operator, or never: its stores start empty and listed, and a
    // task fills them once the cluster serves its API, waking the tenants it concerns.
    let velero_writers = VeleroWriters {
        schedules: writers.schedules,
        backups: writers.backups,
        restores: writers.restores,
        locations: writers.backup_storage_locations,
    };
    let (wake, woken) = futures::channel::mpsc::unbounded();

    // The controller keeps the tenants' metadata; the tenants themselves are packed in
    // `ctx.observed.tenants`, filed before the controller hears of them.
    let (tenants, tenant_writer) = reflector::store::<TenantMeta>();
    let (unreadable_tx, unreadable) = futures::channel::mpsc::unbounded();
    let tenant_stream = tenant_watch(
        watch("francetravailtenants")
            .of(
                Api::<DynamicObject>::all_with(
                    client.clone(),
                    &ApiResource::erase::<FranceTravailTenant>(&()),
                ),
                everything(),
            )
            .modify(|o| annotation_managers_only(&mut o.metadata)),
        ctx.observed.tenants.clone(),
        unreadable_tx,
    )
    .inspect({
        // A production pool added, changed or gone changes every tenant's placement (CLD-25).
        let (ctx, tenants, wake) = (ctx.clone(), tenants.clone(), wake.clone());
        move |event| {
            if let Ok(event) = event
                && ctx.pools.observe(event)
            {
                for tenant in tenants.state() {
                    let _ = wake.unbounded_send(ObjectRef::from_obj(&*tenant));
                }
            }
        }
    })
    .cache_into(writers.tenants)
    .map_ok(|event| match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(t) => watcher::Event::InitApply(tenant_meta(&t)),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(t) => watcher::Event::Apply(tenant_meta(&t)),
        watcher::Event::Delete(t) => watcher::Event::Delete(tenant_meta(&t)),
    })
    .reflect(tenant_writer)
    .applied_objects();
    // A status this operator wrote is no news to it.
    let tenant_stream = news(tenant_stream, ctx.observed.echoes.clone());
    let controller = Controller::for_stream(tenant_stream, tenants.clone())
        .with_config(
            ControllerConfig::default()
                .concurrency(16)
                .debounce(Duration::from_millis(50)),
        )
        .trigger_backoff(NoPause);
    let background = [
        tokio::spawn(report_unreadable(ctx.clone(), unreadable)),
        tokio::spawn(follow_velero(
            client.clone(),
            ctx.clone(),
            velero_writers,
            tenants.clone(),
            wake.clone(),
        )),
        tokio::spawn(wake_on_recovery(
            client.clone(),
            liveness.clone(),
            tenants.clone(),
            wake,
        )),
    ];
    // A change to a node or a storage class may concern any tenant.
    let all_tenants = move || {
        tenants
            .state()
            .iter()
            .map(|t| ObjectRef::from_obj(&**t))
            .collect::<Vec<_>>()
    };
    let index = &ctx.index;
    let (a1, a2, a3, a4, a5) = (
        all_tenants.clone(),
        all_tenants.clone(),
        all_tenants.clone(),
        all_tenants.clone(),
        all_tenants.clone(),
    );
    let echoes = ctx.observed.echoes.clone();
    controller
        .watches_stream(news_of(namespaces, echoes.clone()), by_owner(index))
        .watches_stream(news_of(network_policies, echoes.clone()), by_owner(index))
        .watches_stream(news_of(resource_quotas, echoes.clone()), by_owner(index))
        .watches_stream(news_of(limit_ranges, echoes.clone()), by_owner(index))
        .watches_stream(
            news(
                changes(compliance_reports, with_status),
                ctx.observed.echoes.clone(),
            ),
            by_owner(index),
        )
        .watches_stream(
            news_of(environment_policies, echoes.clone()),
            by_owner(index),
        )
        // The API server writes the policies' status: only a change of their spec counts, and
        // a deletion, which leaves the generation as it was.
        .watches_stream(spec_changes(validating_policies), move |_| a2())
        .watches_stream(spec_changes(validating_bindings), move |_| a3())
        .watches_stream(spec_changes(mutating_policies), move |_| a4())
        .watches_stream(spec_changes(mutating_bindings), move |_| a5())
        .watches_stream(changes(pods, content), {
            // A pod of a tenant namespace concerns its tenant; any other pod on a node of a
            // production pool concerns the tenants whose pool it is (SEP-1, CLD-25).
            let (ctx, tenant_of_pod) = (ctx.clone(), by_namespace(index));
            move |pod: Pod| {
                if let Some(tenant) = tenant_of_pod(pod.clone()) {
                    return vec![tenant];
                }
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                    return Vec::new();
                };
                ctx.observed
                    .nodes
                    .get(&ObjectRef::new(node))
                    .and_then(|n| n.metadata.labels.clone())
                    .map(|labels| ctx.pools.owners_of(&labels))
                    .unwrap_or_default()
                    .iter()
                    .map(|t| ObjectRef::new(t))
                    .collect()
            }
        })
        .watches_stream(changes(claims, content), by_namespace(index))
        .watches_stream(news_of(role_bindings, echoes.clone()), by_namespace(index))
        .watches_stream(changes(volumes, content), {
            // A volume concerns the tenant whose namespace claims it.
            let index = index.clone();
            move |o| {
                let ns = o.spec.as_ref()?.claim_ref.as_ref()?.namespace.as_deref()?;
                index.tenant_of(ns).map(|t| ObjectRef::new(&t))
            }
        })
        // Nodes report their status every few seconds; only what placement reads matters.
        .watches_stream(
            nodes
                .touched_objects()
                .predicate_filter(node_placement, Default::default()),
            move |_| a1(),
        )
        // A tenant's own class concerns that tenant only; any other class (a new default, a
        // class changed by hand) may concern every tenant's claims.
        .watches_stream(
            news_of(storage_classes, echoes.clone()),
            move |class: StorageClass| match class.labels().get(labels::TENANT) {
                Some(tenant) => vec![ObjectRef::new(tenant)],
                None => all_tenants(),
            },
        )
        .reconcile_on(woken)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_named, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller event");
            }
        })
        .await;
    for task in background {
        task.abort();
    }
}

/// The objects of a watch, but for the echoes of the operator's own writes: the pass that
/// wrote them judges once its cache shows them (`Observed::show`).
fn news<K: Resource<DynamicType = ()> + Send + 'static>(
    objects: impl futures::Stream<Item = watcher::Result<K>> + Send + 'static,
    echoes: Arc<Echoes>,
) -> impl futures::Stream<Item = watcher::Result<K>> + Send {
    objects.try_filter(move |o| futures::future::ready(!echoes.of(o)))
}

/// The objects of a child watch that changed in what the operator reads of them, but for the
/// echoes of its own writes.
fn news_of<K: Resource<DynamicType = ()> + serde::Serialize + Clone + Send + 'static>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    echoes: Arc<Echoes>,
) -> impl futures::Stream<Item = watcher::Result<K>> + Send {
    news(changes(events, content::<K>), echoes)
}

/// The objects of a watch whose spec changed (their generation), or that were deleted.
/// `predicates::generation` alone lets a deletion through only if the generation changed.
fn spec_changes<K: Resource<DynamicType = ()> + Clone + Send + 'static>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> impl futures::Stream<Item = watcher::Result<K>> + Send {
    changes(events, |o: &K| {
        o.meta().generation.unwrap_or_default() as u64
    })
}

/// The objects of a watch that changed in what the operator reads of them (`digest`), or that
/// were deleted: a status the API server or a controller writes wakes nobody.
pub fn changes<K: Resource<DynamicType = ()> + Clone + Send + 'static>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    digest: impl Fn(&K) -> u64 + Send + 'static,
) -> impl futures::Stream<Item = watcher::Result<K>> + Send {
    // Keyed by a hash of the namespace and name: a cache may hold hundreds of thousands.
    let mut seen: std::collections::HashMap<u64, u64> = Default::default();
    let key = |o: &K| crate::digest((&o.meta().namespace, &o.meta().name));
    events
        .map_ok(move |event| match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                let digest = digest(&o);
                (seen.insert(key(&o), digest) != Some(digest)).then_some(o)
            }
            watcher::Event::Delete(o) => {
                seen.remove(&key(&o));
                Some(o)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        })
        .try_filter_map(futures::future::ok)
}

/// The whole report, status included: the operator's own record, which nobody else writes.
fn with_status(report: &ComplianceReport) -> u64 {
    crate::digest((
        content(report),
        serde_json::to_string(&report.status).unwrap_or_default(),
    ))
}

/// What the operator reads of an object: all of it but its status and the metadata the API
/// server keeps (versions, timestamps, field sets), bar who manages it.
pub fn content<K: Resource + serde::Serialize>(object: &K) -> u64 {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("status");
        fields.remove("metadata");
    }
    let meta = object.meta();
    let managers: Vec<_> = meta
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (&m.manager, &m.subresource))
        .collect();
    crate::digest((
        value.to_string(),
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.is_some(),
        managers,
    ))
}

/// The tenant a child belongs to: from its label, or from the namespace it lives in.
pub(crate) fn tenant_of(meta: &ObjectMeta, index: &NamespaceIndex) -> Option<TenantRef> {
    let from_label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::TENANT))
        .cloned();
    // A namespaced child lives in `namespace`; a Namespace has none and is its own name.
    let from_namespace = || {
        meta.namespace
            .as_deref()
            .or(meta.name.as_deref())
            .and_then(|ns| index.tenant_of(ns))
    };
    from_label
        .or_else(from_namespace)
        .map(|t| ObjectRef::new(&t))
}

/// Maps a child to its tenant, for `watches_stream`.
pub(crate) fn by_owner<K: Resource>(
    index: &NamespaceIndex,
) -> impl Fn(K) -> Option<TenantRef> + Send + Sync + 'static {
    let index = index.clone();
    move |o| tenant_of(o.meta(), &index)
}

/// Maps an object of a tenant namespace (pod, claim, binding) to the tenant.
pub(crate) fn by_namespace<K: Resource>(
    index: &NamespaceIndex,
) -> impl Fn(K) -> Option<TenantRef> + Send + Sync + 'static {
    let index = index.clone();
    move |o| {
        let ns = o.meta().namespace.as_deref()?;
        index.tenant_of(ns).map(|t| ObjectRef::new(&t))
    }
}

/// Whether the API server serves MutatingAdmissionPolicies, by discovery, not by version.
pub async fn discover_confinement(client: &Client) -> Confinement {
    match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => Confinement::from_resources(list.resources.iter().map(|r| r.name.as_str())),
        Err(e) => {
            warn!(error = %e, "cannot discover admissionregistration.k8s.io/v1; pods are confined by the webhook");
            Confinement::Webhook
        }
    }
}

/// How often the API server is asked whether it is back, once a watch has failed.
pub(crate) const RECOVERY_PROBE: Duration = Duration::from_millis(250);

/// Wakes every tenant the moment the API server answers again after an outage, whatever
/// their backoff: a right that lapsed meanwhile is revoked then (2.4.c), drift repaired.
/// Also tells the liveness whether there are tenants, so that it expects passes.
pub(crate) async fn wake_on_recovery(
    client: Client,
    liveness: Liveness,
    tenants: reflector::Store<TenantMeta>,
    wake: futures::channel::mpsc::UnboundedSender<TenantRef>,
) {
    let mut outage = false;
    loop {
        tokio::time::sleep(RECOVERY_PROBE).await;
        liveness.has_work(!tenants.is_empty());
        if !outage && !liveness.take_watch_failure() {
            continue;
        }
        let probe = client.request_text(
            http::Request::get("/readyz")
                .body(Vec::new())
                .unwrap_or_default(),
        );
        let answered = matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        );
        match (outage, answered) {
            (false, false) => {
                warn!("the API server does not answer: waiting for it");
                outage = true;
            }
            (true, true) => {
                info!("the API server answers again: every tenant is looked at now");
                outage = false;
                for tenant in tenants.state() {
                    let _ = wake.unbounded_send(ObjectRef::from_obj(&*tenant));
                }
            }
            _ => {}
        }
    }
}
