//! The HTTP port: `/healthz` for probes and `/metrics` in Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use greenplate_registry::Registry;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

/// The HTTP routes.
pub fn router(metrics: Arc<Metrics>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, registry })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .registered_tags
        .set(state.registry.index().len() as i64);
    state
        .metrics
        .readers
        .set(state.registry.readers().len() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
