//! Test certificates (rcgen) and rustls clients.

use super::*;

/// A certificate authority generated for one test (rcgen).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> CertKey {
        self.issue(
            "kubemqtt test server",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with subject CN `cn` and the given subject
    /// alternative names (DNS names, or e-mail addresses when they hold `@`).
    pub fn client_cert(&self, cn: &str, sans: &[&str]) -> CertKey {
        self.issue(cn, sans, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, cn: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> CertKey {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        for san in sans {
            let san = if san.contains('@') {
                rcgen::SanType::Rfc822Name((*san).try_into().expect("e-mail SAN"))
            } else if let Ok(ip) = san.parse() {
                rcgen::SanType::IpAddress(ip)
            } else {
                rcgen::SanType::DnsName((*san).try_into().expect("DNS SAN"))
            };
            params.subject_alt_names.push(san);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A rustls client configuration (ring provider) trusting `ca_pem`, with
/// an optional client certificate.
pub fn tls_client_config(ca_pem: &str, client: Option<&CertKey>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(ck) => {
            let certs = CertificateDer::pem_slice_iter(ck.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(ck.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client certificate")
        }
    };
    Arc::new(config)
}

/// TLS handshake with `addr` as `localhost`. An error means the handshake
/// failed (with TLS 1.3 a refused client certificate may instead show as a
/// close right after it: see [`tls_mqtt_connect`]).
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// TLS handshake then MQTT CONNECT. `Ok` with the client and its CONNACK,
/// or `Err` describing where it failed (handshake, or closed before
/// CONNACK, which is how TLS 1.3 reports a refused client certificate).
pub async fn tls_mqtt_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    connect: &Connect,
) -> Result<(Raw, ConnAck), String> {
    let stream = tls_connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut raw = Raw::from_stream(stream);
    raw.send_connect(connect).await;
    match raw.recv_within(TIMEOUT).await {
        Recv::Packet(Pkt::ConnAck(ack)) => Ok((raw, ack)),
        other => Err(format!("no CONNACK: {other:?}")),
    }
}
