//! TLS for `tls` and `wss` listeners: loading certificates with rustls,
//! reloading them when the files change, and reading a user name from a
//! client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::fleet::{FleetClientVerifier, FleetTrust};
use crate::config::{CertUsername, ClientAuth, TlsConfig};
use crate::filewatch::{self, FileStamp};

/// A certificate setup that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA bundle: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// The current TLS configuration of a listener, swapped atomically when
/// the certificate files change. Established connections keep the
/// configuration they were accepted with.
pub struct TlsReloader {
    config: TlsConfig,
    /// The device fleets whose CAs client certificates may also chain to.
    fleets: Option<FleetTrust>,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl TlsReloader {
    pub fn load(config: &TlsConfig, fleets: Option<FleetTrust>) -> Result<TlsReloader, TlsError> {
        let server = build_server_config(config, fleets.as_ref())?;
        Ok(TlsReloader {
            stamps: Mutex::new(stamps(config)),
            config: config.clone(),
            fleets,
            current: ArcSwap::from_pointee(server),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    pub fn username_from(&self) -> CertUsername {
        self.config.username_from
    }

    /// Reloads when any file changed. Returns `None` when nothing changed,
    /// `Some(Ok(()))` after a reload, `Some(Err(..))` when the new files were
    /// refused (the old certificate keeps serving).
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamps(&self.config);
        let mut seen = self.stamps.lock();
        if *seen == now {
            return None;
        }
        // Remember the attempt either way, so a broken file is reported once
        // and retried when it changes again.
        *seen = now;
        drop(seen);
        Some(
            build_server_config(&self.config, self.fleets.as_ref())
                .map(|server| self.current.store(Arc::new(server))),
        )
    }
}

fn stamps(config: &TlsConfig) -> Vec<Option<FileStamp>> {
    let files = [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.ca_file.as_ref(),
    ];
    filewatch::stamps(files.into_iter().flatten().map(|p| p.as_path()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds a rustls server configuration: TLS 1.2 and 1.3, the ring
/// provider, and client certificate verification as configured (with
/// `fleets`, certificates of the certificate fleets' CAs are accepted too).
pub fn build_server_config(
    config: &TlsConfig,
    fleets: Option<&FleetTrust>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|source| TlsError::Read {
        path: config.key_file.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (&config.ca_file, config.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Require) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if config.client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated().build()?
            } else {
                verifier.build()?
            };
            match fleets {
                Some(fleets) => builder.with_client_cert_verifier(Arc::new(
                    FleetClientVerifier::new(verifier, fleets.clone()),
                )),
                None => builder.with_client_cert_verifier(verifier),
            }
        }
        _ => builder.with_no_client_auth(),
    };
    // No ALPN list: rustls would refuse clients offering other protocols.
    Ok(builder.with_single_cert(certs, key)?)
}

/// A failed TLS handshake in words that say what to do, for the log:
/// `TLS handshake error: client certificate is X.509 v1; certificates need
/// v3 extensions` rather than rustls' `UnsupportedCertVersion`.
pub fn describe_handshake_error(error: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>());
    let hint = match rustls_error {
        Some(Error::InvalidCertificate(CertificateError::Other(other))) => {
            match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::UnsupportedCertVersion) => Some(
                    "client certificate is X.509 v1; certificates need v3 extensions \
                     (sign it with an extensions file, or make one with `kubemqtt-broker certs`)",
                ),
                _ => None,
            }
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            Some("client certificate is not signed by the listener's ca_file")
        }
        Some(Error::InvalidCertificate(CertificateError::Expired)) => {
            Some("client certificate has expired")
        }
        Some(Error::NoCertificatesPresented) => {
            Some("the client sent no certificate and the listener requires one")
        }
        _ => None,
    };
    match hint {
        Some(hint) => format!("{hint} ({error})"),
        None => error.to_string(),
    }
}

/// The user name a client certificate carries: its subject CN, or its
/// first DNS / e-mail subject alternative name.
pub fn username_from_certificate(cert: &CertificateDer<'_>, from: CertUsername) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match from {
        CertUsername::None => None,
        CertUsername::Cn => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertUsername::San => {
            let san = parsed.subject_alternative_name().ok().flatten()?;
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => Some(s.to_string()),
                _ => None,
            })
        }
    }
}
