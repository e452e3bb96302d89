//! Whether the operator is still enforcing: every watch the controller needs synced, and the
//! controller loop making progress. `/readyz`, `/healthz`, the metrics and the leader's
//! watchdog all read the same [`Liveness`]; [`assess`] is the pure judgement behind them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::Metrics;

/// A watch whose last word was an error is taken as recovered only once it delivers an event
/// or stays quiet for longer than its longest backoff (2 s, doubled by jitter, see
/// `watch::backoff::watch_backoff`): a watch that still fails says so again within that time.
pub const WATCH_ERROR_GRACE: Duration = Duration::from_secs(10);

/// With tenants to enforce, the controller finishes a pass at least once a minute (every
/// tenant is re-checked that often, failed ones included). Longer than this without one, or
/// one pass running this long, and the replica is not ready.
pub const READY_BOUND: Duration = Duration::from_secs(150);

/// Stalled this long, a restart is the right answer: `/healthz` fails and the leader gives up
/// the Lease and exits, so that a fresh replica takes over.
pub const LIVE_BOUND: Duration = Duration::from_secs(300);

/// What one watch said last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchSignal {
    /// A (re)list began: the store keeps serving the previous list meanwhile.
    Listing,
    /// The list is complete: the store holds the cluster's state.
    Listed,
    /// An object changed: the watch is connected.
    Event,
    /// The watch failed; it is retried with backoff.
    Error,
}

/// One watch as the judgement sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    /// It has listed at least once since it started.
    pub listed: bool,
    /// Its latest error, when nothing has come through since.
    pub failing_since: Option<Instant>,
    /// When it last failed.
    pub last_error: Option<Instant>,
    /// A watch the controller does not need right now (Velero's, while Velero is not served).
    pub optional: bool,
}

impl WatchState {
    pub fn observe(&mut self, signal: WatchSignal, now: Instant) {
        match signal {
            WatchSignal::Listing => {}
            WatchSignal::Listed => {
                self.listed = true;
                self.failing_since = None;
            }
            WatchSignal::Event => self.failing_since = None,
            WatchSignal::Error => {
                self.failing_since.get_or_insert(now);
                self.last_error = Some(now);
            }
        }
    }

    /// Why this watch cannot be trusted at `now`, if it cannot.
    fn problem(&self, now: Instant) -> Option<String> {
        if self.optional {
            return None;
        }
        if !self.listed {
            return Some("not listed yet".into());
        }
        let last_error = self.last_error?;
        let failing_since = self.failing_since?;
        (now.saturating_duration_since(last_error) < WATCH_ERROR_GRACE).then(|| {
            format!(
                "failing for {}s",
                now.saturating_duration_since(failing_since).as_secs()
            )
        })
    }
}

/// The controller loop as the judgement sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether the loop runs at all on this replica: a standby has nothing to judge.
    pub leading: bool,
    /// When this replica started leading.
    pub since: Option<Instant>,
    /// Whether there is work: tenants exist, so passes must keep finishing.
    pub has_work: bool,
    /// When a pass last finished, whatever its outcome.
    pub last_finished: Option<Instant>,
    /// When the oldest pass still running started.
    pub oldest_running: Option<Instant>,
    /// Since when passes wait, on purpose, for the leader to confirm its Lease: no stall.
    pub paused_since: Option<Instant>,
    /// When they last resumed.
    pub resumed: Option<Instant>,
}

impl Progress {
    /// How long the loop has gone without a sign of life, when it should have given one.
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        if !self.leading || self.paused_since.is_some() {
            return None;
        }
        let stuck = self
            .oldest_running
            .map(|started| now.saturating_duration_since(started));
        let idle = self.has_work.then(|| {
            let reference = [self.last_finished, self.since, self.resumed]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(now);
            now.saturating_duration_since(reference)
        });
        stuck.into_iter().chain(idle).max()
    }
}

/// What the probes answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `Err` with the reasons while the replica cannot be trusted to enforce.
    pub ready: Result<(), String>,
    /// `Err` when it should be restarted.
    pub live: Result<(), String>,
}

/// The pure judgement: every needed watch synced and the loop moving is ready; a loop stalled
/// past [`LIVE_BOUND`] is not alive.
pub fn assess(
    watches: &BTreeMap<String, WatchState>,
    progress: &Progress,
    now: Instant,
) -> Verdict {
    let mut problems: Vec<String> = Vec::new();
    if progress.leading {
        problems.extend(
            watches
                .iter()
                .filter_map(|(resource, w)| Some(format!("watch {resource}: {}", w.problem(now)?))),
        );
    }
    let stalled = progress.stalled_for(now).unwrap_or_default();
    if stalled >= READY_BOUND {
        problems.push(format!(
            "the controller has made no progress for {}s",
            stalled.as_secs()
        ));
    }
    Verdict {
        ready: if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        },
        live: if stalled >= LIVE_BOUND {
            Err(format!(
                "the controller has made no progress for {}s: restart",
                stalled.as_secs()
            ))
        } else {
            Ok(())
        },
    }
}

#[derive(Default)]
struct State {
    watches: BTreeMap<String, WatchState>,
    progress: Progress,
    running: HashMap<String, Instant>,
    /// Set once the API server answered and the CRDs are installed.
    started: bool,
    /// A watch failed since this was last taken.
    watch_failed: bool,
}

/// Shared by the watches, the controller, the probes and the watchdog.
#[derive(Clone)]
pub struct Liveness {
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
}

impl Liveness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: Arc::default(),
            metrics,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The API server answered and the CRDs are installed.
    pub fn started(&self) {
        self.with(|s| s.started = true);
    }

    /// This replica leads from now on (`true`), or stopped leading: its watches are forgotten.
    pub fn leading(&self, leading: bool) {
        self.with(|s| {
            s.progress = Progress {
                leading,
                since: leading.then(Instant::now),
                ..Progress::default()
            };
            s.running.clear();
            if !leading {
                s.watches.clear();
            }
        });
    }

    /// What a watch of `resource` just said.
    pub fn watch(&self, resource: &str, signal: WatchSignal) {
        if signal == WatchSignal::Error {
            self.metrics.watch_restarted(resource);
        }
        let listed = self.with(|s| {
            s.watch_failed |= signal == WatchSignal::Error;
            let watch = s.watches.entry(resource.to_string()).or_default();
            watch.observe(signal, Instant::now());
            watch.listed && watch.failing_since.is_none()
        });
        self.metrics.watch_synced(resource, listed);
    }

    /// Whether a watch failed since the last call: the API server may be gone.
    pub fn take_watch_failure(&self) -> bool {
        self.with(|s| std::mem::take(&mut s.watch_failed))
    }

    /// Whether the controller needs the watch of `resource` right now.
    pub fn watch_needed(&self, resource: &str, needed: bool) {
        self.with(|s| s.watches.entry(resource.to_string()).or_default().optional = !needed);
    }

    /// Whether there are tenants, so passes must keep finishing.
    pub fn has_work(&self, has_work: bool) {
        self.with(|s| s.progress.has_work = has_work);
    }

    /// Passes wait for the leader to confirm its Lease (`true`), or go on again. A paused
    /// leader does not count as leading in `ft_leader`.
    pub fn paused(&self, paused: bool) {
        self.metrics.leader.set(i64::from(!paused));
        self.with(|s| {
            let now = Instant::now();
            match (paused, s.progress.paused_since) {
                (true, None) => s.progress.paused_since = Some(now),
                (false, Some(_)) => {
                    s.progress.paused_since = None;
                    s.progress.resumed = Some(now);
                }
                _ => {}
            }
        });
    }

    pub fn pass_started(&self, tenant: &str) {
        self.with(|s| {
            s.running.insert(tenant.to_string(), Instant::now());
            s.progress.oldest_running = s.running.values().min().copied();
        });
    }

    pub fn pass_finished(&self, tenant: &str, succeeded: bool) {
        self.with(|s| {
            s.running.remove(tenant);
            s.progress.oldest_running = s.running.values().min().copied();
            s.progress.last_finished = Some(Instant::now());
        });
        if succeeded {
            self.metrics.last_success.set(unix_now());
        }
    }

    /// The judgement now; the metric of time without progress follows it.
    pub fn verdict(&self) -> Verdict {
        let now = Instant::now();
        let (verdict, stalled) = self.with(|s| {
            let mut verdict = assess(&s.watches, &s.progress, now);
            if !s.started {
                verdict.ready = Err("the API server has not answered yet".into());
            }
            (verdict, s.progress.stalled_for(now).unwrap_or_default())
        });
        self.metrics.since_progress.set(stalled.as_secs() as i64);
        verdict
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
