use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

use super::*;

/// A self-signed certificate and its key, as PEM files in `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn error_of(tls: &TlsConfig) -> String {
    client_config(tls).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn a_usable_configuration_trusts_its_ca_and_sends_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = certificate(dir.path(), "ca.test");
    let (cert, key) = certificate(dir.path(), "client.test");
    let config = client_config(&TlsConfig {
        ca_file: Some(ca),
        cert_file: Some(cert),
        key_file: Some(key),
        server_name: Some("db.test".into()),
    })
    .unwrap();
    assert!(config.client_auth_cert_resolver.has_certs());
}

#[test]
fn unusable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "client.test");
    let (_, other_key) = certificate(dir.path(), "other.test");
    let missing = dir.path().join("missing.crt");
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "no PEM here\n").unwrap();

    let message = error_of(&TlsConfig {
        ca_file: Some(missing.clone()),
        ..Default::default()
    });
    assert!(
        message.starts_with(&format!("cannot read {}", missing.display())),
        "{message}"
    );
    let message = error_of(&TlsConfig {
        ca_file: Some(empty.clone()),
        ..Default::default()
    });
    assert_eq!(
        message,
        format!("{}: holds no certificate", empty.display())
    );
    let message = error_of(&TlsConfig {
        ca_file: Some(cert.clone()),
        cert_file: Some(cert.clone()),
        key_file: Some(other_key.clone()),
        ..Default::default()
    });
    assert!(
        message.starts_with(&format!(
            "{}: not the key of {}",
            other_key.display(),
            cert.display()
        )),
        "{message}"
    );
    let message = error_of(&TlsConfig {
        ca_file: Some(cert.clone()),
        cert_file: Some(cert.clone()),
        ..Default::default()
    });
    assert_eq!(message, "TLS: tls.cert_file and tls.key_file go together");
    let message = error_of(&TlsConfig {
        ca_file: Some(cert),
        key_file: Some(key),
        server_name: Some("not a name!".into()),
        ..Default::default()
    });
    assert!(
        message.starts_with("TLS: tls.server_name `not a name!` is not a host name"),
        "{message}"
    );
}

/// A rustls error as the clients hand it over: inside an `io::Error`.
fn io(error: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

#[test]
fn handshake_failures_are_explained_in_the_terms_of_the_tls_table() {
    let tls = TlsConfig {
        ca_file: Some("/secrets/db-ca/ca.crt".into()),
        server_name: Some("db.internal".into()),
        ..Default::default()
    };
    let explain = |error: rustls::Error, tls: &TlsConfig| {
        explain_tls_failure(&io(error), tls).expect("a TLS failure")
    };
    assert_eq!(
        explain(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &tls
        ),
        "the server's certificate is not signed by a CA in tls.ca_file /secrets/db-ca/ca.crt"
    );
    assert_eq!(
        explain(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &TlsConfig::default()
        ),
        "the server's certificate is not signed by a CA in the system trust store (no tls.ca_file)"
    );
    assert_eq!(
        explain(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            &tls
        ),
        "the server's certificate does not name tls.server_name `db.internal`"
    );
    assert_eq!(
        explain(
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            &tls
        ),
        "the server refused the connection (CertificateRequired); it may require a client certificate (tls.cert_file and tls.key_file)"
    );
    let with_client = TlsConfig {
        cert_file: Some("/secrets/client/tls.crt".into()),
        ..tls.clone()
    };
    assert_eq!(
        explain(
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
            &with_client
        ),
        "the server refused the connection (BadCertificate); it may not accept the client certificate /secrets/client/tls.crt"
    );
}

#[test]
fn a_failure_is_recognised_by_its_words_too_and_others_are_not_tls() {
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect): invalid peer certificate: UnknownIssuer")]
    struct Opaque;
    let tls = TlsConfig::default();
    assert!(explain_tls_failure(&Opaque, &tls)
        .is_some_and(|why| why.starts_with("the server's certificate is not signed by a CA")));
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(explain_tls_failure(&refused, &tls), None);
}
