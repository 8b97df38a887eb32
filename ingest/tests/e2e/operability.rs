//! What an operator expects of the service, through the real interfaces:
//! - `grpc.health.v1.Health` on the gRPC port: SERVING for the whole server and each service
//!   while the node runs; NOT_SERVING once it drains, after which open `Watch` streams end,
//!   so they do not hold the drain up;
//! - the binary configured from the environment alone (`GREENPLATE_SECTION__KEY`), logging
//!   JSON lines (`GREENPLATE_LOG_FORMAT=json`), and no ANSI colours when stdout is not a
//!   terminal;
//! - its spans exported to an OpenTelemetry collector over OTLP/gRPC when configured (a
//!   collector of our own in the test).

use crate::support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenplate_registry::testing::eventually;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::node::{free_port, http_status};
use support::{ADMIN_TOKEN, TestService};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served_per_service_and_not_serving_while_draining() {
    let svc = TestService::start().await;
    let mut health = HealthClient::new(svc.channel().await);
    for service in [
        "",
        "greenplate.v1.Admin",
        "greenplate.v1.Registry",
        "greenplate.v1.Patrol",
    ] {
        let status = health
            .check(request(service))
            .await
            .unwrap_or_else(|e| panic!("Check({service:?}): {e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(request("greenplate.v1.Nope"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = health.watch(request("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    // Drain: the watcher hears NOT_SERVING, then its stream ends.
    svc.service.shutdown_token().cancel();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status change within 10 s");
    match next {
        Ok(Some(m)) => assert_eq!(m.status(), ServingStatus::NotServing),
        other => panic!("expected NOT_SERVING, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch ends within 10 s");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no further status after NOT_SERVING: {end:?}"
    );
    // And the node drains in time (stop asserts it).
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_ready_then_503_while_draining_and_healthz_is_liveness_only() {
    let svc = TestService::start().await;
    let http = svc.service.http_addr;
    assert_eq!(http_status(http, "/readyz").await, Some(200));
    assert_eq!(http_status(http, "/healthz").await, Some(200));
    // Drain begins: not ready any more, while the HTTP port (which outlives the drain)
    // still answers, and still says it is alive.
    svc.service.shutdown_token().cancel();
    assert_eq!(http_status(http, "/readyz").await, Some(503));
    assert_eq!(http_status(http, "/healthz").await, Some(200));
    svc.stop().await;
}

/// A `greenplate serve` process configured only by the environment.
struct FromEnv {
    child: tokio::process::Child,
    /// What it logged up to "greenplate is serving.".
    lines: Vec<String>,
    grpc: String,
    _dir: tempfile::TempDir,
}

/// Starts `greenplate serve` configured only by the environment, with `extra` set too, and
/// waits until it logs that it is serving.
async fn start_from_env(extra: &[(&str, &str)]) -> FromEnv {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_greenplate"))
        .arg("serve")
        .env("GREENPLATE_DATA_DIR", dir.path())
        .env("GREENPLATE_MQTT__LISTEN", free_port().to_string())
        .env("GREENPLATE_GRPC__LISTEN", &grpc)
        .env("GREENPLATE_HTTP__LISTEN", free_port().to_string())
        .env("GREENPLATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("not serving within 30 s; logged: {seen:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("exited before serving; logged: {seen:#?}"));
        let done = line.contains("greenplate is serving.");
        seen.push(line);
        if done {
            break;
        }
    }
    FromEnv {
        child,
        lines: seen,
        grpc: format!("http://{grpc}"),
        _dir: dir,
    }
}

/// The lines a node configured by the environment logged until it served (then stops it).
async fn serve_from_env(extra: &[(&str, &str)]) -> Vec<String> {
    let mut node = start_from_env(extra).await;
    node.child.kill().await.unwrap();
    node.lines
}

/// A span as the collector got it: its name and its attributes (key, value as text).
type ReceivedSpan = (String, Vec<(String, String)>);

/// An OTLP/gRPC collector that keeps the spans it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
                        .collect();
                    spans.push((span.name, attributes));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_an_otlp_collector_when_configured() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut node = start_from_env(&[
        ("GREENPLATE_LOG__OTLP_ENDPOINT", &endpoint),
        // Export each batch after 100 ms instead of 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    // One gRPC call: its span ("grpc", by method) must reach the collector.
    let channel = greenplate_simulator::clients::channel(&node.grpc)
        .await
        .unwrap();
    HealthClient::new(channel).check(request("")).await.unwrap();
    let method = "/grpc.health.v1.Health/Check";
    eventually(
        "the gRPC call's span at the collector",
        Duration::from_secs(20),
        || {
            let spans = collector.spans.lock().unwrap().clone();
            async move {
                if spans.iter().any(|(name, attrs)| {
                    name == "grpc" && attrs.iter().any(|(_, v)| v.contains(method))
                }) {
                    Ok(())
                } else {
                    Err(spans.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())
                }
            }
        },
    )
    .await;
    node.child.kill().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_from_the_environment_it_logs_json_lines() {
    let lines = serve_from_env(&[("GREENPLATE_LOG_FORMAT", "json")]).await;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let serving: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["message"], "greenplate is serving.");
    // The addresses came from GREENPLATE_MQTT__LISTEN and friends, not the defaults.
    let mqtt = serving["fields"]["mqtt"].as_str().unwrap();
    assert!(mqtt.starts_with("127.0.0.1:"), "{mqtt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colour_codes_off_a_terminal() {
    let lines = serve_from_env(&[]).await;
    assert!(lines.last().unwrap().contains("INFO"), "{lines:#?}");
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "ANSI escapes in piped output: {lines:#?}"
    );
}
