//! The pod placement webhook's review: its answers to AdmissionReviews, and its registration.
//! Its server and certificates are tested with the operator.

use std::collections::{BTreeMap, BTreeSet};

use ft_core::placement::Pool;
use ft_core::placement::review::{
    MUTATE_PODS_PATH, WebhookClient, mutating_webhook_configuration, review, review_body,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::NodeSelectorTerm;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use crate::admission_reviews::*;

// ---------------------------------------------------------------------------------------------
// review

#[test]
fn a_pod_without_affinity_is_confined_to_the_allowed_regions() {
    let placements = index(placement(&["eu-west-3", "francecentral"], Pool::Any));
    let pod = pod(json!({}));
    let response = answered(review(admission(TENANT_NS, &pod), &placements));
    assert!(response.allowed);
    assert_eq!(response.uid, UID);
    let (patched, patch) = apply(&pod, &response);
    assert!(patch.is_some(), "a patch is expected");
    let encoded = serde_json::to_value(&response).unwrap();
    assert_eq!(encoded["patchType"], "JSONPatch");
    assert_eq!(
        required_terms(&patched),
        vec![NodeSelectorTerm {
            match_expressions: Some(vec![requirement(
                REGION,
                "In",
                &["eu-west-3", "francecentral"]
            )]),
            ..Default::default()
        }]
    );
    assert_eq!(
        response
            .audit_annotations
            .get("confined-to")
            .map(String::as_str),
        Some("[eu-west-3, francecentral]")
    );
}

#[test]
fn each_term_of_the_pods_own_affinity_gains_the_region_requirement() {
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    let pod = pod(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]},
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]},
        ]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "preference":
            {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}],
    }}}));
    let response = answered(review(admission(TENANT_NS, &pod), &placements));
    assert!(response.allowed);
    let (patched, patch) = apply(&pod, &response);
    assert!(patch.is_some(), "a patch is expected");
    let terms = required_terms(&patched);
    let region = requirement(REGION, "In", &["eu-west-3"]);
    assert_eq!(terms.len(), 2, "{terms:?}");
    assert_eq!(
        expressions(&terms[0]),
        vec![requirement("disktype", "In", &["ssd"]), region.clone()]
    );
    assert_eq!(
        expressions(&terms[1]),
        vec![requirement("kubernetes.io/arch", "In", &["arm64"]), region]
    );
    // What the patch does not concern stays.
    assert_eq!(
        patched["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
        pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    );
}

#[test]
fn a_production_pod_is_confined_to_the_production_pool() {
    let pool = BTreeMap::from([("node-pool".to_string(), "production".to_string())]);
    let placements = index(placement(&["eu-west-3"], Pool::Required(pool)));
    let pod = pod(json!({"affinity": {"podAntiAffinity": {}}}));
    let response = answered(review(admission(TENANT_NS, &pod), &placements));
    assert!(response.allowed);
    let (patched, _) = apply(&pod, &response);
    let terms = required_terms(&patched);
    assert_eq!(terms.len(), 1);
    assert_eq!(
        expressions(&terms[0]),
        vec![
            requirement(REGION, "In", &["eu-west-3"]),
            requirement("node-pool", "In", &["production"]),
        ]
    );
    assert_eq!(patched["spec"]["affinity"]["podAntiAffinity"], json!({}));
}

#[test]
fn a_pod_already_confined_gets_no_patch() {
    let placements = index(placement(&["eu-west-3", "francecentral"], Pool::Any));
    let first = answered(review(admission(TENANT_NS, &pod(json!({}))), &placements));
    let (confined, _) = apply(&pod(json!({})), &first);
    // As on reinvocation: our own patch applied, nothing more to do.
    let again = answered(review(admission(TENANT_NS, &confined), &placements));
    assert!(again.allowed);
    assert_eq!(again.patch, None);
    // A pod that asks for a subset of the regions is confined already.
    let narrower = pod(json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": REGION, "operator": "In", "values": ["francecentral"]}]},
        ]},
    }}}));
    let narrower = answered(review(admission(TENANT_NS, &narrower), &placements));
    assert!(narrower.allowed);
    assert_eq!(narrower.patch, None);
}

#[test]
fn a_pod_outside_tenant_namespaces_is_untouched() {
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    let response = answered(review(admission("default", &pod(json!({}))), &placements));
    assert!(response.allowed);
    assert_eq!(response.uid, UID);
    assert_eq!(response.patch, None);
}

#[test]
fn only_pod_creations_are_confined() {
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    for operation in ["UPDATE", "DELETE"] {
        let body = admission_json(TENANT_NS, operation, pod(json!({})));
        let response = answered(review(serde_json::from_value(body).unwrap(), &placements));
        assert!(response.allowed, "{operation}");
        assert_eq!(response.patch, None, "{operation}");
    }
    // Another kind: read as a DynamicObject, allowed untouched.
    let mut body = admission_json(
        TENANT_NS,
        "CREATE",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"template": {"spec": {"containers": []}}}}),
    );
    body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let response = answered(review_body(&serde_json::to_vec(&body).unwrap(), &placements).unwrap());
    assert!(response.allowed);
    assert_eq!(response.uid, UID);
    assert_eq!(response.patch, None);
}

#[test]
fn a_tenant_without_any_allowed_region_has_its_pods_refused() {
    let placements = index(placement(&[], Pool::Any));
    let response = answered(review(admission(TENANT_NS, &pod(json!({}))), &placements));
    assert!(!response.allowed);
    assert_eq!(response.uid, UID);
    assert_eq!(
        response.result.message,
        "no node of the cluster is in a region tenant billing allows (CLD-74)"
    );
    assert_eq!(response.result.code, 403);
    assert_eq!(response.patch, None);
}

#[test]
fn malformed_requests_get_an_error_response_not_a_panic() {
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    for body in [&b"not json"[..], b"", b"{\"request\": {\"uid\": 3}}", b"[]"] {
        let error = review_body(body, &placements).unwrap_err();
        assert!(
            error.to_string().contains("not an AdmissionReview"),
            "{error}"
        );
    }
    // A review without a request: answered, but invalid (no uid to echo).
    let empty = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let response =
        answered(review_body(&serde_json::to_vec(&empty).unwrap(), &placements).unwrap());
    assert!(!response.allowed);
    assert_eq!(response.uid, "");
    // A pod that cannot be read: allowed untouched, the ValidatingAdmissionPolicy judges it.
    let unreadable = admission_json(
        TENANT_NS,
        "CREATE",
        json!({"apiVersion": "v1", "kind": "Pod", "spec": "not a spec"}),
    );
    let response =
        answered(review_body(&serde_json::to_vec(&unreadable).unwrap(), &placements).unwrap());
    assert!(response.allowed);
    assert_eq!(response.uid, UID);
    assert_eq!(response.patch, None);
}

// ---------------------------------------------------------------------------------------------
// Registration

/// Whether a label selector of `In`, `NotIn` and `Exists` expressions selects these labels.
fn selects(selector: &LabelSelector, labels: &[(&str, &str)]) -> bool {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    assert_eq!(selector.match_labels, None);
    selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(e.key.as_str());
        let values: BTreeSet<&str> = e.values.iter().flatten().map(String::as_str).collect();
        match e.operator.as_str() {
            "Exists" => value.is_some(),
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            other => panic!("unexpected operator {other}"),
        }
    })
}

#[test]
fn the_configuration_sends_only_tenant_pod_creations_and_never_blocks() {
    // The configuration carries the CA bundle as it is given: any PEM text will do.
    let ca_bundle_pem = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n";
    let configuration = mutating_webhook_configuration(
        "ft-operator-pod-placement",
        ca_bundle_pem,
        WebhookClient::Service {
            namespace: "ft-system".into(),
            name: "ft-operator-webhook".into(),
            port: 443,
        },
        "ft-system",
    );
    let encoded = serde_json::to_value(&configuration).unwrap();
    assert_eq!(encoded["metadata"]["name"], "ft-operator-pod-placement");
    assert_eq!(
        encoded["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "ft-operator"})
    );
    let webhooks = encoded["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1);
    let webhook = &webhooks[0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(webhook["timeoutSeconds"], 5);
    assert_eq!(webhook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        webhook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        webhook["clientConfig"]["service"],
        json!({"namespace": "ft-system", "name": "ft-operator-webhook", "port": 443,
               "path": MUTATE_PODS_PATH})
    );
    assert!(webhook["clientConfig"].get("url").is_none());

    // caBundle is base64 on the wire and decodes to the CA's PEM.
    let ca_bundle = webhook["clientConfig"]["caBundle"].as_str().unwrap();
    assert!(!ca_bundle.contains("BEGIN CERTIFICATE"));
    let decoded: MutatingWebhookConfiguration = serde_json::from_value(encoded.clone()).unwrap();
    let decoded = decoded.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert_eq!(decoded.0, ca_bundle_pem.as_bytes());

    let selector = configuration.webhooks.unwrap()[0]
        .namespace_selector
        .clone()
        .unwrap();
    let name = "kubernetes.io/metadata.name";
    let tenant = "hosting.francetravail.fr/tenant";
    assert!(selects(
        &selector,
        &[(name, TENANT_NS), (tenant, "billing")]
    ));
    assert!(!selects(&selector, &[(name, "default")]));
    for system in ["kube-system", "kube-public", "kube-node-lease", "ft-system"] {
        assert!(
            !selects(&selector, &[(name, system), (tenant, "billing")]),
            "{system} must never be selected, even labelled as a tenant"
        );
    }
}

#[test]
fn the_configuration_can_point_at_a_url() {
    let url = "https://127.0.0.1:8443/mutate-pods";
    let configuration = mutating_webhook_configuration(
        "ft-operator-pod-placement",
        "pem",
        WebhookClient::Url(url.into()),
        "kube-system",
    );
    let webhook = &configuration.webhooks.unwrap()[0];
    assert_eq!(webhook.client_config.url.as_deref(), Some(url));
    assert_eq!(webhook.client_config.service, None);
    let excluded = webhook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[1]
        .values
        .clone()
        .unwrap();
    assert_eq!(
        excluded,
        vec!["kube-system", "kube-public", "kube-node-lease"],
        "the operator's namespace is listed once"
    );
}
