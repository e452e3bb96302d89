//! The operator's store of one kind of object, fed from a watch, in place of a reflector's
//! store: it files its objects by namespace and by tenant, so that a pass reads its own
//! tenant's objects instead of scanning every tenant's, and it holds most kinds packed, as
//! their JSON compressed against a dictionary of objects of the same kind. A child of one tenant
//! differs from the same child of another mostly by names: packed, it takes a few hundred bytes
//! where the deserialized object takes a few thousand. A pass unpacks only what it reads.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, OnceLock, RwLock};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;

use ft_core::api::labels;

/// A further key objects are filed by: a pod's node, say.
pub type KeyOf<K> = fn(&K) -> Option<&str>;

/// How a cache holds its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Compressed JSON, unpacked at each read: the tenants' children, which grow with them.
    Packed,
    /// Deserialized: the few cluster-wide objects every pass reads in full (nodes, admission
    /// policies).
    Whole,
}

/// How much JSON of a kind's first objects makes its dictionary: enough for the kind's
/// variants (a tenant's network policies differ from each other), small enough to be
/// scanned at each compression.
const DICTIONARY_BYTES: usize = 12 * 1024;

/// The bounds a cached kind meets.
pub trait Cached: Resource + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<K: Resource + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Cached for K {}

/// One object as the cache holds it.
enum Stored<K> {
    Whole(Arc<K>),
    /// JSON, for the first objects of a kind, before its dictionary is made of them.
    Plain(Box<[u8]>),
    /// JSON compressed against the kind's dictionary, its length prefixed.
    Packed(Box<[u8]>),
}

struct Entry<K> {
    stored: Stored<K>,
    /// The tenant its label names, and its `key_of`: what it is filed under besides its name.
    tenant: Option<Arc<str>>,
    key: Option<Arc<str>>,
}

/// The objects by `namespace/name` (or `name`), so that a namespace's are a range, and by
/// tenant and `key_of`.
struct Objects<K> {
    by_name: BTreeMap<Arc<str>, Entry<K>>,
    by_tenant: HashMap<Arc<str>, Vec<Arc<str>>>,
    by_key: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
            by_tenant: HashMap::new(),
            by_key: HashMap::new(),
        }
    }
}

/// The same `Arc<str>` for every object filed under one value: a tenant's name is held once.
fn shared(map: &HashMap<Arc<str>, Vec<Arc<str>>>, value: &str) -> Arc<str> {
    map.get_key_value(value)
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| value.into())
}

fn file_under(map: &mut HashMap<Arc<str>, Vec<Arc<str>>>, under: &Arc<str>, name: &Arc<str>) {
    map.entry(under.clone()).or_default().push(name.clone());
}

fn unfile(map: &mut HashMap<Arc<str>, Vec<Arc<str>>>, under: &str, name: &str) {
    if let Some(names) = map.get_mut(under) {
        names.retain(|n| &**n != name);
        if names.is_empty() {
            map.remove(under);
        }
    }
}

impl<K> Objects<K> {
    fn insert(&mut self, name: Arc<str>, mut entry: Entry<K>) {
        self.remove(&name);
        if let Some(tenant) = &entry.tenant {
            let tenant = shared(&self.by_tenant, tenant);
            file_under(&mut self.by_tenant, &tenant, &name);
            entry.tenant = Some(tenant);
        }
        if let Some(key) = &entry.key {
            let key = shared(&self.by_key, key);
            file_under(&mut self.by_key, &key, &name);
            entry.key = Some(key);
        }
        self.by_name.insert(name, entry);
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            if let Some(tenant) = &old.tenant {
                unfile(&mut self.by_tenant, tenant, name);
            }
            if let Some(key) = &old.key {
                unfile(&mut self.by_key, key, name);
            }
        }
    }
}

fn name_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

struct Shared<K> {
    objects: RwLock<Objects<K>>,
    form: Form,
    key_of: Option<KeyOf<K>>,
    /// The JSON of the kind's first objects: what the others are compressed against.
    dictionary: OnceLock<Box<[u8]>>,
}

impl<K: Cached> Shared<K> {
    /// The JSON of a packed or plain object.
    fn unpack<'a>(&self, stored: &'a Stored<K>) -> Option<std::borrow::Cow<'a, [u8]>> {
        match stored {
            Stored::Whole(_) => None,
            Stored::Plain(json) => Some(std::borrow::Cow::Borrowed(json)),
            Stored::Packed(packed) => {
                lz4_flex::block::decompress_size_prepended_with_dict(packed, self.dictionary.get()?)
                    .ok()
                    .map(std::borrow::Cow::Owned)
            }
        }
    }

    fn json(&self, stored: &Stored<K>) -> Option<serde_json::Value> {
        match stored {
            Stored::Whole(object) => serde_json::to_value(&**object).ok(),
            _ => serde_json::from_slice(&self.unpack(stored)?).ok(),
        }
    }

    fn open(&self, stored: &Stored<K>) -> Option<Arc<K>> {
        match stored {
            Stored::Whole(object) => Some(object.clone()),
            _ => serde_json::from_slice(&self.unpack(stored)?)
                .ok()
                .map(Arc::new),
        }
    }
}

/// The objects of one kind, as a watch shows them.
pub struct Cache<K> {
    shared: Arc<Shared<K>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            listed: self.listed.clone(),
        }
    }
}

/// The writer was dropped before its watch listed: the operator is stopping.
#[derive(Debug)]
pub struct WriterDropped;

impl<K: Cached> Cache<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects<K>> {
        self.shared
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn open_all<'a>(
        &self,
        objects: &'a Objects<K>,
        names: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> Vec<Arc<K>> {
        names
            .into_iter()
            .filter_map(|n| objects.by_name.get(&**n))
            .filter_map(|e| self.shared.open(&e.stored))
            .collect()
    }

    /// The object `key` names, if the cache holds it.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let name = name_of(key.namespace.as_deref(), &key.name);
        let objects = self.read();
        self.shared
            .open(&objects.by_name.get(name.as_str())?.stored)
    }

    /// The object `key` names as JSON, as `serde_json::to_value` gives it, without
    /// deserializing a packed object first: what the applier compares.
    pub fn get_json(&self, key: &ObjectRef<K>) -> Option<serde_json::Value> {
        let name = name_of(key.namespace.as_deref(), &key.name);
        let objects = self.read();
        self.shared
            .json(&objects.by_name.get(name.as_str())?.stored)
    }

    /// Every object the cache holds.
    pub fn state(&self) -> Vec<Arc<K>> {
        let objects = self.read();
        self.open_all(&objects, objects.by_name.keys())
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects of these namespaces.
    pub fn in_namespaces<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a String>,
    ) -> Vec<Arc<K>> {
        let objects = self.read();
        let mut found = Vec::new();
        for ns in namespaces {
            // `ns/` up to `ns0`: '0' follows '/', and neither a namespace nor a name holds '/'.
            let (from, to) = (format!("{ns}/"), format!("{ns}0"));
            let range = objects
                .by_name
                .range::<str, _>((Bound::Included(from.as_str()), Bound::Excluded(to.as_str())));
            found.extend(range.filter_map(|(_, e)| self.shared.open(&e.stored)));
        }
        found
    }

    /// The objects filed under these keys of the cache's `key_of`.
    pub fn with_keys<'a>(&self, keys: impl IntoIterator<Item = &'a String>) -> Vec<Arc<K>> {
        let objects = self.read();
        let mut found = Vec::new();
        for key in keys {
            if let Some(names) = objects.by_key.get(key.as_str()) {
                found.extend(self.open_all(&objects, names));
            }
        }
        found
    }

    /// The objects whose tenant label names `tenant`, wherever they are.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<K>> {
        let objects = self.read();
        match objects.by_tenant.get(tenant) {
            Some(names) => self.open_all(&objects, names),
            None => Vec::new(),
        }
    }

    /// Waits until the watch has listed once.
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        let mut listed = self.listed.clone();
        listed
            .wait_for(|listed| *listed)
            .await
            .map(|_| ())
            .map_err(|_| WriterDropped)
    }
}

/// Feeds a [`Cache`] from a watch.
pub struct CacheWriter<K> {
    shared: Arc<Shared<K>>,
    listed: tokio::sync::watch::Sender<bool>,
    /// A new listing, which replaces the objects once complete.
    listing: Option<Objects<K>>,
    /// The first objects' JSON, until there is enough of it to make the dictionary.
    samples: Vec<u8>,
    /// Told of every change, for a pass waiting until the caches show its writes.
    changed: Arc<tokio::sync::Notify>,
}

impl<K: Cached> CacheWriter<K>
where
    K::DynamicType: Default,
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

    fn entry(&mut self, object: &K) -> Entry<K> {
        let tenant = object
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::TENANT))
            .map(|t| Arc::from(t.as_str()));
        let key = self
            .shared
            .key_of
            .and_then(|key_of| key_of(object))
            .map(Arc::from);
        Entry {
            stored: self.pack(object),
            tenant,
            key,
        }
    }

    fn pack(&mut self, object: &K) -> Stored<K> {
        let json = match (self.shared.form, serde_json::to_vec(object)) {
            (Form::Packed, Ok(json)) => json,
            // What does not serialize is kept as it is.
            _ => return Stored::Whole(Arc::new(object.clone())),
        };
        if let Some(dictionary) = self.shared.dictionary.get() {
            return Stored::Packed(
                lz4_flex::block::compress_prepend_size_with_dict(&json, dictionary).into(),
            );
        }
        self.samples.extend_from_slice(&json);
        if self.samples.len() >= DICTIONARY_BYTES {
            let samples = std::mem::take(&mut self.samples);
            // The last bytes: the compressor matches nearer offsets more cheaply.
            let start = samples.len().saturating_sub(DICTIONARY_BYTES);
            let _ = self.shared.dictionary.set(samples[start..].into());
        }
        Stored::Plain(json.into())
    }

    fn file(&mut self, event: &watcher::Event<K>) {
        let name = |object: &K| {
            let meta = object.meta();
            name_of(
                meta.namespace.as_deref(),
                meta.name.as_deref().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(object) => {
                let entry = self.entry(object);
                self.shared
                    .objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name(object).into(), entry);
            }
            watcher::Event::Delete(object) => {
                self.shared
                    .objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name(object));
            }
            watcher::Event::Init => self.listing = Some(Objects::default()),
            watcher::Event::InitApply(object) => {
                let entry = self.entry(object);
                self.listing
                    .get_or_insert_with(Objects::default)
                    .insert(name(object).into(), entry);
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                *self
                    .shared
                    .objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = listed;
                self.listed.send_replace(true);
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

/// An empty cache, packed, and its writer.
pub fn cache<K: Cached>() -> (Cache<K>, CacheWriter<K>) {
    cache_with(Form::Packed, None)
}

/// An empty cache in `form` that also files its objects by `key_of`, and its writer.
pub fn cache_with<K: Cached>(form: Form, key_of: Option<KeyOf<K>>) -> (Cache<K>, CacheWriter<K>) {
    let shared = Arc::new(Shared {
        objects: RwLock::new(Objects::default()),
        form,
        key_of,
        dictionary: OnceLock::new(),
    });
    let (listed, listed_rx) = tokio::sync::watch::channel(false);
    (
        Cache {
            shared: shared.clone(),
            listed: listed_rx,
        },
        CacheWriter {
            shared,
            listed,
            listing: None,
            samples: Vec::new(),
            changed: Arc::default(),
        },
    )
}

/// `.cache_into(writer)` on a watch's events, as `.reflect(writer)` for a reflector's store.
pub trait CacheInto<K: Cached>:
    futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Sized
where
    K::DynamicType: Default,
{
    fn cache_into(self, writer: CacheWriter<K>) -> impl futures::Stream<Item = Self::Item> {
        writer.reflect(self)
    }
}

impl<K, S> CacheInto<K> for S
where
    K: Cached,
    K::DynamicType: Default,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Sized,
{
}
