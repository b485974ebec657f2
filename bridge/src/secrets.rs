//! Secrets and TLS material read from files (mounted Secrets in a pod).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::config::TlsConfig;

/// A secret or TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's content is not what it should hold.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The TLS settings cannot be used (no trusted CA, a bad server name).
    #[error("TLS: {0}")]
    Tls(String),
}

/// The file's content without surrounding whitespace (a Secret written by
/// hand often ends with a newline).
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })
}

/// An optional secret file's content.
pub fn read_optional(path: Option<&PathBuf>) -> Result<Option<String>, SecretError> {
    path.map(|path| read_secret(path)).transpose()
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A rustls client configuration for `tls`: the servers it trusts are
/// those chaining to `ca_file` (only those), or, without a `ca_file`, to
/// the system's trust store (the image's CA bundle; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override it). The certificate must name `server_name`
/// when one is set, else the host connected to. The client certificate is
/// sent when one is configured.
pub fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, SecretError> {
    let roots = match &tls.ca_file {
        Some(path) => ca_roots(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SecretError::Tls(format!("cannot verify servers: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecretError::Tls(e.to_string()))?;
    let builder = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone()).map_err(|e| {
                SecretError::Tls(format!("tls.server_name `{name}` is not a host name: {e}"))
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExpectedName {
                    verifier: webpki,
                    name,
                }))
        }
        None => builder.with_webpki_verifier(webpki),
    };
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read_bytes(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SecretError::Invalid {
                    path: cert.clone(),
                    message: format!("bad PEM certificate: {e}"),
                })?;
            if chain.is_empty() {
                return Err(SecretError::Invalid {
                    path: cert.clone(),
                    message: "holds no certificate".into(),
                });
            }
            let private_key = PrivateKeyDer::from_pem_slice(&read_bytes(key)?).map_err(|e| {
                SecretError::Invalid {
                    path: key.clone(),
                    message: format!("bad PEM key: {e}"),
                }
            })?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| SecretError::Invalid {
                    path: key.clone(),
                    message: format!("not the key of {}: {e}", cert.display()),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(SecretError::Tls(
            "tls.cert_file and tls.key_file go together".into(),
        )),
    }
}

/// A configuration that trusts no server, for a client that must be given
/// one but is only meant to speak plain text (the webhook sink on an
/// `http://` URL).
pub fn trusting_no_one() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, SecretError> {
    let pem = read_bytes(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|e| SecretError::Invalid {
            path: path.to_owned(),
            message: format!("bad PEM certificate: {e}"),
        })?;
        roots.add(certificate).map_err(|e| SecretError::Invalid {
            path: path.to_owned(),
            message: format!("bad CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(SecretError::Invalid {
            path: path.to_owned(),
            message: "holds no certificate".into(),
        });
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore, SecretError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(SecretError::Tls(format!(
            "no tls.ca_file, and the system trust store holds no CA certificate{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        )));
    }
    Ok(roots)
}

/// Verifies the server's certificate against a configured name rather than
/// the host connected to (an address, or a name the certificate does not
/// carry); everything else is the standard verification.
#[derive(Debug)]
struct ExpectedName {
    verifier: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ExpectedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// What a failed TLS handshake means, in the terms of the `tls` table:
/// `Some` when a rustls error is among `error`'s causes (directly or inside
/// an `io::Error`), else `None` (the failure was not TLS).
pub fn explain_tls_failure(
    error: &(dyn std::error::Error + 'static),
    tls: &TlsConfig,
) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let rustls_error = error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls_error) = rustls_error {
            return Some(explain(rustls_error, tls));
        }
        cause = error.source();
    }
    // Some clients (reqwest, through hyper) hide the rustls error behind
    // a boxed cause; its words are still in the message.
    let text = crate::sink::full_message(error);
    KNOWN_FAILURES
        .iter()
        .find(|known| text.contains(&known.to_string()))
        .map(|known| explain(known, tls))
        .or_else(|| {
            text.contains("certificate not valid for name")
                .then(|| explain(&CertificateError::NotValidForName.into(), tls))
        })
}

/// The rustls errors [`explain`] has words for, to recognise by their text.
const KNOWN_FAILURES: [rustls::Error; 11] = [
    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    rustls::Error::InvalidCertificate(CertificateError::BadSignature),
    rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
    rustls::Error::InvalidCertificate(CertificateError::Expired),
    rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
    rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
    rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
    rustls::Error::AlertReceived(AlertDescription::BadCertificate),
    rustls::Error::AlertReceived(AlertDescription::UnknownCA),
    rustls::Error::AlertReceived(AlertDescription::CertificateUnknown),
    rustls::Error::AlertReceived(AlertDescription::AccessDenied),
];

fn explain(error: &rustls::Error, tls: &TlsConfig) -> String {
    use {AlertDescription as Alert, CertificateError as Cert};
    let trusted = match &tls.ca_file {
        Some(path) => format!("tls.ca_file {}", path.display()),
        None => "the system trust store (no tls.ca_file)".to_owned(),
    };
    let name = match &tls.server_name {
        Some(name) => format!("tls.server_name `{name}`"),
        None => "the host connected to (set tls.server_name for another name)".to_owned(),
    };
    match error {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            format!("the server's certificate is not signed by a CA in {trusted}")
        }
        rustls::Error::InvalidCertificate(Cert::NotValidForName)
        | rustls::Error::InvalidCertificate(Cert::NotValidForNameContext { .. }) => {
            format!("the server's certificate does not name {name}")
        }
        rustls::Error::InvalidCertificate(
            Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet | Cert::NotValidYetContext { .. },
        ) => "the server's certificate has expired or is not valid yet".to_owned(),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate is refused ({other:?})")
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::HandshakeFailure
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::AccessDenied),
        ) => match &tls.cert_file {
            None => format!(
                "the server refused the connection ({alert:?}); it may require a client certificate (tls.cert_file and tls.key_file)"
            ),
            Some(cert) => format!(
                "the server refused the connection ({alert:?}); it may not accept the client certificate {}",
                cert.display()
            ),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
