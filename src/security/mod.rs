//! Transport security, caller authentication and authorization, each off unless configured: TLS
//! (and mutual TLS) from PEM files, bearer tokens from a tokens file, and an authorization policy
//! of allow rules. Everything is loaded and checked at start, so a bad file stops the server with
//! a message naming it.

pub mod audit;
mod auth;
mod current;
pub mod policy;
pub mod tls;

use std::sync::Arc;

use http::HeaderMap;

pub use auth::{Caller, LineProblem, MIN_TOKEN_LENGTH, Tokens, TokensError};
pub use current::Current;
pub use policy::{Policy, PolicyError, PolicyProblem};
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
}

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
        let shared = |value| Arc::new(Current::new(value));
        Ok(Security {
            tls: tls.map(|config| Arc::new(Current::new(Arc::unwrap_or_clone(config)))),
            tokens: tokens.map(shared),
            policy: policy.map(|policy| Arc::new(Current::new(policy))),
            auth_reflection: args.auth_reflection,
            mutual,
        })
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
    /// first scrape, at 0 (`other` alone without a policy, where it stays 0).
    pub fn register_metrics(&self) {
        let policy = self.policy.as_ref().map(|policy| policy.get());
        let named = policy.iter().flat_map(|policy| policy.principals());
        for principal in named.chain(["other"]) {
            denied_counter(principal).increment(0);
        }
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
