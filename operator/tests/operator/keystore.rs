//! The in-memory key store behaves as the Secret one does: stable keys, idempotent destruction.

use ft_operator::keystore::{KeyStore, MemoryKeyStore};

#[tokio::test]
async fn ensure_is_stable_and_destroy_is_idempotent() {
    let store = MemoryKeyStore::default();
    let first = store.ensure("a").await.expect("made");
    assert_eq!(store.ensure("a").await.expect("found"), first);
    assert_eq!(
        store.fingerprint("a").await.expect("read"),
        Some(first.clone())
    );
    assert_ne!(store.ensure("b").await.expect("made"), first);

    assert_eq!(store.destroy("a").await.expect("destroyed"), Some(first));
    assert_eq!(store.destroy("a").await.expect("again"), None);
    assert_eq!(store.fingerprint("a").await.expect("read"), None);
    assert!(store.contains("b"));
}
