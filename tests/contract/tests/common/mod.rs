//! What the contract tests share: the broker process, TLS client
//! configuration, MQTT waiting, Secret reading, HTTP and ports.

#![allow(dead_code)] // each test file uses its own part

pub mod cluster;
pub mod fleet;
pub mod managed_nats;
pub mod registry;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, QoS,
    SubscribeReasonCode,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// How long the broker and each MQTT exchange may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The broker binary, as the `kubemqtt-broker` process of a pod.
pub struct RunningBroker {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl RunningBroker {
    /// Starts the broker with `args` and waits until `port` accepts
    /// connections.
    pub fn start(args: &[String], port: u16) -> RunningBroker {
        let mut child = Command::new(broker_binary())
            .args(args)
            .env("HOSTNAME", "mq-0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the broker starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            collect_lines(stdout, logs.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            collect_lines(stderr, logs.clone());
        }
        let mut broker = RunningBroker { child, logs };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("the broker exited with {status}:\n{}", broker.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "port {port} not open:\n{}",
                broker.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a log line matches.
    pub fn wait_for_log(&self, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .logs
                .lock()
                .map(|lines| lines.iter().any(|line| matches(line)))
                .unwrap_or(false);
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no such log line in:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log_text());
        }
    }
}

pub fn collect_lines(stream: impl Read + Send + 'static, logs: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut logs) = logs.lock() {
                logs.push(line);
            }
        }
    });
}

/// This workspace's broker binary, or `KUBEMQTT_BROKER_BIN`.
///
/// The binary is built first with `cargo build --workspace --bins`, the
/// build step of `scripts/test.sh`: a no-op there, and the same features
/// (building `-p kubemqtt-broker` alone would resolve other features and
/// rebuild the broker).
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBEMQTT_BROKER_BIN") {
        return PathBuf::from(path);
    }
    // This test runs as <target>/<profile>/deps/broker-<hash>.
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--workspace", "--bins"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    // What cargo set for this test would look like a change to some build
    // scripts (ring watches CARGO_MANIFEST_DIR) and rebuild them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if set_for_tests {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cannot build the broker: {status}");
    profile_dir.join("kubemqtt-broker")
}

/// The operator binary built next to the broker's (`--workspace --bins`),
/// or `KUBEMQTT_OPERATOR_BIN`: its offline commands (`fleet sign`, `fleet
/// secret`) are what a factory runs.
pub fn operator_binary() -> PathBuf {
    match std::env::var_os("KUBEMQTT_OPERATOR_BIN") {
        Some(path) => PathBuf::from(path),
        None => broker_binary().with_file_name("kubemqtt-operator"),
    }
}

/// A TLS client configuration trusting the CA certificates in `bundle`.
pub fn tls_config(bundle: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots
            .add(certificate.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    assert!(!roots.is_empty(), "the bundle holds a CA");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Polls the client until an incoming packet matches.
pub async fn wait_for(events: &mut EventLoop, what: &str, matches: impl Fn(&Incoming) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(packet))) if matches(&packet) => return,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("waiting for {what}: {error}"),
            Err(_) => panic!("no {what} within {PATIENCE:?}"),
        }
    }
}

/// The CONNACK code of a refused login; panics if it was not refused.
pub fn refused(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the client got in"),
    }
}

/// Subscribes and returns the SUBACK's code.
pub async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
) -> SubscribeReasonCode {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                return *ack.return_codes.first().expect("a return code");
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("waiting for the SUBACK: {error}"),
            Err(_) => panic!("no SUBACK within {PATIENCE:?}"),
        }
    }
}

/// Polls until the connection closes; panics if it stays open.
pub async fn expect_disconnected(events: &mut EventLoop) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => panic!("still connected after {PATIENCE:?}"),
        }
    }
}

/// The UTF-8 value of `key` in `secret`.
pub fn secret_text(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .unwrap_or_else(|| panic!("no {key} in the Secret"));
    String::from_utf8(bytes.0.clone()).expect("UTF-8")
}

/// Status code and body of `GET path` on the broker's HTTP port.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("HTTP connects");
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: mq-0\r\n{authorization}Connection: close\r\n\r\n"
    )
    .expect("HTTP request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("HTTP response");
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// A port nothing listens on now, never handed out before by this test
/// process (the kernel may give the same port to two binds in a row once
/// the first is closed).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Like [`tls_config`], presenting the client certificate `cert_pem` with
/// its key `key_pem`.
pub fn tls_config_with_certificate(
    bundle: &str,
    cert_pem: &str,
    key_pem: &str,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots
            .add(certificate.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the client certificate");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .expect("the client key");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate")
}
