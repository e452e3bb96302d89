//! The controller's watches: an error of one never holds up the others. kube-runtime merges
//! every watch of a `Controller` into one stream and by default pauses all of it after an
//! error of any; the operator's controller uses `NoPause` instead, each watch backing off on
//! its own. Without it, the caches froze for minutes after an API-server restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ft_operator::watch::NoPause;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

fn config_map(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.namespace = Some("default".into());
    cm
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// Objects come through one watch while another fails every 10 ms: each new object is
/// reconciled within half a second of arriving.
#[tokio::test]
async fn a_failing_watch_does_not_hold_up_the_others() {
    let (events, received) = futures::channel::mpsc::unbounded();
    let (reader, writer) = reflector::store();
    let objects = received.reflect(writer).applied_objects();
    // A watch that keeps failing, as every watch does while the API server is down.
    let failures = Arc::new(AtomicUsize::new(0));
    let failing = futures::stream::unfold(failures.clone(), |failures| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        failures.fetch_add(1, Ordering::SeqCst);
        Some((
            Err::<ConfigMap, _>(watcher::Error::NoResourceVersion),
            failures,
        ))
    });
    let reconciled: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let seen = reconciled.clone();
    let controller = Controller::for_stream(objects, reader)
        .trigger_backoff(NoPause)
        .watches_stream(failing, |_: ConfigMap| None::<ObjectRef<ConfigMap>>)
        .run(
            move |cm: Arc<ConfigMap>, _: Arc<()>| {
                let seen = seen.clone();
                async move {
                    let name = cm.metadata.name.clone().unwrap_or_default();
                    seen.lock().unwrap().push((name, Instant::now()));
                    Ok::<_, Never>(Action::await_change())
                }
            },
            |_, _, _| Action::await_change(),
            Arc::new(()),
        )
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    events.unbounded_send(Ok(watcher::Event::Init)).unwrap();
    events.unbounded_send(Ok(watcher::Event::InitDone)).unwrap();
    // Once the other watch has failed a few times, kube's default pause would already be
    // seconds long.
    while failures.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for name in ["first", "second", "third"] {
        let sent = Instant::now();
        events
            .unbounded_send(Ok(watcher::Event::Apply(config_map(name))))
            .unwrap();
        let deadline = sent + Duration::from_millis(500);
        loop {
            let done = reconciled
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, at)| *at);
            if let Some(at) = done {
                assert!(at >= sent);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not reconciled within 500 ms while another watch fails"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        failures.load(Ordering::SeqCst) >= 5,
        "the other watch kept failing throughout"
    );
    running.abort();
}

/// Sixteen passes wait for the stores at once, as they do when the operator starts leading
/// with tenants: every one of them goes on once the stores have listed. A reflector store's
/// own readiness wakes only the last task that polled it; passes it forgot stayed blocked for
/// good, and with all sixteen slots held so, no tenant was reconciled any more.
#[tokio::test]
async fn every_pass_waiting_for_the_stores_goes_on_once_they_listed() {
    let (observed, mut writers) = ft_operator::observe::empty_stores();
    let finished = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let (observed, finished) = (observed.clone(), finished.clone());
            tokio::spawn(async move {
                observed.wait_until_ready().await;
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Let every waiter poll the stores before they are ready.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "no store has listed yet"
    );
    writers.mark_all_listed();
    let deadline = Instant::now() + Duration::from_secs(2);
    while finished.load(Ordering::SeqCst) < waiting.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} passes still wait for stores that have listed",
            waiting.len() - finished.load(Ordering::SeqCst),
            waiting.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
