//! The HTTP port: `/healthz` (the process answers), `/readyz` (it should be sent work: not
//! draining, and its database answers), `/metrics` in Prometheus text format, and the web
//! pages of [`crate::web`] (`/kiosk`, `/command`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use greenplate_alerting::Alerting;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
}

/// The HTTP routes, the web pages' among them.
pub fn router(
    metrics: Arc<Metrics>,
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
    let registry = state.alerting.registry();
    let m = &state.metrics;
    m.registered_tags.set(registry.index().len() as i64);
    m.readers.set(registry.readers().len() as i64);
    // The alerting counter is the truth; the exported counter follows it (one scrape at a
    // time, so two scrapes cannot both add the same difference).
    {
        static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SYNC.lock().unwrap_or_else(|p| p.into_inner());
        let catchups = state.alerting.stream_catchups.load(Ordering::Relaxed);
        m.stream_catchups
            .inc_by(catchups.saturating_sub(m.stream_catchups.get()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
