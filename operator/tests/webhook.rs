//! The pod placement webhook: its answers to AdmissionReviews, its TLS server, and its
//! registration.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use ft_operator::placement::{PlacementIndex, PodPlacement, Pool};
use ft_operator::webhook::{
    CA_FILE, CERT_FILE, CertificateSource, KEY_FILE, MUTATE_PODS_PATH, RENEW_AFTER,
    ServingCertificate, WebhookClient, WebhookTls, bind, generate_tls,
    mutating_webhook_configuration, renewal_due, review, review_body, rotation_bundle, router,
    serve_on,
};
use http::{Request, StatusCode};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tower::ServiceExt;

const REGION: &str = "topology.kubernetes.io/region";
const TENANT_NS: &str = "billing-prod";
const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn placement(regions: &[&str], pool: Pool) -> PodPlacement {
    PodPlacement {
        tenant: "billing".into(),
        environment: "prod".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        pool,
    }
}

fn index(placement: PodPlacement) -> PlacementIndex {
    let index = PlacementIndex::default();
    index.set(TENANT_NS.into(), placement);
    index
}

fn pod(spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.example/app:1"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-"},
        "spec": spec,
    })
}

fn admission_json(namespace: &str, operation: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        },
    })
}

fn admission(namespace: &str, pod: &Value) -> AdmissionReview<Pod> {
    serde_json::from_value(admission_json(namespace, "CREATE", pod.clone())).unwrap()
}

fn answered(answer: AdmissionReview<DynamicObject>) -> AdmissionResponse {
    answer.response.expect("the answer carries a response")
}

/// The pod once the response's patch is applied, and the patch operations; the pod unchanged
/// when there is no patch.
fn apply(pod: &Value, response: &AdmissionResponse) -> (Value, Option<json_patch::Patch>) {
    let mut patched = pod.clone();
    let patch = response.patch.as_ref().map(|bytes| {
        let patch: json_patch::Patch = serde_json::from_slice(bytes).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        patch
    });
    (patched, patch)
}

fn required_terms(pod: &Value) -> Vec<NodeSelectorTerm> {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    pod.spec
        .unwrap()
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

fn expressions(term: &NodeSelectorTerm) -> Vec<NodeSelectorRequirement> {
    term.match_expressions.clone().unwrap_or_default()
}

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

#[tokio::test]
async fn the_route_answers_json_and_rejects_garbage_with_400() {
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    let post = |body: Vec<u8>| {
        Request::post(MUTATE_PODS_PATH)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let garbage = router(placements.clone())
        .oneshot(post(b"{oops".to_vec()))
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let bytes = axum::body::to_bytes(garbage.into_body(), 1 << 20)
        .await
        .unwrap();
    let answer: AdmissionReview<DynamicObject> = serde_json::from_slice(&bytes).unwrap();
    let answer = answered(answer);
    assert!(answer.result.message.contains("not an AdmissionReview"));

    let body = serde_json::to_vec(&admission_json(TENANT_NS, "CREATE", pod(json!({})))).unwrap();
    let ok = router(placements).oneshot(post(body)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["content-type"], "application/json");
}

// ---------------------------------------------------------------------------------------------
// TLS

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SERVICE_DNS: &str = "ft-operator-webhook.ft-system.svc";

fn connector(trusted_ca_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(trusted_ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 POST over TLS; the status code and the body.
async fn post_tls(
    connector: &TlsConnector,
    address: SocketAddr,
    server_name: ServerName<'static>,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(address).await?;
    let mut tls = connector.connect(server_name, tcp).await?;
    let head = format!(
        "POST {MUTATE_PODS_PATH} HTTP/1.1\r\nHost: {SERVICE_DNS}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Ok((status, raw[split + 4..].to_vec()))
}

#[tokio::test]
async fn the_webhook_is_served_over_tls_to_clients_trusting_its_ca_only() {
    let tls = generate_tls(&[SERVICE_DNS.to_string()], &[LOCALHOST]).unwrap();
    let placements = index(placement(&["eu-west-3"], Pool::Any));
    let (listener, address) = bind(SocketAddr::new(LOCALHOST, 0)).await.unwrap();
    assert_ne!(address.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        ServingCertificate::new(&tls),
        placements,
        async {
            let _ = stopped.await;
        },
    ));

    let pod = pod(json!({}));
    let body = serde_json::to_vec(&admission_json(TENANT_NS, "CREATE", pod.clone())).unwrap();

    // Another CA, as a client holding a stale or foreign caBundle would.
    let stranger = generate_tls(&[SERVICE_DNS.to_string()], &[LOCALHOST]).unwrap();
    let refused = post_tls(
        &connector(&stranger.ca_bundle_pem),
        address,
        ServerName::IpAddress(LOCALHOST.into()),
        &body,
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );

    // Trusting the CA: over the IP, and under the Service name the API server uses.
    let trusting = connector(&tls.ca_bundle_pem);
    for server_name in [
        ServerName::IpAddress(LOCALHOST.into()),
        ServerName::try_from(SERVICE_DNS).unwrap(),
    ] {
        let (status, answer) = post_tls(&trusting, address, server_name, &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        let answer: AdmissionReview<DynamicObject> = serde_json::from_slice(&answer).unwrap();
        let answer = answered(answer);
        assert!(answer.allowed);
        assert_eq!(answer.uid, UID);
        let (patched, patch) = apply(&pod, &answer);
        assert!(patch.is_some(), "a patch is expected");
        assert_eq!(
            expressions(&required_terms(&patched)[0]),
            vec![requirement(REGION, "In", &["eu-west-3"])]
        );
    }

    // A name the certificate does not carry is refused.
    let wrong_name = post_tls(
        &trusting,
        address,
        ServerName::try_from("elsewhere.ft-system.svc").unwrap(),
        &body,
    )
    .await
    .unwrap_err();
    assert!(
        wrong_name.to_string().contains("invalid peer certificate"),
        "{wrong_name}"
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The webhook served on a free local port with `serving`, until the sender is used.
async fn start_server(
    serving: &ServingCertificate,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (listener, address) = bind(SocketAddr::new(LOCALHOST, 0)).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(
        listener,
        serving.clone(),
        index(placement(&["eu-west-3"], Pool::Any)),
        async {
            let _ = stopped.await;
        },
    ));
    (address, stop, server)
}

/// Whether a client trusting `ca_pem` completes a webhook call to `address`.
async fn trusted_by(ca_pem: &str, address: SocketAddr) -> bool {
    let body = serde_json::to_vec(&admission_json(TENANT_NS, "CREATE", pod(json!({})))).unwrap();
    post_tls(
        &connector(ca_pem),
        address,
        ServerName::try_from(SERVICE_DNS).unwrap(),
        &body,
    )
    .await
    .is_ok_and(|(status, _)| status == 200)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_handshake_on() {
    let first = generate_tls(&[SERVICE_DNS.to_string()], &[]).unwrap();
    let next = generate_tls(&[SERVICE_DNS.to_string()], &[]).unwrap();
    let bundle = rotation_bundle(&first, &next);
    let serving = ServingCertificate::new(&first);
    let (address, stop, server) = start_server(&serving).await;

    // The API server holds the rotation bundle before the switch: both certificates pass.
    assert!(trusted_by(&first.ca_bundle_pem, address).await);
    assert!(!trusted_by(&next.ca_bundle_pem, address).await);
    assert!(trusted_by(&bundle, address).await);

    serving.replace(&next);
    assert!(trusted_by(&next.ca_bundle_pem, address).await);
    assert!(trusted_by(&bundle, address).await);
    assert!(!trusted_by(&first.ca_bundle_pem, address).await);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn the_rotation_bundle_holds_the_new_ca_then_the_old_one() {
    let first = generate_tls(&[SERVICE_DNS.to_string()], &[]).unwrap();
    let next = generate_tls(&[SERVICE_DNS.to_string()], &[]).unwrap();
    let bundle = rotation_bundle(&first, &next);
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .map(Result::unwrap)
        .collect();
    let of = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(
        certificates,
        vec![of(&next.ca_bundle_pem), of(&first.ca_bundle_pem)]
    );
    // The same CA (cert-manager renewing the leaf only) is not listed twice.
    assert_eq!(rotation_bundle(&next, &next), next.ca_bundle_pem);
}

#[test]
fn a_generated_certificate_is_renewed_after_sixty_days_only() {
    let day = Duration::from_secs(24 * 3600);
    let issued = SystemTime::UNIX_EPOCH + 20_000 * day;
    assert_eq!(RENEW_AFTER, 60 * day);
    assert!(!renewal_due(issued, issued + 59 * day));
    assert!(renewal_due(issued, issued + 60 * day));
    // A clock that went back is no reason to renew.
    assert!(!renewal_due(issued, issued - day));

    let source = CertificateSource::Generated {
        dns_names: vec![SERVICE_DNS.to_string()],
        ip_addresses: vec![],
    };
    let mut current = source.load().unwrap();
    assert!(
        source
            .refresh(&current, SystemTime::now())
            .unwrap()
            .is_none()
    );
    current.issued_at = SystemTime::now() - 61 * day;
    let renewed = source
        .refresh(&current, SystemTime::now())
        .unwrap()
        .expect("a renewal after 61 days");
    assert_ne!(renewed.ca_bundle_pem, current.ca_bundle_pem);
    assert_ne!(renewed.certificate_pem, current.certificate_pem);
}

/// A CA and a serving certificate it signs, PEM, as cert-manager's CA issuer writes them.
fn issued_by_a_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec![SERVICE_DNS.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), certificate.pem(), key.serialize_pem())
}

fn write_secret(dir: &std::path::Path, (ca, certificate, key): &(String, String, String)) {
    std::fs::write(dir.join(CA_FILE), ca).unwrap();
    std::fs::write(dir.join(CERT_FILE), certificate).unwrap();
    std::fs::write(dir.join(KEY_FILE), key).unwrap();
}

#[tokio::test]
async fn a_mounted_certificate_is_served_and_read_again_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("ft-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = issued_by_a_ca();
    write_secret(&dir, &first);
    let source = CertificateSource::Directory(dir.clone());
    let loaded = source.load().unwrap();
    assert_eq!(loaded.ca_bundle_pem, first.0);
    assert_eq!(loaded.certificate_pem, first.1);
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
    // Unchanged files: nothing to do, however old.
    assert!(
        source
            .refresh(
                &loaded,
                SystemTime::now() + 400 * Duration::from_secs(86_400)
            )
            .unwrap()
            .is_none()
    );

    let serving = ServingCertificate::new(&loaded);
    let (address, stop, server) = start_server(&serving).await;
    assert!(trusted_by(&first.0, address).await);

    // cert-manager renews: a new CA and certificate in the mounted files.
    let second = issued_by_a_ca();
    write_secret(&dir, &second);
    let renewed = source
        .refresh(&loaded, SystemTime::now())
        .unwrap()
        .expect("the changed files are read");
    assert_eq!(renewed.certificate_pem, second.1);
    serving.replace(&renewed);
    assert!(trusted_by(&second.0, address).await);
    assert!(!trusted_by(&first.0, address).await);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_mounted_secret_that_is_incomplete_or_mismatched_is_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("ft-webhook-bad-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, certificate, key) = issued_by_a_ca();
    let source = CertificateSource::Directory(dir.clone());

    // No ca.crt (an issuer that does not write one): nothing to put in caBundle.
    std::fs::write(dir.join(CERT_FILE), &certificate).unwrap();
    std::fs::write(dir.join(KEY_FILE), &key).unwrap();
    let error = source.load().unwrap_err().to_string();
    assert!(error.contains("ca.crt"), "{error}");

    // A key that is not the certificate's.
    let (_, _, other_key) = issued_by_a_ca();
    std::fs::write(dir.join(CA_FILE), &ca).unwrap();
    std::fs::write(dir.join(KEY_FILE), &other_key).unwrap();
    assert!(source.load().is_err());

    // A key file that holds no key: the message names the file, never its content.
    std::fs::write(dir.join(KEY_FILE), "not a key: s3cr3t").unwrap();
    let error = source.load().unwrap_err().to_string();
    assert!(error.contains("tls.key"), "{error}");
    assert!(!error.contains("s3cr3t"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_tls_needs_a_name() {
    assert!(generate_tls(&[], &[]).is_err());
}

#[test]
fn the_private_keys_do_not_show_in_debug() {
    let tls: WebhookTls = generate_tls(&[SERVICE_DNS.to_string()], &[LOCALHOST]).unwrap();
    let debug = format!("{tls:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    assert!(tls.ca_bundle_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(!tls.ca_bundle_pem.contains("PRIVATE KEY"));
    assert!(!tls.certificate_pem.contains("PRIVATE KEY"));
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
    let tls = generate_tls(&[SERVICE_DNS.to_string()], &[]).unwrap();
    let configuration = mutating_webhook_configuration(
        "ft-operator-pod-placement",
        &tls.ca_bundle_pem,
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
    assert_eq!(decoded.0, tls.ca_bundle_pem.as_bytes());

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
