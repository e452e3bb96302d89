//! The operator's errors. Each has a category: a stable, low-cardinality name used as a metric
//! label and an Event reason, never the error text itself.

use ft_core::validate::InvalidTenant;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tenant cannot be reconciled as written; waits for a change of the spec.
    #[error(transparent)]
    InvalidTenant(#[from] InvalidTenant),

    #[error("{operation} {object}: {source}")]
    Kube {
        operation: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },

    #[error("namespace {0} is being deleted; its children are applied once it is gone")]
    NamespaceTerminating(String),

    #[error("deletion in progress: waiting for {0} to disappear")]
    CleanupPending(String),

    #[error("serialising {object}: {source}")]
    Serialize {
        object: String,
        #[source]
        source: serde_json::Error,
    },

    /// A catalogue embedded in the binary does not load: a build defect, caught by tests.
    #[error("{0}")]
    Catalogue(String),

    /// The key store failed; the message never carries key material.
    #[error("key store: {0}")]
    KeyStore(String),

    /// Deletion waits for something outside the operator (a final export).
    #[error("deletion waits: {0}")]
    ShreddingBlocked(String),

    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// A pass ran longer than it may (a call the API server never answered): it is
    /// abandoned, so that it cannot hold one of the controller's slots forever, and retried.
    #[error("the pass took longer than {0:?} and was abandoned")]
    PassTimedOut(std::time::Duration),
}

impl Error {
    pub fn kube(operation: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            operation,
            object: object.into(),
            source,
        }
    }

    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidTenant(_) => "invalid_spec",
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::NamespaceTerminating(_) => "namespace_terminating",
            Error::CleanupPending(_) => "cleanup_pending",
            Error::Serialize { .. } => "serialize",
            Error::Catalogue(_) => "catalogue",
            Error::KeyStore(_) => "key_store",
            Error::ShreddingBlocked(_) => "shredding_blocked",
            // Apply and cleanup errors are unwrapped by the reconciler; what remains is the
            // finalizer patch itself.
            Error::Finalizer(_) => "finalizer",
            Error::PassTimedOut(_) => "timeout",
        }
    }

    /// Errors that are expected states rather than failures: no alert, no Degraded.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.category(),
            "cleanup_pending" | "namespace_terminating" | "shredding_blocked"
        )
    }
}

impl From<ft_core::encryption::KeyError> for Error {
    fn from(error: ft_core::encryption::KeyError) -> Self {
        Error::KeyStore(error.0)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
