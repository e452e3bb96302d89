//! What every pass shares: the client, the observed stores, the key store, the Event
//! recorder, and the index of which tenant owns which namespace.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use ft_core::api::{FranceTravailTenant, labels};
use ft_core::placement::PlacementIndex;
use ft_core::settings::BuildSettings;

use crate::apply::{AppliedMemo, Applier};
use crate::compliance::Compliance;
use crate::health::Liveness;
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::observe::Observed;

/// Maps a namespace to the tenant that owns it, so a child whose labels were removed by hand
/// still wakes its tenant.
#[derive(Clone, Default)]
pub struct NamespaceIndex(Arc<RwLock<HashMap<String, String>>>);

impl NamespaceIndex {
    pub fn tenant_of(&self, namespace: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .cloned()
    }

    /// Fed by the namespace watch: a namespace labelled as a tenant's by the operator. A label
    /// removed later leaves the entry: the namespace is still that tenant's.
    pub fn observe(&self, namespace: &ObjectMeta) {
        let labels = namespace.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key));
        if let (Some(name), Some(tenant), Some(labels::MANAGED_BY_VALUE)) = (
            namespace.name.as_ref(),
            label(labels::TENANT),
            label(labels::MANAGED_BY).map(String::as_str),
        ) {
            self.record(tenant, [name.clone()]);
        }
    }

    /// Fed by the passes: a tenant owns its namespaces before they exist.
    pub fn record(&self, tenant: &str, namespaces: impl IntoIterator<Item = String>) {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        for ns in namespaces {
            index.insert(ns, tenant.to_string());
        }
    }

    pub fn forget(&self, tenant: &str) -> BTreeSet<String> {
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        let gone: BTreeSet<String> = index
            .iter()
            .filter(|(_, t)| t.as_str() == tenant)
            .map(|(ns, _)| ns.clone())
            .collect();
        index.retain(|_, t| t != tenant);
        gone
    }
}

/// Every tenant's production node pools, fed by the tenants' watch: a non-production pod of any
/// tenant must avoid them all (CLD-25). Passes wait until the tenants have been listed once, so
/// that no EnvironmentPolicy is written from a partial list.
pub struct ProductionPools {
    state: Mutex<PoolsState>,
    ready: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct PoolsState {
    by_tenant: HashMap<String, Vec<Pool>>,
    relist: Option<HashMap<String, Vec<Pool>>>,
    union: Arc<Vec<Pool>>,
}

type Pool = std::collections::BTreeMap<String, String>;

impl Default for ProductionPools {
    /// Ready and empty: for passes run without the tenants' watch (tests).
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            ready: tokio::sync::watch::channel(true).0,
        }
    }
}

impl ProductionPools {
    /// Not ready until the tenants' watch has listed them once.
    pub fn listing() -> Self {
        Self {
            state: Mutex::default(),
            ready: tokio::sync::watch::channel(false).0,
        }
    }

    /// Follows one event of the tenants' watch. Returns whether the pools changed after the
    /// first list: every tenant must then be looked at again.
    pub fn observe(&self, event: &kube::runtime::watcher::Event<FranceTravailTenant>) -> bool {
        use kube::ResourceExt;
        use kube::runtime::watcher::Event;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => {
                state.relist = Some(HashMap::new());
                return false;
            }
            Event::InitApply(t) => {
                let pools = ft_core::placement::production_pools(t);
                if let Some(relist) = state.relist.as_mut() {
                    relist.insert(t.name_any(), pools);
                }
                return false;
            }
            Event::InitDone => {
                if let Some(listed) = state.relist.take() {
                    state.by_tenant = listed;
                }
            }
            Event::Apply(t) => {
                let pools = ft_core::placement::production_pools(t);
                state.by_tenant.insert(t.name_any(), pools);
            }
            Event::Delete(t) => {
                state.by_tenant.remove(&t.name_any());
            }
        }
        let union: BTreeSet<&Pool> = state.by_tenant.values().flatten().collect();
        let union: Vec<Pool> = union.into_iter().cloned().collect();
        let changed = *state.union != union;
        state.union = Arc::new(union);
        let was_ready = *self.ready.borrow();
        self.ready.send_replace(true);
        changed && was_ready
    }

    /// The tenants one of whose production pools a node with these labels belongs to.
    pub fn owners_of(
        &self,
        node_labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .by_tenant
            .iter()
            .filter(|(_, pools)| {
                pools
                    .iter()
                    .any(|pool| pool.iter().all(|(k, v)| node_labels.get(k) == Some(v)))
            })
            .map(|(tenant, _)| tenant.clone())
            .collect()
    }

    /// Every tenant's production pools, once the tenants have been listed.
    pub async fn all(&self) -> Arc<Vec<Pool>> {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`.
        let _ = ready.wait_for(|r| *r).await;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .union
            .clone()
    }
}

/// How long a pass that wrote waits for the caches to show its writes before it judges; past
/// it, the tenant is judged `SETTLING` later.
pub const SHOW_WRITES: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Context {
    pub client: Client,
    pub observed: Observed,
    pub memo: AppliedMemo,
    pub metrics: Arc<Metrics>,
    /// Who publishes Events. A `Recorder` is made per Event: kube's keeps every Event it
    /// published for six minutes, to fold repeats into a series, and scans them all at each
    /// publication; with thousands of tenants that cache would be the operator's largest.
    pub reporter: Reporter,
    pub settings: BuildSettings,
    pub index: NamespaceIndex,
    pub compliance: Compliance,
    /// Each tenant namespace's placement, for the webhook.
    pub placements: PlacementIndex,
    /// Every tenant's production pools (CLD-25).
    pub pools: ProductionPools,
    /// Where tenant keys are kept: a Secret per tenant in the operator's namespace when
    /// running, in memory in tests.
    pub keys: Arc<dyn KeyStore>,
    /// Whether the controller moves: every pass marks its start and end.
    pub liveness: Liveness,
    /// False while the leader cannot confirm it holds its Lease: passes wait, so that it never
    /// acts beside the next leader.
    pub acting: tokio::sync::watch::Receiver<bool>,
    /// How long a pass that wrote waits for the caches to show its writes before it judges.
    pub show_writes: std::time::Duration,
    /// Failed passes in a row, per tenant, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        observed: Observed,
        metrics: Arc<Metrics>,
        settings: BuildSettings,
        compliance: Compliance,
        reporter: Reporter,
        keys: Arc<dyn KeyStore>,
    ) -> Self {
        Self {
            compliance,
            placements: PlacementIndex::default(),
            pools: ProductionPools::default(),
            keys,
            liveness: Liveness::new(metrics.clone()),
            acting: tokio::sync::watch::channel(true).1,
            reporter,
            client,
            observed,
            memo: AppliedMemo::default(),
            metrics,
            settings,
            index: NamespaceIndex::default(),
            show_writes: SHOW_WRITES,
            failures: Mutex::default(),
        }
    }

    /// One more failed pass of `tenant`; returns how many in a row.
    pub fn count_failure(&self, tenant: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(tenant.to_string()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    pub fn forget_failures(&self, tenant: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// Applies and prunes the children of one tenant.
    pub fn applier<'a>(&'a self, tenant: &'a str) -> Applier<'a> {
        Applier {
            client: &self.client,
            observed: &self.observed,
            memo: &self.memo,
            metrics: &self.metrics,
            tenant,
        }
    }

    pub async fn publish(
        &self,
        tenant: &FranceTravailTenant,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_on(&tenant.object_ref(&()), type_, reason, note)
            .await;
    }

    pub async fn publish_on(
        &self,
        target: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.publish_related(target, None, type_, reason, note)
            .await;
    }

    /// An Event about `target` concerning `related` too. Each is created on its own: none is
    /// folded into a series of the same reason.
    pub async fn publish_related(
        &self,
        target: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: reason.into(),
            secondary: related,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, target).await {
            warn!(object = ?target.name, reason, error = %e, "could not publish event");
        } else {
            self.metrics.write("Event", "create");
        }
    }

    /// A Normal Event about a record (a ConfigMap in `namespace`) that outlives `tenant`: on
    /// the tenant, naming the record, and on the record itself.
    pub async fn publish_record(
        &self,
        tenant: &FranceTravailTenant,
        namespace: &str,
        record: &str,
        reason: &str,
        note: String,
    ) {
        use kube::Resource;
        let related = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(namespace.into()),
            name: Some(record.into()),
            ..Default::default()
        };
        self.publish_related(
            &tenant.object_ref(&()),
            Some(related.clone()),
            EventType::Normal,
            reason,
            note.clone(),
        )
        .await;
        self.publish_on(&related, EventType::Normal, reason, note)
            .await;
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
