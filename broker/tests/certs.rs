//! `kubemqtt-broker certs` makes what a local TLS listener needs: the
//! broker serves with its server certificate, and clients no one here
//! wrote (mosquitto_sub, OpenSSL) connect with its CA, with and without its
//! client certificates. An X.509 v1 client certificate, as a plain
//! `openssl x509 -req` makes, is refused with a log line that says so.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A tool the test needs: its path, or `None` (with a note) when it is
/// missing outside CI. In CI (`CI=true`) a missing tool fails the test.
fn tool(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is not installed (scripts/test.sh installs it)",
        path.display()
    );
    eprintln!("SKIPPED: {} is not installed", path.display());
    None
}

/// Runs `kubemqtt-broker certs` with `args`; panics unless it succeeds.
fn certs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubemqtt-broker"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run kubemqtt-broker certs");
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A broker whose `tls` listener uses the certificates in `dir`, asking
/// for client certificates (optional) and taking the user name from the CN.
async fn broker_with(dir: &Path) -> Option<OpsBroker> {
    let file = |name: &str| format!("{:?}", dir.join(name));
    OpsBroker::start(BrokerOpts {
        extra_toml: format!(
            "[[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{{port:tls}}\"\nprotocol = \"tls\"\n\
             [listeners.tls]\ncert_file = {}\nkey_file = {}\nca_file = {}\n\
             client_auth = \"optional\"\nusername_from = \"cn\"\n",
            file("server.crt"),
            file("server.key"),
            file("ca.crt"),
        ),
        ..BrokerOpts::default()
    })
    .await
}

/// `mosquitto_sub` over TLS for one retained message of `topic`.
fn mosquitto_sub(
    sub: &Path,
    port: u16,
    dir: &Path,
    client: Option<&str>,
    id: &str,
    topic: &str,
) -> Output {
    let mut command = Command::new(sub);
    command
        .args(["-h", "localhost", "-p", &port.to_string(), "-i", id])
        .args(["-t", topic, "-C", "1", "-W", "10"])
        .arg("--cafile")
        .arg(dir.join("ca.crt"));
    if let Some(name) = client {
        command
            .arg("--cert")
            .arg(dir.join(format!("{name}.crt")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")));
    }
    command.output().expect("run mosquitto_sub")
}

async fn retain(broker: &TestBroker, topic: &str, payload: &str) {
    let (mut raw, _) = Raw::connect(broker, &Connect::v5("retainer")).await;
    let reason = raw
        .publish_qos1(&Pub::new(topic, payload.as_bytes()).qos(1, 1).retain())
        .await;
    assert!(reason < 0x80, "PUBACK {reason:#x}");
    raw.disconnect().await;
}

#[tokio::test]
async fn mosquitto_sub_connects_with_and_without_a_client_certificate() {
    let Some(sub) = tool("/usr/bin/mosquitto_sub") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    let dir_arg = dir.display().to_string();
    let printed = certs(&["--dir", &dir_arg, "--client", "device-1"]);
    assert!(printed.contains("[listeners.tls]"), "{printed}");
    let Some(broker) = broker_with(&dir).await else {
        return;
    };
    retain(&broker, "certs/hello", "over TLS").await;
    let port = broker.port_of("tls");

    let anonymous = mosquitto_sub(&sub, port, &dir, None, "no-cert", "certs/hello");
    assert!(
        anonymous.status.success(),
        "mosquitto_sub without a client certificate: {}\n{}",
        String::from_utf8_lossy(&anonymous.stderr),
        broker.logs().join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "over TLS\n");

    let with_cert = mosquitto_sub(&sub, port, &dir, Some("device-1"), "cert", "certs/hello");
    assert!(
        with_cert.status.success(),
        "mosquitto_sub with device-1's certificate: {}\n{}",
        String::from_utf8_lossy(&with_cert.stderr),
        broker.logs().join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&with_cert.stdout), "over TLS\n");
    // The certificate's CN is the user name.
    assert!(
        broker.count_logs("as cert (p2, c1, k60, u'device-1')") == 1,
        "{}",
        broker.logs().join("\n")
    );
}

#[tokio::test]
async fn clients_added_later_are_signed_by_the_same_ca() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    let dir_arg = dir.display().to_string();
    certs(&["--dir", &dir_arg]);
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let server = std::fs::read_to_string(dir.join("server.crt")).unwrap();
    certs(&["--dir", &dir_arg, "--client", "late"]);
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read_to_string(dir.join("server.crt")).unwrap(),
        server
    );
    let Some(broker) = broker_with(&dir).await else {
        return;
    };
    // The broker's own TLS stack and a rustls client: the client
    // certificate is verified and names the user.
    let client = CertKey {
        cert_pem: std::fs::read_to_string(dir.join("late.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("late.key")).unwrap(),
    };
    let config = tls_client_config(&ca, Some(&client));
    let (raw, connack) = tls_mqtt_connect(broker.addr_of("tls"), config, &Connect::v5("late-1"))
        .await
        .expect("TLS connect with the certificate");
    assert_eq!(connack.code, 0);
    raw.disconnect().await;
    assert!(
        eventually(TIMEOUT, || broker.count_logs("u'late'") == 1).await,
        "{}",
        broker.logs().join("\n")
    );
}

#[tokio::test]
async fn an_x509_v1_client_certificate_is_refused_with_a_reason() {
    let (Some(sub), Some(openssl)) = (tool("/usr/bin/mosquitto_sub"), tool("/usr/bin/openssl"))
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    certs(&["--dir", &dir.display().to_string()]);
    // What the user did: a CSR signed with `openssl x509 -req` and
    // no extensions file, which makes an X.509 v1 certificate.
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(&dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "v1.key",
        "-out",
        "v1.csr",
        "-subj",
        "/CN=old-device",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "v1.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "v1.crt",
        "-days",
        "2",
    ]);
    let text = run(&["x509", "-in", "v1.crt", "-noout", "-text"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
        "openssl made a v3 certificate; the test needs v1"
    );
    let Some(broker) = broker_with(&dir).await else {
        return;
    };
    let refused = mosquitto_sub(&sub, broker.port_of("tls"), &dir, Some("v1"), "v1", "x");
    assert!(!refused.status.success());
    assert!(
        broker
            .wait_for_log(
                "TLS handshake error: client certificate is X.509 v1; certificates need v3 extensions",
                TIMEOUT
            )
            .await,
        "{}",
        broker.logs().join("\n")
    );
}
