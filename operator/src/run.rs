//! `ft-operator run`: leader election, the HTTP endpoints and the controller, with graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::FutureExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admission::Confinement;
use crate::api::FIELD_MANAGER;
use crate::api::FranceTravailTenant;
use crate::build::BuildSettings;
use crate::compliance::Compliance;
use crate::controller;
use crate::encryption::{DELETION_PROTECTION, deletion_confirmation_recorder, deletion_protection};
use crate::metrics::Metrics;
use crate::placement::PlacementIndex;
use crate::server::{self, Health};
use crate::webhook::{self, WebhookClient};

pub struct RunConfig {
    /// The operator's own namespace: its Lease, and later its key store and records.
    pub namespace: String,
    pub metrics_address: SocketAddr,
    pub lease_name: String,
    /// Who this replica is in the Lease and in Events: the pod name in a cluster.
    pub identity: String,
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

/// Serves the placement webhook with a certificate made now, and points the API server at it.
/// The configuration fails open: a ValidatingAdmissionPolicy refuses unconfined pods anyway.
async fn start_webhook(
    client: &Client,
    namespace: &str,
    settings: &WebhookSettings,
    placements: &PlacementIndex,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let host = format!("{}.{namespace}.svc", settings.service);
    let names = vec![host.clone(), format!("{host}.cluster.local")];
    let addresses = [IpAddr::from([127, 0, 0, 1])];
    let tls =
        webhook::generate_tls(&names, &addresses).context("generating the webhook certificate")?;
    let target = match &settings.url {
        Some(url) => WebhookClient::Url(url.clone()),
        None => WebhookClient::Service {
            namespace: namespace.into(),
            name: settings.service.clone(),
            port: 443,
        },
    };
    let configuration = webhook::mutating_webhook_configuration(
        WEBHOOK_CONFIGURATION,
        &tls.ca_bundle_pem,
        target,
        namespace,
    );
    let task = tokio::spawn(webhook::serve(
        settings.address,
        tls,
        placements.clone(),
        shutdown,
    ));
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&configuration),
        )
        .await
        .with_context(|| {
            format!("applying MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}")
        })?;
    info!(address = %settings.address, "placement webhook serving");
    Ok(task)
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
