//! Transport security and caller authentication, each off unless configured: TLS (and mutual
//! TLS) from PEM files, and bearer tokens from a tokens file. Everything is loaded and checked
//! once, at start, so a bad file stops the server with a message naming it.

mod auth;
pub mod tls;

use std::sync::Arc;

pub use auth::{Caller, LineProblem, MIN_TOKEN_LENGTH, RequireToken, Tokens, TokensError};
pub use tls::{TlsError, TlsFile};

use crate::config::SecurityArgs;

/// What the server enforces. The default is what it always did: plaintext, no authentication.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS (mutual when it names a client CA); `None` serves plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The tokens our services require; `None` lets every call through.
    pub tokens: Option<Arc<Tokens>>,
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
    /// A combination clap rules out on the command line, possible when settings are built in code.
    #[error("{0}")]
    Incomplete(&'static str),
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
            Some(path) => Some(Arc::new(Tokens::load(path)?)),
            None if args.auth_reflection => {
                return Err(SecurityError::Incomplete(
                    "--auth-reflection needs --auth-tokens-file",
                ));
            }
            None => None,
        };
        Ok(Security {
            tls,
            tokens,
            auth_reflection: args.auth_reflection,
            mutual: args.tls_client_ca.is_some(),
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
}
