//! Prometheus metrics: the recorder every `metrics::counter!` / `histogram!` of the service
//! writes to, and the plain-HTTP listener that serves it as text exposition format 0.0.4 at
//! `GET /metrics` (anything else on that port is 404), off the gRPC port so that a scraper needs
//! neither HTTP/2 nor TLS nor a token.
//!
//! Without `--metrics-listen` no recorder is installed and every recording is a no-op.
//! Histograms have explicit buckets (the exporter would otherwise render summaries, which
//! cannot be aggregated across replicas). The exporter keeps histogram samples until they are
//! rendered, so a background task folds them into the buckets every few seconds even when
//! nobody scrapes.

use std::{
    cell::RefCell,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics::{
    Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use super::{
    catalogue::{self, Kind},
    process,
};

/// Seconds: from half a millisecond (a cached read) to ten (the longest a client should wait).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Enrollments per SQLite group commit: up to its limit of 128.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Set once the recorder is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether metrics are recorded (`--metrics-listen`), for work worth skipping when they are not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The histogram `name{label="value"}`, found in the registry once per thread: a labelled
/// `histogram!` builds and hashes its key and searches the registry at every call. For labels
/// whose values are a fixed set of `&'static str` (store operations, pool names), compared by
/// address; a no-op before the recorder is installed.
pub(crate) fn labelled_histogram(
    name: &'static str,
    label: &'static str,
    value: &'static str,
) -> Histogram {
    thread_local! {
        static FOUND: RefCell<Vec<(*const u8, *const u8, Histogram)>> = const { RefCell::new(Vec::new()) };
    }
    if !enabled() {
        return Histogram::noop();
    }
    FOUND.with_borrow_mut(|found| {
        let known = found
            .iter()
            .find(|(n, v, _)| std::ptr::eq(*n, name.as_ptr()) && std::ptr::eq(*v, value.as_ptr()));
        if let Some((_, _, histogram)) = known {
            return histogram.clone();
        }
        let histogram = histogram!(name, label => value);
        found.push((name.as_ptr(), value.as_ptr(), histogram.clone()));
        histogram
    })
}

/// Installs the process-wide recorder and describes every metric; call once, before serving.
/// `version` and `commit` (empty when unknown) label `student_service_build_info`.
pub fn install(
    version: &'static str,
    commit: &'static str,
) -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(catalogue::SQLITE_GROUP_COMMIT_BATCH_SIZE.name.into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    ENABLED.store(true, Ordering::Relaxed);
    describe();
    register_at_zero();
    gauge!(catalogue::BUILD_INFO.name, "version" => version, "commit" => commit).set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// HELP text (and unit) for every metric of the catalogue.
fn describe() {
    for metric in catalogue::ALL {
        let (name, help) = (metric.name, metric.help);
        match (metric.kind, metric.unit) {
            (Kind::Counter, _) => describe_counter!(name, help),
            (Kind::Gauge, _) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// Puts every counter in the registry at 0, with the label values known in advance, so that
/// the first scrape has it: Prometheus' `rate()` and `increase()` start from a series' first
/// sample, and a counter that first appeared at 1 would lose that increment. The gauges are set
/// by whoever knows their value; the histograms of the store follow its operations; the gRPC
/// series are the API's to register (`api::register_every_rpc`, called by `app`).
fn register_at_zero() {
    for metric in [
        &catalogue::ENROLLMENTS_CREATED,
        &catalogue::ENROLLMENTS_REFUSED_FULL,
        &catalogue::TRACE_SPANS_DROPPED,
    ] {
        counter!(metric.name).increment(0);
    }
    // 0 for good on PostgreSQL, which has no direct readers.
    for reason in catalogue::SQLITE_DIRECT_FALLBACK_REASONS {
        counter!(catalogue::SQLITE_DIRECT_FALLBACKS.name, "reason" => reason).increment(0);
    }
    // 0 for good on SQLite, whose pools are sqlx's.
    for reason in catalogue::DB_POOL_CLOSE_REASONS {
        counter!(catalogue::DB_POOL_CONNECTIONS_CLOSED.name, "reason" => reason).increment(0);
    }
    // 0 unless the relay runs and has events waiting (it sets it each round).
    gauge!(catalogue::EVENTS_RELAY_LAG.name).set(0.0);
}

/// Serves `GET /metrics` on `listener` until the task is dropped. `refresh` runs before each
/// render, to set the gauges that are read rather than counted (the database pools).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    refresh: impl Fn() + Send + Sync + 'static,
    header_timeout: Duration,
) {
    let scrape = Arc::new(move || {
        refresh();
        let mut text = handle.render();
        text.push_str(&process::render());
        text
    });
    let mut acceptor = crate::listen::Acceptor::new(listener, "metrics");
    loop {
        let (stream, peer) = acceptor.next().await;
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(answer(&request, &*scrape)) }
            });
            // A request whose head does not arrive in time is closed (hyper applies the timeout
            // only with a timer), and so is an idle keep-alive connection.
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, %peer, "metrics connection ended with an error");
            }
        });
    }
}

fn answer<B>(request: &Request<B>, scrape: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let is_scrape = request.uri().path() == "/metrics"
        && matches!(*request.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = if is_scrape {
        let text = scrape();
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            text,
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try GET /metrics\n".into(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}
