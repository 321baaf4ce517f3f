//! The gRPC server: our two services, health and reflection on one port, until shutdown.

use std::{sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::JoinHandle,
};
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{
        CourseApi, EventApi, StudentApi,
        end_streams::EndOnShutdown,
        limits::CallLimitsLayer,
        observe::ObserveLayer,
        pb::{
            self, course_service_server::CourseServiceServer,
            enrollment_event_service_server::EnrollmentEventServiceServer,
            student_service_server::StudentServiceServer,
        },
    },
    listen::grpc_incoming,
    relay::NatsSettings,
    security::{RequireToken, Security},
    store::{Readiness, Store},
};

/// The names health reports on: the whole server and each of our services.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "school.v1.StudentService",
    "school.v1.CourseService",
    "school.v1.EnrollmentEventService",
];

/// The largest request message our services decode (tonic's default is 4 MiB). A valid request is
/// a few hundred bytes (200-character names, 254-byte emails); anything bigger is refused with
/// OUT_OF_RANGE after its 5-byte gRPC frame header, before the message itself is buffered.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// HTTP/2 PINGs on idle connections find peers that vanished without closing (a dead NAT entry, a
/// killed pod) well before TCP keepalive would, and free what their calls hold.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// How often the health probe pings the database.
    pub health_interval: Duration,
    /// How long in-flight calls may run after shutdown begins.
    pub drain_timeout: Duration,
    /// The longest any call may run; a client's shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Calls served at once across all connections; more get RESOURCE_EXHAUSTED at once.
    pub max_in_flight: usize,
    /// How long a new connection may take to finish TLS and send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams a client may open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a client queues the rest itself.
    pub max_concurrent_streams: u32,
    /// How often an idle WatchEnrollmentEvents stream gets a heartbeat.
    pub watch_heartbeat: Duration,
    /// How long enrollment events are kept.
    pub events_retention: Duration,
    /// Where to publish enrollment events; off by default.
    pub nats: Option<NatsSettings>,
    /// TLS and token authentication; off by default.
    pub security: Security,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            health_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            max_concurrent_streams: 128,
            handshake_timeout: Duration::from_secs(10),
            watch_heartbeat: Duration::from_secs(10),
            events_retention: Duration::from_secs(7 * 86_400),
            nats: None,
            security: Security::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, then: health turns NOT_SERVING, the server
/// stops accepting, in-flight calls finish (for at most the drain timeout), and the pool closes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;
    let probe = tokio::spawn(probe_database(
        store.clone(),
        reporter.clone(),
        settings.health_interval,
    ));

    let (head, head_seen) = watch::channel(0);
    let follower = tokio::spawn(crate::store::follow_head(
        store.clone(),
        head,
        head_poll_interval(&store),
    ));

    let retention = tokio::spawn(crate::store::retain_events(
        store.clone(),
        settings.events_retention,
        settings.nats.is_some(),
    ));
    let relay = settings.nats.clone().map(|nats| {
        let retention = settings.events_retention;
        let relay = crate::relay::relay(store.clone(), nats, head_seen.clone(), retention);
        tokio::spawn(relay)
    });

    let draining = Arc::new(Notify::new());
    let (end_streams, streams_signal) = watch::channel(false);
    let stop_accepting = {
        let draining = draining.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            stop_probe(probe).await;
            set_health(&reporter, ServingStatus::NotServing).await;
            end_streams.send_replace(true);
            stop_probe(follower).await;
            stop_probe(retention).await;
            if let Some(relay) = relay {
                stop_probe(relay).await;
            }
            draining.notify_one();
        }
    };

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and BadRequest, so reflection clients can decode error details.
            .register_file_descriptor_set(error_detail_descriptors())
    };
    // Our services require a token when there are tokens; reflection only if asked to (it lets
    // grpcurl discover the API); health never (load balancers and Kubernetes probe it bare).
    let security = settings.security;
    let authenticate = RequireToken::new(security.tokens.clone());
    let authenticate_reflection = if security.auth_reflection {
        authenticate.clone()
    } else {
        RequireToken::default()
    };
    let server = Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Outermost first: the log line and the metrics see the status the limits answer with.
        .layer(ObserveLayer)
        .layer(CallLimitsLayer::new(
            settings.request_timeout,
            settings.max_in_flight,
        ))
        .add_service(InterceptedService::new(
            StudentServiceServer::new(StudentApi::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            authenticate.clone(),
        ))
        .add_service(InterceptedService::new(
            CourseServiceServer::new(CourseApi::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            authenticate.clone(),
        ))
        .add_service(EndOnShutdown::new(
            InterceptedService::new(
                EnrollmentEventServiceServer::new(EventApi::new(
                    store.clone(),
                    head_seen,
                    settings.watch_heartbeat,
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
                authenticate,
            ),
            streams_signal.clone(),
        ))
        .add_service(EndOnShutdown::new(health_service, streams_signal))
        .add_service(InterceptedService::new(
            reflection().build_v1()?,
            authenticate_reflection.clone(),
        ))
        .add_service(InterceptedService::new(
            reflection().build_v1alpha()?,
            authenticate_reflection,
        ))
        .serve_with_incoming_shutdown(
            grpc_incoming(listener, security.tls, settings.handshake_timeout),
            stop_accepting,
        );

    tokio::select! {
        served = server => served?,
        () = async {
            draining.notified().await;
            tokio::time::sleep(settings.drain_timeout).await;
        } => tracing::warn!(timeout = ?settings.drain_timeout, "drain timeout passed; abandoning calls still in flight"),
    }
    // Calls abandoned by the drain timeout may still hold connections; do not wait for them.
    if tokio::time::timeout(Duration::from_secs(1), store.close())
        .await
        .is_err()
    {
        tracing::warn!("database pool did not close in time");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The descriptors of `google.rpc` (Status, ErrorInfo, BadRequest...) that tonic-types ships,
/// under the file names googleapis gives them (`google/rpc/status.proto`, not `status.proto`):
/// a client that also loads the official files, or merges descriptor sets from several
/// services, sees one file per symbol instead of two defining the same ones.
fn error_detail_descriptors() -> prost_types::FileDescriptorSet {
    let canonical = |name: &str| {
        if name.contains('/') {
            name.to_owned()
        } else {
            format!("google/rpc/{name}")
        }
    };
    // Decoding bytes compiled into tonic-types cannot fail unless that crate is broken; the
    // test `error_details_are_served_under_their_canonical_names` would say so.
    let mut set = <prost_types::FileDescriptorSet as prost::Message>::decode(
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    )
    .unwrap_or_default();
    for file in &mut set.file {
        file.name = Some(canonical(file.name()));
        for dependency in &mut file.dependency {
            *dependency = canonical(dependency);
        }
    }
    set
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    let serving = if status == ServingStatus::Serving {
        1.0
    } else {
        0.0
    };
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
        metrics::gauge!("student_service_health_status", "service" => name).set(serving);
    }
}

/// How often the server looks for new events to wake its watchers: within the 100 ms an event
/// may take to reach a watcher on SQLite; on PostgreSQL this also paces the sequencer.
fn head_poll_interval(store: &Store) -> Duration {
    match store {
        Store::Sqlite { .. } => Duration::from_millis(20),
        Store::Postgres(_) => Duration::from_millis(100),
    }
}

async fn stop_probe(probe: JoinHandle<()>) {
    probe.abort();
    let _ = probe.await;
}

/// Asks the database every `interval`, on the probe's own connection; health follows its
/// answer: NOT_SERVING while it is unreachable or refuses writes, SERVING again once it is back.
async fn probe_database(store: Store, reporter: HealthReporter, interval: Duration) {
    let mut probe = store.probe();
    let mut last = Readiness::Ready;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let readiness = probe.check(interval).await;
        if readiness == last {
            continue;
        }
        last = readiness;
        match readiness {
            Readiness::Ready => {
                tracing::info!("database reachable and writable again: health SERVING");
                set_health(&reporter, ServingStatus::Serving).await;
            }
            Readiness::ReadOnly => {
                tracing::warn!(
                    "database refuses writes (a standby, or read-only transactions): health NOT_SERVING"
                );
                set_health(&reporter, ServingStatus::NotServing).await;
            }
            Readiness::Unreachable => {
                tracing::warn!("database unreachable: health NOT_SERVING");
                set_health(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
}
