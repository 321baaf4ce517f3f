//! Logs, metrics and traces. Logs: `RUST_LOG` levels (default `info`), text or JSON lines, on stderr so that
//! commands such as `migrate` keep stdout for their own output. Text is coloured only on a
//! terminal, and never when `NO_COLOR` is set (no-color.org): escape codes in a file or a pipe
//! are noise to whoever reads it.

use std::{io::IsTerminal, time::Duration};

use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// What was started; [`Telemetry::shutdown`] flushes the spans still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<traces::Exporter>,
}

/// Starts logging and, when the environment asks for it, trace export (see `traces`). Call
/// inside the Tokio runtime.
pub fn init(format: LogFormat) -> Telemetry {
    let logs = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    // A second init (tests start many servers in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(log_filter()))
        .try_init();
    match traces::start() {
        Ok(traces) => Telemetry { traces },
        Err(err) => {
            tracing::warn!(error = %err, "cannot set up trace export; running without traces");
            Telemetry::default()
        }
    }
}

impl Telemetry {
    /// Exports what is still buffered, waiting at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let Some(exporter) = self.traces else { return };
        if !exporter.shutdown(timeout).await {
            tracing::warn!("trace spans still buffered at exit may be lost");
        }
    }
}

/// `RUST_LOG` (default `info`).
fn log_filter() -> EnvFilter {
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    if wanted.trim().is_empty() {
        return EnvFilter::new("info");
    }
    EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

pub mod catalogue;
pub mod metrics;
mod process;
pub mod traces;
