//! How a watch retries and reports, on its own: no watch pauses another.

use std::time::Duration;

use futures::StreamExt;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::health::{Liveness, WatchSignal};

/// How a watch retries: quickly, so that enforcement resumes within seconds of the API server
/// coming back (client-go's 30 s cap would leave drift unrepaired that long), with jitter so
/// the watches do not retry in step. A dozen watches at this pace are no burden.
pub(crate) fn watch_backoff() -> impl Backoff {
    ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(60),
    )
}

/// The controller's own pause after an error of any of its watches: none. kube-runtime merges
/// every watch into one stream and, by default, suspends that whole stream after an error of
/// any of them, for a pause that doubles with each error up to 30 s and resets only after two
/// quiet minutes. After an API-server restart every watch fails once or twice (connection
/// reset, then 410 Gone), so the caches stayed frozen for many minutes: drift went unseen, new
/// tenants unread. Each watch backs off on its own instead (`watch_backoff`), and an error of
/// one never holds up the others.
pub struct NoPause;

impl Iterator for NoPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoPause {
    fn reset(&mut self) {}
}

/// One watch of the controller, reporting what it says to the liveness.
pub(crate) struct Watch<'a> {
    pub(super) client: &'a Client,
    pub(super) liveness: &'a Liveness,
    pub(super) resource: &'static str,
}

impl Watch<'_> {
    pub(super) fn all<K>(
        self,
        config: watcher::Config,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let api = Api::all_with(self.client.clone(), &Default::default());
        self.of(api, config)
    }

    pub(super) fn of<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
    ) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let (liveness, resource) = (self.liveness.clone(), self.resource);
        liveness.watch(resource, WatchSignal::Listing);
        watcher(api, config)
            .inspect(move |item| liveness.watch(resource, signal_of(item)))
            // A 410 Gone only means "list again", which the watcher does when next polled: no
            // pause, even right after an outage has drawn the backoff out.
            .filter(move |item| {
                let expired = expired(item);
                if let (true, Err(e)) = (expired, item) {
                    debug!(resource, error = %e, "watch expired: listing again");
                }
                futures::future::ready(!expired)
            })
            .backoff(watch_backoff())
    }
}

/// Whether a watch was told its resourceVersion is too old (etcd compacted, API server
/// restarted).
pub(crate) fn expired<K>(item: &watcher::Result<watcher::Event<K>>) -> bool {
    matches!(item, Err(watcher::Error::WatchError(status)) if status.code == 410)
}

pub(crate) fn signal_of<K>(item: &watcher::Result<watcher::Event<K>>) -> WatchSignal {
    match item {
        Ok(watcher::Event::Init) => WatchSignal::Listing,
        Ok(watcher::Event::InitDone) => WatchSignal::Listed,
        Ok(_) => WatchSignal::Event,
        Err(_) => WatchSignal::Error,
    }
}
