//! The gRPC server: our three services, health and reflection on one port, until shutdown.

use std::time::Duration;

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::{
    api::{
        CourseApi, EventApi, StudentApi,
        access::AccessLayer,
        consistency::ConsistencyLayer,
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
    outbox::NatsSettings,
    security::Security,
    store::Store,
};

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
    /// What the command line gives without flags (`config::defaults`).
    fn default() -> Self {
        use crate::config::{default_duration, defaults};
        ServerSettings {
            health_interval: default_duration(defaults::HEALTH_INTERVAL),
            drain_timeout: default_duration(defaults::DRAIN_TIMEOUT),
            request_timeout: default_duration(defaults::REQUEST_TIMEOUT),
            max_in_flight: defaults::MAX_IN_FLIGHT as usize,
            max_concurrent_streams: defaults::MAX_CONCURRENT_STREAMS,
            handshake_timeout: default_duration(defaults::HANDSHAKE_TIMEOUT),
            watch_heartbeat: default_duration(defaults::WATCH_HEARTBEAT),
            events_retention: default_duration(defaults::EVENTS_RETENTION),
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

/// Serves our services, health and reflection on `listener` until `stop_accepting` completes, then
/// until the calls in flight have finished. Health is reported through `health`'s reporter and
/// streams end when `end_streams` turns true; what runs beside the server, and the order in which
/// it all stops, is the composition root's (`app`).
pub(crate) async fn serve<H: Health>(
    listener: TcpListener,
    store: Store,
    settings: &ServerSettings,
    health: HealthServer<H>,
    head: watch::Receiver<i64>,
    end_streams: watch::Receiver<bool>,
    stop_accepting: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and BadRequest, so reflection clients can decode error details.
            .register_file_descriptor_set(error_detail_descriptors())
    };
    let security = &settings.security;
    Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Outermost first: the log line and the metrics see the status the limits answer with.
        .layer(ObserveLayer)
        .layer(CallLimitsLayer::new(
            settings.request_timeout,
            settings.max_in_flight,
        ))
        // Only with a replica: without one, calls do not pass through it at all.
        .layer(tower::util::option_layer(
            store
                .has_replica()
                .then(|| ConsistencyLayer::new(store.clone())),
        ))
        // Tokens, certificates and the policy: health always open, reflection only with
        // --auth-reflection (it lets grpcurl discover the API).
        .layer(AccessLayer::new(security.clone()))
        .add_service(
            StudentServiceServer::new(StudentApi::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            CourseServiceServer::new(CourseApi::new(store.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(EndOnShutdown::new(
            EnrollmentEventServiceServer::new(EventApi::new(store, head, settings.watch_heartbeat))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            end_streams.clone(),
        ))
        .add_service(EndOnShutdown::new(health, end_streams))
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .serve_with_incoming_shutdown(
            grpc_incoming(listener, security.tls.clone(), settings.handshake_timeout),
            stop_accepting,
        )
        .await?;
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
