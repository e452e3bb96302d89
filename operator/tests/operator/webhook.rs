//! The pod placement webhook's server: its route, its TLS serving, and its certificates, made,
//! renewed or mounted. Its answers are tested with the rules (`ft-core`'s `review.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use ft_core::placement::Pool;
use ft_core::placement::review::MUTATE_PODS_PATH;
use ft_operator::webhook::{
    CA_FILE, CERT_FILE, CertificateSource, KEY_FILE, RENEW_AFTER, ServingCertificate, WebhookTls,
    bind, generate_tls, renewal_due, rotation_bundle, router, serve_on,
};
use http::{Request, StatusCode};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tower::ServiceExt;

use crate::admission_reviews::*;

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
