//! The tenant's own key and encrypted storage, nothing else (CLD-21, CLD-40): the key, its
//! Secret, the tenant's StorageClass from an encryption profile, and the claims policy.
//!
//! Checked by `controls/encryption.rs` (ENC-1, ENC-2).

mod key;
mod profiles;

pub use key::*;
pub use profiles::*;
