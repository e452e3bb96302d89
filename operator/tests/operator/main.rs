//! The runtime, tested without a cluster: the reconcile pass against a fake API server, the
//! watches, the probes, the key store and the webhook's server.

#[path = "../../../core/tests/core/admission_reviews.rs"]
mod admission_reviews;
mod cache;
mod commands;
#[path = "../../../core/tests/core/common.rs"]
mod common;
mod compliance;
mod health;
mod keystore;
mod reconcile;
mod server;
mod watch;
mod webhook;
