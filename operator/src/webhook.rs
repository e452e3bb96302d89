//! The mutating admission webhook the operator serves itself on clusters without
//! MutatingAdmissionPolicy (before Kubernetes 1.36): it confines each pod created in a tenant
//! namespace to the nodes its placement allows (CLD-74, CLD-25).
//!
//! It only patches, and refuses only a pod no node could take. The ValidatingAdmissionPolicy is
//! the fail-closed backstop, so the webhook is registered with `failurePolicy: Ignore`: an
//! operator that is down or answers badly never blocks the cluster.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::admission::AdmissionResponse;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use ft_core::placement::PlacementIndex;
use ft_core::placement::review::{MUTATE_PODS_PATH, review_body};

/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook certificate needs at least one DNS name or IP address")]
    NoSubjectName,

    #[error("cannot generate the webhook certificates: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error("cannot set up TLS for the webhook: {0}")]
    Tls(#[from] rustls::Error),

    #[error("the webhook's {0}: {1}")]
    Pem(&'static str, String),

    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    UnreadableReview(#[from] ft_core::placement::review::UnreadableReview),
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// How long a certificate the operator makes for itself is valid, and when it makes the next.
/// Renewing a third of the way before the end leaves a month for anything to go wrong.
pub const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
pub const RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

/// The files of a `kubernetes.io/tls` Secret, as cert-manager writes it, in the directory it is
/// mounted at.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// The webhook's TLS material: the CA the API server must trust, and the serving certificate
/// with its key. The key is never written anywhere; Debug redacts it.
#[derive(Clone)]
pub struct WebhookTls {
    /// The CA certificate, PEM: what the webhook configuration's `caBundle` must hold.
    pub ca_bundle_pem: String,
    /// The serving certificate, PEM.
    pub certificate_pem: String,
    /// When it was made (generated ones) or read (from files).
    pub issued_at: SystemTime,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for WebhookTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTls")
            .field("ca_bundle_pem", &self.ca_bundle_pem)
            .field("certificate_pem", &self.certificate_pem)
            .field("issued_at", &self.issued_at)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl WebhookTls {
    /// A serving certificate and key, and the CA that signed it, all PEM (a mounted
    /// `kubernetes.io/tls` Secret). The key may be PKCS#8, PKCS#1 or SEC1.
    pub fn from_pem(
        ca_pem: &str,
        certificate_pem: &str,
        key_pem: &str,
    ) -> Result<Self, WebhookError> {
        let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WebhookError::Pem(CERT_FILE, e.to_string()))?;
        if chain.is_empty() {
            return Err(WebhookError::Pem(CERT_FILE, "no certificate".into()));
        }
        let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| WebhookError::Pem(CA_FILE, e.to_string()))?;
        if cas.is_empty() {
            return Err(WebhookError::Pem(CA_FILE, "no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            // The parser's message could quote the key; name the file only.
            .map_err(|_| WebhookError::Pem(KEY_FILE, "no private key in a PEM block".into()))?;
        Self::assemble(ca_pem.into(), certificate_pem.into(), chain, key)
    }

    fn assemble(
        ca_bundle_pem: String,
        certificate_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, WebhookError> {
        let signing_key = crypto_provider().key_provider.load_private_key(key)?;
        let key = CertifiedKey::new(chain, signing_key);
        // A certificate that does not match its key would only fail at the first handshake.
        key.keys_match()?;
        Ok(WebhookTls {
            ca_bundle_pem,
            certificate_pem,
            issued_at: SystemTime::now(),
            key: Arc::new(key),
        })
    }
}

/// The `caBundle` while moving from `previous` to `next`: both CAs, so that the API server
/// trusts the serving certificate whichever of the two it meets, during the switch and after.
pub fn rotation_bundle(previous: &WebhookTls, next: &WebhookTls) -> String {
    if previous.ca_bundle_pem == next.ca_bundle_pem {
        return next.ca_bundle_pem.clone();
    }
    let mut bundle = next.ca_bundle_pem.trim_end().to_string();
    bundle.push('\n');
    bundle.push_str(previous.ca_bundle_pem.trim_end());
    bundle.push('\n');
    bundle
}

/// Where the webhook's certificate comes from.
#[derive(Clone, Debug)]
pub enum CertificateSource {
    /// Made by the operator, in memory, for these names; a new one after [`RENEW_AFTER`].
    Generated {
        dns_names: Vec<String>,
        ip_addresses: Vec<IpAddr>,
    },
    /// Read from a mounted `kubernetes.io/tls` Secret with its `ca.crt` (cert-manager); read
    /// again whenever its files change.
    Directory(PathBuf),
}

impl CertificateSource {
    pub fn load(&self) -> Result<WebhookTls, WebhookError> {
        match self {
            CertificateSource::Generated {
                dns_names,
                ip_addresses,
            } => generate_tls(dns_names, ip_addresses),
            CertificateSource::Directory(dir) => {
                let read = |file: &'static str| {
                    std::fs::read_to_string(dir.join(file)).map_err(|source| WebhookError::Read {
                        path: dir.join(file),
                        source,
                    })
                };
                WebhookTls::from_pem(&read(CA_FILE)?, &read(CERT_FILE)?, &read(KEY_FILE)?)
            }
        }
    }

    /// The certificate to serve next, if it is time for one: a generated certificate once
    /// [`RENEW_AFTER`] has passed, files once their certificate or CA changed.
    pub fn refresh(
        &self,
        current: &WebhookTls,
        now: SystemTime,
    ) -> Result<Option<WebhookTls>, WebhookError> {
        match self {
            CertificateSource::Generated { .. } => {
                if renewal_due(current.issued_at, now) {
                    self.load().map(Some)
                } else {
                    Ok(None)
                }
            }
            CertificateSource::Directory(_) => {
                let read = self.load()?;
                let changed = read.certificate_pem != current.certificate_pem
                    || read.ca_bundle_pem != current.ca_bundle_pem;
                Ok(changed.then_some(read))
            }
        }
    }
}

/// Whether a certificate the operator made at `issued_at` is due for renewal at `now`.
pub fn renewal_due(issued_at: SystemTime, now: SystemTime) -> bool {
    now.duration_since(issued_at)
        .is_ok_and(|age| age >= RENEW_AFTER)
}

/// A self-signed CA and a serving certificate it signs for `dns_names` and `ip_addresses`,
/// valid for [`CERTIFICATE_VALIDITY`]. The CA's key is dropped once it signed.
pub fn generate_tls(
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<WebhookTls, WebhookError> {
    let Some(common_name) = dns_names
        .first()
        .cloned()
        .or_else(|| ip_addresses.first().map(IpAddr::to_string))
    else {
        return Err(WebhookError::NoSubjectName);
    };
    // Starts an hour back for clocks that lag.
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + CERTIFICATE_VALIDITY;

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ft-operator webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ip_addresses.iter().copied().map(SanType::IpAddress));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &ca)?;

    WebhookTls::assemble(
        ca.pem(),
        certificate.pem(),
        vec![certificate.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// ring explicitly: the process-wide default provider may be unset, or ambiguous.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the server presents, replaceable while it serves: a rotation takes effect
/// at the next handshake, with no restart and no connection dropped.
#[derive(Clone, Debug)]
pub struct ServingCertificate {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl ServingCertificate {
    pub fn new(tls: &WebhookTls) -> Self {
        ServingCertificate {
            current: Arc::new(RwLock::new(tls.key.clone())),
        }
    }

    pub fn replace(&self, tls: &WebhookTls) {
        // A poisoned lock only means a reader panicked; the value is a whole Arc either way.
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = tls.key.clone();
    }

    fn server_config(&self) -> Result<Arc<ServerConfig>, WebhookError> {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        // The router speaks HTTP/1.1 only; say so, so the API server does not try h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(current.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// `POST /mutate-pods`, over plain HTTP: [`serve_on`] adds the TLS.
pub fn router(placements: PlacementIndex) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .with_state(placements)
}

async fn mutate_pods(State(placements): State<PlacementIndex>, body: Bytes) -> Response {
    let (status, answer) = match review_body(&body, &placements) {
        Ok(answer) => (StatusCode::OK, answer),
        Err(error) => {
            warn!(%error, "unreadable admission request");
            (
                StatusCode::BAD_REQUEST,
                AdmissionResponse::invalid(error).into_review(),
            )
        }
    };
    match serde_json::to_vec(&answer) {
        Ok(json) => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the AdmissionReview: {error}"),
        )
            .into_response(),
    }
}

/// Binds the webhook's port; port 0 picks a free one, returned with the listener.
pub async fn bind(address: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves the webhook over HTTPS on `address` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    address: SocketAddr,
    certificate: ServingCertificate,
    placements: PlacementIndex,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (listener, _) = bind(address).await?;
    serve_on(listener, certificate, placements, shutdown).await
}

/// [`serve`] on a listener already bound by [`bind`].
pub async fn serve_on(
    listener: TcpListener,
    certificate: ServingCertificate,
    placements: PlacementIndex,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let address = listener.local_addr()?;
    let listener = TlsListener {
        tcp: listener,
        acceptor: TlsAcceptor::from(certificate.server_config().map_err(io::Error::other)?),
        handshakes: JoinSet::new(),
    };
    info!(%address, path = MUTATE_PODS_PATH, "serving the pod placement webhook");
    axum::serve(listener, router(placements))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Hands axum connections whose TLS handshake is done. Handshakes run concurrently, so a slow
/// or idle client does not hold up the others; they are aborted with the listener.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Both branches are cancel-safe: axum drops this future on shutdown.
            tokio::select! {
                // axum's own accept logs and retries on errors.
                (stream, peer) = axum::serve::Listener::accept(&mut self.tcp) => {
                    self.handshakes.spawn(handshake(self.acceptor.clone(), stream, peer));
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    // Debug only: TCP probes and scanners fail here routinely.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        Ok(Err(error)) => {
            debug!(%peer, %error, "webhook TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "webhook TLS handshake timed out");
            None
        }
    }
}
