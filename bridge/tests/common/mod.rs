//! What the bridge's integration tests share: real servers started on free
//! loopback ports in temporary directories (the kubemqtt broker as the
//! source, PostgreSQL, nats-server, RabbitMQ, mosquitto), the bridge
//! process itself, a publisher whose messages count once the broker
//! acknowledged them, and the scenarios every sink goes through.
//!
//! A server binary that is missing fails the test when `CI=true`
//! (scripts/test.sh installs them all) and skips it elsewhere.

#![allow(dead_code)] // each test file uses its own part

pub mod pki;
pub mod scenario;
pub mod servers;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubemqtt_bridge::mqtt::{Endpoint, Outbound, Publisher};
use serde_json::{json, Value};

/// How long a server start or an expected outcome may take.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The path of a server binary, or `None` (skip) when it is missing
/// outside CI; in CI a missing binary fails the test.
pub fn require(binary: &str) -> Option<PathBuf> {
    let path = PathBuf::from(binary);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{binary} is missing (scripts/test.sh installs it); CI=true, so this fails");
    }
    eprintln!("SKIPPED: {binary} is missing; install it (scripts/test.sh does) to run this test");
    None
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

/// Waits until `port` accepts TCP connections.
pub fn wait_for_port(port: u16, what: &str, process: &mut Process) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("{what} exited with {status}:\n{}", process.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: port {port} not open:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process whose output is kept, killed when dropped.
pub struct Process {
    pub child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Process {
    /// Spawns `command`, keeping its stdout and stderr.
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            });
        }
        Process {
            child,
            logs,
            name: name.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_text());
        }
    }
}

/// This workspace's broker binary (`KUBEMQTT_BROKER_BIN` overrides), built
/// once per test binary (a no-op when it is fresh: a binary left by an
/// earlier build of other sources must not be tested).
pub fn broker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBEMQTT_BROKER_BIN") {
        return PathBuf::from(path);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_broker).clone()
}

fn build_broker() -> PathBuf {
    // This test runs as <target>/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>")
        .to_owned();
    let binary = profile_dir.join("kubemqtt-broker");
    let target_dir = profile_dir.parent().expect("<target>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "kubemqtt-broker",
            "--bin",
            "kubemqtt-broker",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cannot build the broker: {status}");
    binary
}

/// The kubemqtt broker, as the bridge's source.
pub struct SourceBroker {
    pub port: u16,
    /// The TLS listener's port, when it has one.
    pub tls_port: Option<u16>,
    process: Process,
    _dir: tempfile::TempDir,
}

impl SourceBroker {
    pub fn start() -> SourceBroker {
        SourceBroker::start_with(None)
    }

    /// With a TLS listener (`tls_port`) besides the plain one.
    pub fn start_with(tls: Option<&pki::ServerTls>) -> SourceBroker {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let config = dir.path().join("broker.toml");
        let mut text =
            format!("allow_anonymous = true\n\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n");
        let tls_port = tls.map(|tls| {
            let tls_port = free_port();
            text.push_str(&format!(
                "\n[[listeners]]\nbind = \"127.0.0.1:{tls_port}\"\nprotocol = \"tls\"\n[listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                tls.server.cert.display(),
                tls.server.key.display()
            ));
            if let Some(ca) = &tls.client_ca {
                text.push_str(&format!(
                    "ca_file = \"{}\"\nclient_auth = \"require\"\n",
                    ca.display()
                ));
            }
            tls_port
        });
        std::fs::write(&config, text).expect("config written");
        let mut process = Process::spawn(
            "kubemqtt-broker",
            Command::new(broker_binary()).arg("-c").arg(&config),
        );
        wait_for_port(port, "kubemqtt-broker", &mut process);
        if let Some(tls_port) = tls_port {
            wait_for_port(tls_port, "kubemqtt-broker (TLS)", &mut process);
        }
        SourceBroker {
            port,
            tls_port,
            process,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// The bridge binary running a configuration.
pub struct Bridge {
    pub http_port: u16,
    hostname: String,
    config: PathBuf,
    /// Extra environment of the process.
    pub env: Vec<(String, String)>,
    process: Option<Process>,
}

impl Bridge {
    /// Writes the configuration (`[http]` added) and starts the bridge;
    /// waits until it is ready (subscribed).
    pub fn start(dir: &Path, config: &str) -> Bridge {
        Bridge::start_as(dir, config, "bridge-0")
    }

    /// [`Bridge::start`] as the pod `hostname` (its client id).
    pub fn start_as(dir: &Path, config: &str, hostname: &str) -> Bridge {
        let mut bridge = Bridge::configure(dir, config, hostname);
        bridge.restart();
        bridge
    }

    /// Writes the configuration; [`Bridge::restart`] or [`Bridge::launch`]
    /// start the process.
    pub fn configure(dir: &Path, config: &str, hostname: &str) -> Bridge {
        let http_port = free_port();
        let path = dir.join(format!("{hostname}.toml"));
        let text = format!("{config}\n[http]\nbind = \"127.0.0.1:{http_port}\"\n");
        // `[http]` must come before the arrays of tables.
        let (head, tail) = match text.find("\n[[") {
            Some(at) => text.split_at(at),
            None => (text.as_str(), ""),
        };
        let (tail, http) = tail.split_at(tail.find("\n[http]").unwrap_or(tail.len()));
        std::fs::write(&path, format!("{head}{http}\n{tail}\n")).expect("config written");
        Bridge {
            http_port,
            hostname: hostname.to_owned(),
            config: path,
            env: Vec::new(),
            process: None,
        }
    }

    /// Starts the bridge process (again) without waiting for it; waits
    /// until its HTTP server answers.
    pub fn launch(&mut self) {
        let process = Process::spawn(
            "kubemqtt-bridge",
            Command::new(env!("CARGO_BIN_EXE_kubemqtt-bridge"))
                .arg("-c")
                .arg(&self.config)
                // A stable client id, as a StatefulSet pod's name is.
                .env("HOSTNAME", &self.hostname)
                .env("RUST_LOG", "info,kubemqtt_bridge=debug")
                .envs(self.env.iter().map(|(k, v)| (k, v))),
        );
        self.process = Some(process);
        let deadline = Instant::now() + PATIENCE;
        while http_get(self.http_port, "/healthz").is_none() {
            if let Some(process) = &mut self.process {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!("the bridge exited with {status}:\n{}", process.log_text());
                }
            }
            assert!(Instant::now() < deadline, "the bridge does not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the bridge process (again) and waits until it is ready.
    pub fn restart(&mut self) {
        self.launch();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(process) = &mut self.process {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!("the bridge exited with {status}:\n{}", process.log_text());
                }
            }
            if http_get(self.http_port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge is not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(process) = &mut self.process {
            process.kill();
        }
    }

    /// SIGTERM, waiting for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(process) = &mut self.process {
            process.terminate();
        }
    }

    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// `GET /status`.
    pub fn status(&self) -> Value {
        let (code, body) = http_get(self.http_port, "/status").expect("the bridge answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .expect("the bridge answers")
            .1
    }

    /// Waits until `/status` satisfies `done` (counters the bridge updates
    /// once a sink confirmed a write are only eventually right); returns
    /// that status.
    pub async fn wait_for_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not so in time; status {status}\n--- bridge log ---\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/status` reports a last error of `route` (`source`
    /// for the broker connection, or a route or command source name)
    /// containing each of `needles`, and the log has it too; returns the
    /// message.
    pub fn wait_for_error(&self, route: &str, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.status();
            let last = &status["lastError"];
            if let Some(message) = last["message"].as_str() {
                // The log line is written a moment after the status is
                // set: both must say it, within the same patience.
                if last["route"] == route
                    && needles.iter().all(|n| message.contains(n))
                    && needles.iter().all(|n| self.log_text().contains(n))
                {
                    return message.to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no error of {route} with {needles:?} in both the status and the log; status {status}\n--- bridge log ---\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A blocking HTTP/1.0 GET on loopback: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The test's device: publishes readings at QoS 1 to the source broker; a
/// message counts as sent once the broker acknowledged it.
pub fn device(port: u16) -> Publisher {
    Publisher::new(Endpoint {
        host: "127.0.0.1".into(),
        port,
        client_id: format!("device-{}", free_port()),
        username_file: None,
        password_file: None,
        tls: None,
        keep_alive: Duration::from_secs(30),
    })
}

/// The reading with id `id`: topic `sensors/dev<id % 3>/temp`, payload
/// `{"id": id, "temp": 20 + id % 10}`, user properties `client_id` and
/// `seq`.
pub fn reading(id: i64) -> Outbound {
    let device = format!("dev{}", id % 3);
    Outbound {
        topic: format!("sensors/{device}/temp"),
        payload: Bytes::from(json!({"id": id, "temp": 20 + id % 10}).to_string()),
        qos: 1,
        retain: false,
        user_properties: vec![("client_id".into(), device), ("seq".into(), id.to_string())],
    }
}

/// What the standard mapping makes of reading `id`.
pub fn mapped(id: i64) -> Value {
    let device = format!("dev{}", id % 3);
    json!({
        "id": id,
        "device": device,
        "temp_f": ((20 + id % 10) * 9) as f64 / 5.0 + 32.0,
        "client": device,
    })
}

/// The route every sink test uses, without its sink.
pub fn route(dead_letter: &str) -> String {
    format!(
        r#"[[routes]]
name = "readings"
filters = ["sensors/+/temp"]
map = {{ id = "payload.id", device = "segment(topic, 1)", temp_f = "payload.temp * 9 / 5 + 32", client = "client_id" }}
batch = {{ max_messages = 50, linger_ms = 20 }}
retry = {{ initial_ms = 50, max_ms = 500 }}
dead_letter = {dead_letter}
"#
    )
}

/// The head of a bridge configuration for a source broker port.
pub fn head(broker_port: u16) -> String {
    format!(
        "name = \"test-bridge\"\n\n[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\nreceive_maximum = 100\n"
    )
}

/// A message a [`Collector`] received: topic, payload, user properties.
pub type Received = (String, Bytes, Vec<(String, String)>);

/// Messages on an MQTT broker, collected by a persistent-session
/// subscriber that reconnects when the broker restarts.
pub struct Collector {
    pub messages: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
    pub async fn start(port: u16, filter: &str) -> Collector {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
        let mut options = MqttOptions::new(format!("collector-{}", free_port()), "127.0.0.1", port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_max_packet_size(Some(1024 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let filter = filter.to_owned();
        let collected = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        let properties = publish
                            .properties
                            .map(|p| p.user_properties)
                            .unwrap_or_default();
                        collected.lock().unwrap().push((
                            String::from_utf8_lossy(&publish.topic).into_owned(),
                            publish.payload,
                            properties,
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(PATIENCE, subscribed)
            .await
            .expect("the collector subscribes")
            .expect("the collector runs");
        Collector { messages, task }
    }

    /// The payloads as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, payload, _)| serde_json::from_slice(payload).ok())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
