//! The contract between the operator and the broker.
//!
//! A broker is rendered by the operator's planner, its ConfigMap and
//! Secrets are laid out as its pod would see them, and the real broker
//! binary starts on them with the container's own arguments. A client
//! trusting the CA bundle from the ConfigMap, logging in with the admin
//! credentials from the auth Secret, subscribes and publishes over TLS; the
//! broker's log shows the connection; the admin API takes the token from
//! the auth Secret; and anonymous clients are turned away.
//!
//! The test plays the cloud's load balancer, giving the client Service the
//! address 127.0.0.1, so that the server certificate covers the address the
//! client dials.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Secret};
use k8s_openapi::jiff::Timestamp;
use kubemqtt_contract_tests::PodFiles;
use kubemqtt_operator::plan::configmap::{CA_BUNDLE_KEY, CONFIG_FILE};
use kubemqtt_operator::plan::secrets::{
    ADMIN_TOKEN_KEY, ADMIN_USERNAME, PASSWORD_KEY, USERNAME_KEY,
};
use kubemqtt_operator::plan::{self, Observed, Settings, CONFIG_DIR};
use kubemqtt_operator::render::read_broker;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const MANIFEST: &str = "\
apiVersion: kubemqtt.io/v1alpha1
kind: MqttBroker
metadata:
  name: mq
  namespace: iot
spec: {}
";

const CLIENT_ID: &str = "contract-client";
const TOPIC: &str = "contract/hello";
/// How long the broker and each MQTT exchange may take.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_rendered_broker_serves_tls_with_its_generated_credentials() {
    // Render, with the load balancer's address.
    let broker = read_broker(MANIFEST, None).expect("the manifest reads");
    let observed = Observed {
        load_balancer_ingress: vec![LoadBalancerIngress {
            ip: Some("127.0.0.1".to_owned()),
            ..LoadBalancerIngress::default()
        }],
        ..Observed::default()
    };
    let plan = plan::plan(&broker, &observed, &Settings::default(), Timestamp::now())
        .expect("the broker plans");

    // The pod's files, and loopback ports instead of the pod's own.
    let root = tempfile::tempdir().expect("temporary directory");
    let pod = PodFiles::lay_out(&plan, root.path()).expect("the files lay out");
    let (mqtt_port, mqtts_port, http_port) = (free_port(), free_port(), free_port());
    let config = pod
        .localize(
            &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            |listener| match listener {
                "mqtt" => mqtt_port,
                "mqtts" => mqtts_port,
                other => panic!("unexpected listener {other}"),
            },
            http_port,
        )
        .expect("the configuration localizes");
    assert_eq!(config.listeners.len(), 2, "the default listeners");
    assert!(!config.allow_anonymous);

    let broker = RunningBroker::start(&pod.args, mqtts_port);

    // What a client is given: the CA bundle and the admin credentials.
    let ca_bundle = plan.config_map.data.as_ref().expect("data")[CA_BUNDLE_KEY].clone();
    let username = secret_text(&plan.auth_secret, USERNAME_KEY);
    let password = secret_text(&plan.auth_secret, PASSWORD_KEY);
    assert_eq!(username, ADMIN_USERNAME);

    let mut options = MqttOptions::new(CLIENT_ID, "127.0.0.1", mqtts_port);
    options.set_credentials(&username, &password);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(&ca_bundle)),
    )));
    let (client, mut events) = AsyncClient::new(options, 10);
    wait_for(
        &mut events,
        "CONNACK",
        |event| matches!(event, Incoming::ConnAck(ack) if ack.code == ConnectReturnCode::Success),
    )
    .await;
    client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    wait_for(&mut events, "SUBACK", |event| {
        matches!(event, Incoming::SubAck(_))
    })
    .await;
    client
        .publish(
            TOPIC,
            QoS::AtLeastOnce,
            false,
            "hello from the contract test",
        )
        .await
        .expect("publish");
    wait_for(&mut events, "the message back", |event| {
        matches!(event, Incoming::Publish(message)
            if message.topic == TOPIC && message.payload.as_ref() == b"hello from the contract test")
    })
    .await;

    // The broker logged the connection: MQTT 3.1.1 (mosquitto's `p2`), clean
    // session, the keep-alive asked for, and the admin user.
    let expected = format!("as {CLIENT_ID} (p2, c1, k30, u'{ADMIN_USERNAME}').");
    broker.wait_for_log(|line| {
        line.contains("New client connected from 127.0.0.1:") && line.contains(&expected)
    });

    // The admin API takes the token from the auth Secret, and only it.
    let token = secret_text(&plan.auth_secret, ADMIN_TOKEN_KEY);
    let (code, body) = http_get(http_port, "/api/v1/clients", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(CLIENT_ID), "{body}");
    assert_eq!(http_get(http_port, "/api/v1/clients", Some("wrong")).0, 401);
    assert_eq!(http_get(http_port, "/readyz", None).0, 200);

    // Anonymous clients are refused on the plain listener.
    let (_anonymous, mut refused) =
        AsyncClient::new(MqttOptions::new("anonymous", "127.0.0.1", mqtt_port), 10);
    match tokio::time::timeout(PATIENCE, refused.poll()).await {
        Ok(Err(ConnectionError::ConnectionRefused(code))) => assert!(
            matches!(
                code,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
            ),
            "{code:?}"
        ),
        other => panic!("expected the anonymous client to be refused, got {other:?}"),
    }
}

/// The broker binary, as the `kubemqtt-broker` process of a pod.
struct RunningBroker {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl RunningBroker {
    /// Starts the broker with `args` and waits until `port` accepts
    /// connections.
    fn start(args: &[String], port: u16) -> RunningBroker {
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

    fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a log line matches.
    fn wait_for_log(&self, matches: impl Fn(&str) -> bool) {
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

fn collect_lines(stream: impl Read + Send + 'static, logs: Arc<Mutex<Vec<String>>>) {
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
fn broker_binary() -> PathBuf {
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

/// A TLS client configuration trusting the CA certificates in `bundle`.
fn tls_config(bundle: &str) -> rustls::ClientConfig {
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
async fn wait_for(events: &mut EventLoop, what: &str, matches: impl Fn(&Incoming) -> bool) {
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

/// The UTF-8 value of `key` in `secret`.
fn secret_text(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .unwrap_or_else(|| panic!("no {key} in the Secret"));
    String::from_utf8(bytes.0.clone()).expect("UTF-8")
}

/// Status code and body of `GET path` on the broker's HTTP port.
fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
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

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
