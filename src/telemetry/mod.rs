//! Logs, metrics and traces. Logs: `RUST_LOG` levels (default `info`), text or JSON lines, on stderr so that
//! commands such as `migrate` keep stdout for their own output. Text is coloured only on a
//! terminal, and never when `NO_COLOR` is set (no-color.org): escape codes in a file or a pipe
//! are noise to whoever reads it.

use std::{io::IsTerminal, time::Duration};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// What was started; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// Starts logging and, when the environment asks for it, trace export (see `traces`). Call
/// inside the Tokio runtime.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = log_filter();
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let mut telemetry = Telemetry::default();
    let mut trace_setup_failed = None;
    if traces::wanted() {
        match traces::provider() {
            Ok(provider) => {
                traces::install(&provider);
                telemetry.traces = Some(provider);
            }
            Err(err) => trace_setup_failed = Some(err),
        }
    }
    // A second init (tests start many servers in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .try_init();
    if let Some(err) = trace_setup_failed {
        tracing::warn!(error = %err, "cannot set up trace export; running without traces");
    }
    telemetry
}

impl Telemetry {
    /// Exports what is still buffered, waiting at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.traces else { return };
        // The SDK blocks while it flushes, and its exporter needs the runtime meanwhile.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
        if !matches!(tokio::time::timeout(timeout, flushed).await, Ok(Ok(Ok(())))) {
            tracing::warn!("trace spans still buffered at exit may be lost");
        }
    }
}

/// `RUST_LOG` (default `info`). The OpenTelemetry SDK logs an error for every batch it fails to
/// export; `traces` already warns about that once a minute, so the SDK's own lines stay off
/// unless `RUST_LOG` names them.
fn log_filter() -> EnvFilter {
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    if wanted.trim().is_empty() {
        filter = EnvFilter::new("info");
    }
    if !wanted.contains("opentelemetry") {
        for quiet in [
            "opentelemetry=off",
            "opentelemetry_sdk=off",
            "opentelemetry_otlp=off",
        ] {
            if let Ok(directive) = quiet.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    filter
}

fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

pub mod metrics;
mod process;
pub mod traces;
