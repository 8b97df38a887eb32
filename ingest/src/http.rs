//! The HTTP port: `/healthz` (liveness only: the process answers HTTP; it checks nothing
//! else, so a restart is never triggered by a database outage), `/readyz` (readiness: it
//! should be sent work: not draining, and its database answers within a second; 503
//! otherwise), `/metrics` in Prometheus text format, the web pages of [`crate::web`]
//! (`/kiosk`, `/command`, `/owner`), the claim records (`/claims/...`) and the HTTP/JSON
//! API of [`crate::api`] (`/api/...`, `/openapi.json`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use greenplate_alerting::claims::Claims;
use greenplate_alerting::{Alerting, AlertingError};
use greenplate_registry::{RegistryError, Role};

use prometheus_client::registry::Registry;

#[derive(Clone)]
struct AppState {
    /// Every crate's metrics, registered once at start.
    metrics: Arc<Registry>,
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
    claims: Claims,
}

/// The HTTP routes, the web pages' among them.
pub fn router(
    metrics: Arc<Registry>,
    alerting: Arc<Alerting>,
    shutdown: CancellationToken,
    web: crate::web::WebState,
    claims: Claims,
    api: Router,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .route("/claims/public-key", get(claims_key_handler))
        .route("/claims/{plate}", get(claim_handler))
        .with_state(AppState {
            metrics,
            alerting,
            shutdown,
            claims,
        })
        .merge(crate::web::router(web))
        .merge(api)
        // A span per request: method, path, status and latency at DEBUG.
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

fn json(status: StatusCode, body: String) -> axum::response::Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> axum::response::Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// `GET /claims/public-key`: the key claim records are signed with (Ed25519, hex).
async fn claims_key_handler(State(state): State<AppState>) -> axum::response::Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "algorithm": "Ed25519",
            "public_key": state.claims.signer.public_key_hex(),
        })
        .to_string(),
    )
}

/// `GET /claims/PLATE` with an insurer's (or the admin's) bearer token: the signed claim
/// record of the bike's latest theft, if unresolved long enough (409 otherwise).
async fn claim_handler(
    State(state): State<AppState>,
    axum::extract::Path(plate): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(caller) = state.alerting.registry().auth().authenticate(token) else {
        return json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    };
    if !matches!(caller.role, Role::Insurer | Role::Admin) {
        return json_error(StatusCode::FORBIDDEN, "insurers' tokens only");
    }
    let signed = state
        .alerting
        .claim_record(
            &caller,
            &state.claims.signer,
            &plate,
            state.claims.after_days,
        )
        .await;
    match signed {
        Ok(claim) => json(
            StatusCode::OK,
            serde_json::to_string(&claim).unwrap_or_default(),
        ),
        Err(e) => {
            let status = match &e {
                AlertingError::Registry(RegistryError::NotFound(_)) => StatusCode::NOT_FOUND,
                AlertingError::Registry(RegistryError::FailedPrecondition(_)) => {
                    StatusCode::CONFLICT
                }
                AlertingError::Registry(
                    RegistryError::Invalid { .. } | RegistryError::InvalidValue { .. },
                ) => StatusCode::BAD_REQUEST,
                _ => {
                    tracing::error!(error = %e, "A claim record failed.");
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            };
            json_error(status, &e.to_string())
        }
    }
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

/// HTTP connections closed by the server, by reason (`header_timeout`: a request's headers,
/// or the next request on an idle keep-alive connection, did not come within the timeout).
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    pub closed: prometheus_client::metrics::family::Family<
        crate::metrics::Reason,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// `closed` reason: headers (or the next request) did not come in time.
pub const CLOSED_HEADER_TIMEOUT: &str = "header_timeout";
/// `closed` reason: the TLS handshake failed or did not finish in time.
pub const CLOSED_TLS_HANDSHAKE: &str = "tls_handshake";

impl HttpMetrics {
    pub fn new() -> Self {
        let m = Self::default();
        for reason in [CLOSED_HEADER_TIMEOUT, CLOSED_TLS_HANDSHAKE] {
            drop(m.closed.get_or_create(&crate::metrics::Reason { reason }));
        }
        m
    }

    /// Registers `greenplate_http_connections_closed_total{reason}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("http").register(
            "connections_closed",
            "HTTP connections the server closed, by reason",
            self.closed.clone(),
        );
    }
}

/// Serves `router` on `listener` until `stop`, then lets open requests finish (for at most
/// the caller's grace). Unlike `axum::serve`, which has no timer, every connection must send
/// a request's headers within `header_timeout`, and an idle keep-alive connection is closed
/// after it too (hyper starts the same timer while it waits for the next request), so
/// slow or silent clients cannot hold sockets for ever. With `tls`, each connection first
/// completes a TLS handshake within the same time. Each accepted socket gets TCP_NODELAY
/// (server-sent events) and the peer's address as `ConnectInfo`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, as axum does.
                    tracing::warn!(error = %e, "Could not accept an HTTP connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Could not set TCP_NODELAY on an HTTP socket.");
        }
        let conn = Conn {
            builder: builder.clone(),
            router: router.clone(),
            peer,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => conn.serve(tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => conn.serve(tls).await,
                        Ok(Err(e)) => {
                            conn.closed(CLOSED_TLS_HANDSHAKE);
                            tracing::debug!(error = %e, peer = %peer, "TLS handshake failed.");
                        }
                        Err(_) => conn.closed(CLOSED_TLS_HANDSHAKE),
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// One accepted connection's share of the server.
struct Conn {
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    peer: std::net::SocketAddr,
    metrics: HttpMetrics,
    stop: CancellationToken,
}

impl Conn {
    fn closed(&self, reason: &'static str) {
        self.metrics
            .closed
            .get_or_create(&crate::metrics::Reason { reason })
            .inc();
    }

    /// Serves requests on `io` until the client leaves, a timeout closes it, or the server
    /// stops (then the request under way finishes first).
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (router, peer) = (self.router.clone(), self.peer);
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let conn = self
            .builder
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                self.closed(CLOSED_HEADER_TIMEOUT);
            }
            tracing::debug!(error = %e, peer = %peer, "HTTP connection ended with an error.");
        }
    }
}
