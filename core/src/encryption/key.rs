//! A tenant's key (CLD-21, CLD-40, CLD-47): 256 random bits from the OS generator. `TenantKey`
//! has no Debug or Display of its bytes and is zeroized when dropped; everything else (status,
//! Events, logs, the shredding record) sees only its fingerprint.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::api::{annotations, labels};
use crate::digest::sha256_hex;

/// A key that could not be made or read; the message never carries key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Key length: AES-256.
pub const KEY_BYTES: usize = 32;

/// The Secret type of key Secrets, so they are told apart from any other.
pub const SECRET_TYPE: &str = "hosting.francetravail.fr/tenant-key";

/// One tenant's key. Its bytes are wiped from memory when it is dropped.
pub struct TenantKey(Zeroizing<[u8; KEY_BYTES]>);

impl TenantKey {
    /// 256 bits from the operating system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| KeyError("the OS random generator failed".into()))?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
            KeyError(format!(
                "a tenant key is {KEY_BYTES} bytes, found {}",
                bytes.len()
            ))
        })?;
        Ok(Self(Zeroizing::new(array)))
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// Safe to show: `sha256:` and the first 16 hex digits of the SHA-256 of the key. It
    /// identifies the key in the shredding record without revealing it.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.bytes())
    }
}

pub fn fingerprint(key: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(key, 16))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantKey({}, redacted)", self.fingerprint())
    }
}

/// The Secret holding a tenant's key, in the operator's namespace.
pub fn secret_name(tenant: &str) -> String {
    format!("ft-key-{tenant}")
}

/// The Secret holding a tenant's key.
pub fn key_secret(tenant: &str, namespace: &str, key: &TenantKey) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(tenant)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (labels::TENANT.into(), tenant.into()),
                (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
            ])),
            annotations: Some(BTreeMap::from([(
                annotations::KEY_FINGERPRINT.into(),
                key.fingerprint(),
            )])),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        immutable: Some(true),
        // `key` is the key itself; the `CRYPTO_*` entries are the same key in the form CSI
        // drivers that read a passphrase from a Secret take it (Longhorn).
        data: Some(BTreeMap::from([
            ("key".to_string(), ByteString(key.bytes().to_vec())),
            (
                "CRYPTO_KEY_VALUE".to_string(),
                ByteString(hex(key.bytes()).into_bytes()),
            ),
            (
                "CRYPTO_KEY_PROVIDER".to_string(),
                ByteString(b"secret".to_vec()),
            ),
            (
                "CRYPTO_KEY_CIPHER".to_string(),
                ByteString(b"aes-xts-plain64".to_vec()),
            ),
            (
                "CRYPTO_KEY_HASH".to_string(),
                ByteString(b"sha256".to_vec()),
            ),
            ("CRYPTO_KEY_SIZE".to_string(), ByteString(b"256".to_vec())),
            ("CRYPTO_PBKDF".to_string(), ByteString(b"argon2i".to_vec())),
        ])),
        ..Default::default()
    }
}
