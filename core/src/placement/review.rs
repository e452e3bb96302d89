//! The webhook's review of a pod, for clusters without MutatingAdmissionPolicy (before
//! Kubernetes 1.36): a pod created in a tenant namespace is confined to the nodes its placement
//! allows (CLD-74, CLD-25), and the MutatingWebhookConfiguration that sends it pods. Pure: the
//! operator serves it over TLS.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tracing::{debug, info, warn};

use super::model::PlacementIndex;
use crate::api::labels::{MANAGED_BY, MANAGED_BY_VALUE, TENANT};

/// The path the API server posts pod AdmissionReviews to.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";

/// The MutatingWebhookConfiguration the operator registers its webhook with, in webhook mode.
pub const WEBHOOK_CONFIGURATION: &str = "ft-operator-pod-placement";

/// The webhook's name in its configuration (the API server wants a fully qualified name).
pub const WEBHOOK_NAME: &str = "pod-placement.hosting.francetravail.fr";

/// Namespaces the webhook never sees, whatever their labels, besides the operator's own.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// A request body that is not an AdmissionReview at all.
#[derive(Debug, thiserror::Error)]
#[error("the request body is not an AdmissionReview: {0}")]
pub struct UnreadableReview(#[from] serde_json::Error);

/// Answers a pod AdmissionReview: a pod created in a tenant namespace is confined to its
/// placement by a JSON patch, or refused when no node of the cluster is in an allowed region.
/// Anything else is allowed untouched. A review without a request gets an invalid response
/// (no uid), which the API server counts as a failed call, ignored by the failure policy.
pub fn review(
    review: AdmissionReview<Pod>,
    placements: &PlacementIndex,
) -> AdmissionReview<DynamicObject> {
    // kube implements TryInto (not TryFrom) for this conversion.
    let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
    match request {
        Ok(request) => respond(&request, placements).into_review(),
        Err(error) => AdmissionResponse::invalid(error).into_review(),
    }
}

/// [`review`] from the raw request body. A readable review whose object is not a readable Pod
/// (another kind, or a pod this build cannot parse) is allowed untouched: the
/// ValidatingAdmissionPolicy judges it. Err when the body is not an AdmissionReview at all.
pub fn review_body(
    body: &[u8],
    placements: &PlacementIndex,
) -> Result<AdmissionReview<DynamicObject>, UnreadableReview> {
    let pod_error = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(pod_review) => return Ok(review(pod_review, placements)),
        Err(error) => error,
    };
    let dynamic: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: Result<AdmissionRequest<DynamicObject>, _> = dynamic.try_into();
    let Ok(request) = request else {
        return Ok(AdmissionResponse::invalid("the AdmissionReview has no request").into_review());
    };
    if is_pod_create(&request) {
        warn!(
            uid = %request.uid,
            namespace = request.namespace.as_deref().unwrap_or_default(),
            error = %pod_error,
            "cannot read the pod of an admission request; left to the ValidatingAdmissionPolicy"
        );
    }
    Ok(AdmissionResponse::from(&request).into_review())
}

fn is_pod_create<T: kube::Resource>(request: &AdmissionRequest<T>) -> bool {
    request.operation == Operation::Create
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none()
}

fn respond(request: &AdmissionRequest<Pod>, placements: &PlacementIndex) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if !is_pod_create(request) {
        return allowed;
    }
    // The request's namespace, not the pod's: a created pod often carries none yet.
    let (Some(namespace), Some(pod)) = (request.namespace.as_deref(), request.object.as_ref())
    else {
        return allowed;
    };
    let Some(placement) = placements.get(namespace) else {
        return allowed;
    };
    let pod_name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    if placement.regions.is_empty() {
        let reason = format!(
            "no node of the cluster is in a region tenant {} allows (CLD-74)",
            placement.tenant
        );
        info!(namespace, pod = pod_name, %reason, "pod refused");
        let mut denied = allowed.deny(reason);
        denied.result.code = 403;
        denied.result.reason = "Forbidden".into();
        return denied;
    }
    let operations = placement.patch(pod);
    if operations.is_empty() {
        return allowed;
    }
    // The webhook never refuses for its own failures: the ValidatingAdmissionPolicy will.
    let patched = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(operations))
        .map_err(|e| e.to_string())
        .and_then(|patch| allowed.clone().with_patch(patch).map_err(|e| e.to_string()));
    match patched {
        Ok(mut response) => {
            let confined_to = placement.describe();
            debug!(namespace, pod = pod_name, %confined_to, "pod confined");
            // Keeps in the audit log what the webhook changed and why.
            response
                .audit_annotations
                .insert("confined-to".into(), confined_to);
            response
        }
        Err(error) => {
            warn!(namespace, pod = pod_name, %error, "cannot build the placement patch");
            allowed
        }
    }
}

/// How the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookClient {
    /// The operator's Service in the cluster; the path is [`MUTATE_PODS_PATH`].
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A complete URL, path included, for an operator outside the cluster.
    Url(String),
}

/// The MutatingWebhookConfiguration that sends pod creations in tenant namespaces to the
/// webhook. `failurePolicy: Ignore`: the ValidatingAdmissionPolicy refuses unconfined pods when
/// the operator is down, so the webhook never blocks the cluster. System namespaces and the
/// operator's own are excluded by name, whatever labels they carry.
pub fn mutating_webhook_configuration(
    name: &str,
    ca_bundle_pem: &str,
    client: WebhookClient,
    operator_namespace: &str,
) -> MutatingWebhookConfiguration {
    let (service, url) = match client {
        WebhookClient::Service {
            namespace,
            name,
            port,
        } => (
            Some(ServiceReference {
                namespace,
                name,
                port: Some(port),
                path: Some(MUTATE_PODS_PATH.into()),
            }),
            None,
        ),
        WebhookClient::Url(url) => (None, Some(url)),
    };
    let mut excluded: Vec<String> = SYSTEM_NAMESPACES.iter().map(|n| n.to_string()).collect();
    if !excluded.iter().any(|n| n == operator_namespace) {
        excluded.push(operator_namespace.into());
    }
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                // ByteString serialises as base64, as caBundle wants.
                ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
                service,
                url,
            },
            failure_policy: Some("Ignore".into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    LabelSelectorRequirement {
                        key: TENANT.into(),
                        operator: "Exists".into(),
                        values: None,
                    },
                    LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "NotIn".into(),
                        values: Some(excluded),
                    },
                ]),
                match_labels: None,
            }),
            // Another webhook may add or replace the affinity after ours.
            reinvocation_policy: Some("IfNeeded".into()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            ..Default::default()
        }]),
    }
}
