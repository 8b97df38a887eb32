//! The HTTP/JSON API: the Registry and Patrol read calls for web and mobile integrators (the
//! city's governance centre, 110 dispatch), on the HTTP port beside the web pages.
//!
//! The protocol is Connect's unary JSON form of the same gRPC methods, so Connect's
//! generated clients (web, Kotlin, Swift) work with base URL `https://host/api`, and so does
//! plain `curl`:
//!
//! ```text
//! POST /api/greenplate.v1.Registry/GetBike
//! Authorization: Bearer <token>
//! Content-Type: application/json
//!
//! {"plate": "粤D12345", "reason": "case 2026-118"}
//! ```
//!
//! A call runs the gRPC service's own method after the gRPC authentication interceptor, so
//! roles, masking and the audit log are the same whichever way a call comes. Bodies are
//! the proto3 JSON mapping ([`greenplate_proto::v1`]'s serde impls); errors are `{"code",
//! "message"}` with the HTTP status Connect gives the code. `GET /openapi.json` is the
//! document, generated from the descriptors and [`METHODS`]
//! ([`greenplate_proto::openapi`]). Every call is counted in
//! `greenplate_api_requests_total{method, code}`, refusals before the service included.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::service::Interceptor;
use tonic::{Code, Status};

use greenplate_alerting::PatrolService;
use greenplate_proto::openapi::{self, Method};
use greenplate_proto::v1::patrol_server::Patrol;
use greenplate_proto::v1::registry_server::Registry as RegistryRpc;
use greenplate_registry::RegistryService;
use greenplate_registry::auth::AuthInterceptor;

/// Where the API's paths start.
pub const PREFIX: &str = "/api";

/// Largest request body, bytes: every request of the read calls is small.
pub const MAX_BODY: usize = 64 * 1024;

/// The calls served, each a gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    GetBike,
    ListOwnerBikes,
    GetTrack,
    GetIncident,
}

const REGISTRY: &str = "greenplate.v1.Registry";
const PATROL: &str = "greenplate.v1.Patrol";

/// The route table: the paths served, the OpenAPI document and the metrics' `method`
/// label (the service's short name and the method) all come from it.
const CALLS: &[(Method, Call, &str)] = &[
    (
        Method {
            service: REGISTRY,
            method: "GetBike",
        },
        Call::GetBike,
        "Registry/GetBike",
    ),
    (
        Method {
            service: REGISTRY,
            method: "ListOwnerBikes",
        },
        Call::ListOwnerBikes,
        "Registry/ListOwnerBikes",
    ),
    (
        Method {
            service: PATROL,
            method: "GetTrack",
        },
        Call::GetTrack,
        "Patrol/GetTrack",
    ),
    (
        Method {
            service: PATROL,
            method: "GetIncident",
        },
        Call::GetIncident,
        "Patrol/GetIncident",
    ),
];

/// The gRPC methods the API serves, in the document's order.
pub fn methods() -> Vec<Method> {
    CALLS.iter().map(|(m, _, _)| *m).collect()
}

/// `method` label: the service's short name and the method (`Registry/GetBike`), or
/// `unknown` for a path that names no call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    method: &'static str,
    /// `ok` or the Connect error code.
    code: &'static str,
}

/// The API's counters.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    requests: Family<Outcome, Counter>,
    seconds: Family<MethodLabel, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

const UNKNOWN: &str = "unknown";

fn label(call: Option<Call>) -> &'static str {
    CALLS
        .iter()
        .find(|(_, c, _)| Some(*c) == call)
        .map_or(UNKNOWN, |(_, _, label)| label)
}

impl ApiMetrics {
    pub fn new() -> Self {
        let m = Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
            }),
        };
        // The outcomes a dashboard looks for exist from the start, at 0.
        for (_, call, _) in CALLS {
            for code in [
                "ok",
                "invalid_argument",
                "unauthenticated",
                "permission_denied",
            ] {
                drop(m.requests.get_or_create(&Outcome {
                    method: label(Some(*call)),
                    code,
                }));
            }
        }
        m
    }

    /// Registers `greenplate_api_requests_total{method, code}` and
    /// `greenplate_api_request_seconds{method}`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("api");
        sub.register(
            "requests",
            "HTTP/JSON API calls, by method and outcome (ok or the error code)",
            self.requests.clone(),
        );
        sub.register(
            "request_seconds",
            "HTTP/JSON API calls' time in the server, by method",
            self.seconds.clone(),
        );
    }
}

#[derive(Clone)]
struct ApiState {
    auth: AuthInterceptor,
    registry: Arc<RegistryService>,
    patrol: Arc<PatrolService>,
    /// The OpenAPI document, rendered once.
    document: Arc<String>,
    metrics: ApiMetrics,
}

/// The document could not be generated (a route names a method the contract lacks).
pub use greenplate_proto::openapi::OpenApiError;

/// The OpenAPI document of the API, as served at `/openapi.json`.
pub fn document() -> Result<serde_json::Value, OpenApiError> {
    openapi::document(
        greenplate_proto::FILE_DESCRIPTOR_SET,
        PREFIX,
        &methods(),
        &openapi::Info {
            title: "greenplate HTTP/JSON API",
            version: env!("CARGO_PKG_VERSION"),
            description: "The Registry and Patrol read calls of greenplate's gRPC contract \
                (proto/greenplate/v1), as JSON over HTTP: the Connect protocol's unary form \
                (POST, Content-Type: application/json). Send the same bearer token as over \
                gRPC; roles, masking of personal data and the audit log are the same. \
                Messages use the proto3 JSON mapping: lowerCamelCase names (snake_case \
                accepted), 64-bit integers as decimal strings (numbers accepted), enums by \
                name. Unknown request fields are ignored; clients must ignore response \
                fields they do not know, since new ones may be added.",
        },
    )
}

/// The API's routes: `POST /api/{service}/{method}` and `GET /openapi.json`.
pub fn router(
    auth: AuthInterceptor,
    registry: RegistryService,
    patrol: PatrolService,
    metrics: ApiMetrics,
) -> Result<Router, OpenApiError> {
    let document = Arc::new(document()?.to_string());
    let state = ApiState {
        auth,
        registry: Arc::new(registry),
        patrol: Arc::new(patrol),
        document,
        metrics,
    };
    Ok(Router::new()
        .route("/openapi.json", get(document_handler))
        .route(
            &format!("{PREFIX}/{{service}}/{{method}}"),
            any(call_handler),
        )
        // Larger bodies come to the handler as a rejection, answered and counted there.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state))
}

async fn document_handler(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.document.as_str().to_owned(),
    )
        .into_response()
}

/// The HTTP status Connect gives a code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The Connect name of a code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
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

/// A Connect error body with `status` as HTTP status (usually the code's own).
fn error_response(http: StatusCode, status: &Status) -> Response {
    let body = serde_json::json!({
        "code": code_name(status.code()),
        "message": status.message(),
    });
    json_response(http, body.to_string().into_bytes())
}

/// A refusal and what to count it as.
struct Refusal {
    http: StatusCode,
    status: Status,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Self {
            http: http_status(status.code()),
            status,
        }
    }
}

async fn call_handler(
    State(state): State<ApiState>,
    Path((service, method)): Path<(String, String)>,
    http_method: HttpMethod,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let call = CALLS
        .iter()
        .find(|(m, _, _)| m.service == service && m.method == method)
        .map(|(_, c, _)| *c);
    let result = match call {
        None => Err(Refusal {
            http: StatusCode::NOT_FOUND,
            status: Status::unimplemented(format!("no call {service}/{method} on this API")),
        }),
        Some(call) => match checked_body(&http_method, &headers, body) {
            Err(refusal) => Err(refusal),
            Ok(body) => dispatch(&state, call, &headers, &body).await,
        },
    };
    let method_label = label(call);
    let (code, response) = match result {
        Ok(body) => ("ok", json_response(StatusCode::OK, body)),
        Err(Refusal { http, status }) => {
            if status.code() == Code::Internal || status.code() == Code::Unknown {
                tracing::warn!(method = method_label, error = %status.message(), "HTTP/JSON API call failed.");
            }
            (code_name(status.code()), error_response(http, &status))
        }
    };
    state
        .metrics
        .requests
        .get_or_create(&Outcome {
            method: method_label,
            code,
        })
        .inc();
    state
        .metrics
        .seconds
        .get_or_create(&MethodLabel {
            method: method_label,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The body of a well-formed call: POST, JSON, within [`MAX_BODY`].
fn checked_body(
    method: &HttpMethod,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refusal> {
    if method != HttpMethod::POST {
        return Err(Refusal {
            http: StatusCode::METHOD_NOT_ALLOWED,
            status: Status::invalid_argument("calls are POST requests"),
        });
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return Err(Refusal {
            http: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            status: Status::invalid_argument("Content-Type must be application/json"),
        });
    }
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal {
                http: StatusCode::PAYLOAD_TOO_LARGE,
                status: Status::resource_exhausted(format!(
                    "the body is larger than {MAX_BODY} bytes"
                )),
            }
        } else {
            Refusal::from(Status::invalid_argument(format!(
                "the body could not be read: {e}"
            )))
        }
    })
}

async fn dispatch(
    state: &ApiState,
    call: Call,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let (registry, patrol) = (&state.registry, &state.patrol);
    match call {
        Call::GetBike => unary(state, headers, body, |r| registry.get_bike(r)).await,
        Call::ListOwnerBikes => unary(state, headers, body, |r| registry.list_owner_bikes(r)).await,
        Call::GetTrack => unary(state, headers, body, |r| patrol.get_track(r)).await,
        Call::GetIncident => unary(state, headers, body, |r| patrol.get_incident(r)).await,
    }
}

/// Decodes `body`, authenticates as gRPC does, runs `method`, encodes its answer.
async fn unary<Req, Resp, F, Fut>(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
    method: F,
) -> Result<Vec<u8>, Refusal>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    // Authentication first, so a caller without a token learns nothing about the body.
    let mut bare = tonic::Request::new(());
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_bytes())
    {
        bare.metadata_mut()
            .insert(greenplate_proto::AUTHORIZATION, value);
    }
    let authed = state.auth.clone().call(bare)?;
    let message: Req = serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "the body is not the call's request message in JSON: {e}"
        ))
    })?;
    let (metadata, extensions, ()) = authed.into_parts();
    let response = method(tonic::Request::from_parts(metadata, extensions, message)).await?;
    serde_json::to_vec(response.get_ref())
        .map_err(|e| Refusal::from(Status::internal(format!("the answer did not encode: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_unary_method_of_the_contract() {
        let doc = document().unwrap();
        for m in methods() {
            assert!(
                doc["paths"].get(m.path(PREFIX)).is_some(),
                "{} missing",
                m.path(PREFIX)
            );
        }
        assert_eq!(doc["paths"].as_object().unwrap().len(), CALLS.len());
    }

    #[test]
    fn codes_map_as_connect_maps_them() {
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(code_name(Code::Cancelled), "canceled");
        // Every code the document lists is one the server can send.
        for name in openapi::ERROR_CODES {
            assert!(
                (1..=16).any(|c| code_name(Code::from_i32(c)) == *name),
                "{name}"
            );
        }
    }
}
