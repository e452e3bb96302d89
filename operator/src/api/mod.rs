//! The operator's API, group `hosting.francetravail.fr`, and the labels it puts on what it owns.

mod country;
mod report;
mod tenant;

pub use country::{Country, Standing};
pub use report::*;
pub use tenant::*;

pub const GROUP: &str = "hosting.francetravail.fr";

/// The one field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ft-operator";

/// Finalizer on the tenant: its cleanup runs before the tenant disappears.
pub const FINALIZER: &str = "hosting.francetravail.fr/shredding";

/// Labels on every object the operator owns.
pub mod labels {
    pub const TENANT: &str = "hosting.francetravail.fr/tenant";
    pub const ENVIRONMENT: &str = "hosting.francetravail.fr/environment";
    pub const ENVIRONMENT_KIND: &str = "hosting.francetravail.fr/environment-kind";
    pub const DATA_CLASSIFICATION: &str = "hosting.francetravail.fr/data-classification";
    pub const FLOW_NATURE: &str = "hosting.francetravail.fr/flow-nature";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "ft-operator";
    /// Selects everything the operator manages, for its label-selected watches.
    pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=ft-operator";
}

/// Annotations the operator reads or writes.
pub mod annotations {
    /// The flow matrix entry a NetworkPolicy renders, and the rule it implements.
    pub const FLOW: &str = "hosting.francetravail.fr/flow";
    pub const CONTROL: &str = "hosting.francetravail.fr/control";
}
