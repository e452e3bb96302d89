//! The tenants' keys (CLD-21, CLD-40, CLD-47): 256 random bits from the OS generator per tenant,
//! kept in a key store behind a small trait. The key itself never leaves this module except
//! into the store: `TenantKey` has no Debug or Display of its bytes, is zeroized when dropped,
//! and everything else (status, Events, logs, the shredding record) sees only its fingerprint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use zeroize::Zeroizing;

use ft_core::api::annotations;
use ft_core::encryption::{TenantKey, key_secret, secret_name};

use crate::error::{Error, Result};

/// Where tenant keys live. Every operation is idempotent.
pub trait KeyStore: Send + Sync {
    /// The fingerprint of the tenant's key, creating the key if it has none.
    fn ensure(&self, tenant: &str) -> BoxFuture<'_, Result<String>>;
    /// The fingerprint of the tenant's key, if it has one.
    fn fingerprint(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// Destroys the tenant's key. Returns the fingerprint of the key destroyed, or `None` when
    /// there was none (already destroyed).
    fn destroy(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// Where a tenant's key is kept, for the shredding record, such as `Secret ft-system/ft-key-a`.
    fn location(&self, tenant: &str) -> String;
}

/// The embedded key store: one Secret per tenant, `ft-key-<tenant>`, in the operator's own
/// namespace, which tenants cannot read. Only that namespace's Secrets are ever read, and only
/// by name: the operator lists and watches no Secret.
pub struct SecretKeyStore {
    client: Client,
    namespace: String,
    /// Fingerprints read lately, so that each tenant's pass does not read its Secret again.
    seen: Mutex<HashMap<String, (Instant, String)>>,
}

/// How long a fingerprint read from the key store is trusted: a Secret deleted by hand is
/// noticed within this time.
const SEEN_FOR: Duration = Duration::from_secs(60);

impl SecretKeyStore {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            seen: Mutex::default(),
        }
    }

    fn recall(&self, tenant: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(tenant)
            .filter(|(at, _)| at.elapsed() < SEEN_FOR)
            .map(|(_, fingerprint)| fingerprint.clone())
    }

    fn remember(&self, tenant: &str, fingerprint: Option<&String>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match fingerprint {
            Some(f) => seen.insert(tenant.to_string(), (Instant::now(), f.clone())),
            None => seen.remove(tenant),
        };
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn read(&self, tenant: &str) -> Result<Option<TenantKey>> {
        let name = secret_name(tenant);
        let secret = self
            .api()
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube("read", self.location(tenant), e))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .ok_or_else(|| Error::KeyStore(format!("{} holds no key", self.location(tenant))))?;
        // The copy deserialised from the API is wiped once read.
        let raw = Zeroizing::new(bytes.0.clone());
        Ok(Some(TenantKey::from_bytes(&raw)?))
    }
}

impl KeyStore for SecretKeyStore {
    fn ensure(&self, tenant: &str) -> BoxFuture<'_, Result<String>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            if let Some(known) = self.recall(&tenant) {
                return Ok(known);
            }
            let made = self.make(&tenant).await?;
            self.remember(&tenant, Some(&made));
            Ok(made)
        })
    }

    fn fingerprint(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            if let Some(known) = self.recall(&tenant) {
                return Ok(Some(known));
            }
            let found = self.read(&tenant).await?.map(|k| k.fingerprint());
            self.remember(&tenant, found.as_ref());
            Ok(found)
        })
    }

    fn destroy(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let tenant = tenant.to_string();
        Box::pin(async move {
            self.remember(&tenant, None);
            self.delete(&tenant).await
        })
    }

    fn location(&self, tenant: &str) -> String {
        format!("Secret {}/{}", self.namespace, secret_name(tenant))
    }
}

impl SecretKeyStore {
    /// Reads the tenant's key, or makes it: its fingerprint either way.
    async fn make(&self, tenant: &str) -> Result<String> {
        if let Some(key) = self.read(tenant).await? {
            return Ok(key.fingerprint());
        }
        let key = TenantKey::generate()?;
        let mut secret = key_secret(tenant, &self.namespace, &key);
        match self.api().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(key.fingerprint()),
            // Made meanwhile by another pass: that one is the key.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if let Some(data) = secret.data.as_mut() {
                    data.clear();
                }
                self.read(tenant)
                    .await?
                    .map(|k| k.fingerprint())
                    .ok_or_else(|| Error::KeyStore("the key vanished while made".into()))
            }
            Err(e) => Err(Error::kube("create", self.location(tenant), e)),
        }
    }

    /// Deletes the tenant's key Secret: the fingerprint of the key it held, if it was there.
    async fn delete(&self, tenant: &str) -> Result<Option<String>> {
        let name = secret_name(tenant);
        let Some(secret) = self
            .api()
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube("read", self.location(tenant), e))?
        else {
            return Ok(None);
        };
        let fingerprint = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::KEY_FINGERPRINT))
            .cloned();
        // Foreground with no grace: the Secret is gone from etcd when this returns. The
        // uid precondition makes sure the Secret read is the one deleted.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&name, &params).await {
            Ok(_) => Ok(fingerprint.or_else(|| Some("unknown".into()))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(Error::kube("delete", self.location(tenant), e)),
        }
    }
}

/// Keys in memory, for tests and the offline plan.
#[derive(Default)]
pub struct MemoryKeyStore(Mutex<HashMap<String, TenantKey>>);

impl MemoryKeyStore {
    pub fn contains(&self, tenant: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(tenant)
    }
}

impl KeyStore for MemoryKeyStore {
    fn ensure(&self, tenant: &str) -> BoxFuture<'_, Result<String>> {
        let result = (|| {
            let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(key) = keys.get(tenant) {
                return Ok(key.fingerprint());
            }
            let key = TenantKey::generate()?;
            let fingerprint = key.fingerprint();
            keys.insert(tenant.to_string(), key);
            Ok(fingerprint)
        })();
        Box::pin(async move { result })
    }

    fn fingerprint(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let found = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map(TenantKey::fingerprint);
        Box::pin(async move { Ok(found) })
    }

    fn destroy(&self, tenant: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let removed = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant)
            .map(|k| k.fingerprint());
        Box::pin(async move { Ok(removed) })
    }

    fn location(&self, tenant: &str) -> String {
        format!("memory/{tenant}")
    }
}
