//! End-to-end tests of `ft-operator` against the real API server in `KUBECONFIG`, one module
//! per capability, and of its Helm chart (`chart` needs Helm's engine, not a cluster).
//!
//! The cluster tests are ignored by a plain `cargo test` (the reason says how to run them);
//! `.ci/run` runs them where an API server is reachable. Each uses fresh tenant and Lease
//! names. The fault suite (`tests/faults.rs`) has a harness of its own.

mod access;
mod backup;
mod chart;
mod chart_install;
mod compliance;
mod environments;
mod escapes;
mod escapes_input;
mod migrate;
mod openreports;
mod operator;
mod placement;
mod plan;
mod rbac;
mod shredding;
