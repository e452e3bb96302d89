//! A reflector store that also files its objects by namespace and by tenant, so that a pass
//! reads its own tenant's objects instead of scanning every tenant's: the cost of a pass stays
//! that of its tenant, whatever the number of tenants.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;

use ft_core::api::labels;

/// A further key objects are filed by: a pod's node, say.
pub type KeyOf<K> = fn(&K) -> Option<&str>;

/// The objects of one kind, by namespace, by the tenant their label names, and by `key_of`.
struct Index<K> {
    by_namespace: HashMap<String, Vec<Arc<K>>>,
    by_tenant: HashMap<String, Vec<Arc<K>>>,
    key_of: Option<KeyOf<K>>,
    by_key: HashMap<String, Vec<Arc<K>>>,
}

impl<K> Index<K> {
    fn new(key_of: Option<KeyOf<K>>) -> Self {
        Self {
            by_namespace: HashMap::new(),
            by_tenant: HashMap::new(),
            key_of,
            by_key: HashMap::new(),
        }
    }
}

fn tenant_label<K: Resource>(object: &K) -> Option<&String> {
    object.meta().labels.as_ref()?.get(labels::TENANT)
}

impl<K: Resource> Index<K> {
    fn insert(&mut self, object: &Arc<K>) {
        if let Some(ns) = &object.meta().namespace {
            self.by_namespace
                .entry(ns.clone())
                .or_default()
                .push(object.clone());
        }
        if let Some(tenant) = tenant_label(&**object) {
            self.by_tenant
                .entry(tenant.clone())
                .or_default()
                .push(object.clone());
        }
        if let Some(key) = self.key_of.and_then(|key_of| key_of(object)) {
            self.by_key
                .entry(key.to_string())
                .or_default()
                .push(object.clone());
        }
    }

    fn remove(&mut self, object: &Arc<K>) {
        fn take<K>(map: &mut HashMap<String, Vec<Arc<K>>>, key: &str, object: &Arc<K>) {
            if let Some(list) = map.get_mut(key) {
                list.retain(|o| !Arc::ptr_eq(o, object));
                if list.is_empty() {
                    map.remove(key);
                }
            }
        }
        if let Some(ns) = &object.meta().namespace {
            take(&mut self.by_namespace, ns, object);
        }
        if let Some(tenant) = tenant_label(&**object) {
            take(&mut self.by_tenant, tenant, object);
        }
        if let Some(key) = self.key_of.and_then(|key_of| key_of(object)) {
            take(&mut self.by_key, key, object);
        }
    }
}

/// A reflector store and its index. Reads through [`Deref`] are the store's own.
pub struct Cache<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<K>,
    index: Arc<RwLock<Index<K>>>,
}

impl<K: Resource + Clone + 'static> Clone for Cache<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            index: self.index.clone(),
        }
    }
}

impl<K: Resource + Clone + 'static> Deref for Cache<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    type Target = Store<K>;
    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K: Resource + Clone + 'static> Cache<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    /// The objects of these namespaces.
    pub fn in_namespaces<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a String>,
    ) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        namespaces
            .into_iter()
            .filter_map(|ns| index.by_namespace.get(ns))
            .flatten()
            .cloned()
            .collect()
    }

    /// The objects filed under these keys of the cache's `key_of`.
    pub fn with_keys<'a>(&self, keys: impl IntoIterator<Item = &'a String>) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        keys.into_iter()
            .filter_map(|key| index.by_key.get(key))
            .flatten()
            .cloned()
            .collect()
    }

    /// The objects whose tenant label names `tenant`, wherever they are.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.by_tenant.get(tenant).cloned().unwrap_or_default()
    }
}

/// Feeds a [`Cache`] from a watch, as a reflector's writer feeds its store.
pub struct CacheWriter<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    writer: Writer<K>,
    cache: Cache<K>,
    /// Told of every change, for a pass waiting until the caches show its writes.
    changed: Arc<tokio::sync::Notify>,
}

impl<K: Resource + Clone + 'static> CacheWriter<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    /// Tells `changed` of each change this writer makes.
    pub fn notifying(mut self, changed: Arc<tokio::sync::Notify>) -> Self {
        self.changed = changed;
        self
    }

    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        self.file(event);
        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
            self.changed.notify_waiters();
        }
    }

    fn file(&mut self, event: &watcher::Event<K>) {
        let dyntype = K::DynamicType::default();
        let before = |object: &K| {
            self.cache
                .store
                .get(&ObjectRef::from_obj_with(object, dyntype.clone()))
        };
        match event {
            watcher::Event::Apply(object) => {
                let old = before(object);
                self.writer.apply_watcher_event(event);
                let new = before(object);
                let mut index = self.cache.index.write().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = old {
                    index.remove(&old);
                }
                if let Some(new) = new {
                    index.insert(&new);
                }
            }
            watcher::Event::Delete(object) => {
                let old = before(object);
                self.writer.apply_watcher_event(event);
                if let Some(old) = old {
                    let mut index = self.cache.index.write().unwrap_or_else(|e| e.into_inner());
                    index.remove(&old);
                }
            }
            // A listing replaces the store at its end: the index is filed again from it.
            watcher::Event::InitDone => {
                self.writer.apply_watcher_event(event);
                let key_of = self
                    .cache
                    .index
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .key_of;
                let mut index = Index::new(key_of);
                for object in self.cache.store.state() {
                    index.insert(&object);
                }
                *self.cache.index.write().unwrap_or_else(|e| e.into_inner()) = index;
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {
                self.writer.apply_watcher_event(event)
            }
        }
    }

    /// Feeds the cache from a watch's events, passing them on.
    pub fn reflect<S>(mut self, events: S) -> impl futures::Stream<Item = S::Item>
    where
        S: futures::Stream<Item = watcher::Result<watcher::Event<K>>>,
    {
        use futures::StreamExt;
        events.map(move |event| {
            if let Ok(event) = &event {
                self.apply_watcher_event(event);
            }
            event
        })
    }
}

/// An empty cache and its writer.
pub fn cache<K: Resource + Clone + 'static>() -> (Cache<K>, CacheWriter<K>)
where
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    cache_by(None)
}

/// An empty cache that also files its objects by `key_of`, and its writer.
pub fn cache_by<K: Resource + Clone + 'static>(
    key_of: Option<KeyOf<K>>,
) -> (Cache<K>, CacheWriter<K>)
where
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    let (store, writer) = reflector::store();
    let cache = Cache {
        store,
        index: Arc::new(RwLock::new(Index::new(key_of))),
    };
    (
        cache.clone(),
        CacheWriter {
            writer,
            cache,
            changed: Arc::default(),
        },
    )
}

/// `.cache_into(writer)` on a watch's events, as `.reflect(writer)` for a reflector's store.
pub trait CacheInto<K: Resource + Clone + 'static>:
    futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Sized
where
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    fn cache_into(self, writer: CacheWriter<K>) -> impl futures::Stream<Item = Self::Item> {
        writer.reflect(self)
    }
}

impl<K, S> CacheInto<K> for S
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Sized,
{
}
