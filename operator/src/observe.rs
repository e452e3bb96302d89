//! What the operator observes: reflector stores of its children and of the cluster facts the
//! controls judge. `run` feeds them from watches; tests fill them by hand.

use std::collections::BTreeSet;
use std::sync::Arc;

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
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};

use ft_core::api::{ComplianceReport, EnvironmentPolicy};
use ft_core::backup::VeleroView;
use ft_core::backup::velero::{Backup, BackupStorageLocation, Restore, Schedule};
use ft_core::controls::TenantView;

macro_rules! stores {
    ($( $(#[$doc:meta])* $field:ident: $kind:ty, )*) => {
        #[derive(Clone)]
        pub struct Observed {
            $( $(#[$doc])* pub $field: Store<$kind>, )*
            /// Set once every store has listed: see `wait_until_ready`.
            listed: Arc<tokio::sync::OnceCell<()>>,
        }

        pub struct ObservedWriters {
            $( pub $field: Writer<$kind>, )*
        }

        /// Empty stores and their writers.
        pub fn empty_stores() -> (Observed, ObservedWriters) {
            $( let $field = reflector::store(); )*
            (
                Observed { $( $field: $field.0, )* listed: Arc::default() },
                ObservedWriters { $( $field: $field.1, )* },
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
    /// Every namespace, metadata only: their labels are all the operator sets on them.
    namespaces: PartialObjectMeta<Namespace>,
    /// Every NetworkPolicy: one made by hand in a tenant namespace can open a flow.
    network_policies: NetworkPolicy,
    /// The operator's own quotas and limit ranges.
    resource_quotas: ResourceQuota,
    limit_ranges: LimitRange,
    compliance_reports: ComplianceReport,
    /// What the cluster-wide admission policies enforce in each tenant namespace.
    environment_policies: EnvironmentPolicy,
    /// The cluster-wide admission objects (`admission/`), which the operator only reads.
    validating_admission_policies: ValidatingAdmissionPolicy,
    validating_admission_policy_bindings: ValidatingAdmissionPolicyBinding,
    mutating_admission_policies: MutatingAdmissionPolicy,
    mutating_admission_policy_bindings: MutatingAdmissionPolicyBinding,
    /// Pods, claims and bindings of every namespace, trimmed to what the controls read.
    pods: Pod,
    persistent_volume_claims: PersistentVolumeClaim,
    role_bindings: RoleBinding,
    persistent_volumes: PersistentVolume,
    nodes: Node,
    storage_classes: StorageClass,
    /// Velero's objects in its namespace: empty until the cluster serves Velero's API.
    schedules: Schedule,
    backups: Backup,
    restores: Restore,
    backup_storage_locations: BackupStorageLocation,
}

impl Observed {
    /// The RoleBindings in these namespaces, as the store shows them.
    pub fn bindings_in(&self, namespaces: &BTreeSet<String>) -> Vec<Arc<RoleBinding>> {
        self.role_bindings
            .state()
            .into_iter()
            .filter(|b| {
                b.metadata
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| namespaces.contains(ns))
            })
            .collect()
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
            .state()
            .into_iter()
            .filter(|p| {
                let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                !own.contains(ns)
                    && !platform.iter().any(|n| n == ns)
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|node| pool_nodes.contains(node))
            })
            .collect()
    }

    /// What the cluster holds in and for the given namespaces of one tenant, and the
    /// cluster-wide admission objects.
    pub fn view(&self, namespaces: &BTreeSet<String>) -> TenantView {
        fn within<K: kube::Resource<DynamicType = ()> + Clone + 'static>(
            store: &Store<K>,
            namespaces: &BTreeSet<String>,
        ) -> Vec<std::sync::Arc<K>> {
            store
                .state()
                .into_iter()
                .filter(|o| {
                    o.meta()
                        .namespace
                        .as_ref()
                        .is_some_and(|ns| namespaces.contains(ns))
                })
                .collect()
        }

        let persistent_volume_claims = within(&self.persistent_volume_claims, namespaces);
        let volume_names: BTreeSet<&str> = persistent_volume_claims
            .iter()
            .filter_map(|c| c.spec.as_ref()?.volume_name.as_deref())
            .collect();
        let persistent_volumes = self
            .persistent_volumes
            .state()
            .into_iter()
            .filter(|pv| {
                pv.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| volume_names.contains(n))
            })
            .collect();
        TenantView {
            namespaces: self
                .namespaces
                .state()
                .into_iter()
                .filter(|ns| {
                    ns.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| namespaces.contains(n))
                })
                .collect(),
            network_policies: within(&self.network_policies, namespaces),
            resource_quotas: within(&self.resource_quotas, namespaces),
            limit_ranges: within(&self.limit_ranges, namespaces),
            pods: within(&self.pods, namespaces),
            pool_pods: Vec::new(),
            persistent_volume_claims,
            persistent_volumes,
            role_bindings: within(&self.role_bindings, namespaces),
            nodes: self.nodes.state(),
            storage_classes: self.storage_classes.state(),
            environment_policies: within(&self.environment_policies, namespaces),
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
        use kube::ResourceExt;
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
                .state()
                .into_iter()
                .filter(|o| ours(&o.metadata))
                .collect(),
            backups: self
                .backups
                .state()
                .into_iter()
                .filter(|o| ours(&o.metadata))
                .collect(),
            restores,
            foreign_restores,
        }
    }
}
