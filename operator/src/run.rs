//! `ft-operator run`: leader election, the HTTP endpoints and the controller, with graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::FutureExt;
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::FranceTravailTenant;
use crate::build::BuildSettings;
use crate::compliance::Compliance;
use crate::controller;
use crate::metrics::Metrics;
use crate::server::{self, Health};

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
}

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes API server configured (kubeconfig or in-cluster)")?;
    let compliance = Compliance::embedded(config.provider.clone())?;
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
        let shutdown =
            futures::future::select(Box::pin(stopped()), Box::pin(lost.clone())).map(|_| ());
        let reporter = Reporter {
            controller: "ft-operator".into(),
            instance: Some(config.identity.clone()),
        };
        metrics.leader.set(1);
        controller::run(
            client,
            metrics.clone(),
            config.settings,
            compliance,
            reporter,
            shutdown,
        )
        .await;
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
