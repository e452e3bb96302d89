//! The rules, tested without a cluster: one module per capability, named as in `src/`.

mod access;
mod admission;
mod admission_reviews;
mod backup;
mod common;
mod controls;
mod crds;
mod cycles;
mod desired;
mod encryption;
mod flowmap;
mod openreports;
mod pass;
mod placement;
mod rbac;
mod readme;
mod regions;
mod removal;
mod review;
mod shredding;
mod validate;
