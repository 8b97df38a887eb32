//! The HTTP port: `/healthz` for probes and `/metrics` in Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::Ordering;

use greenplate_alerting::Alerting;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    alerting: Arc<Alerting>,
}

/// The HTTP routes.
pub fn router(metrics: Arc<Metrics>, alerting: Arc<Alerting>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, alerting })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.alerting.registry();
    let m = &state.metrics;
    m.registered_tags.set(registry.index().len() as i64);
    m.readers.set(registry.readers().len() as i64);
    m.stream_catchups
        .set(state.alerting.stream_catchups.load(Ordering::Relaxed) as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
