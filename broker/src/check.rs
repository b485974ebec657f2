//! `--check-config`: every file the configuration names, read and parsed
//! as the start would (certificates, keys and CA bundles, the password,
//! credentials and ACL files, the admin token file), so that "OK" means the
//! broker will start. Every problem is reported, each with its file and,
//! where the file has lines that matter, the line.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::auth::{self, AuthFileError, AuthText};
use crate::config::{ClientAuth, Config, TlsConfig};
use crate::transport::tls;

/// One thing that would stop the broker from starting, or from working as
/// configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault.
    pub file: String,
    /// 1-based line, when it matters.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Problem {
        Problem {
            file: file.display().to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl From<AuthFileError> for Problem {
    fn from(e: AuthFileError) -> Problem {
        match e {
            AuthFileError::Read { path, source } => {
                Problem::new(&path, None, format!("cannot read: {source}"))
            }
            AuthFileError::Invalid {
                file,
                line,
                message,
            } => Problem {
                file,
                line,
                message,
            },
        }
    }
}

/// Checks every file `config` names. Empty: the broker will be able to
/// read them all.
pub fn check_files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            check_tls(&listener.display_name(), tls, &mut problems);
        }
    }
    check_auth(config, &mut problems);
    if let Some(path) = &config.http.admin_token_file {
        match std::fs::read_to_string(path) {
            Ok(token) if token.trim().is_empty() => problems.push(Problem::new(
                path,
                None,
                "the admin token file is empty: the admin API would refuse every request",
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::new(
                path,
                None,
                format!("cannot read the admin token file: {e}"),
            )),
        }
    }
    if config.persistence.enabled {
        check_data_dir(&config.persistence.dir, &mut problems);
    }
    problems
}

/// The certificate chain, key and CA bundle of one listener, then the
/// TLS setup as the start builds it (which also finds a key that does not
/// belong to the certificate).
fn check_tls(listener: &str, config: &TlsConfig, problems: &mut Vec<Problem>) {
    let before = problems.len();
    check_certificates(&config.cert_file, "certificate", problems);
    match std::fs::read(&config.key_file) {
        Ok(pem) => {
            if let Err(e) = PrivateKeyDer::from_pem_slice(&pem) {
                problems.push(Problem::new(
                    &config.key_file,
                    None,
                    format!("holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}"),
                ));
            }
        }
        Err(e) => problems.push(Problem::new(
            &config.key_file,
            None,
            format!("cannot read: {e}"),
        )),
    }
    if let Some(ca) = &config.ca_file {
        if config.client_auth != ClientAuth::None {
            check_certificates(ca, "CA certificate", problems);
        }
    }
    if problems.len() == before {
        if let Err(e) = tls::build_server_config(config, None) {
            problems.push(Problem::new(
                &config.cert_file,
                None,
                format!("listener {listener}: {e}"),
            ));
        }
    }
}

/// Every PEM certificate in `path` parses as X.509 and is valid now.
fn check_certificates(path: &Path, what: &str, problems: &mut Vec<Problem>) {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            problems.push(Problem::new(path, None, format!("cannot read: {e}")));
            return;
        }
    };
    let blocks = pem_blocks(&text);
    let certificates: Vec<&PemBlock> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
    if certificates.is_empty() {
        problems.push(Problem::new(
            path,
            None,
            format!("holds no PEM {what} (-----BEGIN CERTIFICATE-----)"),
        ));
        return;
    }
    for block in certificates {
        let der = match &block.der {
            Ok(der) => der,
            Err(e) => {
                problems.push(Problem::new(path, Some(block.line), e.clone()));
                continue;
            }
        };
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let validity = cert.validity();
                let now = x509_parser::time::ASN1Time::now();
                if now > validity.not_after {
                    problems.push(Problem::new(
                        path,
                        Some(block.line),
                        format!("{what} expired on {}", validity.not_after),
                    ));
                } else if now < validity.not_before {
                    problems.push(Problem::new(
                        path,
                        Some(block.line),
                        format!("{what} is not valid before {}", validity.not_before),
                    ));
                }
            }
            Err(e) => problems.push(Problem::new(
                path,
                Some(block.line),
                format!("not an X.509 {what}: {e}"),
            )),
        }
    }
}

/// One `-----BEGIN ...-----` block.
struct PemBlock {
    label: String,
    /// Line of the BEGIN marker.
    line: usize,
    der: Result<Vec<u8>, String>,
}

/// The PEM blocks of `text`, with the line each starts on.
fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(label) = marker(line, "-----BEGIN ") {
            open = Some((label.to_owned(), index + 1, String::new()));
        } else if let Some(label) = marker(line, "-----END ") {
            if let Some((begin, at, body)) = open.take() {
                let der = if begin != label {
                    Err(format!("BEGIN {begin} ends with END {label}"))
                } else {
                    base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("the {begin} block is not valid base64: {e}"))
                };
                blocks.push(PemBlock {
                    label: begin,
                    line: at,
                    der,
                });
            }
        } else if let Some((_, _, body)) = &mut open {
            body.push_str(line);
        }
    }
    if let Some((label, line, _)) = open {
        blocks.push(PemBlock {
            label: label.clone(),
            line,
            der: Err(format!("the {label} block has no END line")),
        });
    }
    blocks
}

fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix("-----")
}

/// The password, credentials and ACL files: each on its own (so that each
/// reports its own first mistake), then together (a user defined in both
/// user files).
fn check_auth(config: &Config, problems: &mut Vec<Problem>) {
    let read = |path: &Option<std::path::PathBuf>, problems: &mut Vec<Problem>| {
        let path = path.as_ref()?;
        AuthText::read(path)
            .map_err(|e| problems.push(e.into()))
            .ok()
    };
    let passwd = read(&config.auth.password_file, problems);
    let creds = read(&config.auth.credentials_file, problems);
    let acl = read(&config.auth.acl_file, problems);
    let before = problems.len();
    let alone = [
        (passwd.as_ref(), None, None),
        (None, creds.as_ref(), None),
        (None, None, acl.as_ref()),
    ];
    for (p, c, a) in alone {
        if p.or(c).or(a).is_some() {
            if let Err(e) = auth::build(p, c, a) {
                problems.push(e.into());
            }
        }
    }
    if problems.len() == before {
        if let Err(e) = auth::build(passwd.as_ref(), creds.as_ref(), acl.as_ref()) {
            problems.push(e.into());
        }
    }
    // The device fleets: their files (CAs, secrets, keys, revocation
    // lists) and the fleet files of `auth.fleets_dir`.
    let fleets =
        auth::fleet::config::all_fleets(&config.auth.fleets, config.auth.fleets_dir.as_deref())
            .and_then(|fleets| auth::fleet::Fleets::load(&fleets, None));
    if let Err(e) = fleets {
        problems.push(e.into());
    }
}

/// The store's directory is created at start if missing; something that
/// is not a directory in its place is not.
fn check_data_dir(dir: &Path, problems: &mut Vec<Problem>) {
    let mut existing = Some(dir);
    while let Some(path) = existing {
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_dir() {
                problems.push(Problem::new(
                    path,
                    None,
                    "is not a directory (persistence.dir)",
                ));
            } else if meta.permissions().readonly() {
                problems.push(Problem::new(path, None, "is read-only (persistence.dir)"));
            }
            return;
        }
        existing = path.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_carry_their_line() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n\n\
                    -----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nAAEC\n";
        let blocks = pem_blocks(text);
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            (blocks[0].label.as_str(), blocks[0].line),
            ("CERTIFICATE", 2)
        );
        assert_eq!(blocks[0].der, Ok(vec![0, 1, 2]));
        assert_eq!(
            (blocks[1].label.as_str(), blocks[1].line),
            ("PRIVATE KEY", 6)
        );
        assert!(blocks[1].der.is_err());
        assert_eq!(blocks[2].line, 9);
        assert_eq!(
            blocks[2].der,
            Err("the CERTIFICATE block has no END line".to_owned())
        );
    }

    #[test]
    fn problems_name_file_and_line() {
        let with_line = Problem::new(Path::new("/a/acl"), Some(3), "bad");
        assert_eq!(with_line.to_string(), "/a/acl:3: bad");
        let without = Problem::new(Path::new("/a/key"), None, "bad");
        assert_eq!(without.to_string(), "/a/key: bad");
    }
}
