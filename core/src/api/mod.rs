//! The operator's API, group `hosting.francetravail.fr`, and the labels it puts on what it owns.

mod country;
mod environment;
mod report;
mod tenant;

pub use country::{Country, Standing};
pub use environment::*;
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
    /// On a RoleBinding: the id of the access grant it renders (`access::grant_id`).
    pub const GRANT: &str = "hosting.francetravail.fr/grant";
    /// On a RoleBinding: the role the grant declares (`admin`, `developer`, `viewer`).
    pub const ACCESS_ROLE: &str = "hosting.francetravail.fr/access-role";
    /// On a Velero object: why the operator made it (`backup::purpose`).
    pub const BACKUP_PURPOSE: &str = "hosting.francetravail.fr/backup-purpose";
    /// On an export's Velero Backups: the export's id (`backup::export_id`).
    pub const EXPORT: &str = "hosting.francetravail.fr/export";
    /// On the operator's own pod: `true` while it leads, so the webhook Service reaches only
    /// the replica that serves the webhook.
    pub const LEADER: &str = "hosting.francetravail.fr/leader";
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
    /// On a RoleBinding: who the grant names, such as `User claire.martin@example.org`.
    pub const SUBJECT: &str = "hosting.francetravail.fr/subject";
    /// On a RoleBinding: when the grant lapses, RFC 3339.
    pub const EXPIRES: &str = "hosting.francetravail.fr/expires";
    /// On a tenant: its own name, to confirm that deleting it, and shredding its data, is meant.
    pub const CONFIRM_DELETION: &str = "hosting.francetravail.fr/confirm-deletion";
    /// On a tenant: who set `CONFIRM_DELETION`, as the API server authenticated them, written
    /// at admission (where MutatingAdmissionPolicies are served), never by hand.
    pub const DELETION_CONFIRMED_BY: &str = "hosting.francetravail.fr/deletion-confirmed-by";
    /// On a tenant: the environments, comma-separated, whose removal from the spec is meant:
    /// their held namespaces are exported, deleted and recorded. Each name is taken out once
    /// its removal is recorded, so a later removal of the same name is held again.
    pub const CONFIRM_ENVIRONMENT_REMOVAL: &str =
        "hosting.francetravail.fr/confirm-environment-removal";
    /// On a tenant being shredded: its own name, once its final export (CLD-73) has been handed
    /// over to France Travail; only then are the export's backups deleted.
    pub const FINAL_EXPORT_HANDED_OVER: &str = "hosting.francetravail.fr/final-export-handed-over";
    /// On a tenant: any new value (a date, a ticket number) asks for an export of every
    /// environment to the tenant's backup location (CLD-73).
    pub const EXPORT_REQUEST: &str = "hosting.francetravail.fr/export";
    /// On a restore test's Velero Restore: the scratch namespace it restores into.
    pub const SCRATCH_NAMESPACE: &str = "hosting.francetravail.fr/scratch-namespace";
    /// On a key Secret: the key's fingerprint, safe to show.
    pub const KEY_FINGERPRINT: &str = "hosting.francetravail.fr/key-fingerprint";
}
