//! Velero may come after the operator, or never: its stores start empty and listed, and a
//! task fills them once the cluster serves its API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use ft_core::api::{FranceTravailTenant, labels};
use ft_core::backup::velero::{
    self, Backup as VeleroBackup, BackupStorageLocation, Restore, Schedule,
};

use super::backoff::Watch;
use super::trim::managers_only;
use super::trim::trim_meta;
use crate::context::Context;
use crate::context::NamespaceIndex;
use crate::error::Result;
use crate::health::Liveness;
use crate::observe::{Cache, CacheInto, Echoes, TenantMeta, TenantRef};
use crate::reconcile::RESYNC;

/// The resources of Velero's watches, as the liveness names them.
pub(crate) const VELERO_WATCHES: [&str; 4] = [
    "schedules.velero.io",
    "backups.velero.io",
    "restores.velero.io",
    "backupstoragelocations.velero.io",
];

pub(crate) struct VeleroWriters {
    pub(super) schedules: crate::observe::CacheWriter<Schedule>,
    pub(super) backups: crate::observe::CacheWriter<VeleroBackup>,
    pub(super) restores: crate::observe::CacheWriter<Restore>,
    pub(super) locations: crate::observe::CacheWriter<BackupStorageLocation>,
}

/// Whether the cluster serves every Velero resource the operator uses; `None` when discovery
/// failed.
pub async fn discover_velero(client: &Client) -> Option<bool> {
    match client.list_api_group_resources(velero::API_VERSION).await {
        Ok(list) => Some(
            velero::RESOURCES
                .iter()
                .all(|wanted| list.resources.iter().any(|r| r.name == *wanted)),
        ),
        Err(kube::Error::Api(s)) if s.code == 404 => Some(false),
        Err(e) => {
            warn!(error = %e, "could not tell whether the cluster serves velero.io/v1");
            None
        }
    }
}

/// What a Velero watch event asks of the controller.
pub(crate) enum VeleroEvent {
    /// The kind's objects have all been listed.
    Listed,
    /// These tenants are concerned.
    Wake(Vec<String>),
}

/// Follows Velero's API: asks every minute whether the cluster serves it, and from the first
/// time it does, watches its objects in Velero's namespace into the stores, waking the tenants
/// they concern. The backup engine counts as present once every kind has been listed.
pub(crate) async fn follow_velero(
    client: Client,
    ctx: Arc<Context>,
    writers: VeleroWriters,
    tenants: reflector::Store<TenantMeta>,
    wake: futures::channel::mpsc::UnboundedSender<TenantRef>,
) {
    const KINDS: usize = 4;
    let namespace = ctx.settings.velero_namespace.clone();
    let mut writers = Some(writers);
    let listed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let wake_all = {
        let (tenants, wake) = (tenants.clone(), wake.clone());
        move || {
            for tenant in tenants.state() {
                let _ = wake.unbounded_send(ObjectRef::from_obj(&*tenant));
            }
        }
    };
    loop {
        let served = discover_velero(&client).await;
        let synced = listed.load(std::sync::atomic::Ordering::SeqCst) >= KINDS;
        let engine = match served {
            Some(true) if synced => Some(true),
            // Listing, or discovery failed while the watches run: not known yet.
            Some(true) | None => None,
            Some(false) => Some(false),
        };
        // Velero's watches count for readiness only while the cluster serves its API.
        if writers.is_none() && served.is_some() {
            for resource in VELERO_WATCHES {
                ctx.liveness.watch_needed(resource, served == Some(true));
            }
        }
        let before = ctx.compliance.backup_engine();
        // A watch that runs keeps the engine present through a failed discovery.
        if !(served.is_none() && before == Some(true)) && before != engine {
            info!(engine = ?engine, namespace = %namespace, "backup engine (Velero)");
            ctx.compliance.set_backup_engine(engine);
            wake_all();
        }
        if served == Some(true)
            && let Some(writers) = writers.take()
        {
            info!(namespace = %namespace, "the cluster serves Velero: following its objects");
            let events = velero_events(
                &client,
                &ctx.liveness,
                &namespace,
                writers,
                &ctx.index,
                &ctx.observed.echoes,
                &ctx.observed.tenants,
            );
            let (ctx, listed, wake, wake_all) =
                (ctx.clone(), listed.clone(), wake.clone(), wake_all.clone());
            tokio::spawn(events.for_each(move |event| {
                match event {
                    VeleroEvent::Listed => {
                        let n = listed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if n == KINDS {
                            info!("Velero's objects are listed: the backup engine is present");
                            ctx.compliance.set_backup_engine(Some(true));
                            wake_all();
                        }
                    }
                    VeleroEvent::Wake(names) => {
                        for name in names {
                            let _ = wake.unbounded_send(ObjectRef::new(&name));
                        }
                    }
                }
                futures::future::ready(())
            }));
        }
        tokio::time::sleep(RESYNC).await;
    }
}

/// The watches of Velero's objects, reflected into the stores, as one stream of events.
pub(crate) fn velero_events(
    client: &Client,
    liveness: &Liveness,
    namespace: &str,
    writers: VeleroWriters,
    index: &NamespaceIndex,
    echoes: &Arc<Echoes>,
    tenants: &Cache<FranceTravailTenant>,
) -> futures::stream::BoxStream<'static, VeleroEvent> {
    fn events<K>(
        stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        concerns: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> futures::stream::BoxStream<'static, VeleroEvent>
    where
        K: Send + 'static,
    {
        stream
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Ok(watcher::Event::InitDone) => Some(VeleroEvent::Listed),
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                        Some(VeleroEvent::Wake(concerns(&o)))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        debug!(error = %e, "Velero watch");
                        None
                    }
                })
            })
            .boxed()
    }
    let labelled = |meta: &ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(labels::TENANT))
            .cloned()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let ours = || watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    let watch = |resource| Watch {
        client,
        liveness,
        resource,
    };
    let schedules = watch(VELERO_WATCHES[0])
        .of(
            Api::<Schedule>::namespaced(client.clone(), namespace),
            ours(),
        )
        .modify(|o| managers_only(o.meta_mut()))
        .cache_into(writers.schedules);
    let backups = watch(VELERO_WATCHES[1])
        .of(
            Api::<VeleroBackup>::namespaced(client.clone(), namespace),
            ours(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .cache_into(writers.backups);
    // Every Restore: one made by hand may take a tenant's production elsewhere (CLD-54).
    let restores = watch(VELERO_WATCHES[2])
        .of(
            Api::<Restore>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .cache_into(writers.restores);
    let locations = watch(VELERO_WATCHES[3])
        .of(
            Api::<BackupStorageLocation>::namespaced(client.clone(), namespace),
            watcher::Config::default(),
        )
        .modify(|o| trim_meta(&mut o.metadata))
        .cache_into(writers.locations);
    let index = index.clone();
    let tenants = tenants.clone();
    let echoes = echoes.clone();
    // Velero revalidates each location every minute: only a change of phase matters.
    let phases: Mutex<HashMap<String, Option<String>>> = Mutex::default();
    futures::stream::select_all([
        // A Schedule the operator just applied is no news; Velero's status on it is.
        events(schedules, move |o: &Schedule| {
            if echoes.of(o) {
                Vec::new()
            } else {
                labelled(&o.metadata)
            }
        }),
        events(backups, move |o: &VeleroBackup| labelled(&o.metadata)),
        events(restores, move |o: &Restore| {
            let mut concerned = labelled(&o.metadata);
            concerned.extend(
                o.spec
                    .included_namespaces
                    .iter()
                    .chain(o.spec.namespace_mapping.keys())
                    .filter_map(|ns| index.tenant_of(ns)),
            );
            concerned
        }),
        events(locations, move |o: &BackupStorageLocation| {
            let name = o.name_any();
            let phase = o.status.as_ref().and_then(|s| s.phase.clone());
            let changed = phases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), phase.clone())
                != Some(phase);
            if !changed {
                return Vec::new();
            }
            tenants
                .state()
                .iter()
                .filter(|t| {
                    t.spec
                        .backup
                        .as_ref()
                        .is_some_and(|b| b.storage_location == name)
                })
                .map(|t| t.name_any())
                .collect()
        }),
    ])
    .boxed()
}

/// A store whose kind the cluster does not serve: empty, and listed.
pub(crate) fn mark_listed<K>(writer: &mut crate::observe::CacheWriter<K>)
where
    K: crate::observe::Cached<DynamicType = ()>,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
}
