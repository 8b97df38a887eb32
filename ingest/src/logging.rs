//! Logging for the `greenplate` binary: an env filter (`RUST_LOG`), human-readable text
//! (ANSI colours only when stdout is a terminal, so none reach log files) or one JSON object
//! per line for a log pipeline (`--log-format json`, `GREENPLATE_LOG_FORMAT`, `log.format`).
//! Optionally the spans (a gRPC call, an HTTP request, ...) also go to an OpenTelemetry
//! collector over OTLP/gRPC (`log.otlp_endpoint`, `--otlp-endpoint`; off by default), batched
//! on a thread of their own so the hot path never waits for the collector.
//!
//! rumqttd 0.20 logs every ordinary client disconnect at ERROR (`router-drop`,
//! `disconnected`, `connection-stop`, and the router's "already gone" races), which would page
//! an operator for nothing: [`Downgrade`] takes those off ERROR and logs them again at DEBUG
//! under the target `greenplate::broker::rumqttd`. Every other rumqttd event keeps its level.

use std::any::TypeId;
use std::fmt::Write as _;
use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Metadata, Subscriber, span};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("a global tracing subscriber is already installed")]
    AlreadySet(#[from] tracing::dispatcher::SetGlobalDefaultError),
    #[error("OTLP exporter for {endpoint}: {message}")]
    Otlp { endpoint: String, message: String },
}

/// What [`init`] set up that must be flushed on exit: the OTLP span exporter, if any.
#[must_use = "call shutdown() on exit so the last spans reach the collector"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (at most a few seconds).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "Could not flush the last spans to the OTLP collector.");
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is not set. With
/// `otlp_endpoint` (`http://HOST:4317`), spans are exported there too; call this inside a
/// Tokio runtime then (the exporter's gRPC client needs one).
pub fn init(
    format: LogFormat,
    default_filter: &str,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, LoggingError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => {
            Box::new(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
        }
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false),
        ),
    };
    let provider = otlp_endpoint.map(otlp_provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("greenplate"))
    });
    let subscriber = Registry::default()
        .with(Downgrade::new(fmt))
        .with(otel)
        .with(filter);
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(Telemetry { provider })
}

/// A tracer provider exporting to `endpoint` over OTLP/gRPC, in batches.
fn otlp_provider(
    endpoint: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, LoggingError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| LoggingError::Otlp {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?;
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("greenplate")
                .build(),
        )
        .build())
}

/// Wraps a layer so that rumqttd's ordinary disconnects reach it at DEBUG, not ERROR.
pub struct Downgrade<L> {
    inner: L,
}

impl<L> Downgrade<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

/// The messages rumqttd 0.20 logs at ERROR for a client that simply went away.
const ORDINARY: [&str; 5] = [
    "router-drop",
    "disconnected",
    "connection-stop",
    "is already gone",
    "Connection is already disconnected",
];

/// The message and the other fields of an event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let sep = if self.rest.is_empty() { "" } else { " " };
            let _ = write!(self.rest, "{sep}{}={value:?}", field.name());
        }
    }
}

/// `Some(fields)` if this is one of rumqttd's ordinary-disconnect ERRORs.
fn ordinary_disconnect(event: &Event<'_>) -> Option<Fields> {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || !meta.target().starts_with("rumqttd") {
        return None;
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    ORDINARY
        .iter()
        .any(|m| fields.message.contains(m))
        .then_some(fields)
}

impl<S, L> Layer<S> for Downgrade<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber)
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx)
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx)
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        match ordinary_disconnect(event) {
            // Logged again at DEBUG; the global filter decides whether that is shown.
            Some(f) => tracing::debug!(
                target: "greenplate::broker::rumqttd",
                rumqttd = %f.message,
                detail = %f.rest,
                "MQTT connection closed."
            ),
            None => self.inner.on_event(event, ctx),
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx)
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx)
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx)
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: forwarded to the wrapped layer, which upholds the contract itself.
            unsafe { self.inner.downcast_raw(id) }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records (level, target, message) of every event it is given.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(Level, String, String)>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut f = Fields::default();
            event.record(&mut f);
            self.0.lock().unwrap().push((
                *event.metadata().level(),
                event.metadata().target().to_owned(),
                f.message,
            ));
        }
    }

    #[test]
    fn ordinary_rumqttd_disconnects_are_not_errors_and_other_errors_stay() {
        let capture = Capture::default();
        let subscriber = Registry::default().with(Downgrade::new(capture.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::server::broker", error = "Disconnect", "router-drop");
            tracing::error!(target: "rumqttd::server::broker", error = "reset", "disconnected");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id 7 is already gone");
            tracing::error!(target: "rumqttd::router::routing", reason = "x", "Router done!");
            tracing::error!(target: "greenplate_ingest::broker", "disconnected");
            tracing::warn!(target: "rumqttd::server::broker", "router-drop");
        });
        let seen = capture.0.lock().unwrap().clone();
        let errors: Vec<_> = seen
            .iter()
            .filter(|(l, _, _)| *l == Level::ERROR)
            .map(|(_, t, m)| (t.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                ("rumqttd::router::routing", "Router done!"),
                ("greenplate_ingest::broker", "disconnected"),
            ],
            "only the ordinary rumqttd disconnects left ERROR: {seen:?}"
        );
        // A WARN of the same text is not touched.
        assert!(seen.contains(&(
            Level::WARN,
            "rumqttd::server::broker".into(),
            "router-drop".into()
        )));
    }
}
