//! Transport security, caller authentication and authorization, each off unless configured: TLS
//! (and mutual TLS) from PEM files, bearer tokens from a tokens file, and an authorization policy
//! of allow rules. Everything is loaded and checked at start, so a bad file stops the server with
//! a message naming it.

pub mod audit;
mod auth;
mod current;
pub mod policy;
pub mod reload;
pub mod tls;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::HeaderMap;

pub use auth::{Caller, LineProblem, MIN_TOKEN_LENGTH, Tokens, TokensError};
pub use current::Current;
pub use policy::{Policy, PolicyError, PolicyProblem};
pub use reload::Watched;
pub use tls::{ClientIdentity, TlsError, TlsFile};

use crate::{
    config::SecurityArgs,
    error::{AuthFailure, Error},
};

/// What the server enforces. The default is what it always did: plaintext, no authentication.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS (mutual when it names a client CA); `None` serves plaintext.
    pub tls: Option<Arc<Current<rustls::ServerConfig>>>,
    /// The tokens our services require; `None` lets every call through.
    tokens: Option<Arc<Current<Tokens>>>,
    /// Who may call what; `None` lets every authenticated call through.
    policy: Option<Arc<Current<Policy>>>,
    /// Whether reflection requires a token too. Health never does.
    pub auth_reflection: bool,
    /// Whether TLS asks clients for a certificate.
    mutual: bool,
    /// The files all this came from, read again by reloads.
    files: Arc<SecurityArgs>,
    /// The serving certificate's not-after time (Unix seconds), 0 when unknown.
    cert_expiry: Arc<AtomicI64>,
    /// Each watched file's digest, taken before it was loaded: a change made after that is
    /// seen by the watcher, however late it starts.
    loaded: Arc<reload::Fingerprints>,
}

/// A serving certificate this close to its end is warned about at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A combination clap rules out on the command line, possible when settings are built in code.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// Which kind of service a request path is for, as far as access goes.
enum Gate {
    /// Health: always open (load balancers and Kubernetes probe it bare).
    Open,
    /// Reflection: a token only with `--auth-reflection`; never the policy's.
    Reflection,
    /// One of our methods (`package.Service/Method`), or a path the server does not serve.
    Service(Option<&'static str>),
}

impl Security {
    pub fn load(args: &SecurityArgs) -> Result<Security, SecurityError> {
        let loaded = reload::fingerprints(&watched_files(args, true));
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key, args.tls_client_ca.as_deref())?),
            (None, None) if args.tls_client_ca.is_none() => None,
            (None, None) => {
                return Err(SecurityError::Incomplete(
                    "--tls-client-ca needs --tls-cert and --tls-key",
                ));
            }
            _ => {
                return Err(SecurityError::Incomplete(
                    "--tls-cert and --tls-key go together",
                ));
            }
        };
        let tokens = match &args.auth_tokens_file {
            Some(path) => Some(Tokens::load(path)?),
            None if args.auth_reflection => {
                return Err(SecurityError::Incomplete(
                    "--auth-reflection needs --auth-tokens-file",
                ));
            }
            None => None,
        };
        let mutual = args.tls_client_ca.is_some();
        let policy = match &args.authz_policy {
            Some(_) if tokens.is_none() && !mutual => {
                return Err(SecurityError::Incomplete(
                    "--authz-policy needs callers to authenticate: add --auth-tokens-file or \
                     --tls-client-ca",
                ));
            }
            Some(path) => {
                let token_names = tokens.as_ref().map(Tokens::names).unwrap_or_default();
                let principals = policy::Principals {
                    token_names: &token_names,
                    certificates: mutual,
                };
                let (policy, identities) = Policy::load(path, principals)?;
                if !identities.is_empty() {
                    tracing::warn!(
                        policy = %path.display(),
                        principals = ?identities,
                        "the authorization policy names principals no token names: they are taken \
                         as client certificate identities"
                    );
                }
                Some(policy)
            }
            None => None,
        };
        let cert_expiry = Arc::new(AtomicI64::new(0));
        let tls = tls.map(|(config, not_after)| {
            note_expiry(&cert_expiry, not_after, args.tls_cert.as_deref());
            Arc::new(Current::new(config))
        });
        Ok(Security {
            tls,
            tokens: tokens.map(|tokens| Arc::new(Current::new(tokens))),
            policy: policy.map(|policy| Arc::new(Current::new(policy))),
            auth_reflection: args.auth_reflection,
            mutual,
            files: Arc::new(args.clone()),
            cert_expiry,
            loaded: Arc::new(loaded),
        })
    }

    /// The digests of the files as they were before they were loaded.
    pub(crate) fn loaded(&self) -> &reload::Fingerprints {
        &self.loaded
    }

    /// The files a reload reads, each with what it is.
    pub fn watched_files(&self) -> Vec<(PathBuf, Watched)> {
        watched_files(&self.files, self.tls.is_some())
    }

    /// Loads every file again (SIGHUP).
    pub fn reload_all(&self) {
        let all = self.watched_files().into_iter().map(|(_, what)| what);
        self.reload(&all.collect());
    }

    /// Loads again what `changed` names; what fails to load leaves the old value in force.
    pub fn reload(&self, changed: &BTreeSet<Watched>) {
        let tls_changed =
            changed.contains(&Watched::TlsCert) || changed.contains(&Watched::ClientCa);
        if let (true, Some(current)) = (tls_changed, &self.tls) {
            self.reload_tls(current, changed);
        }
        if let (true, Some(current)) = (changed.contains(&Watched::Tokens), &self.tokens) {
            let loaded = self
                .files
                .auth_tokens_file
                .as_deref()
                .map(Tokens::load)
                .transpose();
            match loaded {
                Ok(Some(tokens)) => {
                    tracing::info!(tokens = tokens.len(), "tokens file reloaded");
                    current.replace(tokens);
                    reload::count(Watched::Tokens, true);
                }
                Ok(None) => {}
                Err(err) => reload_failed(Watched::Tokens, &err),
            }
        }
        if let (true, Some(current)) = (changed.contains(&Watched::Policy), &self.policy) {
            match self.load_policy() {
                Ok(Some(policy)) => {
                    tracing::info!("authorization policy reloaded");
                    current.replace(policy);
                    reload::count(Watched::Policy, true);
                }
                Ok(None) => {}
                Err(err) => reload_failed(Watched::Policy, &err),
            }
        }
    }

    fn reload_tls(&self, current: &Current<rustls::ServerConfig>, changed: &BTreeSet<Watched>) {
        let files = &self.files;
        let (Some(cert), Some(key)) = (&files.tls_cert, &files.tls_key) else {
            return;
        };
        match tls::load(cert, key, files.tls_client_ca.as_deref()) {
            Ok((config, not_after)) => {
                tracing::info!(
                    "TLS certificate, key and client CA reloaded: new connections use them"
                );
                note_expiry(&self.cert_expiry, not_after, Some(cert));
                self.record_expiry();
                current.replace(config);
                for what in changed
                    .iter()
                    .filter(|w| matches!(w, Watched::TlsCert | Watched::ClientCa))
                {
                    reload::count(*what, true);
                }
            }
            Err(err) => {
                let what = if err.is_client_ca() {
                    Watched::ClientCa
                } else {
                    Watched::TlsCert
                };
                reload_failed(what, &err);
            }
        }
    }

    /// The policy file read again, checked against the tokens now in force.
    fn load_policy(&self) -> Result<Option<Policy>, PolicyError> {
        let Some(path) = &self.files.authz_policy else {
            return Ok(None);
        };
        let tokens = self.tokens.as_ref().map(|tokens| tokens.get());
        let token_names = tokens.as_deref().map(Tokens::names).unwrap_or_default();
        let principals = policy::Principals {
            token_names: &token_names,
            certificates: self.mutual,
        };
        Policy::load(path, principals).map(|(policy, _)| Some(policy))
    }

    /// `student_service_tls_cert_expiry_seconds`, when there is a serving certificate.
    fn record_expiry(&self) {
        let not_after = self.cert_expiry.load(Ordering::Relaxed);
        if self.tls.is_some() && not_after != 0 {
            metrics::gauge!(crate::telemetry::catalogue::TLS_CERT_EXPIRY.name)
                .set(not_after as f64);
        }
    }

    /// How connections are secured, for the log: `plaintext`, `TLS` or `mutual TLS`.
    pub fn transport(&self) -> &'static str {
        match (&self.tls, self.mutual) {
            (None, _) => "plaintext",
            (Some(_), false) => "TLS",
            (Some(_), true) => "mutual TLS",
        }
    }

    /// How many tokens are accepted now, when tokens are required.
    pub fn tokens(&self) -> Option<usize> {
        self.tokens.as_ref().map(|tokens| tokens.get().len())
    }

    /// Whether an authorization policy is in force.
    pub fn authorizes(&self) -> bool {
        self.policy.is_some()
    }

    /// Puts the denial counter of every principal the policy names, and of `other`, in the
    /// first scrape, at 0 (`other` alone without a policy, where it stays 0), and the reload
    /// counters; sets the certificate expiry gauge.
    pub fn register_metrics(&self) {
        let policy = self.policy.as_ref().map(|policy| policy.get());
        let named = policy.iter().flat_map(|policy| policy.principals());
        for principal in named.chain(["other"]) {
            denied_counter(principal).increment(0);
        }
        reload::register_metrics();
        self.record_expiry();
    }

    /// Who makes a call to `path` with `headers` over a connection whose client certificate
    /// names `identity`, if that needs to be known, or why the call is refused: UNAUTHENTICATED
    /// for missing or invalid credentials, PERMISSION_DENIED for what the policy does not allow.
    pub fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
        identity: Option<&ClientIdentity>,
    ) -> Result<Option<Caller>, Error> {
        // Nothing to check (the default): no lookup of the path on every call.
        if self.tokens.is_none() && self.policy.is_none() {
            return Ok(None);
        }
        let method = match gate(path) {
            Gate::Open => return Ok(None),
            Gate::Reflection if !self.auth_reflection => return Ok(None),
            Gate::Reflection => None,
            Gate::Service(method) => method,
        };
        let policy = match (method, &self.policy) {
            (Some(method), Some(policy)) => Some((method, policy.get())),
            _ => None,
        };
        let caller = match (&self.tokens, policy.as_ref(), identity) {
            // A token, when one comes, says who calls, whatever certificate comes with it.
            (Some(tokens), _, _) if headers.contains_key(http::header::AUTHORIZATION) => {
                tokens.get().authenticate(headers)
            }
            (_, Some((_, policy)), Some(identity)) => Ok(certificate_caller(policy, identity)),
            (Some(_), _, _) => Err(AuthFailure::Missing),
            (None, Some(_), None) => Err(AuthFailure::Missing),
            (None, None, _) => return Ok(None),
        }
        .map_err(Error::Unauthenticated)?;
        if let Some((method, policy)) = policy
            && !policy.allows(caller.name(), method)
        {
            let label = if policy.names(caller.name()) {
                caller.name()
            } else {
                "other"
            };
            denied_counter(label).increment(1);
            return Err(Error::PermissionDenied {
                principal: caller.shared_name().clone(),
                method,
            });
        }
        Ok(Some(caller))
    }
}

/// The files of `args` a reload reads (the TLS ones only when TLS is on).
fn watched_files(args: &SecurityArgs, tls: bool) -> Vec<(PathBuf, Watched)> {
    let mut watched = Vec::new();
    let mut add = |path: &Option<PathBuf>, what| {
        if let Some(path) = path {
            watched.push((path.clone(), what));
        }
    };
    if tls {
        add(&args.tls_cert, Watched::TlsCert);
        add(&args.tls_key, Watched::TlsCert);
        add(&args.tls_client_ca, Watched::ClientCa);
    }
    add(&args.auth_tokens_file, Watched::Tokens);
    add(&args.authz_policy, Watched::Policy);
    watched
}

/// Keeps the serving certificate's not-after time, warning when it is near.
fn note_expiry(expiry: &AtomicI64, not_after: Option<i64>, path: Option<&std::path::Path>) {
    let Some(not_after) = not_after else {
        return;
    };
    expiry.store(not_after, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    let left = not_after - now;
    if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            certificate = %path.map(|p| p.display().to_string()).unwrap_or_default(),
            days_left = left / 86_400,
            "the TLS certificate expires in less than 7 days: renew it (a new file is picked up without a restart)"
        );
    }
}

/// The ERROR line and the count of a reload that failed; the old value stays in force.
fn reload_failed(what: Watched, err: &dyn std::error::Error) {
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    tracing::error!(
        file = what.label(),
        reason,
        "reload refused; the previous one stays in force"
    );
    reload::count(what, false);
}

/// The name a certificate goes by: the first of its names the policy names, else its first.
fn certificate_caller(policy: &Policy, identity: &ClientIdentity) -> Caller {
    let names = identity.names();
    let name = names
        .iter()
        .find(|name| policy.names(name))
        .or(names.first())
        .cloned()
        .unwrap_or_else(|| "".into());
    Caller::new(name)
}

/// Denials of `principal`, one of the policy's or `other`: the label set stays bounded.
fn denied_counter(principal: &str) -> metrics::Counter {
    let name = crate::telemetry::catalogue::AUTHZ_DENIED.name;
    metrics::counter!(name, "principal" => principal.to_owned())
}

fn gate(path: &str) -> Gate {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.starts_with("grpc.health.") {
        Gate::Open
    } else if path.starts_with("grpc.reflection.") {
        Gate::Reflection
    } else {
        let methods = policy::service_methods();
        Gate::Service(methods.iter().copied().find(|method| *method == path))
    }
}
