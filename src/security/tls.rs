//! TLS and mutual TLS from PEM files. Everything is read and checked here, at start, so that a
//! missing file, a file that holds the wrong thing or a key that belongs to another certificate
//! stops the server with a message naming the file, instead of failing every handshake later.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    RootCertStore,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// How long a client may take over the TLS handshake. Without a limit, a connection that opens
/// and never finishes the handshake holds a task of the server forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which file an error is about, as the operator set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Certificate,
    Key,
    ClientCa,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::Certificate => "TLS certificate (--tls-cert, TLS_CERT)",
            TlsFile::Key => "TLS key (--tls-key, TLS_KEY)",
            TlsFile::ClientCa => "client CA (--tls-client-ca, TLS_CLIENT_CA)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {file} {}", path.display())]
    Read {
        file: TlsFile,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the {file} {} is not valid PEM", path.display())]
    Pem {
        file: TlsFile,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("the {file} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { file: TlsFile, path: PathBuf },

    #[error(
        "the {} {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        TlsFile::Key,
        path.display()
    )]
    NoKey { path: PathBuf },

    #[error(
        "the TLS key {} does not match the TLS certificate {}: they are not a pair",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error(
        "the TLS certificate {} and key {} cannot be used",
        cert.display(),
        key.display()
    )]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },

    #[error("the {} {} holds no usable CA certificate", TlsFile::ClientCa, path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: Option<rustls::server::VerifierBuilderError>,
    },

    /// tonic refused what rustls accepted above; not expected, but reported rather than hidden.
    #[error("the TLS settings were refused")]
    Rejected(#[source] tonic::transport::Error),
}

/// The server's TLS settings: its certificate chain and key and, for mutual TLS, the CA(s)
/// that client certificates must be signed by.
pub fn load(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    // tonic builds its rustls config with the process-wide provider; name ring explicitly so a
    // second provider compiled in by some other dependency can never make that ambiguous.
    let _ = ring::default_provider().install_default();
    let provider = ring::default_provider();

    let cert_pem = read(TlsFile::Certificate, cert)?;
    let key_pem = read(TlsFile::Key, key)?;
    let chain = certificates(TlsFile::Certificate, cert, &cert_pem)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key.into() },
        source => TlsError::Pem {
            file: TlsFile::Key,
            path: key.into(),
            source,
        },
    })?;
    CertifiedKey::from_der(chain, private_key, &provider).map_err(|source| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert.into(),
                key: key.into(),
            }
        }
        source => TlsError::Unusable {
            cert: cert.into(),
            key: key.into(),
            source,
        },
    })?;

    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(client_ca) = client_ca {
        let ca_pem = read(TlsFile::ClientCa, client_ca)?;
        check_client_ca(client_ca, &ca_pem, provider)?;
        config = config.client_ca_root(Certificate::from_pem(ca_pem));
    }

    Server::builder()
        .tls_config(config.clone())
        .map_err(TlsError::Rejected)?;
    Ok(config)
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file,
        path: path.into(),
        source,
    })
}

fn certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            file,
            path: path.into(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file,
            path: path.into(),
        });
    }
    Ok(chain)
}

/// The CA file must hold at least one certificate that can verify clients: rustls would
/// otherwise skip what it cannot parse and refuse every client.
fn check_client_ca(path: &Path, pem: &[u8], provider: CryptoProvider) -> Result<(), TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) =
        roots.add_parsable_certificates(certificates(TlsFile::ClientCa, path, pem)?);
    if added == 0 {
        return Err(TlsError::ClientCa {
            path: path.into(),
            source: None,
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider))
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: path.into(),
            source: Some(source),
        })?;
    Ok(())
}
