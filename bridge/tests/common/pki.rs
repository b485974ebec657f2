//! Certificates for the TLS tests, made with rcgen: a CA, the server and
//! client certificates it signs, and the `tls` table that hands them to the
//! bridge. A second [`Pki`] is the CA a test's bridge must not trust.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA in a directory of its own; the files are world-readable, so servers
/// that drop root (mosquitto) or run as another user (PostgreSQL) read them.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (`ca.crt`).
    pub ca: PathBuf,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        Pki::new_in(name, &std::env::temp_dir())
    }

    /// A new CA named `name`, its files in a new directory under `parent`.
    pub fn new_in(name: &str, parent: &Path) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("kubemqtt-bridge-pki")
            .tempdir_in(parent)
            .expect("a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("the PKI directory is readable");
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.distinguished_name = common_name(&format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a key");
        let certificate = params.self_signed(&key).expect("the CA certificate");
        let ca = dir.path().join("ca.crt");
        write(&ca, &certificate.pem());
        Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names`: each an IP address or a DNS name.
    pub fn server(&self, file: &str, names: &[&str]) -> Pair {
        let sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            })
            .collect();
        self.leaf(file, names[0], sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with the common name `name`.
    pub fn client(&self, name: &str) -> Pair {
        self.leaf(name, name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        file: &str,
        name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Pair {
        let mut params = CertificateParams::new(Vec::new()).expect("parameters");
        params.subject_alt_names = sans;
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        let pair = Pair {
            cert: self.dir.path().join(format!("{file}.crt")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        write(&pair.cert, &certificate.pem());
        write(&pair.key, &key.serialize_pem());
        pair
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).expect("PEM written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("PEM readable");
}

/// What a TLS server of a test is given: its certificate and, when it
/// requires client certificates, the CA they must chain to.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub server: Pair,
    /// Client certificates are required and must chain to this CA.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// A server certificate of `pki` for `names`, client certificates
    /// optional (not asked for).
    pub fn new(pki: &Pki, names: &[&str]) -> ServerTls {
        ServerTls {
            server: pki.server("server", names),
            client_ca: None,
        }
    }

    /// Also requires client certificates of `pki`.
    pub fn requiring_clients_of(mut self, pki: &Pki) -> ServerTls {
        self.client_ca = Some(pki.ca.clone());
        self
    }
}

/// What the bridge is given for a TLS connection.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub client: Option<Pair>,
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Trusting `ca`.
    pub fn trusting(ca: &Path) -> ClientTls {
        ClientTls {
            ca: Some(ca.to_owned()),
            ..Default::default()
        }
    }

    /// With the client certificate `pair`.
    pub fn with_client(mut self, pair: &Pair) -> ClientTls {
        self.client = Some(pair.clone());
        self
    }

    /// Expecting the server's certificate to name `name`.
    pub fn named(mut self, name: &str) -> ClientTls {
        self.server_name = Some(name.to_owned());
        self
    }

    /// The TOML inline table (`{ ca_file = "...", ... }`).
    pub fn toml(&self) -> String {
        let mut fields = Vec::new();
        if let Some(ca) = &self.ca {
            fields.push(format!("ca_file = \"{}\"", ca.display()));
        }
        if let Some(pair) = &self.client {
            fields.push(format!("cert_file = \"{}\"", pair.cert.display()));
            fields.push(format!("key_file = \"{}\"", pair.key.display()));
        }
        if let Some(name) = &self.server_name {
            fields.push(format!("server_name = \"{name}\""));
        }
        format!("{{ {} }}", fields.join(", "))
    }

    /// The bridge's own configuration type, for the test's clients.
    pub fn config(&self) -> kubemqtt_bridge::config::TlsConfig {
        kubemqtt_bridge::config::TlsConfig {
            ca_file: self.ca.clone(),
            cert_file: self.client.as_ref().map(|p| p.cert.clone()),
            key_file: self.client.as_ref().map(|p| p.key.clone()),
            server_name: self.server_name.clone(),
        }
    }
}
