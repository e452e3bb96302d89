//! The HTTP endpoints: liveness, readiness that follows the operator's state, and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
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

#[tokio::test]
async fn readiness_follows_the_operator_and_liveness_does_not() {
    let health = Health {
        metrics: Arc::new(Metrics::default()),
        ready: Arc::new(AtomicBool::new(false)),
    };
    assert_eq!(get(&health, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    health.ready.store(true, Ordering::Relaxed);
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
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
    };
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
    ] {
        assert!(body.contains(line), "{line:?} missing from\n{body}");
    }
}
