//! Where a tenant's pods and volumes may be (CLD-74, CLD-25): the region catalogue, the
//! placement model shared by every path, the admission policies that confine new pods, and the
//! webhook's review of a pod, for clusters without MutatingAdmissionPolicy.
//!
//! Checked by `controls/placement.rs` (SEP-1, GEO-1, GEO-2, GEO-3).

pub mod admission;
mod model;
pub mod regions;
pub mod review;

pub use admission::{
    Confinement, PLACEMENT_POLICY, environment_policy, placement_mutation, placement_validation,
};
pub use model::*;
