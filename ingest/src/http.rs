//! The HTTP port: `/healthz` (liveness only: the process answers HTTP; it checks nothing
//! else, so a restart is never triggered by a database outage), `/readyz` (readiness: it
//! should be sent work: not draining, and its database answers within a second; 503
//! otherwise), `/metrics` in Prometheus text format, and the web
//! pages of [`crate::web`] (`/kiosk`, `/command`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use greenplate_alerting::Alerting;

use prometheus_client::registry::Registry;

#[derive(Clone)]
struct AppState {
    /// Every crate's metrics, registered once at start.
    metrics: Arc<Registry>,
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
}

/// The HTTP routes, the web pages' among them.
pub fn router(
    metrics: Arc<Registry>,
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
    web: crate::web::WebState,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState {
            metrics,
            alerting,
            shutdown,
        })
        .merge(crate::web::router(web))
        // A span per request: method, path, status and latency at DEBUG.
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// 200 while the service takes work; 503 once it drains, or while its database does not
/// answer within a second.
async fn ready_handler(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let ping = state.alerting.registry().db().ping();
    match tokio::time::timeout(Duration::from_secs(1), ping).await {
        Ok(true) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &state.metrics) {
        tracing::error!(error = %e, "Could not encode the metrics.");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics encoding failed\n".to_owned(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
