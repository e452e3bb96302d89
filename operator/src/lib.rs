//! ft-operator: enforces France Travail's hosting security rules (the `CLD-xx` controls) on a
//! Kubernetes cluster, one `FranceTravailTenant` per hosted service.
//!
//! The pipeline per tenant: fetch (reflector stores) → [`validate`] → [`build`] (pure) →
//! [`apply`] (server-side apply, prune) → [`controls`] (pure evaluation) →
//! [`status`], wired together in [`controller`].

pub mod access;
pub mod admission;
pub mod api;
pub mod apply;
pub mod backup;
pub mod build;
pub mod compliance;
pub mod controller;
pub mod controls;
pub mod crd;
pub mod digest;
pub mod encryption;
pub mod error;
pub mod failpoint;
pub mod health;
pub mod keystore;
pub mod metrics;
pub mod observe;
pub mod placement;
pub mod plan;
pub mod rbac;
pub mod regions;
pub mod run;
pub mod server;
pub mod shredding;
pub mod status;
pub mod validate;
pub mod velero;
pub mod webhook;

pub use error::{Error, Result};
