//! `kubemqtt-broker certs`: a CA, a server certificate and client
//! certificates for a local TLS listener, all X.509 v3 with the extensions
//! TLS libraries require (rustls refuses v1 client certificates, which a
//! plain `openssl x509 -req` makes).
//!
//! The CA is made once per directory and reused: run the command again
//! with `--client NAME` to add a device, or with `--dns`/`--ip` to re-issue
//! the server certificate for other names. Keys are ECDSA P-256, written
//! readable by their owner only.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Validity of the CA.
const CA_DAYS: i64 = 3650;

/// What to write.
#[derive(Debug, Clone)]
pub struct CertsRequest {
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// DNS names of the server certificate.
    pub dns: Vec<String>,
    /// IP addresses of the server certificate.
    pub ips: Vec<IpAddr>,
    /// One client certificate for each name (its subject CN, which a
    /// listener with `username_from = "cn"` takes as the user name).
    pub clients: Vec<String>,
    /// Validity of the server and client certificates, in days.
    pub days: u32,
}

/// Why no certificates were written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists without {}: remove it, or put its key beside it", cert.display(), key.display())]
    HalfCa { cert: PathBuf, key: PathBuf },
    #[error("cannot use the CA in {}: {source}", dir.display())]
    BadCa { dir: PathBuf, source: rcgen::Error },
    #[error("client name `{0}`: use letters, digits, `.`, `-`, `_` and `@` (it names the files)")]
    BadClientName(String),
    #[error("invalid DNS name `{0}`")]
    BadDnsName(String),
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A file written, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub what: String,
}

/// The files of one directory.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Writes what `request` asks for: the CA when the directory has none, the
/// server certificate when it has none or names are given, and each client
/// certificate. Returns the files written, in order.
pub fn run(request: &CertsRequest) -> Result<Vec<Written>, CertsError> {
    for name in &request.clients {
        if !valid_client_name(name) {
            return Err(CertsError::BadClientName(name.clone()));
        }
    }
    std::fs::create_dir_all(&request.dir).map_err(|source| CertsError::Io {
        path: request.dir.clone(),
        source,
    })?;
    let files = Layout {
        dir: request.dir.clone(),
    };
    let mut written = Vec::new();
    let issuer = ca(&files, &mut written)?;
    let server_given = !request.dns.is_empty() || !request.ips.is_empty();
    if server_given || !files.file("server.crt").exists() {
        let (dns, ips) = if server_given {
            (request.dns.clone(), request.ips.clone())
        } else {
            (
                vec!["localhost".to_owned()],
                vec![
                    IpAddr::from([127, 0, 0, 1]),
                    IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ],
            )
        };
        let mut sans = Vec::new();
        for name in &dns {
            let name = name
                .clone()
                .try_into()
                .map_err(|_| CertsError::BadDnsName(name.clone()))?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let cn = dns
            .first()
            .cloned()
            .or_else(|| ips.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "kubemqtt".to_owned());
        let names = dns
            .iter()
            .cloned()
            .chain(ips.iter().map(IpAddr::to_string))
            .collect::<Vec<_>>()
            .join(", ");
        leaf(
            &files,
            "server",
            &cn,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            request.days,
            &issuer,
            &format!("server certificate for {names}"),
            &mut written,
        )?;
    }
    for name in &request.clients {
        leaf(
            &files,
            name,
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            request.days,
            &issuer,
            &format!("client certificate, CN={name}"),
            &mut written,
        )?;
    }
    Ok(written)
}

/// The directory's CA: read from `ca.crt` and `ca.key`, or made.
fn ca(files: &Layout, written: &mut Vec<Written>) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let (cert, key) = (files.file("ca.crt"), files.file("ca.key"));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|source| CertsError::Io {
                    path: path.to_owned(),
                    source,
                })
            };
            let bad = |source| CertsError::BadCa {
                dir: files.dir.clone(),
                source,
            };
            let key_pair = KeyPair::from_pem(&read(&key)?).map_err(bad)?;
            Issuer::from_ca_cert_pem(&read(&cert)?, key_pair).map_err(bad)
        }
        (false, false) => {
            let mut params = CertificateParams::new(Vec::new())?;
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, "KubeMQTT local CA");
            params.distinguished_name = name;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(CA_DAYS);
            let key_pair = KeyPair::generate()?;
            let certificate = params.self_signed(&key_pair)?;
            write(&key, &key_pair.serialize_pem(), true)?;
            write(&cert, &certificate.pem(), false)?;
            written.push(Written {
                path: cert,
                what: "CA certificate (clients trust it: --cafile, ca_file)".to_owned(),
            });
            written.push(Written {
                path: key,
                what: "CA key (keep it private; it signs the others)".to_owned(),
            });
            Ok(Issuer::new(params, key_pair))
        }
        (true, false) => Err(CertsError::HalfCa { cert, key }),
        (false, true) => Err(CertsError::HalfCa {
            cert: key,
            key: cert,
        }),
    }
}

/// Writes `<name>.crt` and `<name>.key`, signed by `issuer`.
#[allow(clippy::too_many_arguments)]
fn leaf(
    files: &Layout,
    name: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
    issuer: &Issuer<'_, KeyPair>,
    what: &str,
    written: &mut Vec<Written>,
) -> Result<(), CertsError> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
    let key_pair = KeyPair::generate()?;
    let certificate = params.signed_by(&key_pair, issuer)?;
    let (cert, key) = (
        files.file(&format!("{name}.crt")),
        files.file(&format!("{name}.key")),
    );
    write(&key, &key_pair.serialize_pem(), true)?;
    write(&cert, &certificate.pem(), false)?;
    written.push(Written {
        path: cert,
        what: what.to_owned(),
    });
    written.push(Written {
        path: key,
        what: format!("its private key ({name})"),
    });
    Ok(())
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), CertsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    if private {
        // An existing file keeps its mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)
}

fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

/// What to tell the user after writing `written` into `dir`: the files,
/// then a listener for `broker.toml` and a `mosquitto_sub` line to try it.
pub fn summary(request: &CertsRequest, written: &[Written]) -> String {
    let mut out = String::new();
    for file in written {
        let _ = writeln!(out, "wrote {}: {}", file.path.display(), file.what);
    }
    if written.is_empty() {
        let _ = writeln!(
            out,
            "nothing to write: {} has a CA and a server certificate",
            request.dir.display()
        );
    }
    let dir = std::fs::canonicalize(&request.dir).unwrap_or_else(|_| request.dir.clone());
    let path = |name: &str| dir.join(name).display().to_string();
    let _ = write!(
        out,
        "\nA TLS listener for broker.toml:\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"0.0.0.0:8883\"\nprotocol = \"tls\"\n\
         [listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
         client_auth = \"optional\"    # \"require\": every client needs a certificate\n\
         username_from = \"cn\"        # a client certificate's CN is its user name\n\n\
         Try it:\n\n  mosquitto_sub -h localhost -p 8883 --cafile {} -t 'test/#' -v\n",
        path("server.crt"),
        path("server.key"),
        path("ca.crt"),
        path("ca.crt"),
    );
    if let Some(client) = request.clients.first() {
        let _ = writeln!(
            out,
            "  mosquitto_sub -h localhost -p 8883 --cafile {} --cert {} --key {} -t 'test/#' -v",
            path("ca.crt"),
            path(&format!("{client}.crt")),
            path(&format!("{client}.key")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_and_cn(pem: &str) -> (u32, String) {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        (cert.version().0, cn)
    }

    #[test]
    fn client_names_must_be_file_names() {
        assert!(valid_client_name("device-1"));
        assert!(valid_client_name("a.b_c@d"));
        assert!(!valid_client_name("../etc/passwd"));
        assert!(!valid_client_name(".hidden"));
        assert!(!valid_client_name(""));
        assert!(!valid_client_name("two words"));
    }

    #[test]
    fn writes_a_ca_once_and_v3_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let request = CertsRequest {
            dir: dir.path().join("certs"),
            dns: Vec::new(),
            ips: Vec::new(),
            clients: vec!["device-1".to_owned()],
            days: 30,
        };
        let first = run(&request).unwrap();
        let names: Vec<String> = first
            .iter()
            .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.crt",
                "ca.key",
                "server.crt",
                "server.key",
                "device-1.crt",
                "device-1.key"
            ]
        );
        let read = |name: &str| std::fs::read_to_string(request.dir.join(name)).unwrap();
        let ca = read("ca.crt");
        for name in ["ca.crt", "server.crt", "device-1.crt"] {
            let (version, _) = version_and_cn(&read(name));
            assert_eq!(version, 2, "{name} is X.509 v3");
        }
        assert_eq!(version_and_cn(&read("device-1.crt")).1, "device-1");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(request.dir.join("device-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Again, with another client: the CA and server certificate stay.
        let again = CertsRequest {
            clients: vec!["device-2".to_owned()],
            ..request.clone()
        };
        let second = run(&again).unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(read("ca.crt"), ca);
        assert!(summary(&again, &second).contains("device-2.crt"));
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let request = CertsRequest {
            dir: dir.path().to_owned(),
            dns: vec!["mqtt.example".to_owned()],
            ips: Vec::new(),
            clients: Vec::new(),
            days: 30,
        };
        assert!(matches!(run(&request), Err(CertsError::HalfCa { .. })));
    }
}
