//! ft-operator: the runtime that keeps France Travail's hosting security rules enforced on a
//! Kubernetes cluster, one `FranceTravailTenant` per hosted service. The rules themselves, and
//! every decision, are in `ft-core`; this crate observes, applies and reports.
//!
//! A pass per tenant ([`reconcile`]): fetch (the watched caches, [`observe`]) → validate → build
//! (`ft_core::desired`) → [`apply`] (server-side apply, prune) → evaluate ([`compliance`]) →
//! status. The deletion and backup executors are in [`reconcile`], the watches in [`watch`],
//! leadership and start-up in [`run`].

pub mod admission;
pub mod apply;
pub mod compliance;
pub mod context;
pub mod error;
pub mod failpoint;
pub mod health;
pub mod keystore;
pub mod metrics;
pub mod migrate;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod server;
pub mod watch;
pub mod webhook;

pub use error::{Error, Result};

/// A 64-bit digest of `value`, the same for equal values within a run: what the memo of applied
/// children, the change filters of the watches and the node index compare.
pub fn digest(value: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(value)
}
