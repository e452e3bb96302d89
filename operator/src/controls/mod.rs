//! Compliance: the control catalogue (`policies/controls.yaml`), the pure evaluator that judges
//! each control from what the operator built and observes, and the report built from it.

mod catalogue;
mod evaluate;
mod report;

pub use catalogue::{Catalogue, CatalogueError, Control, Rule, Severity};
pub use evaluate::{
    ClusterFacts, EVALUATORS, Evaluation, Finding, Inputs, NOT_IN_THIS_VERSION, TenantView,
    encrypts, evaluate,
};
pub use report::{Transition, compliant_condition, next_report, transitions};
