//! Secrets and TLS material read from files (mounted Secrets in a pod).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

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

/// The PEM text of the CA bundle, if one is configured.
pub fn ca_pem(tls: &TlsConfig) -> Result<Option<String>, SecretError> {
    tls.ca_file
        .as_ref()
        .map(|path| {
            String::from_utf8(read_bytes(path)?).map_err(|_| SecretError::Invalid {
                path: path.clone(),
                message: "not PEM text".into(),
            })
        })
        .transpose()
}

/// A rustls client configuration: the CA bundle as the only roots, and the
/// client certificate when one is configured.
pub fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, SecretError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &tls.ca_file {
        let pem = read_bytes(path)?;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| SecretError::Invalid {
                path: path.clone(),
                message: format!("bad PEM certificate: {e}"),
            })?;
            roots.add(certificate).map_err(|e| SecretError::Invalid {
                path: path.clone(),
                message: format!("bad CA certificate: {e}"),
            })?;
        }
        if roots.is_empty() {
            return Err(SecretError::Invalid {
                path: path.clone(),
                message: "holds no certificate".into(),
            });
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SecretError::Invalid {
        path: PathBuf::new(),
        message: e.to_string(),
    })?
    .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read_bytes(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SecretError::Invalid {
                    path: cert.clone(),
                    message: format!("bad PEM certificate: {e}"),
                })?;
            let private_key = PrivateKeyDer::from_pem_slice(&read_bytes(key)?).map_err(|e| {
                SecretError::Invalid {
                    path: key.clone(),
                    message: format!("bad PEM key: {e}"),
                }
            })?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| SecretError::Invalid {
                    path: cert.clone(),
                    message: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(SecretError::Invalid {
            path: PathBuf::new(),
            message: "tls.cert_file and tls.key_file go together".into(),
        }),
    }
}

/// The server name to verify: `server_name` when set, else the host.
pub fn server_name(tls: &TlsConfig, host: &str) -> Result<ServerName<'static>, SecretError> {
    let name = tls.server_name.as_deref().unwrap_or(host).to_owned();
    ServerName::try_from(name).map_err(|e| SecretError::Invalid {
        path: PathBuf::new(),
        message: format!("bad TLS server name: {e}"),
    })
}
