//! `ft-operator run`: leader election, the HTTP endpoints and the controller, with graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::FutureExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use ft_core::api::FIELD_MANAGER;
use ft_core::api::FranceTravailTenant;
use ft_core::api::labels;
use ft_core::placement::PlacementIndex;
use ft_core::placement::admission::Confinement;
use ft_core::placement::review::WebhookClient;
use ft_core::settings::BuildSettings;

use crate::compliance::Compliance;
use crate::health::Liveness;
use crate::metrics::Metrics;
use crate::server::{self, Health};
use crate::watch::{Term, discover_confinement};
use crate::webhook::{self, CertificateSource, ServingCertificate, WebhookTls};

pub struct RunConfig {
    /// The operator's own namespace: its Lease, and later its key store and records.
    pub namespace: String,
    pub metrics_address: SocketAddr,
    pub lease_name: String,
    /// Who this replica is in the Lease and in Events: the pod name in a cluster.
    pub identity: String,
    /// This replica's pod, in the operator's namespace, when it runs in one: labelled
    /// [`labels::LEADER`] while it leads.
    pub pod_name: Option<String>,
    pub settings: BuildSettings,
    /// The cloud provider whose region codes the nodes carry, when the region alone is ambiguous.
    pub provider: Option<String>,
    /// A region catalogue replacing the embedded one.
    pub region_catalogue: Option<std::path::PathBuf>,
    /// How new pods are confined; `None`: as discovery says.
    pub confinement: Option<Confinement>,
    /// Write OpenReports `Report`s where the cluster serves them.
    pub openreports: bool,
    pub webhook: WebhookSettings,
}

/// Where the placement webhook listens and how the API server reaches it, on clusters that do
/// not serve MutatingAdmissionPolicies.
pub struct WebhookSettings {
    pub address: SocketAddr,
    /// The Service in front of the operator, in its namespace, port 443.
    pub service: String,
    /// A URL instead of the Service, for an operator running outside the cluster.
    pub url: Option<String>,
    /// A mounted `kubernetes.io/tls` Secret with `ca.crt` (cert-manager) to serve, instead of
    /// a certificate the operator makes itself.
    pub certificate_dir: Option<PathBuf>,
}

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API server configured (kubeconfig or in-cluster)")?;
    let regions_yaml = match &config.region_catalogue {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the region catalogue {}", path.display()))?,
        ),
        None => None,
    };
    let compliance = Compliance::load(config.provider.clone(), regions_yaml.as_deref())?;
    let metrics = Arc::new(Metrics::default());
    let liveness = Liveness::new(metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            info!("shutdown requested");
            let _ = stop_tx.send(true);
        }
    });
    let health = Health {
        metrics: metrics.clone(),
        liveness: liveness.clone(),
    };
    let server = tokio::spawn(server::serve(config.metrics_address, health, stopped()));

    Api::<FranceTravailTenant>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("cannot list FranceTravailTenants: are the CRDs installed (`ft-operator crd | kubectl apply -f -`)?")?;
    liveness.started();
    // A container restarted after losing the lease keeps its pod, and the pod its labels.
    if let Some(pod) = &config.pod_name
        && let Err(e) = label_pod(&client, &config.namespace, pod, false).await
    {
        warn!(pod = %pod, error = %e, "cannot clear this pod's leader label");
    }

    let lease = Arc::new(
        LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(LEASE_DURATION.as_secs())
            .with_grace(LEASE_GRACE.as_secs())
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use Lease {}/{}",
                    config.namespace, config.lease_name
                )
            })?,
    );
    let (leader_tx, mut leader) = watch::channel(false);
    let lease_task = tokio::spawn(follow_lease(lease.clone(), leader_tx, stopped()));
    info!(lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity, "waiting for leadership");
    tokio::select! {
        _ = leader.wait_for(|is_leader| *is_leader) => {}
        _ = stopped() => {}
    }

    let mut gave_up: Option<String> = None;
    // Checked once before anything else; each term of leadership starts from a fresh one.
    drop(compliance);
    while !*stop_tx.borrow() {
        tokio::select! {
            _ = leader.wait_for(|is_leader| *is_leader) => {}
            _ = stopped() => break,
        }
        // The lease manager may still believe it leads after another replica took over:
        // nothing is done before the Lease itself says so.
        let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
        match tokio::time::timeout(FENCE_CHECK, leases.get(&config.lease_name)).await {
            Ok(Ok(lease))
                if lease_validity(&lease, &config.identity, SystemTime::now()).is_some() => {}
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(FENCE_CHECK) => {}
                    _ = leader.changed() => {}
                    _ = stopped() => break,
                }
                continue;
            }
        }
        info!("leading: reconciling tenants");
        liveness.leading(true);
        // Why this replica stops leading before it is asked to stop, if it does.
        let (give_up_tx, give_up_rx) = watch::channel(None::<GiveUp>);
        let give_up = {
            let mut rx = give_up_rx.clone();
            async move {
                let _ = rx.wait_for(Option::is_some).await;
            }
        };
        let shutdown = futures::future::select(Box::pin(stopped()), Box::pin(give_up))
            .map(|_| ())
            .shared();
        let (acting_tx, acting) = watch::channel(true);
        let guards = [
            tokio::spawn(watch_leadership(leader.clone(), give_up_tx.clone())),
            tokio::spawn(hold_lease_fence(
                client.clone(),
                config.namespace.clone(),
                config.lease_name.clone(),
                config.identity.clone(),
                (acting_tx, liveness.clone()),
                give_up_tx.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(watchdog(liveness.clone(), give_up_tx)),
        ];
        let reporter = Reporter {
            controller: "ft-operator".into(),
            instance: Some(config.identity.clone()),
        };
        metrics.leader.set(1);
        let term = Term {
            reporter,
            liveness: liveness.clone(),
            acting,
        };
        let result = lead(
            &client,
            &config,
            metrics.clone(),
            Compliance::load(config.provider.clone(), regions_yaml.as_deref())?,
            term,
            shutdown,
        )
        .await;
        for guard in guards {
            guard.abort();
        }
        metrics.leader.set(0);
        liveness.leading(false);
        let reason = match result {
            Err(e) => Some(GiveUp::Restart(format!("{e:#}"))),
            Ok(()) => give_up_rx.borrow().clone(),
        };
        match reason {
            // Another replica leads: this one stands by, ready to take over again.
            Some(GiveUp::StandBy(why)) => {
                warn!(reason = %why, "stopped leading: standing by");
                // The webhook Service must not send calls here any more.
                if let Some(pod) = &config.pod_name
                    && let Err(e) = label_pod(&client, &config.namespace, pod, false).await
                {
                    warn!(pod = %pod, error = %e, "cannot clear this pod's leader label");
                }
            }
            Some(GiveUp::Restart(why)) => {
                gave_up = Some(why);
                break;
            }
            // The controller returned without being asked to: nothing enforces any more, so
            // this replica must not keep the Lease.
            None if !*stop_tx.borrow() => {
                gave_up = Some("the controller stopped by itself".into());
                break;
            }
            None => break,
        }
    }

    // Everything this replica runs stops, then the Lease is released for the next leader.
    let _ = stop_tx.send(true);
    if let Err(e) = lease_task.await {
        warn!(error = %e, "lease task failed");
    }
    if let Err(e) = lease.release().await {
        warn!(error = %e, "could not release the lease; the next leader waits for it to expire");
    }
    if let Ok(Err(e)) = server.await {
        error!(error = %e, "HTTP server failed");
    }
    if let Some(why) = gave_up {
        anyhow::bail!("stopped leading: {why}; exiting so that a fresh replica takes over");
    }
    info!("stopped");
    Ok(())
}

/// How long a stopping controller may take to finish its passes: well within the kubelet's
/// default 30 s grace.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the Lease holds without renewal, and how long before its end it is renewed.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// What the leader runs: the deletion protection, the webhook where pods are confined by it,
/// the leader label, and the controller, until `shutdown`.
async fn lead(
    client: &Client,
    config: &RunConfig,
    metrics: Arc<Metrics>,
    compliance: Compliance,
    term: Term,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut settings = config.settings.clone();
    settings.key_namespace = config.namespace.clone();
    settings.confinement = match config.confinement {
        Some(chosen) => chosen,
        None => discover_confinement(client).await,
    };
    check_fixed_policies(client, settings.confinement).await;
    if config.openreports && crate::compliance::serves_openreports(client).await {
        info!(
            "the cluster serves openreports.io/v1alpha1: control results are also written as Reports"
        );
        compliance.write_openreports();
    }
    info!(confinement = ?settings.confinement, "placement admission");
    let placements = PlacementIndex::default();
    let webhook = if settings.confinement == Confinement::Webhook {
        Some(
            start_webhook(
                client,
                &config.namespace,
                &config.webhook,
                &placements,
                shutdown.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    if let Some(pod) = config.pod_name.clone() {
        tokio::spawn(mark_leader(
            client.clone(),
            config.namespace.clone(),
            pod,
            shutdown.clone(),
        ));
    }
    let controller = crate::watch::run(
        client.clone(),
        metrics,
        settings,
        compliance,
        placements,
        term,
        shutdown.clone(),
    );
    // Asked to stop, the controller finishes the passes under way, but no longer than this:
    // kube's runner never ends if it is stopped before its first list of tenants, and a pass
    // may take up to `reconcile::PASS_TIMEOUT`.
    let deadline = async {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = controller => {}
        () = deadline => warn!(
            grace = ?SHUTDOWN_GRACE,
            "the controller did not stop in time: the passes under way are abandoned"
        ),
    }
    if let Some(Ok(Err(e))) = match webhook {
        Some(task) => Some(task.await),
        None => None,
    } {
        error!(error = %e, "placement webhook failed");
    }
    Ok(())
}

/// Keeps trying to lead, or to keep leading, and says which, until `stop`.
async fn follow_lease(
    lease: Arc<LeaseManager>,
    leader: watch::Sender<bool>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    const FIRST_RETRY: Duration = Duration::from_millis(250);
    let mut delay = FIRST_RETRY;
    let mut warned: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = lease.changed() => match changed {
                Ok(is_leader) => {
                    delay = FIRST_RETRY;
                    let _ = leader.send(is_leader);
                }
                Err(e) => {
                    // Once a minute in the log, however long the API server stays away.
                    if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                        warn!(error = %e, "cannot renew or read the lease; retrying every second");
                        warned = Some(Instant::now());
                    } else {
                        debug!(error = %e, "cannot renew or read the lease");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut stop => return,
                    }
                    // Quick, so that the Lease is renewed within a second of the API server
                    // coming back.
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            },
            _ = &mut stop => return,
        }
    }
}

/// Why a leader stops leading before it is asked to stop.
#[derive(Clone, Debug)]
enum GiveUp {
    /// Another replica holds the Lease: stand by, ready to lead again.
    StandBy(String),
    /// Something only a fresh process mends: exit non-zero.
    Restart(String),
}

/// Stands by when the lease manager says another replica holds the Lease.
async fn watch_leadership(
    mut leader: watch::Receiver<bool>,
    give_up: watch::Sender<Option<GiveUp>>,
) {
    if leader.wait_for(|is_leader| !*is_leader).await.is_ok() {
        let _ = give_up.send(Some(GiveUp::StandBy(
            "another replica holds the lease".into(),
        )));
    }
}

/// How often the leader reads its Lease back, and how long one read may take.
const FENCE_CHECK: Duration = Duration::from_secs(2);
/// How soon it reads it again while it cannot confirm it.
const FENCE_RETRY: Duration = Duration::from_millis(250);

/// Keeps the leader from acting once it cannot be sure it still leads: the Lease is read back
/// every two seconds, and a leader that cannot confirm it holds it pauses its reconciles
/// before the end of the last renewal it saw, so it never acts beside the next leader (its
/// connection to the API server dropped, its token revoked, or the API server down). It
/// resumes as soon as a read confirms the Lease again, and stands by when another replica
/// holds it.
async fn hold_lease_fence(
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    (acting, liveness): (watch::Sender<bool>, Liveness),
    give_up: watch::Sender<Option<GiveUp>>,
    shutdown: impl Future<Output = ()>,
) {
    // Ending drops `acting`: passes waiting on it return, and the controller can stop.
    let mut shutdown = std::pin::pin!(shutdown);
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    // Leading was just confirmed by a read: a renewal is at most this old.
    let mut valid_until = Instant::now() + LEASE_DURATION - LEASE_GRACE;
    loop {
        match tokio::time::timeout(FENCE_CHECK, leases.get(&name)).await {
            Ok(Ok(lease)) => match lease_validity(&lease, &identity, SystemTime::now()) {
                Some(left) => valid_until = Instant::now() + left,
                None if lease_holder(&lease).is_some_and(|h| h != identity) => {
                    let _ = give_up.send(Some(GiveUp::StandBy(
                        "another replica holds the lease".into(),
                    )));
                    return;
                }
                // Ours but lapsed: the lease manager renews it as soon as it can.
                None => {}
            },
            Ok(Err(e)) => debug!(error = %e, "cannot read the lease back"),
            Err(_) => debug!("reading the lease back timed out"),
        }
        let confirmed = Instant::now() < valid_until;
        if *acting.borrow() != confirmed {
            if confirmed {
                info!(lease = %name, "the lease is confirmed again: reconciling resumes");
            } else {
                error!(lease = %name, "cannot confirm this replica still holds the lease: reconciling pauses before another replica may take over");
            }
            liveness.paused(!confirmed);
            let _ = acting.send(confirmed);
        }
        // Unconfirmed, the Lease is read again soon: reconciling resumes within moments of the
        // lease manager renewing it.
        let wake = if confirmed {
            (Instant::now() + FENCE_CHECK).min(valid_until)
        } else {
            Instant::now() + FENCE_RETRY
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = &mut shutdown => return,
        }
    }
}

fn lease_holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// How long `identity` may still act on `lease` from `now`, a second short of its end so
/// that it stops before anyone else may start; `None` when it does not hold it.
pub fn lease_validity(lease: &Lease, identity: &str, now: SystemTime) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    let end = renewed + duration - Duration::from_secs(1);
    Some(end.duration_since(now).unwrap_or_default())
}

/// How often the leader asks whether its controller still moves.
const WATCHDOG: Duration = Duration::from_secs(5);

/// Gives up when the controller has stalled long enough that a restart is the answer.
async fn watchdog(liveness: Liveness, give_up: watch::Sender<Option<GiveUp>>) {
    loop {
        tokio::time::sleep(WATCHDOG).await;
        if let Err(why) = liveness.verdict().live {
            error!(reason = %why, "the controller is stalled");
            let _ = give_up.send(Some(GiveUp::Restart(why)));
            return;
        }
    }
}

/// Serves the placement webhook and points the API server at it, then keeps its certificate
/// fresh. The configuration fails open: a ValidatingAdmissionPolicy refuses unconfined pods.
async fn start_webhook(
    client: &Client,
    namespace: &str,
    settings: &WebhookSettings,
    placements: &PlacementIndex,
    shutdown: impl Future<Output = ()> + Clone + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let source = match &settings.certificate_dir {
        Some(dir) => CertificateSource::Directory(dir.clone()),
        None => {
            let host = format!("{}.{namespace}.svc", settings.service);
            CertificateSource::Generated {
                dns_names: vec![host.clone(), format!("{host}.cluster.local")],
                ip_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            }
        }
    };
    let tls = source.load().context("preparing the webhook certificate")?;
    let target = match &settings.url {
        Some(url) => WebhookClient::Url(url.clone()),
        None => WebhookClient::Service {
            namespace: namespace.into(),
            name: settings.service.clone(),
            port: 443,
        },
    };
    let registration = Registration {
        client: client.clone(),
        target,
        namespace: namespace.into(),
    };
    let serving = ServingCertificate::new(&tls);
    let task = tokio::spawn(webhook::serve(
        settings.address,
        serving.clone(),
        placements.clone(),
        shutdown.clone(),
    ));
    registration.apply(&tls.ca_bundle_pem).await?;
    info!(address = %settings.address, "placement webhook serving");
    tokio::spawn(keep_certificate_fresh(
        source,
        tls,
        serving,
        registration,
        shutdown,
    ));
    Ok(task)
}

/// The webhook configuration as this replica registers it.
struct Registration {
    client: Client,
    target: WebhookClient,
    namespace: String,
}

impl Registration {
    async fn apply(&self, ca_bundle_pem: &str) -> anyhow::Result<()> {
        let configuration = ft_core::placement::review::mutating_webhook_configuration(
            WEBHOOK_CONFIGURATION,
            ca_bundle_pem,
            self.target.clone(),
            &self.namespace,
        );
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .patch(
                WEBHOOK_CONFIGURATION,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&configuration),
            )
            .await
            .with_context(|| {
                format!("applying MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}")
            })?;
        Ok(())
    }
}

/// How often the webhook's certificate is looked at: renewal is due weeks ahead, and a
/// certificate cert-manager renewed is picked up within this.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(60);

/// Moves to a new certificate when its source has one: the API server is first told to trust
/// both CAs, and only once it accepted that is the new certificate served, so no call fails.
async fn keep_certificate_fresh(
    source: CertificateSource,
    mut current: WebhookTls,
    serving: ServingCertificate,
    registration: Registration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = tokio::time::interval(CERTIFICATE_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut shutdown => return,
        }
        let next = match source.refresh(&current, SystemTime::now()) {
            Ok(Some(next)) => next,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "cannot renew the webhook certificate; serving the current one");
                continue;
            }
        };
        if let Err(e) = registration
            .apply(&webhook::rotation_bundle(&current, &next))
            .await
        {
            warn!(
                error = format!("{e:#}"),
                "cannot register the renewed webhook CA; retrying"
            );
            continue;
        }
        serving.replace(&next);
        current = next;
        info!("webhook certificate renewed");
    }
}

/// Labels this replica's pod as the leader, retrying until it succeeds: the webhook Service
/// sends calls only to the pod so labelled.
async fn mark_leader(
    client: Client,
    namespace: String,
    pod: String,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delay = Duration::from_secs(1);
    loop {
        match label_pod(&client, &namespace, &pod, true).await {
            Ok(()) => {
                info!(pod = %pod, label = labels::LEADER, "this pod is labelled as the leader");
                return;
            }
            Err(e) => {
                error!(pod = %pod, error = %e, "cannot label this pod as the leader; the webhook Service does not reach it")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Sets or removes [`labels::LEADER`] on a pod of the operator's namespace.
async fn label_pod(client: &Client, namespace: &str, pod: &str, leader: bool) -> kube::Result<()> {
    let value = if leader {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({ "metadata": { "labels": { labels::LEADER: value } } });
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

use ft_core::placement::review::WEBHOOK_CONFIGURATION;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Reads the cluster-wide admission objects (`admission/`, installed with the chart) and says
/// which are missing or changed: without them, tenant namespaces are not protected. The
/// operator never writes them; the controls (GEO-3, ENC-2, DEL-1) report them continuously.
async fn check_fixed_policies(client: &kube::Client, confinement: Confinement) {
    let problems = crate::admission::problems(client, confinement).await;
    if problems.is_empty() {
        info!("the cluster-wide admission policies are in place");
    }
    for problem in problems {
        error!(%problem, "cluster-wide admission policy: install admission/ (or the chart) again");
    }
}
