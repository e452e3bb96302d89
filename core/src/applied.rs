//! What a pass of `apply` changed, and how an observed object is told apart from the desired
//! one: pure, so the controls judge drift exactly as `apply` repairs it.

use serde_json::Value;

/// What one pass of `apply` changed, for Events, metrics and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    /// Children that existed but differed: edited by hand, or an older version of the spec.
    pub restored: Vec<String>,
    pub pruned: Vec<String>,
    /// Desired children the reflectors have not shown yet.
    pub unseen: usize,
    /// What the caches must show before the controls judge the cluster: each child written
    /// (or not yet seen), at the version the API server answered, and each one deleted.
    pub awaited: Vec<Awaited>,
    /// Children written whose answer carried no resourceVersion: no cache can be shown to
    /// hold them, so the pass cannot judge at once.
    pub unversioned: usize,
}

/// A child a pass wrote or deleted, as the API server left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    /// `Kind/namespace/name`, or `Kind/name` for a cluster-scoped object.
    pub key: String,
    /// The resourceVersion the API server answered with; `None` once deleted.
    pub version: Option<String>,
}

impl Awaited {
    /// The key's kind, namespace and name.
    pub fn parts(&self) -> (&str, Option<&str>, &str) {
        let mut parts = self.key.splitn(3, '/');
        let kind = parts.next().unwrap_or_default();
        match (parts.next(), parts.next()) {
            (Some(namespace), Some(name)) => (kind, Some(namespace), name),
            (name, _) => (kind, None, name.unwrap_or_default()),
        }
    }

    /// Whether a cache that holds this key at `version` (`None`: holds no such object) shows
    /// what the pass left, or newer. resourceVersions are etcd revisions in practice; when they
    /// do not parse, only the same version counts.
    pub fn is_shown_by(&self, version: Option<Option<&str>>) -> bool {
        match (&self.version, version) {
            (None, None) => true,
            (Some(want), Some(Some(have))) => {
                want == have
                    || matches!(
                        (want.parse::<u64>(), have.parse::<u64>()),
                        (Ok(want), Ok(have)) if have >= want
                    )
            }
            _ => false,
        }
    }
}

impl ApplyReport {
    /// Nothing was written and the reflectors show every child: what they hold is the cluster
    /// as it is, fit to be judged.
    pub fn is_quiet(&self) -> bool {
        self.created.is_empty()
            && self.restored.is_empty()
            && self.pruned.is_empty()
            && self.unseen == 0
    }

    /// The same report without RoleBindings, which the access journal reports one by one.
    pub fn without_bindings(&self) -> ApplyReport {
        let not_binding = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .filter(|k| !k.starts_with("RoleBinding/"))
                .cloned()
                .collect()
        };
        ApplyReport {
            created: not_binding(&self.created),
            restored: not_binding(&self.restored),
            pruned: not_binding(&self.pruned),
            unseen: self.unseen,
            unversioned: self.unversioned,
            awaited: self.awaited.clone(),
        }
    }
}

/// Whether `observed` lacks something `desired` sets. Only what the operator sets is compared:
/// metadata other than labels and annotations, status, and fields the server adds are ignored;
/// lists must match element by element, so an extra rule added by hand is drift.
pub fn differs(desired: &Value, observed: &Value) -> bool {
    let (Value::Object(d), Value::Object(o)) = (desired, observed) else {
        return true;
    };
    d.iter().any(|(key, want)| match key.as_str() {
        "apiVersion" | "kind" | "status" => false,
        "metadata" => ["name", "namespace", "labels", "annotations"]
            .iter()
            .any(|field| !contains(&want[*field], &observed[key][*field])),
        _ => !contains(want, o.get(key).unwrap_or(&Value::Null)),
    })
}

fn contains(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Null, _) => true,
        (Value::Object(w), Value::Null) => w.values().all(|v| contains(v, &Value::Null)),
        (Value::Array(w), Value::Null) => w.is_empty(),
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .all(|(k, v)| contains(v, h.get(k).unwrap_or(&Value::Null))),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| contains(a, b))
        }
        (w, h) => w == h,
    }
}
