//! `plan`: renders every object the operator would apply for a tenant, with the very
//! [`desired`] the operator calls, from cluster facts given on the command line or read from a
//! cluster.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::api::FranceTravailTenant;
use crate::desired::{Facts, desired};
use crate::meta::namespace_name;
use crate::placement::production_pools;
use crate::removal::{confirm_command, environment_changes};
use crate::validate::{FieldError, InvalidTenant, validate_for_cluster};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("document {document}: not YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: {field}: {message}")]
    Field {
        document: usize,
        field: String,
        message: String,
    },
    #[error("document {document}: {0}", .source)]
    Invalid {
        document: usize,
        #[source]
        source: InvalidTenant,
    },
    #[error("no tenant in the input")]
    Empty,
    #[error("rendering: {0}")]
    Render(String),
}

/// Reads one or more tenant manifests (multi-document YAML).
pub fn parse_tenants(yaml: &str) -> Result<Vec<FranceTravailTenant>, PlanError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| PlanError::Yaml {
        document: 1,
        message: e.to_string(),
    })?;
    let documents: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
    if documents.is_empty() {
        return Err(PlanError::Empty);
    }
    documents
        .into_iter()
        .enumerate()
        .map(|(i, doc)| parse_tenant(i + 1, doc))
        .collect()
}

fn parse_tenant(document: usize, doc: Value) -> Result<FranceTravailTenant, PlanError> {
    let field_error = |field: &str, message: String| PlanError::Field {
        document,
        field: field.into(),
        message,
    };
    let api_version = FranceTravailTenant::api_version(&());
    let kind = FranceTravailTenant::kind(&());
    if doc["apiVersion"] != api_version.as_ref() {
        return Err(field_error(
            "apiVersion",
            format!("must be {api_version}, found {}", doc["apiVersion"]),
        ));
    }
    if doc["kind"] != kind.as_ref() {
        return Err(field_error(
            "kind",
            format!("must be {kind}, found {}", doc["kind"]),
        ));
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        field_error(
            if path == "." { "(root)" } else { &path },
            e.into_inner().to_string(),
        )
    })
}

/// Reads Node objects: multi-document YAML, or a `List` as `kubectl get nodes -o yaml` prints.
pub fn parse_nodes(yaml: &str) -> Result<Vec<Node>, PlanError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| PlanError::Yaml {
        document: 1,
        message: e.to_string(),
    })?;
    let mut nodes = Vec::new();
    for (i, doc) in documents.into_iter().filter(|d| !d.is_null()).enumerate() {
        let items = match doc["kind"].as_str() {
            Some("List" | "NodeList") => doc["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![doc],
        };
        for item in items {
            if item["kind"] != "Node" {
                return Err(PlanError::Field {
                    document: i + 1,
                    field: "kind".into(),
                    message: format!("must be Node, found {}", item["kind"]),
                });
            }
            nodes.push(
                serde_path_to_error::deserialize(item).map_err(|e| PlanError::Field {
                    document: i + 1,
                    field: e.path().to_string(),
                    message: e.into_inner().to_string(),
                })?,
            );
        }
    }
    Ok(nodes)
}

/// Validates every tenant and renders what the operator would apply for it on a cluster with
/// these `facts` at `now`, as multi-document YAML: the same [`desired`] `run` applies.
pub fn plan(yaml: &str, facts: &Facts<'_>, now: Timestamp) -> Result<String, PlanError> {
    plan_against(yaml, &[], facts, now)
}

/// What changes in the environments of `tenant` against the tenant of the same name in
/// `stored` (as the cluster holds it), as YAML comments: each environment removed, held until
/// its removal is confirmed, and each added. A rename is one of each. Empty without a stored
/// tenant or a change.
pub fn environment_notes(tenant: &FranceTravailTenant, stored: &[FranceTravailTenant]) -> String {
    let name = tenant.name_any();
    let Some(before) = stored.iter().find(|s| s.name_any() == name) else {
        return String::new();
    };
    let changes = environment_changes(before, tenant);
    let mut notes = String::new();
    for env in &changes.removed {
        notes.push_str(&format!(
            "# {name}: remove environment {env}: its namespace {} is held, nothing in it deleted, until its removal is confirmed with: {}\n",
            namespace_name(&name, env),
            confirm_command(&name, &[env])
        ));
    }
    for env in &changes.added {
        notes.push_str(&format!(
            "# {name}: add environment {env}: namespace {}\n",
            namespace_name(&name, env)
        ));
    }
    notes
}

/// [`plan`], preceded by what changes in each tenant's environments against the tenants as
/// the cluster stores them ([`environment_notes`]).
pub fn plan_against(
    yaml: &str,
    stored: &[FranceTravailTenant],
    facts: &Facts<'_>,
    now: Timestamp,
) -> Result<String, PlanError> {
    let mut objects = Vec::new();
    let mut notes = String::new();
    let tenants = parse_tenants(yaml)?;
    // Production pools are exclusive cluster-wide: the file's tenants' as well as the cluster's.
    let pools: Vec<_> = facts
        .production_pools
        .iter()
        .cloned()
        .chain(tenants.iter().flat_map(production_pools))
        .collect();
    let facts = &Facts {
        production_pools: &pools,
        ..*facts
    };
    for (i, tenant) in tenants.iter().enumerate() {
        notes.push_str(&environment_notes(tenant, stored));
        let valid =
            validate_for_cluster(tenant, facts.settings).map_err(|source| PlanError::Invalid {
                document: i + 1,
                source,
            })?;
        objects.extend(
            desired(valid, facts, now)
                .to_values()
                .map_err(|e| PlanError::Render(e.to_string()))?,
        );
    }
    let rendered =
        serde_saphyr::to_string_multiple(&objects).map_err(|e| PlanError::Render(e.to_string()))?;
    Ok(notes + &rendered)
}

impl PlanError {
    /// The offending fields, one per line, for the command line.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            PlanError::Invalid { source, .. } => source.errors.clone(),
            PlanError::Field { field, message, .. } => vec![FieldError {
                field: field.clone(),
                message: message.clone(),
            }],
            _ => Vec::new(),
        }
    }
}
