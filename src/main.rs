use std::{error::Error, process::ExitCode};

use clap::Parser;
use student_service::{
    app::{self, AppSettings},
    config::{Cli, Command, ServeArgs},
    outbox::{InvalidNatsSetting, NatsSettings},
    security::{Security, audit},
    server::ServerSettings,
    store::{self, Store},
    telemetry,
};

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
    match cli.command {
        None => serve(&cli).await,
        Some(command) => maintain(command, &cli).await,
    }
}

/// Runs the server until SIGTERM or Ctrl-C (see `app` for what starts and stops, in order).
async fn serve(cli: &Cli) -> Result<ExitCode, Box<dyn Error>> {
    // Certificates, tokens and the NATS settings first: a bad one fails the start before the
    // database is touched.
    let security = Security::load(&cli.serve.security)?;
    tokio::spawn(reload_on_hangup(security.clone()));
    if let Some(path) = &cli.serve.audit_log {
        audit::open_file(path).map_err(|source| AuditLogError {
            path: path.clone(),
            source,
        })?;
    }
    let nats = nats_settings(&cli.serve)?;
    raise_open_files_limit();
    let settings = AppSettings {
        database_url: cli.database_url.clone(),
        pool: cli.pool_settings(),
        migrations: cli.serve.migrations,
        listen: cli.serve.listen,
        metrics_listen: cli.serve.metrics_listen,
        server: ServerSettings {
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
        },
    };
    let running = app::start(settings).await?;
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    running.join().await?;
    Ok(ExitCode::SUCCESS)
}

/// `migrate` or `verify`, on a database that must exist.
async fn maintain(command: Command, cli: &Cli) -> Result<ExitCode, Box<dyn Error>> {
    let url = &cli.database_url;
    let store = Store::connect_existing(url, &cli.pool_settings()).await?;
    let database = store::redact(url);
    match command {
        Command::Migrate => {
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
        Command::Verify => {
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

#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log (--audit-log, AUDIT_LOG) {}", path.display())]
struct AuditLogError {
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

/// SIGHUP: the certificates, tokens and policy are loaded again, and the audit log is opened
/// again under its name (logrotate moved the old file away).
async fn reload_on_hangup(security: Security) {
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let mut hangup = match hangup {
        Ok(signal) => signal,
        Err(err) => {
            tracing::warn!("cannot listen for SIGHUP ({err}); reload only by changing the files");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the security files and reopening the audit log");
        security.reload_all();
        match audit::reopen() {
            Ok(()) => tracing::info!("SIGHUP: audit log reopened"),
            Err(err) => {
                tracing::error!(error = %err, "SIGHUP: cannot reopen the audit log; still writing to the old one")
            }
        }
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
        // Many errors repeat their source in their own text (sqlx's `error returned from
        // database: {0}`); say each thing once.
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        source = cause.source();
    }
    text
}
