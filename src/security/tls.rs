//! TLS and mutual TLS from PEM files. Everything is read and checked here, at start, so that a
//! missing file, a file that holds the wrong thing or a key that belongs to another certificate
//! stops the server with a message naming the file, instead of failing every handshake later.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};

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

    /// rustls refused the settings as a whole; not expected once each part was checked.
    #[error("the TLS settings were refused")]
    Rejected(#[source] rustls::Error),
}

impl TlsError {
    /// Whether the error is about the client CA bundle (else the certificate or its key).
    pub fn is_client_ca(&self) -> bool {
        match self {
            TlsError::Read { file, .. }
            | TlsError::Pem { file, .. }
            | TlsError::NoCertificate { file, .. } => *file == TlsFile::ClientCa,
            TlsError::ClientCa { .. } => true,
            TlsError::NoKey { .. }
            | TlsError::KeyMismatch { .. }
            | TlsError::Unusable { .. }
            | TlsError::Rejected(_) => false,
        }
    }
}

/// The server's TLS settings: its certificate chain and key and, for mutual TLS, the CA(s)
/// that client certificates must be signed by. HTTP/2 only (ALPN `h2`), as gRPC needs. Also the
/// serving certificate's not-after time (Unix seconds).
pub fn load(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<(ServerConfig, Option<i64>), TlsError> {
    // Name ring explicitly, so a second provider compiled in by some other dependency can never
    // make the choice ambiguous.
    let provider = Arc::new(ring::default_provider());

    let cert_pem = read(TlsFile::Certificate, cert)?;
    let key_pem = read(TlsFile::Key, key)?;
    let chain = certificates(TlsFile::Certificate, cert, &cert_pem)?;
    let expires = chain.first().and_then(not_after);
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key.into() },
        source => TlsError::Pem {
            file: TlsFile::Key,
            path: key.into(),
            source,
        },
    })?;
    let certified =
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

    let verifier = match client_ca {
        Some(client_ca) => {
            let ca_pem = read(TlsFile::ClientCa, client_ca)?;
            client_verifier(client_ca, &ca_pem, provider.clone())?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, expires))
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
fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) =
        roots.add_parsable_certificates(certificates(TlsFile::ClientCa, path, pem)?);
    if added == 0 {
        return Err(TlsError::ClientCa {
            path: path.into(),
            source: None,
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: path.into(),
            source: Some(source),
        })
}

/// Who a client certificate names, in the order principals are taken from it: its URI SANs
/// (SPIFFE IDs such as `spiffe://school.example/ns/registrar/sa/frontend`) if it has any, else its
/// DNS SANs, else its subject common name. Read once per connection, at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    names: Vec<Arc<str>>,
}

impl ClientIdentity {
    /// The identity of a DER certificate; `None` when it names nothing (or does not parse,
    /// which rustls would have refused first).
    pub fn of_certificate(der: &[u8]) -> Option<ClientIdentity> {
        use x509_parser::{
            extensions::GeneralName,
            prelude::{FromDer, X509Certificate},
        };
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sans: Vec<GeneralName<'_>> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default();
        let of_kind = |uri: bool| -> Vec<Arc<str>> {
            sans.iter()
                .filter_map(|name| match name {
                    GeneralName::URI(name) if uri => Some((*name).into()),
                    GeneralName::DNSName(name) if !uri => Some((*name).into()),
                    _ => None,
                })
                .collect()
        };
        let mut names = of_kind(true);
        if names.is_empty() {
            names = of_kind(false);
        }
        if names.is_empty() {
            let common_name = cert.subject().iter_common_name().next();
            names.extend(common_name.and_then(|cn| cn.as_str().ok()).map(Arc::from));
        }
        (!names.is_empty()).then_some(ClientIdentity { names })
    }

    /// Every name, the first being the one logs show when no policy picks another.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }
}

/// A certificate's not-after time, as a Unix timestamp.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}
