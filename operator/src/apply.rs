//! Apply: makes the cluster hold what `ft_core::desired` produced, and nothing else.
//!
//! Every child is written with server-side apply under one field manager, and only when what
//! the reflector observed differs from what is desired, so an unchanged tenant costs no write.
//! Children that carry the tenant's labels and this field manager but are no longer desired are
//! pruned, except in the namespaces of environments removed from the spec: those are held, and
//! everything in them but their RoleBindings stays, backed up as before, until their removal
//! is confirmed (`ft_core::removal`).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use ft_core::access::undeclared_subjects;
use ft_core::api::{ComplianceReport, EnvironmentPolicy, FIELD_MANAGER};
use ft_core::applied::{ApplyReport, Awaited, differs};
use ft_core::backup::velero::Schedule;
use ft_core::desired::Desired;
use ft_core::meta::{key_of, object_key, owned_by};
use ft_core::removal::{OwnedNamespace, held_namespaces};

use crate::digest;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::observe::{Cache, Cached, Observed};

/// A kind of child the operator applies.
pub trait Child:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;

    /// Kinds whose fields cannot change once made (a StorageClass's parameters): when the
    /// server refuses the change as invalid, the object is deleted and made again.
    const REPLACE_WHEN_IMMUTABLE: bool = false;
}

macro_rules! cluster_child {
    ($($kind:ty),*) => {$(
        impl Child for $kind {
            fn api(client: Client, _: Option<&str>) -> Api<Self> {
                Api::all(client)
            }
        }
    )*};
}
impl Child for StorageClass {
    fn api(client: Client, _: Option<&str>) -> Api<Self> {
        Api::all(client)
    }
    // Volumes already provisioned keep their class's parameters; only new ones get the new.
    const REPLACE_WHEN_IMMUTABLE: bool = true;
}

cluster_child!(Namespace, ComplianceReport);

fn namespaced<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    Api::namespaced(client, namespace.unwrap_or_default())
}

macro_rules! namespaced_child {
    ($($kind:ty),*) => {$(
        impl Child for $kind {
            fn api(client: Client, namespace: Option<&str>) -> Api<Self> {
                namespaced(client, namespace)
            }
        }
    )*};
}
namespaced_child!(
    NetworkPolicy,
    ResourceQuota,
    LimitRange,
    RoleBinding,
    EnvironmentPolicy,
    Schedule
);

/// Remembers, per child, the hash of the last desired body applied and the resourceVersion the
/// API server answered with. The server normalises some fields (quantities such as `0.5` become
/// `500m`), so an object can differ textually from what is desired while being exactly what was
/// applied; the memo recognises it and saves the write. Filed by namespace (`""` for
/// cluster-scoped children), each child as hashes only: it holds an entry per child of every
/// tenant.
#[derive(Default)]
pub struct AppliedMemo(Mutex<HashMap<String, HashMap<u64, Applied>>>);

/// The hashes of what was applied to one child and of the version it got.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Applied {
    body: u64,
    version: u64,
}

/// A child's key (`Kind/namespace/name` or `Kind/name`) as its namespace and a hash.
fn memo_slot(key: &str) -> (&str, u64) {
    let mut parts = key.splitn(3, '/');
    let (_, second, third) = (parts.next(), parts.next(), parts.next());
    let namespace = if third.is_some() {
        second.unwrap_or_default()
    } else {
        ""
    };
    (namespace, digest(key))
}

impl AppliedMemo {
    fn matches(&self, key: &str, hash: u64, resource_version: Option<&str>) -> bool {
        let (namespace, slot) = memo_slot(key);
        let memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let known = memo.get(namespace).and_then(|m| m.get(&slot));
        matches!((known, resource_version), (Some(a), Some(v)) if a.body == hash && a.version == digest(v))
    }

    fn knows(&self, key: &str) -> bool {
        let (namespace, slot) = memo_slot(key);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .is_some_and(|m| m.contains_key(&slot))
    }

    fn remember(&self, key: String, hash: u64, resource_version: Option<String>) {
        let (namespace, slot) = memo_slot(&key);
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match resource_version {
            Some(rv) => {
                memo.entry(namespace.to_string()).or_default().insert(
                    slot,
                    Applied {
                        body: hash,
                        version: digest(&rv),
                    },
                );
            }
            None => {
                if let Some(m) = memo.get_mut(namespace) {
                    m.remove(&slot);
                }
            }
        }
    }

    fn forget(&self, key: &str) {
        let (namespace, slot) = memo_slot(key);
        if let Some(m) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(namespace)
        {
            m.remove(&slot);
        }
    }

    /// Forgets what was applied for a deleted tenant: its namespaces' children, the
    /// namespaces themselves, and its report.
    pub fn forget_tenant(&self, tenant: &str, namespaces: &BTreeSet<String>) {
        let report = key_of(ComplianceReport::kind(&()).as_ref(), None, tenant);
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for ns in namespaces {
            memo.remove(ns);
            if let Some(cluster) = memo.get_mut("") {
                cluster.remove(&digest(key_of("Namespace", None, ns)));
            }
        }
        if let Some(cluster) = memo.get_mut("") {
            cluster.remove(&digest(&report));
        }
    }
}

pub struct Applier<'a> {
    pub client: &'a Client,
    pub observed: &'a Observed,
    pub memo: &'a AppliedMemo,
    pub metrics: &'a Metrics,
    pub tenant: &'a str,
}

impl Applier<'_> {
    /// Applies every desired child, then prunes what is no longer desired.
    pub async fn apply(&self, desired: &Desired) -> Result<ApplyReport> {
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
        } = desired;
        let mut report = ApplyReport::default();
        let observed = self.observed;
        let none = BTreeSet::new();
        // The namespaces of environments gone from the spec: held, with what isolates them.
        let held = held_namespaces(
            &namespaces.iter().map(|n| n.name_any()).collect(),
            &owned_namespaces(observed, self.tenant),
        );

        // Rights no longer granted go before anything else is attempted: no failure further
        // down can keep a lapsed grant bound (2.4.c). Those in held namespaces go too: no grant
        // can name a removed environment.
        self.prune(role_bindings, &observed.role_bindings, &none, &mut report)
            .await?;

        self.apply_kind(namespaces, &self.observed.namespaces, &mut report)
            .await?;
        for ns in namespaces {
            let name = ns.name_any();
            let terminating = self
                .observed
                .namespaces
                .get(&ObjectRef::new(&name))
                .is_some_and(|o| o.metadata.deletion_timestamp.is_some());
            if terminating {
                return Err(Error::NamespaceTerminating(name));
            }
        }
        // What the cluster-wide admission policies enforce in each namespace, right after it:
        // until it is there, they refuse every pod and claim of the namespace.
        self.apply_kind(
            environment_policies,
            &self.observed.environment_policies,
            &mut report,
        )
        .await?;
        self.apply_kind(
            network_policies,
            &self.observed.network_policies,
            &mut report,
        )
        .await?;
        self.apply_kind(resource_quotas, &self.observed.resource_quotas, &mut report)
            .await?;
        self.apply_kind(limit_ranges, &self.observed.limit_ranges, &mut report)
            .await?;
        self.apply_kind(role_bindings, &self.observed.role_bindings, &mut report)
            .await?;
        self.apply_kind(storage_classes, &observed.storage_classes, &mut report)
            .await?;
        self.apply_kind(
            compliance_reports,
            &self.observed.compliance_reports,
            &mut report,
        )
        .await?;
        if let Some(schedules) = schedules {
            self.apply_kind(schedules, &observed.schedules, &mut report)
                .await?;
        }

        // Namespaced children first: pruning a namespace takes its content with it anyway.
        self.prune(
            network_policies,
            &self.observed.network_policies,
            &held,
            &mut report,
        )
        .await?;
        self.prune(
            resource_quotas,
            &self.observed.resource_quotas,
            &held,
            &mut report,
        )
        .await?;
        self.prune(
            limit_ranges,
            &self.observed.limit_ranges,
            &held,
            &mut report,
        )
        .await?;
        self.prune(
            compliance_reports,
            &self.observed.compliance_reports,
            &none,
            &mut report,
        )
        .await?;
        // Only restore tests' scratch namespaces: a removed environment's is held.
        self.prune(namespaces, &self.observed.namespaces, &held, &mut report)
            .await?;
        if let Some(schedules) = schedules {
            // A held namespace's data is still backed up, as it was.
            let mut kept = schedules.clone();
            kept.extend(
                observed
                    .schedules
                    .of_tenant(self.tenant)
                    .iter()
                    .filter(|s| {
                        let backed_up = &s.spec.template.included_namespaces;
                        !backed_up.is_empty() && backed_up.iter().all(|ns| held.contains(ns))
                    })
                    .map(|s| (**s).clone()),
            );
            self.prune(&kept, &observed.schedules, &none, &mut report)
                .await?;
        }
        self.prune(
            environment_policies,
            &self.observed.environment_policies,
            &held,
            &mut report,
        )
        .await?;
        self.prune(
            storage_classes,
            &observed.storage_classes,
            &none,
            &mut report,
        )
        .await?;
        Ok(report)
    }

    /// Deletes every cluster-scoped object the operator made for the tenant, and its
    /// RoleBindings: what goes when the tenant goes, whatever its deletion policy. Returns
    /// what was deleted; the objects may take a moment to disappear.
    pub async fn remove_own_objects(&self) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let (o, none) = (self.observed, &BTreeSet::new());
        self.prune::<RoleBinding, _>(&[], &o.role_bindings, none, &mut report)
            .await?;
        self.prune::<Schedule, _>(&[], &o.schedules, none, &mut report)
            .await?;
        self.prune::<ComplianceReport, _>(&[], &o.compliance_reports, none, &mut report)
            .await?;
        self.prune::<StorageClass, _>(&[], &o.storage_classes, none, &mut report)
            .await?;
        Ok(report)
    }

    /// What `remove_own_objects` deletes that the caches still show: deletion is done once
    /// this is empty.
    pub fn own_objects_left(&self) -> Vec<String> {
        fn left<K: Cached<DynamicType = ()>>(store: &Cache<K>, tenant: &str) -> Vec<String> {
            store
                .of_tenant(tenant)
                .iter()
                .filter(|o| owned_by(o.meta(), tenant))
                .map(|o| object_key(&**o))
                .collect()
        }
        let (o, t) = (self.observed, self.tenant);
        [
            left(&o.role_bindings, t),
            left(&o.schedules, t),
            left(&o.compliance_reports, t),
            left(&o.storage_classes, t),
        ]
        .concat()
    }

    /// Only withdraws rights that are no longer wanted: for a tenant whose spec is refused,
    /// which gets nothing new, but whose lapsed grants must still go on time (2.4.c).
    pub async fn revoke(&self, wanted: &[RoleBinding]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        self.prune(
            wanted,
            &self.observed.role_bindings,
            &BTreeSet::new(),
            &mut report,
        )
        .await?;
        Ok(report)
    }

    /// Deletes RoleBindings of the tenant's namespaces that give a right no grant declares,
    /// when the tenant asks for it (`access.pruneUndeclared`).
    pub async fn remove_undeclared(
        &self,
        declared: &[RoleBinding],
        namespaces: &BTreeSet<String>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        for binding in self.observed.role_bindings.in_namespaces(namespaces) {
            let Some(ns) = binding.metadata.namespace.as_deref() else {
                continue;
            };
            if !namespaces.contains(ns)
                || binding.metadata.deletion_timestamp.is_some()
                || undeclared_subjects(&binding, declared).is_empty()
            {
                continue;
            }
            let key = object_key(&*binding);
            let api = RoleBinding::api(self.client.clone(), Some(ns));
            match api
                .delete(&binding.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", &key, e)),
            }
            self.metrics.write("RoleBinding", "delete");
            self.memo.forget(&key);
            report.awaited.push(Awaited {
                key: key.clone(),
                version: None,
            });
            report.pruned.push(key);
        }
        Ok(())
    }

    /// Applies the children of one kind, a few at a time: a kind's children never depend on
    /// each other, and a pass's time is mostly the API server's answers.
    async fn apply_kind<K, O>(
        &self,
        desired: &[K],
        observed: &Cache<O>,
        report: &mut ApplyReport,
    ) -> Result<()>
    where
        K: Child,
        O: Cached<DynamicType = ()>,
    {
        let mut results = Vec::with_capacity(desired.len());
        for some in desired.chunks(APPLIED_AT_ONCE) {
            let applied =
                futures::future::join_all(some.iter().map(|o| self.apply_one(o, observed))).await;
            results.extend(applied);
        }
        for result in results {
            let one = result?;
            report.unseen += usize::from(one.unseen);
            report.unversioned += usize::from(one.unversioned);
            report.created.extend(one.created);
            report.restored.extend(one.restored);
            report.awaited.extend(one.awaited);
        }
        Ok(())
    }

    async fn apply_one<K, O>(&self, object: &K, observed: &Cache<O>) -> Result<OneApplied>
    where
        K: Child,
        O: Cached<DynamicType = ()>,
    {
        let mut one = OneApplied::default();
        let key = object_key(object);
        let body = serde_json::to_value(object).map_err(|source| Error::Serialize {
            object: key.clone(),
            source,
        })?;
        let hash = digest(body.to_string());
        let name = object.name_any();
        let namespace = object.namespace();
        let api = K::api(self.client.clone(), namespace.as_deref());

        let mut found = observed
            .get_json(&object_ref::<O>(&name, namespace.as_deref()))
            .map(|o| {
                let version = o
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (Some(o), version)
            });
        // Applied before but gone from the cluster means deleted by hand, not new.
        let applied_before = self.memo.knows(&key);
        one.unseen = found.is_none();
        if found.is_none() && applied_before {
            // Written by a previous pass, not yet seen by the reflector: ask the server.
            found = api
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube("read", &key, e))?
                .map(|o| (serde_json::to_value(&o).ok(), o.resource_version()));
        }
        if let Some((Some(current), resource_version)) = &found
            && (!differs(&body, current)
                || self.memo.matches(&key, hash, resource_version.as_deref()))
        {
            if one.unseen {
                // Read from the server: the pass waits for the cache to show it.
                one.unversioned = resource_version.is_none();
                one.awaited = resource_version.clone().map(|version| Awaited {
                    key,
                    version: Some(version),
                });
            }
            return Ok(one);
        }

        let params = PatchParams::apply(FIELD_MANAGER).force();
        // The whole object is applied; only its metadata comes back, for its version: the
        // server encodes, and the operator decodes, no spec it already has.
        let applied = match api
            .patch_metadata(&name, &params, &Patch::Apply(&body))
            .await
        {
            Err(kube::Error::Api(s))
                if s.code == 422 && K::REPLACE_WHEN_IMMUTABLE && found.is_some() =>
            {
                api.delete(&name, &DeleteParams::foreground())
                    .await
                    .map_err(|e| Error::kube("replace", &key, e))?;
                self.metrics.write(K::kind(&()).as_ref(), "delete");
                api.patch_metadata(&name, &params, &Patch::Apply(&body))
                    .await
            }
            other => other,
        }
        .map_err(|e| Error::kube("apply", &key, e))?;
        self.metrics.write(K::kind(&()).as_ref(), "apply");
        let new_version = applied.resource_version();
        let changed = match found {
            None if applied_before => {
                one.restored = Some(key.clone());
                true
            }
            None => {
                one.created = Some(key.clone());
                true
            }
            Some((_, old_version)) if old_version != new_version => {
                one.restored = Some(key.clone());
                true
            }
            // The server had it all already: no watch event follows.
            Some(_) => false,
        };
        if changed && let Some(version) = &new_version {
            self.observed.echoes.expect(key.clone(), version.clone());
        }
        // An answer without a version gives nothing to wait for: `None` would mean deleted.
        one.unversioned = new_version.is_none();
        one.awaited = new_version.clone().map(|version| Awaited {
            key: key.clone(),
            version: Some(version),
        });
        self.memo.remember(key, hash, new_version);
        Ok(one)
    }

    /// Deletes what the tenant owns and `desired` does not name, except in (or, for a
    /// Namespace, named as) one of the `held` namespaces.
    async fn prune<K, O>(
        &self,
        desired: &[K],
        observed: &Cache<O>,
        held: &BTreeSet<String>,
        report: &mut ApplyReport,
    ) -> Result<()>
    where
        K: Child,
        O: Cached<DynamicType = ()>,
    {
        let wanted: BTreeSet<(Option<String>, String)> = desired
            .iter()
            .map(|d| (d.namespace(), d.name_any()))
            .collect();
        for stale in observed.of_tenant(self.tenant) {
            let meta = stale.meta();
            if !owned_by(meta, self.tenant) || meta.deletion_timestamp.is_some() {
                continue;
            }
            let (namespace, name) = (stale.namespace(), stale.name_any());
            if wanted.contains(&(namespace.clone(), name.clone()))
                || held.contains(namespace.as_ref().unwrap_or(&name))
            {
                continue;
            }
            let key = key_of(K::kind(&()).as_ref(), namespace.as_deref(), &name);
            let api = K::api(self.client.clone(), namespace.as_deref());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("prune", &key, e)),
            }
            self.metrics.write(K::kind(&()).as_ref(), "delete");
            self.memo.forget(&key);
            report.awaited.push(Awaited {
                key: key.clone(),
                version: None,
            });
            report.pruned.push(key);
        }
        Ok(())
    }
}

/// How many children of one kind a pass applies at once.
const APPLIED_AT_ONCE: usize = 8;

/// What applying one child did, for the pass's [`ApplyReport`].
#[derive(Default)]
struct OneApplied {
    /// The cache did not show it.
    unseen: bool,
    /// Written, or read from the server, without a resourceVersion in the answer.
    unversioned: bool,
    created: Option<String>,
    restored: Option<String>,
    /// What the cache must show before the pass judges.
    awaited: Option<Awaited>,
}

/// The namespaces the tenant owns, as the store shows them.
pub fn owned_namespaces(observed: &Observed, tenant: &str) -> Vec<OwnedNamespace> {
    observed
        .namespaces
        .of_tenant(tenant)
        .iter()
        .filter(|ns| owned_by(&ns.metadata, tenant))
        .map(|ns| OwnedNamespace::from_meta(tenant, &ns.metadata))
        .collect()
}

fn object_ref<O: Resource<DynamicType = ()>>(name: &str, namespace: Option<&str>) -> ObjectRef<O> {
    let r = ObjectRef::new(name);
    match namespace {
        Some(ns) => r.within(ns),
        None => r,
    }
}

#[cfg(test)]
mod tests {
    use super::AppliedMemo;

    #[test]
    fn the_memo_matches_what_was_applied_at_its_version_and_forgets_a_deleted_tenant() {
        let memo = AppliedMemo::default();
        let policy = "NetworkPolicy/a-prod/ft-default-deny";
        memo.remember(policy.into(), 7, Some("120".into()));
        assert!(memo.knows(policy));
        assert!(memo.matches(policy, 7, Some("120")));
        assert!(!memo.matches(policy, 7, Some("121")), "changed since");
        assert!(!memo.matches(policy, 8, Some("120")), "another body");
        assert!(!memo.knows("NetworkPolicy/a-dev/ft-default-deny"));

        let others = "NetworkPolicy/b-prod/ft-default-deny";
        for key in [
            "Namespace/a-prod",
            "ComplianceReport/a",
            "Namespace/b-prod",
            others,
        ] {
            memo.remember(key.into(), 1, Some("1".into()));
        }
        memo.forget_tenant("a", &["a-prod".to_string()].into());
        for gone in [policy, "Namespace/a-prod", "ComplianceReport/a"] {
            assert!(!memo.knows(gone), "{gone}");
        }
        for kept in ["Namespace/b-prod", others] {
            assert!(memo.knows(kept), "{kept}");
        }

        // A write answered without a version is not remembered.
        memo.remember(others.into(), 1, None);
        assert!(!memo.knows(others));
    }
}
