//! ft-core: France Travail's hosting security rules (the `CLD-xx` controls) as pure functions,
//! with no runtime and no client. The operator (`ft-operator`) observes the cluster, calls
//! these, and applies what they return; `plan` calls the very same [`desired::desired`].
//!
//! A tenant goes through [`validate`] (which yields the [`validate::ValidTenant`] the builders
//! require), [`desired`] (every object the operator wants, from the tenant, the cluster's
//! [`desired::Facts`] and the time), [`controls`] (one finding per control) and [`status`].
//!
//! Each capability has one module, named the same in every layer (`controls/<capability>.rs`
//! for its checks, a test module of the same name):
//!
//! | module | rules |
//! |---|---|
//! | [`isolation`] | CLD-20 namespaces per environment, Pod Security, quota, limits |
//! | [`network`] | CLD-20, CLD-36 default deny and the declared flow matrix |
//! | [`flowmap`] | CLD-35 the flow matrix drawn for an auditor (`ft-operator map`) |
//! | [`placement`] | CLD-74 EU regions, CLD-25 production pools |
//! | [`encryption`] | CLD-21, CLD-40 the tenant's key and encrypted storage |
//! | [`access`] | CLD-14, CLD-16, CLD-17, 2.4.a, 2.4.c personal expiring grants |
//! | [`backup`] | CLD-26, CLD-54, CLD-73 backups, restore tests, exports |
//! | [`shredding`] | CLD-47, CLD-76 confirmed deletion, key first, with a record |
//! | [`removal`] | CLD-47, CLD-73, CLD-76 an environment's confirmed removal, with a record |
//!
//! The shared vocabulary ([`api`], [`meta`], [`settings`], [`digest`]) sits at the bottom and
//! imports no capability, so the modules form no cycle (checked by a test).

pub mod access;
pub mod admission;
pub mod api;
pub mod applied;
pub mod backup;
pub mod controls;
pub mod crd;
pub mod desired;
pub mod digest;
pub mod encryption;
pub mod flowmap;
pub mod isolation;
pub mod meta;
pub mod network;
pub mod openreports;
pub mod pass;
pub mod placement;
pub mod plan;
pub mod rbac;
pub mod removal;
pub mod settings;
pub mod shredding;
pub mod status;
pub mod validate;
