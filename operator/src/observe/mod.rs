//! What the operator observes: its own caches of the tenants, their children and the cluster
//! facts the controls judge, filed by namespace and tenant and mostly packed (`cache`), and the
//! operator's own writes whose events they are about to show (`Echoes`). `run` feeds them
//! from watches; tests fill them by hand.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use kube::ResourceExt;
use kube::api::{ObjectMeta, PartialObjectMeta};
use kube::core::PartialObjectMetaExt;
use kube::runtime::reflector::ObjectRef;

use ft_core::api::{ComplianceReport, EnvironmentPolicy, FranceTravailTenant};
use ft_core::applied::Awaited;
use ft_core::backup::VeleroView;
use ft_core::backup::velero::{Backup, BackupStorageLocation, Restore, Schedule};
use ft_core::controls::TenantView;

mod cache;
pub use cache::{Cache, CacheInto, CacheWriter, Cached, Form, KeyOf, cache, cache_with};

macro_rules! stores {
    ($( $(#[$doc:meta])* $field:ident: $kind:ty $(, by $key_of:expr)? $(, kept $form:ident)?; )*) => {
        #[derive(Clone)]
        pub struct Observed {
            $( $(#[$doc])* pub $field: Cache<$kind>, )*
            /// Set once every store has listed: see `wait_until_ready`.
            listed: Arc<tokio::sync::OnceCell<()>>,
            /// The writes whose watch events are the operator's own doing.
            pub echoes: Arc<Echoes>,
            /// Told of every change to a cache.
            changed: Arc<tokio::sync::Notify>,
        }

        pub struct ObservedWriters {
            $( pub $field: CacheWriter<$kind>, )*
        }

        /// Empty stores and their writers.
        pub fn empty_stores() -> (Observed, ObservedWriters) {
            let changed = Arc::new(tokio::sync::Notify::new());
            $(
                let $field = cache_with(
                    None $(.or(Some(Form::$form)))?.unwrap_or(Form::Packed),
                    None $(.or(Some($key_of as KeyOf<$kind>)))?,
                );
            )*
            (
                Observed {
                    $( $field: $field.0, )*
                    listed: Arc::default(),
                    echoes: Arc::default(),
                    changed: changed.clone(),
                },
                ObservedWriters { $( $field: $field.1.notifying(changed.clone()), )* },
            )
        }

        impl ObservedWriters {
            /// Every store listed, and empty: a cluster that holds none of these objects.
            pub fn mark_all_listed(&mut self) {
                $(
                    self.$field.apply_watcher_event(&kube::runtime::watcher::Event::Init);
                    self.$field.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
                )*
            }
        }

        impl Observed {

            /// Waits until every store has listed once. Any number of passes may wait at
            /// once: a store's own readiness wakes only the last task that polled it (its
            /// one-shot channel keeps one waker), so only one task at a time waits on the
            /// stores, the others on a cell that wakes them all.
            pub async fn wait_until_ready(&self) {
                self.listed
                    .get_or_init(|| async {
                        // Errors only mean the writer was dropped: the controller is stopping.
                        let _ = futures::join!( $( self.$field.wait_until_ready(), )* );
                    })
                    .await;
            }
        }
    };
}

stores! {
    // Packed unless `kept Whole`: the cluster-wide objects every pass reads in full.
    /// The tenants themselves: the controller keeps only their metadata (`TenantMeta`).
    tenants: FranceTravailTenant;
    /// Every namespace, metadata only: their labels are all the operator sets on them.
    namespaces: PartialObjectMeta<Namespace>;
    /// Every NetworkPolicy: one made by hand in a tenant namespace can open a flow.
    network_policies: NetworkPolicy;
    /// The operator's own quotas and limit ranges.
    resource_quotas: ResourceQuota;
    limit_ranges: LimitRange;
    compliance_reports: ComplianceReport;
    /// What the cluster-wide admission policies enforce in each tenant namespace.
    environment_policies: EnvironmentPolicy;
    /// The cluster-wide admission objects (`admission/`), which the operator only reads.
    validating_admission_policies: ValidatingAdmissionPolicy, kept Whole;
    validating_admission_policy_bindings: ValidatingAdmissionPolicyBinding, kept Whole;
    mutating_admission_policies: MutatingAdmissionPolicy, kept Whole;
    mutating_admission_policy_bindings: MutatingAdmissionPolicyBinding, kept Whole;
    /// Pods, claims and bindings of every namespace, trimmed to what the controls read.
    pods: Pod, by node_of;
    persistent_volume_claims: PersistentVolumeClaim;
    role_bindings: RoleBinding;
    persistent_volumes: PersistentVolume;
    nodes: Node, kept Whole;
    /// Filed under "default" when the cluster's default class.
    storage_classes: StorageClass, by default_class;
    /// Velero's objects in its namespace: empty until the cluster serves Velero's API.
    schedules: Schedule;
    backups: Backup;
    /// Read in full by every pass with backups: a restore names the namespaces it reads.
    restores: Restore, kept Whole;
    backup_storage_locations: BackupStorageLocation;
}

/// What the controller keeps of a tenant, to schedule its passes: who it is and at which
/// version. A pass reads the tenant itself from `Observed::tenants`, where it is packed.
pub type TenantMeta = PartialObjectMeta<FranceTravailTenant>;

/// A tenant, as the controller and the watches that wake it name it.
pub type TenantRef = ObjectRef<TenantMeta>;

/// The metadata the controller keeps of a tenant.
pub fn tenant_meta(tenant: &FranceTravailTenant) -> TenantMeta {
    let meta = &tenant.metadata;
    ObjectMeta {
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp.clone(),
        ..Default::default()
    }
    .into_request_partial()
}

/// The writes of the operator's passes, at the versions the API server answered: their watch
/// events bring nothing new, and wake nobody. The pass that wrote waits until the caches show
/// them (`Observed::show`) and judges then.
#[derive(Default)]
pub struct Echoes(Mutex<HashMap<String, String>>);

impl Echoes {
    /// A write of ours, answered with `version`.
    pub fn expect(&self, key: String, version: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, version);
    }

    /// Whether this is the event of a write of ours, which it then forgets.
    pub fn is_echo(&self, key: &str, version: Option<&str>) -> bool {
        let mut echoes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let echo = version.is_some() && echoes.get(key).map(String::as_str) == version;
        if echo {
            echoes.remove(key);
        }
        echo
    }

    /// Whether an object's watch event is the echo of a write of ours.
    pub fn of<K: kube::Resource<DynamicType = ()>>(&self, object: &K) -> bool {
        self.is_echo(
            &ft_core::meta::object_key(object),
            object.meta().resource_version.as_deref(),
        )
    }
}

/// The cluster's default StorageClass is filed under "default": the class of a claim that names
/// none.
fn default_class(class: &StorageClass) -> Option<&str> {
    let annotations = class.metadata.annotations.as_ref()?;
    (annotations.get(ft_core::controls::DEFAULT_CLASS)? == "true").then_some(DEFAULT)
}

const DEFAULT: &str = "default";

/// The node a pod is bound to: pods are filed by it, for what runs on a production pool.
fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

impl Observed {
    /// Waits until every cache shows what a pass left (`awaited`), for at most `within`.
    /// Returns whether they all do.
    pub async fn show(&self, awaited: &[Awaited], within: Duration) -> bool {
        self.once(within, || {
            awaited.iter().all(|a| self.shows(a)).then_some(())
        })
        .await
        .is_some()
    }

    /// The tenant named `name`, once its cache holds it: at once, but for a tenant first seen
    /// in a relist, which its cache files when the relist completes. `None` after `within`:
    /// the tenant is gone.
    pub async fn tenant(&self, name: &str, within: Duration) -> Option<Arc<FranceTravailTenant>> {
        let key = ObjectRef::new(name);
        self.once(within, || self.tenants.get(&key)).await
    }

    /// What `found` finds in the caches, looked for again at each change of theirs, for at
    /// most `within`.
    async fn once<T>(&self, within: Duration, found: impl Fn() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking: a change between the look and the wait is not missed.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if let Some(value) = found() {
                return Some(value);
            }
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// Whether the cache of its kind shows `awaited` as the pass left it.
    fn shows(&self, awaited: &Awaited) -> bool {
        /// `None` when the cache does not hold the object.
        fn version<K>(
            cache: &Cache<K>,
            namespace: Option<&str>,
            name: &str,
        ) -> Option<Option<String>>
        where
            K: Cached<DynamicType = ()>,
        {
            let key = ObjectRef::new(name);
            let key = match namespace {
                Some(ns) => key.within(ns),
                None => key,
            };
            Some(cache.get(&key)?.meta().resource_version.clone())
        }
        let (kind, ns, name) = awaited.parts();
        let shown = match kind {
            "Namespace" => version(&self.namespaces, ns, name),
            "NetworkPolicy" => version(&self.network_policies, ns, name),
            "ResourceQuota" => version(&self.resource_quotas, ns, name),
            "LimitRange" => version(&self.limit_ranges, ns, name),
            "RoleBinding" => version(&self.role_bindings, ns, name),
            "StorageClass" => version(&self.storage_classes, ns, name),
            "ComplianceReport" => version(&self.compliance_reports, ns, name),
            "EnvironmentPolicy" => version(&self.environment_policies, ns, name),
            "Schedule" => version(&self.schedules, ns, name),
            // A kind no cache holds cannot be waited for.
            _ => return true,
        };
        awaited.is_shown_by(shown.as_ref().map(|v| v.as_deref()))
    }

    /// The RoleBindings in these namespaces, as the store shows them.
    pub fn bindings_in(&self, namespaces: &BTreeSet<String>) -> Vec<Arc<RoleBinding>> {
        self.role_bindings.in_namespaces(namespaces)
    }

    /// The pods outside `own` and `platform` namespaces bound to a node that carries every
    /// label of one of `pools`: what may not run on a tenant's production pool (CLD-25).
    pub fn pods_on_pools(
        &self,
        pools: &[std::collections::BTreeMap<String, String>],
        own: &BTreeSet<String>,
        platform: &[String],
    ) -> Vec<Arc<Pod>> {
        if pools.is_empty() {
            return Vec::new();
        }
        let pool_nodes: BTreeSet<String> = self
            .nodes
            .state()
            .iter()
            .filter(|n| {
                let labels = n.metadata.labels.as_ref();
                pools.iter().any(|pool| {
                    pool.iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                })
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        if pool_nodes.is_empty() {
            return Vec::new();
        }
        self.pods
            .with_keys(&pool_nodes)
            .into_iter()
            .filter(|p| {
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                !own.contains(ns) && !platform.iter().any(|n| n == ns)
            })
            .collect()
    }

    /// What the cluster holds in and for the given namespaces of one tenant, and the
    /// cluster-wide admission objects.
    pub fn view(&self, tenant: &str, namespaces: &BTreeSet<String>) -> TenantView {
        let persistent_volume_claims = self.persistent_volume_claims.in_namespaces(namespaces);
        let persistent_volumes = persistent_volume_claims
            .iter()
            .filter_map(|c| c.spec.as_ref()?.volume_name.as_deref())
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .filter_map(|name| self.persistent_volumes.get(&ObjectRef::new(name)))
            .collect();
        // The classes the controls look up: the tenant's own, those its claims name, and the
        // default one, for a claim that names none.
        let mut class_names: BTreeSet<String> = persistent_volume_claims
            .iter()
            .filter_map(|c| c.spec.as_ref()?.storage_class_name.clone())
            .collect();
        class_names.insert(ft_core::encryption::class_name(tenant));
        let mut storage_classes = self.storage_classes.with_keys(&[DEFAULT.to_string()]);
        storage_classes.retain(|c| !class_names.contains(&c.name_any()));
        storage_classes.extend(
            class_names
                .iter()
                .filter_map(|name| self.storage_classes.get(&ObjectRef::new(name))),
        );
        TenantView {
            namespaces: namespaces
                .iter()
                .filter_map(|n| self.namespaces.get(&ObjectRef::new(n)))
                .collect(),
            network_policies: self.network_policies.in_namespaces(namespaces),
            resource_quotas: self.resource_quotas.in_namespaces(namespaces),
            limit_ranges: self.limit_ranges.in_namespaces(namespaces),
            pods: self.pods.in_namespaces(namespaces),
            pool_pods: Vec::new(),
            persistent_volume_claims,
            persistent_volumes,
            role_bindings: self.role_bindings.in_namespaces(namespaces),
            nodes: self.nodes.state(),
            storage_classes,
            environment_policies: self.environment_policies.in_namespaces(namespaces),
            validating_admission_policies: self.validating_admission_policies.state(),
            validating_admission_policy_bindings: self.validating_admission_policy_bindings.state(),
            mutating_admission_policies: self.mutating_admission_policies.state(),
            mutating_admission_policy_bindings: self.mutating_admission_policy_bindings.state(),
            // Read from the key store by the caller: the reflectors never hold Secrets.
            key_fingerprint: None,
            velero: VeleroView::default(),
        }
    }

    /// What Velero holds for the tenant: its location, and the Schedules, Backups and
    /// Restores made for it or taking one of its namespaces as their source.
    pub fn velero_view(
        &self,
        tenant: &ft_core::api::FranceTravailTenant,
        velero_namespace: &str,
    ) -> VeleroView {
        let name = tenant.name_any();
        let namespaces = ft_core::meta::tenant_namespaces(tenant);
        let ours = |meta: &kube::api::ObjectMeta| {
            meta.namespace.as_deref() == Some(velero_namespace)
                && meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ft_core::api::labels::TENANT))
                    == Some(&name)
        };
        let (restores, foreign_restores) = self
            .restores
            .state()
            .into_iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(velero_namespace))
            .filter(|r| {
                ours(&r.metadata)
                    || r.spec
                        .namespace_mapping
                        .keys()
                        .chain(&r.spec.included_namespaces)
                        .any(|ns| namespaces.contains(ns))
            })
            .partition(|r| ours(&r.metadata));
        VeleroView {
            namespace: velero_namespace.into(),
            location: tenant.spec.backup.as_ref().and_then(|b| {
                self.backup_storage_locations
                    .get(&ObjectRef::new(&b.storage_location).within(velero_namespace))
            }),
            schedules: self
                .schedules
                .of_tenant(&name)
                .into_iter()
                .filter(|o| ours(&o.metadata))
                .collect(),
            backups: self
                .backups
                .of_tenant(&name)
                .into_iter()
                .filter(|o| ours(&o.metadata))
                .collect(),
            restores,
            foreign_restores,
        }
    }
}
