//! `ft-operator run`: leader election, the HTTP endpoints and the controller, with graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::FutureExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admission::Confinement;
use crate::api::FIELD_MANAGER;
use crate::api::FranceTravailTenant;
use crate::api::labels;
use crate::build::BuildSettings;
use crate::compliance::Compliance;
use crate::controller;
use crate::encryption::{DELETION_PROTECTION, deletion_confirmation_recorder, deletion_protection};
use crate::metrics::Metrics;
use crate::placement::PlacementIndex;
use crate::server::{self, Health};
use crate::webhook::{self, CertificateSource, ServingCertificate, WebhookClient, WebhookTls};

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
    let ready = Arc::new(AtomicBool::new(false));
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
        ready: ready.clone(),
    };
    let server = tokio::spawn(server::serve(config.metrics_address, health, stopped()));

    Api::<FranceTravailTenant>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("cannot list FranceTravailTenants: are the CRDs installed (`ft-operator crd | kubectl apply -f -`)?")?;
    ready.store(true, Ordering::Relaxed);
    // A container restarted after losing the lease keeps its pod, and the pod its labels.
    if let Some(pod) = &config.pod_name
        && let Err(e) = label_pod(&client, &config.namespace, pod, false).await
    {
        warn!(pod = %pod, error = %e, "cannot clear this pod's leader label");
    }

    let lease = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot use Lease {}/{}",
                config.namespace, config.lease_name
            )
        })?;
    let (mut leader, lease_task) = lease.watch().await;
    info!(lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity, "waiting for leadership");
    tokio::select! {
        _ = leader.wait_for(|is_leader| *is_leader) => {}
        _ = stopped() => {}
    }

    let mut lost_leadership = false;
    if *leader.borrow() {
        info!("leading: reconciling tenants");
        let mut leader_watch = leader.clone();
        let lost = async move {
            let _ = leader_watch.wait_for(|is_leader| !*is_leader).await;
        }
        .shared();
        let shutdown = futures::future::select(Box::pin(stopped()), Box::pin(lost.clone()))
            .map(|_| ())
            .shared();
        let reporter = Reporter {
            controller: "ft-operator".into(),
            instance: Some(config.identity.clone()),
        };
        metrics.leader.set(1);
        let mut settings = config.settings;
        settings.key_namespace = config.namespace.clone();
        settings.confinement = match config.confinement {
            Some(chosen) => chosen,
            None => controller::discover_confinement(&client).await,
        };
        protect_tenants_from_deletion(&client, settings.confinement).await?;
        info!(confinement = ?settings.confinement, "placement admission");
        let placements = PlacementIndex::default();
        let webhook = if settings.confinement == Confinement::Webhook {
            Some(
                start_webhook(
                    &client,
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
        controller::run(
            client,
            metrics.clone(),
            settings,
            compliance,
            placements,
            reporter,
            shutdown,
        )
        .await;
        if let Some(Ok(Err(e))) = match webhook {
            Some(task) => Some(task.await),
            None => None,
        } {
            error!(error = %e, "placement webhook failed");
        }
        metrics.leader.set(0);
        lost_leadership = lost.now_or_never().is_some() && !*stop_tx.borrow();
    }

    drop(leader);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "could not release the lease; the next leader waits for it to expire");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "lease manager stopped with an error"),
        Err(e) => warn!(error = %e, "lease manager task failed"),
    }
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        error!(error = %e, "HTTP server failed");
    }
    if lost_leadership {
        anyhow::bail!("lost leadership of the lease; exiting so that a fresh replica takes over");
    }
    info!("stopped");
    Ok(())
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
        let configuration = webhook::mutating_webhook_configuration(
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

const WEBHOOK_CONFIGURATION: &str = "ft-operator-pod-placement";

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

/// Applies the cluster-wide policy that refuses to delete a tenant whose deletion was not
/// confirmed. Before any tenant is reconciled: no tenant is ever unprotected.
async fn protect_tenants_from_deletion(
    client: &kube::Client,
    confinement: Confinement,
) -> anyhow::Result<()> {
    let (policy, binding) = deletion_protection();
    apply_cluster_object(client, &policy).await?;
    apply_cluster_object(client, &binding).await?;
    // Where MutatingAdmissionPolicies are served, who confirms a deletion is recorded too.
    if confinement == Confinement::Native {
        let (recorder, recorder_binding) = deletion_confirmation_recorder();
        apply_cluster_object(client, &recorder).await?;
        apply_cluster_object(client, &recorder_binding).await?;
    }
    info!(
        policy = DELETION_PROTECTION,
        "tenants can be deleted only once confirmed"
    );
    Ok(())
}

async fn apply_cluster_object<K>(client: &kube::Client, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    kube::Api::<K>::all(client.clone())
        .patch(
            &name,
            &kube::api::PatchParams::apply(crate::api::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&())))?;
    Ok(())
}
