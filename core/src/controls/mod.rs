//! Compliance: the control catalogue (`policies/controls.yaml`), the pure evaluator that judges
//! each control from what the operator built and observes, one file of checks per capability
//! (named as the capability's module), and the report built from them.

mod access;
mod backup;
mod catalogue;
mod encryption;
mod evaluate;
mod finding;
mod isolation;
mod network;
mod placement;
mod report;
mod shredding;
mod view;

pub use catalogue::{Catalogue, CatalogueError, Control, Rule, Severity};
pub use encryption::{DEFAULT_CLASS, encrypts};
pub use evaluate::{EVALUATORS, evaluate};
pub use report::{Transition, compliant_condition, next_report, transitions};
pub use view::{
    ADMISSION_POLICY_MISSING, ClusterFacts, Evaluation, Finding, Inputs, Judge,
    NOT_IN_THIS_VERSION, TenantView,
};
