//! The HTTP endpoints: liveness, readiness that follows the operator's state, and metrics.

use std::sync::Arc;

use axum::body::Body;
use ft_operator::health::{Liveness, WatchSignal};
use ft_operator::metrics::Metrics;
use ft_operator::server::{Health, router};
use http::{Request, StatusCode};
use tower::ServiceExt;

async fn get(health: &Health, path: &str) -> (StatusCode, String, String) {
    let response = router(health.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn health() -> Health {
    let metrics = Arc::new(Metrics::default());
    Health {
        liveness: Liveness::new(metrics.clone()),
        metrics,
    }
}

#[tokio::test]
async fn readiness_follows_the_watches_and_liveness_does_not() {
    let health = health();
    assert_eq!(get(&health, "/healthz").await.0, StatusCode::OK);
    let (status, _, why) = get(&health, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(why, "the API server has not answered yet");
    health.liveness.started();
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);

    // Leading: not ready until every watch has listed, and again once one fails.
    health.liveness.leading(true);
    health.liveness.watch("pods", WatchSignal::Listing);
    let (status, _, why) = get(&health, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(why, "watch pods: not listed yet");
    health.liveness.watch("pods", WatchSignal::Listed);
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
    health.liveness.watch("pods", WatchSignal::Error);
    let (status, _, why) = get(&health, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(why, "watch pods: failing for 0s");
    // A failing watch is no reason to restart: the API server may be what is down.
    assert_eq!(get(&health, "/healthz").await.0, StatusCode::OK);
    health.liveness.watch("pods", WatchSignal::Event);
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
    assert_eq!(get(&health, "/nowhere").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_labelled_by_tenant_and_category() {
    let metrics = Arc::new(Metrics::default());
    metrics.reconciled("offres-emploi", std::time::Duration::from_millis(12));
    metrics.failed("conflict");
    metrics.write("NetworkPolicy", "apply");
    let health = Health {
        liveness: Liveness::new(metrics.clone()),
        metrics,
    };
    health.liveness.watch("nodes", WatchSignal::Error);
    health.liveness.watch("pods", WatchSignal::Listed);
    health.liveness.pass_finished("offres-emploi", true);
    let (status, content_type, body) = get(&health, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for line in [
        "ft_reconciliations_total{tenant=\"offres-emploi\"} 1",
        "ft_reconcile_errors_total{category=\"conflict\"} 1",
        "ft_api_writes_total{kind=\"NetworkPolicy\",operation=\"apply\"} 1",
        "ft_reconcile_duration_seconds_count 1",
        "ft_leader 0",
        "ft_watch_restarts_total{resource=\"nodes\"} 1",
        "ft_watch_synced{resource=\"nodes\"} 0",
        "ft_watch_synced{resource=\"pods\"} 1",
        "ft_seconds_since_progress 0",
    ] {
        assert!(body.contains(line), "{line:?} missing from\n{body}");
    }
    let last_success = body
        .lines()
        .find_map(|l| l.strip_prefix("ft_last_successful_reconcile_timestamp_seconds "))
        .and_then(|v| v.parse::<i64>().ok())
        .expect("ft_last_successful_reconcile_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - last_success).abs() < 60, "{last_success} vs {now}");
}
