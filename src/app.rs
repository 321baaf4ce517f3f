//! The composition root: what a serving process opens and starts, and the one order in which it
//! all stops. `main` runs the server through it, and so do the test harnesses, in-process and
//! as a process, so tests run what production runs.
//!
//! Start: connect -> claim the SQLite file (a second server stops here, untouched) -> migrate (or
//! only check the schema, `--migrations check`) -> metrics (when asked) -> bind -> serve, with
//! the background tasks beside the server, each owned by one [`TaskTracker`] and stopped by a
//! [`CancellationToken`].
//!
//! Stop, on [`Running::shutdown`] (`main` calls it on SIGTERM or Ctrl-C):
//! 1. the health probe stops and health turns NOT_SERVING for every name, so load balancers send
//!    no new calls; event streams end;
//! 2. the event tasks stop: head follower (and sequencer), retention, NATS relay (what they had
//!    not done yet, the next start does, from the outbox);
//! 3. the listener stops accepting; calls in flight finish, for at most the drain timeout;
//! 4. the store closes: its group-commit task and WAL checkpointer end with its pools; then the
//!    SQLite file is released;
//! 5. the metrics listener stops, last, so a scrape can watch all of the above.
//!
//! Process-wide parts outlive a [`Running`]: logging and the trace exporter (`telemetry`; `main`
//! flushes the spans after [`Running::join`]) and the metrics recorder (one per process).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::ServingStatus;

use crate::{
    health, outbox,
    server::{self, ServeError, ServerSettings},
    store::{
        self, ClaimError, ConnectError, MigrationError, PoolSettings, SchemaError, ServingClaim,
        Store,
    },
    telemetry,
};

/// Everything a serving process is told.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// `sqlite:PATH`, `sqlite::memory:` or `postgres://...`.
    pub database_url: String,
    pub pool: PoolSettings,
    /// Whether the start applies the migrations or only checks the schema is this binary's.
    pub migrations: Migrations,
    /// Where to serve gRPC (port 0 for any free one; [`Running::address`] says which).
    pub listen: SocketAddr,
    /// Where to serve `GET /metrics`; none for no metrics. The recorder is process-wide, so one
    /// running server per process may have metrics.
    pub metrics_listen: Option<SocketAddr>,
    pub server: ServerSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Migrate(#[from] MigrationError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What the start does about the schema (`--migrations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Migrations {
    /// Apply what the database does not have yet (the role must be allowed to change the
    /// schema).
    #[default]
    Auto,
    /// Apply nothing; refuse to start unless the database's schema is exactly this binary's.
    Check,
}

/// A server that has started: it answers on [`Running::address`] until shut down.
#[derive(Debug)]
pub struct Running {
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    stop: CancellationToken,
    served: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Where gRPC is served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Begins the shutdown (see the module comment); [`Running::join`] waits for its end.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// A token that begins the shutdown when cancelled, for whoever waits for the signal.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the server has stopped.
    pub async fn join(self) -> Result<(), AppError> {
        Ok(self.served.await??)
    }
}

/// Opens the database, claims and migrates it, starts the metrics listener when asked, and
/// serves on `settings.listen` until [`Running::shutdown`].
pub async fn start(settings: AppSettings) -> Result<Running, AppError> {
    let store = Store::connect(&settings.database_url, &settings.pool).await?;
    let claim = store.claim_for_serving().await?;
    match settings.migrations {
        Migrations::Auto => {
            for migration in store.migrate().await? {
                tracing::info!(
                    version = migration.version,
                    description = migration.description,
                    "migration applied"
                );
            }
        }
        Migrations::Check => store.check_schema().await?,
    }
    let tasks = TaskTracker::new();
    let metrics_stop = CancellationToken::new();
    let metrics_address = match settings.metrics_listen {
        Some(address) => {
            let server = &settings.server;
            let serving = serve_metrics(address, &store, server.handshake_timeout).await?;
            server.security.register_metrics();
            let address = serving.0;
            tasks.spawn(metrics_stop.clone().run_until_cancelled_owned(serving.1));
            Some(address)
        }
        None => None,
    };
    let listener = bind(settings.listen).await?;
    let address = listener.local_addr().map_err(|source| AppError::Listen {
        address: settings.listen,
        source,
    })?;
    log_listening(address, &settings);
    let stop = CancellationToken::new();
    let served = tokio::spawn(run(
        listener,
        store,
        claim,
        settings.server,
        Background {
            tasks,
            metrics_stop,
        },
        stop.clone(),
    ));
    Ok(Running {
        address,
        metrics_address,
        stop,
        served,
    })
}

/// How often expired request_ids are deleted: they live their retention and at most this much
/// longer.
const REQUEST_IDS_EXPIRE_EVERY: Duration = Duration::from_secs(300);

/// The tasks beside the server, and the token that stops the last of them.
struct Background {
    tasks: TaskTracker,
    metrics_stop: CancellationToken,
}

/// Serves until `stop` is cancelled, then stops everything in the order of the module comment.
async fn run(
    listener: TcpListener,
    store: Store,
    claim: ServingClaim,
    settings: ServerSettings,
    background: Background,
    stop: CancellationToken,
) -> Result<(), ServeError> {
    let Background {
        tasks,
        metrics_stop,
    } = background;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_health(&reporter, ServingStatus::Serving).await;
    let probe_stop = CancellationToken::new();
    let probe = tasks.spawn(
        probe_stop
            .clone()
            .run_until_cancelled_owned(health::follow_database(
                store.clone(),
                reporter.clone(),
                settings.health_interval,
            )),
    );

    let events_stop = CancellationToken::new();
    let (head, head_seen) = watch::channel(0);
    let poll = store.head_poll_interval();
    let follower = outbox::follow_head(store.clone(), head, poll);
    tasks.spawn(events_stop.clone().run_until_cancelled_owned(follower));
    let relayed = settings.nats.is_some();
    let retention = outbox::retain_events(store.clone(), settings.events_retention, relayed);
    tasks.spawn(events_stop.clone().run_until_cancelled_owned(retention));
    if let Some(nats) = settings.nats.clone() {
        let relay = crate::outbox::relay(
            store.clone(),
            nats,
            head_seen.clone(),
            settings.events_retention,
        );
        tasks.spawn(events_stop.clone().run_until_cancelled_owned(relay));
    }
    // request_ids (safe retries of creates) older than their retention.
    let expiry = crate::store::expire_request_ids(store.clone(), REQUEST_IDS_EXPIRE_EVERY);
    tasks.spawn(events_stop.clone().run_until_cancelled_owned(expiry));
    // Certificates, tokens and the policy, reloaded as their files change.
    let reloads = crate::security::reload::watch(settings.security.clone());
    tasks.spawn(events_stop.clone().run_until_cancelled_owned(reloads));
    tasks.close();

    let draining = Arc::new(Notify::new());
    let (end_streams, streams_ended) = watch::channel(false);
    // Cancelled again below, for a server that ended by failing, before any shutdown began:
    // otherwise its tasks would run on and the wait for them would never end.
    let (probe_stopped, events_stopped) = (probe_stop.clone(), events_stop.clone());
    let stop_accepting = {
        let draining = draining.clone();
        async move {
            stop.cancelled().await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            probe_stop.cancel();
            // Waited for, so the probe cannot report SERVING after the next line.
            let _ = probe.await;
            health::set_health(&reporter, ServingStatus::NotServing).await;
            end_streams.send_replace(true);
            events_stop.cancel();
            draining.notify_one();
        }
    };
    let drain_timeout = settings.drain_timeout;
    let served = tokio::select! {
        served = server::serve(
            listener,
            store.clone(),
            &settings,
            health_service,
            head_seen,
            streams_ended,
            stop_accepting,
        ) => served,
        () = async {
            draining.notified().await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!(timeout = ?drain_timeout, "drain timeout passed; abandoning calls still in flight");
            Ok(())
        }
    };
    probe_stopped.cancel();
    events_stopped.cancel();
    // Calls abandoned by the drain timeout may still hold connections; do not wait for them,
    // and keep the file claimed while they may.
    if tokio::time::timeout(Duration::from_secs(1), store.close())
        .await
        .is_ok()
    {
        claim.release();
    } else {
        tracing::warn!("database pool did not close in time");
    }
    metrics_stop.cancel();
    tasks.wait().await;
    tracing::info!("stopped");
    served
}

async fn bind(address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Listen { address, source })
}

/// Installs the metrics recorder and binds `/metrics` on `address`; the returned future serves
/// it, reading the pool gauges at each scrape.
async fn serve_metrics(
    address: SocketAddr,
    store: &Store,
    header_timeout: Duration,
) -> Result<(SocketAddr, impl Future<Output = ()> + use<>), AppError> {
    let handle =
        telemetry::metrics::install(env!("CARGO_PKG_VERSION"), env!("STUDENT_SERVICE_COMMIT"))?;
    crate::api::register_every_rpc();
    let listener = bind(address).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| AppError::Listen { address, source })?;
    tracing::info!(address = %bound, "metrics at GET /metrics");
    let store = store.clone();
    let refresh = move || store.record_pool_gauges();
    let serving = telemetry::metrics::serve(listener, handle, refresh, header_timeout);
    Ok((bound, serving))
}

fn log_listening(address: SocketAddr, settings: &AppSettings) {
    let security = &settings.server.security;
    let tokens = security.tokens();
    tracing::info!(
        %address,
        database = store::redact(&settings.database_url),
        transport = security.transport(),
        tokens,
        auth_reflection = security.auth_reflection,
        authz_policy = security.authorizes(),
        "listening"
    );
    if tokens.is_some() && security.tls.is_none() {
        tracing::warn!(
            "bearer tokens over plaintext can be read off the network: add --tls-cert and --tls-key"
        );
    }
}
