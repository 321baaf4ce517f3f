//! Rotation without a restart: the TLS certificate and key, the client CA bundle, the tokens
//! file and the policy file are watched and loaded again when their contents change.
//!
//! Changes are noticed two ways: inotify events on the files' directories (through `notify`;
//! directories rather than files, because Kubernetes updates a Secret volume by swapping a
//! `..data` symlink, which no watch on the old file would see) and, for filesystems that deliver
//! no events, a comparison of every file's SHA-256 every [`CHECK_EVERY`]. SIGHUP reloads all of
//! them at once (`Security::reload_all`).
//!
//! A reload builds the new value completely, checked as at start, before it replaces the old
//! one: a file that does not parse, a key that is not its certificate's, an empty tokens file or
//! an invalid policy leaves the old one in force, with an ERROR line naming the file and the
//! reason. Each attempt is counted in `student_service_config_reloads_total{file, result}`.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::Security;
use crate::telemetry::catalogue;

/// How often file contents are compared when no event came.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Events are gathered this long before the files are compared: writing a certificate and its
/// key, or a Secret's whole volume, is several events, and one reload should see them all.
const SETTLE: Duration = Duration::from_millis(200);

/// What can be reloaded, each a `file` label of the reload counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watched {
    /// The serving certificate or its key.
    TlsCert,
    ClientCa,
    Tokens,
    Policy,
}

impl Watched {
    pub fn label(self) -> &'static str {
        match self {
            Watched::TlsCert => "tls_cert",
            Watched::ClientCa => "client_ca",
            Watched::Tokens => "tokens",
            Watched::Policy => "policy",
        }
    }
}

/// Every reload counter at 0, so that the first scrape has them all.
pub(super) fn register_metrics() {
    for file in [
        Watched::TlsCert,
        Watched::ClientCa,
        Watched::Tokens,
        Watched::Policy,
    ] {
        for result in ["ok", "error"] {
            metrics::counter!(catalogue::CONFIG_RELOADS.name, "file" => file.label(), "result" => result)
                .increment(0);
        }
    }
}

/// Counts one reload attempt.
pub(super) fn count(file: Watched, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(catalogue::CONFIG_RELOADS.name, "file" => file.label(), "result" => result)
        .increment(1);
}

/// Watches the files of `security` and reloads what changes, until dropped. Returns at once
/// when nothing is reloadable.
pub async fn watch(security: Security) {
    let files = security.watched_files();
    if files.is_empty() {
        return;
    }
    let (wake, mut woken) = mpsc::channel::<()>(1);
    // Kept alive for as long as this runs; without events (the watcher could not start), the
    // periodic check still works.
    let _watcher = directory_watcher(&files, wake);
    // As loaded, not as found now: a change between the load and this task's start counts.
    let mut seen = security.loaded().clone();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = check.tick() => {}
            Some(()) = woken.recv() => tokio::time::sleep(SETTLE).await,
        }
        while woken.try_recv().is_ok() {}
        let now = fingerprints(&files);
        let changed: BTreeSet<Watched> = files
            .iter()
            .filter(|(path, _)| now.get(path) != seen.get(path))
            .map(|(_, watched)| *watched)
            .collect();
        seen = now;
        if !changed.is_empty() {
            security.reload(&changed);
        }
    }
}

/// A watcher of the directories that hold `files`, waking `wake` on any event there.
fn directory_watcher(
    files: &[(PathBuf, Watched)],
    wake: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = wake.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the security files; checking them every {CHECK_EVERY:?} instead");
            return None;
        }
    };
    let directories: BTreeSet<&Path> = files
        .iter()
        .filter_map(|(path, _)| path.parent())
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .collect();
    for directory in directories {
        if let Err(err) = watcher.watch(directory, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %directory.display(), error = %err, "cannot watch for changes; checking every {CHECK_EVERY:?} instead");
        }
    }
    Some(watcher)
}

/// Each watched file's SHA-256 (`None` for one that cannot be read).
pub type Fingerprints = HashMap<PathBuf, Option<[u8; 32]>>;

/// Each file's SHA-256 now (`None` for one that cannot be read: a change too).
pub(super) fn fingerprints(files: &[(PathBuf, Watched)]) -> Fingerprints {
    files
        .iter()
        .map(|(path, _)| {
            let digest = std::fs::read(path)
                .ok()
                .map(|bytes| Sha256::digest(bytes).into());
            (path.clone(), digest)
        })
        .collect()
}
