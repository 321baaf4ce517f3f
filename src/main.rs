use std::{error::Error, net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use student_service::{
    config::{Cli, Command, ServeArgs},
    relay::{InvalidNatsSetting, NatsSettings},
    security::Security,
    server::{self, ServerSettings},
    store::{self, Store},
    telemetry,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    let drain_timeout = cli.serve.drain_timeout;
    let code = match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown(drain_timeout).await;
    code
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn Error>> {
    // Certificates, tokens and the NATS settings first: a bad one fails the start before the
    // database is touched.
    let (security, nats) = match cli.command {
        None => (
            Security::load(&cli.serve.security)?,
            nats_settings(&cli.serve)?,
        ),
        Some(_) => (Security::default(), None),
    };
    let (url, pool) = (&cli.database_url, &cli.pool_settings());
    let store = match cli.command {
        None => Store::connect(url, pool).await?,
        Some(_) => Store::connect_existing(url, pool).await?,
    };
    let database = store::redact(url);
    match cli.command {
        Some(Command::Migrate) => {
            let applied = store.migrate().await?;
            if applied.is_empty() {
                println!("{database}: up to date, nothing to apply");
            }
            for migration in applied {
                println!(
                    "{database}: applied {} {}",
                    migration.version, migration.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify) => {
            let violations = store.verify().await?;
            for violation in &violations {
                println!("{database}: VIOLATION {violation}");
            }
            if violations.is_empty() {
                println!("{database}: ok, all integrity checks passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{database}: {} violation(s)", violations.len());
                Ok(ExitCode::FAILURE)
            }
        }
        None => {
            raise_open_files_limit();
            // Before migrating: a second server on a SQLite file stops here, untouched.
            let _claim = store.claim_for_serving().await?;
            for migration in store.migrate().await? {
                tracing::info!(
                    version = migration.version,
                    description = migration.description,
                    "migration applied"
                );
            }
            if let Some(address) = cli.serve.metrics_listen {
                serve_metrics(address, store.clone(), cli.serve.handshake_timeout).await?;
            }
            let listener = TcpListener::bind(cli.serve.listen).await?;
            let args = &cli.serve.security;
            let transport = match (&args.tls_cert, &args.tls_client_ca) {
                (None, _) => "plaintext",
                (Some(_), None) => "TLS",
                (Some(_), Some(_)) => "mutual TLS",
            };
            let tokens = security.tokens.as_ref().map(|tokens| tokens.len());
            tracing::info!(
                address = %listener.local_addr()?,
                database,
                transport,
                tokens,
                auth_reflection = security.auth_reflection,
                "listening"
            );
            if tokens.is_some() && security.tls.is_none() {
                tracing::warn!(
                    "bearer tokens over plaintext can be read off the network: add --tls-cert and --tls-key"
                );
            }
            let settings = ServerSettings {
                health_interval: cli.serve.health_interval,
                drain_timeout: cli.serve.drain_timeout,
                request_timeout: cli.serve.request_timeout,
                max_in_flight: cli.serve.max_in_flight as usize,
                max_concurrent_streams: cli.serve.max_concurrent_streams,
                handshake_timeout: cli.serve.handshake_timeout,
                watch_heartbeat: cli.serve.watch_heartbeat,
                events_retention: cli.serve.events_retention,
                nats,
                security,
            };
            server::serve(listener, store, settings, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The relay's settings when `--events-nats-url` is given.
fn nats_settings(serve: &ServeArgs) -> Result<Option<NatsSettings>, InvalidNatsSetting> {
    let settings = |url: &String| {
        NatsSettings::new(
            url.clone(),
            serve.events_nats_stream.clone(),
            serve.events_nats_subject_prefix.clone(),
        )
    };
    serve.events_nats_url.as_ref().map(settings).transpose()
}

/// Installs the metrics recorder and serves `/metrics` on `address` for as long as the process
/// runs; the pool gauges are read at each scrape.
async fn serve_metrics(
    address: SocketAddr,
    store: Store,
    header_timeout: Duration,
) -> Result<(), Box<dyn Error>> {
    let handle =
        telemetry::metrics::install(env!("CARGO_PKG_VERSION"), env!("STUDENT_SERVICE_COMMIT"))?;
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics at GET /metrics");
    let refresh = move || store.record_pool_gauges();
    tokio::spawn(telemetry::metrics::serve(
        listener,
        handle,
        refresh,
        header_timeout,
    ));
    Ok(())
}

/// Each connection is a file descriptor: the soft limit (often 1,024) would cap the connections
/// the server can hold far below what the hard limit allows.
fn raise_open_files_limit() {
    match student_service::listen::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "open files limit raised to the hard limit");
        }
        Ok((limit, _)) => tracing::info!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM ({err}); only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
