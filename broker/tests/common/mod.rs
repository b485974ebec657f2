//! Black-box integration test harness for the broker.
//!
//! * [`TestBroker`] starts a broker process on a free loopback port with a
//!   configuration written into a temporary directory, captures its log
//!   lines, and kills it on drop. `KUBEMQTT_TEST_BROKER` selects the target:
//!   unset or `kubemqtt` runs our `kubemqtt-broker` binary, `mosquitto` runs
//!   `/usr/sbin/mosquitto` with the equivalent configuration, so that the
//!   suite can be validated against a reference broker.
//! * [`Client4`] and [`Client5`] wrap rumqttc (MQTT 3.1.1 and 5.0) clients
//!   whose event loop runs in a task and whose incoming packets are collected
//!   in a channel, for ordinary flows.
//! * [`Raw`] is a tiny raw-socket client with hand-written packet bytes
//!   ([`Connect`], [`Pub`], [`subscribe`], ...) and a minimal response parser
//!   ([`Pkt`]), for everything rumqttc cannot express: malformed input, exact
//!   reason codes, DUP flags, flow control, AUTH. It deliberately shares no
//!   code with the broker's own codec. It also runs over TLS
//!   ([`tls_mqtt_connect`]) or after a PROXY header ([`Raw::from_stream`]).
//! * For the security and operations tests (kubemqtt only): [`OpsBroker`]
//!   (extra listeners and the HTTP server on free ports), [`TestCa`] and
//!   [`tls_client_config`] (rcgen certificates, rustls clients),
//!   [`http_request`] and [`PromMetrics`] (a minimal HTTP/1.1 client and a
//!   strict parser of the Prometheus text format).
//!
//! Every wait is bounded by [`TIMEOUT`] (or an explicit duration), so a
//! broken broker fails a test quickly instead of hanging it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for anything the broker is expected to do promptly.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound for a keepalive timeout to be detected. Generous because
/// mosquitto checks keepalives only every few seconds.
pub const KEEPALIVE_BOUND: Duration = Duration::from_secs(12);

/// How long a test listens to conclude that something did *not* happen.
pub const QUIET: Duration = Duration::from_millis(700);

/// True when the suite runs against mosquitto (`KUBEMQTT_TEST_BROKER=mosquitto`).
///
/// Used by the few tests that check a behaviour where mosquitto 2.0.11
/// knowingly differs from what our broker must do; such tests print a note
/// and return early.
pub fn target_is_mosquitto() -> bool {
    match std::env::var("KUBEMQTT_TEST_BROKER").as_deref() {
        Err(_) | Ok("") | Ok("kubemqtt") => false,
        Ok("mosquitto") => true,
        Ok(other) => panic!("KUBEMQTT_TEST_BROKER={other:?}: expected `kubemqtt` or `mosquitto`"),
    }
}

/// Prints why a test is skipped under mosquitto. Returns true when it is.
pub fn skip_on_mosquitto(why: &str) -> bool {
    if target_is_mosquitto() {
        eprintln!("SKIPPED under mosquitto: {why}");
        return true;
    }
    false
}

// ---------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------

/// Knobs of the broker under test. `None` leaves the broker's default.
#[derive(Clone, Debug, Default)]
pub struct BrokerOpts {
    /// Durable storage of retained messages and persistent sessions.
    pub persistence: bool,
    /// Refuse clients without credentials (`allow_anonymous = false`).
    pub deny_anonymous: bool,
    /// Per-packet log lines (`-v` / `log_type all`).
    pub verbose: bool,
    /// Per-session queue bound (QoS 1/2 messages).
    pub max_queued_messages: Option<u32>,
    /// Largest packet accepted and sent, in bytes.
    pub max_packet_size: Option<u32>,
    /// Our QoS 1/2 PUBLISHes in flight towards one client.
    pub max_inflight: Option<u16>,
    /// Receive Maximum announced to MQTT 5 clients (kubemqtt only; mosquitto
    /// derives it from `max_inflight_messages`).
    pub receive_maximum: Option<u16>,
    /// Largest keepalive a client may use; above it MQTT 5 clients get a
    /// Server Keep Alive.
    pub max_keepalive: Option<u16>,
    /// Topic aliases a client may create (client -> server).
    pub topic_alias_maximum: Option<u16>,
    /// Longest accepted client identifier (kubemqtt only; mosquitto has no
    /// such limit).
    pub max_client_id_len: Option<u16>,
    /// What a full session queue drops: `drop_new` or `drop_oldest`
    /// (kubemqtt only; mosquitto always drops new messages).
    pub queue_full: Option<&'static str>,
    /// Appended verbatim to the kubemqtt `[limits]` table (kubemqtt only).
    pub extra_limits: String,
    /// Appended verbatim to the kubemqtt TOML (must not repeat `[limits]`,
    /// `[persistence]` or `[sys]`).
    pub extra_toml: String,
    /// Appended verbatim to the mosquitto configuration.
    pub extra_mosquitto: String,
}

/// A broker process owned by one test. Killed on drop.
pub struct TestBroker {
    opts: BrokerOpts,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl TestBroker {
    /// Starts a broker on a free port and waits until it accepts TCP
    /// connections. Panics (with the broker's output) if it does not.
    pub async fn start(opts: BrokerOpts) -> TestBroker {
        let dir = tempfile::tempdir().expect("create temp dir");
        let mut broker = TestBroker {
            opts,
            dir,
            port: 0,
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        // A free port can be taken by a parallel test between our probe and
        // the broker's bind: try a few ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn_and_wait().await {
                Ok(()) => return broker,
                Err(e) => last_error = e,
            }
        }
        panic!(
            "broker did not start: {last_error}\n--- broker output ---\n{}",
            broker.logs().join("\n")
        );
    }

    /// Starts a broker with default options (no persistence).
    pub async fn start_default() -> TestBroker {
        TestBroker::start(BrokerOpts::default()).await
    }

    /// The listening port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The temporary directory holding the configuration and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.push_marker("killed with SIGKILL");
        }
    }

    /// Freezes the broker (SIGSTOP), as a hung process would be, or lets
    /// it go on (SIGCONT).
    pub fn freeze(&mut self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal} failed");
            self.push_marker(if frozen {
                "frozen with SIGSTOP"
            } else {
                "resumed with SIGCONT"
            });
        }
    }

    /// Stops the broker with SIGTERM and waits for it to exit (SIGKILL after
    /// 10 s). Returns true when it exited on its own.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.push_marker("stopped with SIGTERM");
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        self.push_marker("did not stop on SIGTERM, killed");
        false
    }

    /// Starts the broker again with the same directory, port and
    /// configuration; stops it gracefully first if it is still running.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The port is ours; the broker may need a moment until the old
        // listening socket is gone from the kernel.
        let mut last_error = String::new();
        for _ in 0..20 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "broker did not restart: {last_error}\n--- broker output ---\n{}",
            self.logs().join("\n")
        );
    }

    /// True while the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Every line the broker wrote to stdout or stderr so far (across restarts).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn push_marker(&self, what: &str) {
        if let Ok(mut l) = self.logs.lock() {
            l.push(format!("=== test harness: broker {what} ==="));
        }
    }

    fn config_path(&self) -> PathBuf {
        if target_is_mosquitto() {
            self.dir.path().join("mosquitto.conf")
        } else {
            self.dir.path().join("broker.toml")
        }
    }

    fn write_config(&self) {
        let text = if target_is_mosquitto() {
            self.mosquitto_config()
        } else {
            self.kubemqtt_config()
        };
        std::fs::write(self.config_path(), text).expect("write broker config");
    }

    fn kubemqtt_config(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let data = self.dir.path().join("data");
        let _ = writeln!(s, "allow_anonymous = {}", !o.deny_anonymous);
        let _ = writeln!(
            s,
            "[[listeners]]\nbind = \"127.0.0.1:{}\"\nprotocol = \"tcp\"",
            self.port
        );
        let mut limits = String::new();
        for (key, value) in [
            ("max_queued_messages", o.max_queued_messages.map(u64::from)),
            ("max_packet_size", o.max_packet_size.map(u64::from)),
            ("max_inflight", o.max_inflight.map(u64::from)),
            ("receive_maximum", o.receive_maximum.map(u64::from)),
            ("max_keepalive", o.max_keepalive.map(u64::from)),
            ("topic_alias_maximum", o.topic_alias_maximum.map(u64::from)),
        ] {
            if let Some(v) = value {
                let _ = writeln!(limits, "{key} = {v}");
            }
        }
        if let Some(v) = o.max_client_id_len {
            let _ = writeln!(limits, "max_client_id_len = {v}");
        }
        if let Some(policy) = o.queue_full {
            let _ = writeln!(limits, "queue_full = \"{policy}\"");
        }
        limits.push_str(&o.extra_limits);
        if !limits.is_empty() {
            let _ = write!(s, "[limits]\n{limits}");
        }
        let _ = writeln!(
            s,
            "[persistence]\nenabled = {}\ndir = \"{}\"\nfsync = \"interval\"",
            o.persistence,
            data.display()
        );
        let _ = writeln!(s, "[sys]\ninterval_secs = 1");
        s.push_str(&o.extra_toml);
        s
    }

    fn mosquitto_config(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(s, "listener {} 127.0.0.1", self.port);
        let _ = writeln!(s, "allow_anonymous {}", !o.deny_anonymous);
        // When started as root mosquitto switches to the `mosquitto` user,
        // which cannot write into our temporary directory: stay who we are.
        if is_root() {
            let _ = writeln!(s, "user root");
        }
        let _ = writeln!(s, "persistence {}", o.persistence);
        let _ = writeln!(s, "persistence_location {}/", self.dir.path().display());
        let _ = writeln!(s, "sys_interval 1");
        let _ = writeln!(s, "log_dest stderr");
        if o.verbose {
            let _ = writeln!(s, "log_type all");
        }
        for (key, value) in [
            ("max_queued_messages", o.max_queued_messages.map(u64::from)),
            ("max_packet_size", o.max_packet_size.map(u64::from)),
            ("max_inflight_messages", o.max_inflight.map(u64::from)),
            ("max_keepalive", o.max_keepalive.map(u64::from)),
            ("max_topic_alias", o.topic_alias_maximum.map(u64::from)),
        ] {
            if let Some(v) = value {
                let _ = writeln!(s, "{key} {v}");
            }
        }
        s.push_str(&o.extra_mosquitto);
        s
    }

    fn command(&self) -> Command {
        let config = self.config_path();
        if target_is_mosquitto() {
            let mut c = Command::new("/usr/sbin/mosquitto");
            c.arg("-c").arg(config);
            c
        } else {
            let mut c = Command::new(env!("CARGO_BIN_EXE_kubemqtt-broker"));
            c.arg("-c").arg(config);
            if self.opts.verbose {
                c.arg("-v");
            }
            c
        }
    }

    /// Spawns the process and waits until the port accepts connections.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        if let Some(out) = child.stdout.take() {
            capture_lines(out, Arc::clone(&self.logs));
        }
        if let Some(err) = child.stderr.take() {
            capture_lines(err, Arc::clone(&self.logs));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("broker exited early with {status}"));
            }
            if TcpStream::connect(self.addr()).await.is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("port {} not accepting after 10 s", self.port));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- broker output (port {}) ---", self.port);
            for line in self.logs() {
                eprintln!("{line}");
            }
        }
    }
}

/// True when the tests run as root (uid 0), read from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A port free on 127.0.0.1 now, and never handed out before by this test
/// process (the kernel may give the same port to two binds in a row once
/// the first is closed).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("find a free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn capture_lines(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// rumqttc clients
// ---------------------------------------------------------------------------

/// Incoming packets of a rumqttc event loop, buffered so that a test can wait
/// for one kind of packet without losing the others.
pub struct Events<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    pending: VecDeque<P>,
    /// Set once the event loop reported an error (the connection is gone).
    pub closed: Option<String>,
}

impl<P: std::fmt::Debug> Events<P> {
    /// Removes and returns the first packet accepted by `pick`, waiting at
    /// most `timeout`. Other packets stay buffered in order.
    pub async fn take<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let p = self.pending.remove(i)?;
            return pick(&p);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => match pick(&p) {
                    Some(t) => return Some(t),
                    None => self.pending.push_back(p),
                },
                Ok(Some(Err(e))) => {
                    self.closed = Some(e);
                    return None;
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits until the event loop reports that the connection ended.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        if self.closed.is_some() {
            return self.closed.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => self.pending.push_back(p),
                Ok(Some(Err(e))) => {
                    self.closed = Some(e.clone());
                    return Some(e);
                }
                Ok(None) => return Some("event loop ended".into()),
                Err(_) => return None,
            }
        }
    }
}

/// An MQTT 3.1.1 rumqttc client. Dropping it aborts the event loop, which
/// closes the socket without DISCONNECT (an abnormal disconnect).
pub struct Client4 {
    pub client: rumqttc::AsyncClient,
    pub events: Events<rumqttc::Packet>,
    task: JoinHandle<()>,
}

impl Client4 {
    /// Connects with client id `id` (clean session, keepalive 30 s unless
    /// `configure` changes them) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &TestBroker,
        id: &str,
        configure: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> (Client4, rumqttc::ConnAck) {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        configure(&mut options);
        Client4::connect_options(options).await
    }

    /// Connects with fully prepared options (e.g. a WebSocket or TLS
    /// transport, whose address is a URL) and waits for a successful CONNACK.
    pub async fn connect_options(options: rumqttc::MqttOptions) -> (Client4, rumqttc::ConnAck) {
        let id = options.client_id();
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut eventloop = eventloop;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Stop here: rumqttc would reconnect on the next poll.
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client4 {
            client,
            events: Events {
                rx,
                pending: VecDeque::new(),
                closed: None,
            },
            task,
        };
        let connack = c
            .events
            .take(TIMEOUT, |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        match connack {
            Some(a) => (c, a),
            None => panic!("{id}: no CONNACK ({:?})", c.events.closed),
        }
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| {
                matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("no UNSUBACK for {filter}"));
    }

    /// Publishes and, for QoS 1/2, waits until the broker acknowledged it
    /// (PUBACK, or PUBCOMP after the PUBREC/PUBREL exchange).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("queue PUBLISH");
        let done = match qos {
            rumqttc::QoS::AtMostOnce => return,
            rumqttc::QoS::AtLeastOnce => {
                self.events
                    .take(TIMEOUT, |p| {
                        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                    })
                    .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.events
                    .take(TIMEOUT, |p| {
                        matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                    })
                    .await
            }
        };
        assert!(
            done.is_some(),
            "publish to {topic} not acknowledged ({:?})",
            self.events.closed
        );
    }

    /// Next application message, or `None` after `timeout`.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<rumqttc::Publish> {
        self.events
            .take(timeout, |p| match p {
                rumqttc::Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// Next application message; panics after [`TIMEOUT`].
    pub async fn recv(&mut self) -> rumqttc::Publish {
        match self.next_publish(TIMEOUT).await {
            Some(p) => p,
            None => panic!("no PUBLISH received ({:?})", self.events.closed),
        }
    }

    /// Panics if an application message arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.next_publish(QUIET).await {
            panic!("unexpected PUBLISH: {p:?}");
        }
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.events.wait_closed(TIMEOUT).await;
    }
}

impl Drop for Client4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT 5.0 rumqttc client; see [`Client4`].
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: Events<rumqttc::v5::mqttbytes::v5::Packet>,
    task: JoinHandle<()>,
}

impl Client5 {
    /// Connects with client id `id` (clean start, keepalive 30 s unless
    /// `configure` changes them) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &TestBroker,
        id: &str,
        configure: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (Client5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(1 << 20));
        configure(&mut options);
        Client5::connect_options(options).await
    }

    /// Connects with fully prepared options (e.g. a WebSocket or TLS
    /// transport, whose address is a URL) and waits for a successful CONNACK.
    pub async fn connect_options(
        options: rumqttc::v5::MqttOptions,
    ) -> (Client5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let id = options.client_id();
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut eventloop = eventloop;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Stop here: rumqttc would reconnect on the next poll.
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client5 {
            client,
            events: Events {
                rx,
                pending: VecDeque::new(),
                closed: None,
            },
            task,
        };
        let connack = c
            .events
            .take(TIMEOUT, |p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        match connack {
            Some(a) => (c, a),
            None => panic!("{id}: no CONNACK ({:?})", c.events.closed),
        }
    }

    /// Subscribes and returns the SUBACK reason codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Publishes with properties and, for QoS 1/2, waits until the broker
    /// acknowledged it.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        use rumqttc::v5::mqttbytes::{v5::Packet, QoS};
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), properties)
            .await
            .expect("queue PUBLISH");
        let done = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => {
                self.events
                    .take(TIMEOUT, |p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.events
                    .take(TIMEOUT, |p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        };
        assert!(
            done.is_some(),
            "publish to {topic} not acknowledged ({:?})",
            self.events.closed
        );
    }

    /// Next application message, or `None` after `timeout`.
    pub async fn next_publish(
        &mut self,
        timeout: Duration,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.events
            .take(timeout, |p| match p {
                Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// Next application message; panics after [`TIMEOUT`].
    pub async fn recv(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.next_publish(TIMEOUT).await {
            Some(p) => p,
            None => panic!("no PUBLISH received ({:?})", self.events.closed),
        }
    }

    /// Panics if an application message arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.next_publish(QUIET).await {
            panic!("unexpected PUBLISH: {p:?}");
        }
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.events.wait_closed(TIMEOUT).await;
    }
}

impl Drop for Client5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Raw packets: hand-written encoders
// ---------------------------------------------------------------------------

/// Control packet types (first nibble of the fixed header).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// MQTT 5.0 property identifiers (section 2.2.2.2).
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property value, typed as in the specification's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropValue {
    Byte(u8),
    Two(u16),
    Four(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// An ordered property list, used both to build and to inspect packets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PropValue)>);

impl Props {
    pub fn new() -> Props {
        Props::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Props {
        self.0.push((id, PropValue::Byte(v)));
        self
    }
    pub fn two(mut self, id: u8, v: u16) -> Props {
        self.0.push((id, PropValue::Two(v)));
        self
    }
    pub fn four(mut self, id: u8, v: u32) -> Props {
        self.0.push((id, PropValue::Four(v)));
        self
    }
    pub fn varint(mut self, id: u8, v: u32) -> Props {
        self.0.push((id, PropValue::VarInt(v)));
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Props {
        self.0.push((id, PropValue::Str(v.to_owned())));
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Props {
        self.0.push((id, PropValue::Bin(v.to_vec())));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Props {
        self.0.push((
            prop::USER_PROPERTY,
            PropValue::Pair(k.to_owned(), v.to_owned()),
        ));
        self
    }

    /// The first value with identifier `id`.
    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    /// A numeric property of any width.
    pub fn num(&self, id: u8) -> Option<u32> {
        self.all_nums(id).first().copied()
    }
    /// Every numeric value with identifier `id` (e.g. subscription ids).
    pub fn all_nums(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::Byte(b) => Some(u32::from(*b)),
                PropValue::Two(n) => Some(u32::from(*n)),
                PropValue::Four(n) | PropValue::VarInt(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
    pub fn string(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn binary(&self, id: u8) -> Option<&[u8]> {
        match self.get(id) {
            Some(PropValue::Bin(b)) => Some(b),
            _ => None,
        }
    }
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }

    /// Property length (variable byte integer) followed by the properties.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for (id, v) in &self.0 {
            body.push(*id);
            match v {
                PropValue::Byte(b) => body.push(*b),
                PropValue::Two(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::Four(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::VarInt(n) => put_varint(&mut body, *n),
                PropValue::Str(s) => put_str(&mut body, s),
                PropValue::Bin(b) => put_bin(&mut body, b),
                PropValue::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        put_varint(out, body.len() as u32);
        out.extend_from_slice(&body);
    }
}

/// Appends a variable byte integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed UTF-8 string (no validation: tests send bad ones).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

/// Appends length-prefixed binary data.
pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A whole packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// Will message of a [`Connect`].
#[derive(Clone, Debug, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 will properties (will delay interval, ...).
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            ..Will::default()
        }
    }
}

/// A CONNECT packet.
#[derive(Clone, Debug)]
pub struct Connect {
    /// Protocol level: 3 (MQTT 3.1, "MQIsdp"), 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub props: Props,
}

impl Connect {
    /// MQTT 3.1.1, clean session, keepalive 30 s.
    pub fn v4(client_id: &str) -> Connect {
        Connect {
            level: 4,
            client_id: client_id.into(),
            clean: true,
            keepalive: 30,
            username: None,
            password: None,
            will: None,
            props: Props::new(),
        }
    }
    /// MQTT 5.0, clean start, keepalive 30 s, no properties.
    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v4(client_id)
        }
    }
    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }
    pub fn keepalive(mut self, secs: u16) -> Connect {
        self.keepalive = secs;
        self
    }
    pub fn props(mut self, props: Props) -> Connect {
        self.props = props;
        self
    }
    pub fn will(mut self, will: Will) -> Connect {
        self.will = Some(will);
        self
    }
    pub fn is_v5(&self) -> bool {
        self.level == 5
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, if self.level == 3 { "MQIsdp" } else { "MQTT" });
        b.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.push(flags);
        b.extend_from_slice(&self.keepalive.to_be_bytes());
        if self.is_v5() {
            self.props.encode(&mut b);
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if self.is_v5() {
                w.props.encode(&mut b);
            }
            put_str(&mut b, &w.topic);
            put_bin(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_bin(&mut b, p);
        }
        frame(0x10, &b)
    }
}

/// An outgoing PUBLISH.
#[derive(Clone, Debug, Default)]
pub struct Pub {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Pub {
    /// QoS 0, not retained.
    pub fn new(topic: &str, payload: &[u8]) -> Pub {
        Pub {
            topic: topic.into(),
            payload: payload.into(),
            ..Pub::default()
        }
    }
    /// QoS 1 or 2 with packet identifier `pid`.
    pub fn qos(mut self, qos: u8, pid: u16) -> Pub {
        self.qos = qos;
        self.pid = pid;
        self
    }
    pub fn retain(mut self) -> Pub {
        self.retain = true;
        self
    }
    pub fn dup(mut self) -> Pub {
        self.dup = true;
        self
    }
    pub fn props(mut self, props: Props) -> Pub {
        self.props = props;
        self
    }

    pub fn encode(&self, v5: bool) -> Vec<u8> {
        let mut first = 0x30 | (self.qos << 1);
        if self.retain {
            first |= 0x01;
        }
        if self.dup {
            first |= 0x08;
        }
        let mut b = Vec::new();
        put_str(&mut b, &self.topic);
        if self.qos > 0 {
            b.extend_from_slice(&self.pid.to_be_bytes());
        }
        if v5 {
            self.props.encode(&mut b);
        }
        b.extend_from_slice(&self.payload);
        frame(first, &b)
    }
}

/// Subscription options byte: QoS plus the MQTT 5 flags.
pub fn sub_opts(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

/// SUBSCRIBE with `(filter, options byte)` pairs.
pub fn subscribe(v5: bool, pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        props.encode(&mut b);
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(*o);
    }
    frame(0x82, &b)
}

/// UNSUBSCRIBE.
pub fn unsubscribe(v5: bool, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        Props::new().encode(&mut b);
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(0xA2, &b)
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP. `reason` is only written for 5.0
/// (and omitted when it is success, as the specification allows).
pub fn ack(packet_kind: u8, pid: u16, v5: bool, reason: u8) -> Vec<u8> {
    let first = (packet_kind << 4) | if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    let mut b = pid.to_be_bytes().to_vec();
    if v5 && reason != 0 {
        b.push(reason);
    }
    frame(first, &b)
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT; for 3.1.1 `reason` and `props` are ignored.
pub fn disconnect(v5: bool, reason: u8, props: &Props) -> Vec<u8> {
    if !v5 {
        return vec![0xE0, 0x00];
    }
    let mut b = vec![reason];
    props.encode(&mut b);
    frame(0xE0, &b)
}

/// AUTH (5.0 only).
pub fn auth(reason: u8, props: &Props) -> Vec<u8> {
    let mut b = vec![reason];
    props.encode(&mut b);
    frame(0xF0, &b)
}

// ---------------------------------------------------------------------------
// Raw packets: minimal parser of what the broker sends
// ---------------------------------------------------------------------------

/// CONNACK.
#[derive(Clone, Debug)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1 return code or 5.0 reason code.
    pub code: u8,
    pub props: Props,
}

/// PUBLISH received from the broker.
#[derive(Clone, Debug)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// Zero for QoS 0.
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP.
#[derive(Clone, Debug)]
pub struct Ack {
    pub pid: u16,
    /// 0 when absent (3.1.1, or 5.0 success shorthand).
    pub reason: u8,
    pub props: Props,
}

/// SUBACK or UNSUBACK (3.1.1 UNSUBACK has no codes).
#[derive(Clone, Debug)]
pub struct SubAck {
    pub pid: u16,
    pub props: Props,
    pub codes: Vec<u8>,
}

/// DISCONNECT or AUTH.
#[derive(Clone, Debug)]
pub struct ReasonOnly {
    pub reason: u8,
    pub props: Props,
}

/// A packet received from the broker.
#[derive(Clone, Debug)]
pub enum Pkt {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    SubAck(SubAck),
    UnsubAck(SubAck),
    PingResp,
    Disconnect(ReasonOnly),
    Auth(ReasonOnly),
    /// Anything a broker must never send (CONNECT, SUBSCRIBE...).
    Other(u8, Vec<u8>),
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn fail(&self, msg: &str) -> ! {
        panic!("malformed {} from broker: {msg}", self.what)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        if self.b.len() < n {
            self.fail(&format!("needs {n} more bytes, has {}", self.b.len()));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    fn varint(&mut self) -> u32 {
        let mut n = 0u32;
        for i in 0..4 {
            let b = self.u8();
            n |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return n;
            }
        }
        self.fail("variable byte integer longer than 4 bytes")
    }
    fn bin(&mut self) -> Vec<u8> {
        let n = self.u16() as usize;
        self.take(n).to_vec()
    }
    fn string(&mut self) -> String {
        let b = self.bin();
        String::from_utf8(b).unwrap_or_else(|_| self.fail("invalid UTF-8 string"))
    }
    fn rest(&mut self) -> Vec<u8> {
        self.take(self.b.len()).to_vec()
    }
    fn props(&mut self) -> Props {
        let len = self.varint() as usize;
        let mut r = Reader {
            b: self.take(len),
            what: self.what,
        };
        let mut props = Props::new();
        while !r.b.is_empty() {
            let id = r.u8();
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => PropValue::Byte(r.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => PropValue::Two(r.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => PropValue::Four(r.u32()),
                0x0B => PropValue::VarInt(r.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(r.string()),
                0x09 | 0x16 => PropValue::Bin(r.bin()),
                0x26 => PropValue::Pair(r.string(), r.string()),
                other => r.fail(&format!("unknown property 0x{other:02X}")),
            };
            props.0.push((id, v));
        }
        props
    }
}

impl Pkt {
    /// Parses one packet body. `v5` selects the 5.0 layout.
    pub fn parse(first: u8, body: &[u8], v5: bool) -> Pkt {
        let flags = first & 0x0F;
        let mut r = Reader {
            b: body,
            what: "packet",
        };
        match first >> 4 {
            kind::CONNACK => {
                r.what = "CONNACK";
                let ack_flags = r.u8();
                let code = r.u8();
                let props = if v5 && !r.b.is_empty() {
                    r.props()
                } else {
                    Props::new()
                };
                Pkt::ConnAck(ConnAck {
                    session_present: ack_flags & 1 == 1,
                    code,
                    props,
                })
            }
            kind::PUBLISH => {
                r.what = "PUBLISH";
                let qos = (flags >> 1) & 3;
                let topic = r.string();
                let pid = if qos > 0 { r.u16() } else { 0 };
                let props = if v5 { r.props() } else { Props::new() };
                Pkt::Publish(Publish {
                    topic,
                    qos,
                    dup: flags & 0x08 != 0,
                    retain: flags & 0x01 != 0,
                    pid,
                    props,
                    payload: r.rest(),
                })
            }
            k @ (kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP) => {
                r.what = "acknowledgement";
                let pid = r.u16();
                let reason = if v5 && !r.b.is_empty() { r.u8() } else { 0 };
                let props = if v5 && !r.b.is_empty() {
                    r.props()
                } else {
                    Props::new()
                };
                let a = Ack { pid, reason, props };
                match k {
                    kind::PUBACK => Pkt::PubAck(a),
                    kind::PUBREC => Pkt::PubRec(a),
                    kind::PUBREL => Pkt::PubRel(a),
                    _ => Pkt::PubComp(a),
                }
            }
            k @ (kind::SUBACK | kind::UNSUBACK) => {
                r.what = "SUBACK/UNSUBACK";
                let pid = r.u16();
                let props = if v5 { r.props() } else { Props::new() };
                let a = SubAck {
                    pid,
                    props,
                    codes: r.rest(),
                };
                if k == kind::SUBACK {
                    Pkt::SubAck(a)
                } else {
                    Pkt::UnsubAck(a)
                }
            }
            kind::PINGRESP => Pkt::PingResp,
            k @ (kind::DISCONNECT | kind::AUTH) => {
                r.what = "DISCONNECT/AUTH";
                let reason = if r.b.is_empty() { 0 } else { r.u8() };
                let props = if r.b.is_empty() {
                    Props::new()
                } else {
                    r.props()
                };
                let p = ReasonOnly { reason, props };
                if k == kind::DISCONNECT {
                    Pkt::Disconnect(p)
                } else {
                    Pkt::Auth(p)
                }
            }
            _ => Pkt::Other(first, body.to_vec()),
        }
    }
}

/// What [`Raw::recv_within`] saw.
#[derive(Debug)]
pub enum Recv {
    Packet(Pkt),
    /// The broker closed the connection (EOF or reset).
    Closed,
    Timeout,
}

/// A raw-socket MQTT client: sends hand-made bytes, parses what comes back.
pub struct Raw {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
    /// Parse incoming packets with the 5.0 layout (set by [`Raw::send_connect`]).
    pub v5: bool,
}

impl Raw {
    /// Opens a TCP connection; nothing is sent.
    pub async fn open(broker: &TestBroker) -> Raw {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(broker.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let _ = stream.set_nodelay(true);
        Raw::from_stream(stream)
    }

    /// Opens a connection, sends `connect` and returns the CONNACK (whatever its code).
    pub async fn connect_raw(broker: &TestBroker, connect: &Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(broker).await;
        raw.send_connect(connect).await;
        let ack = raw.expect_connack().await;
        (raw, ack)
    }

    /// Opens a connection and completes a successful CONNECT.
    pub async fn connect(broker: &TestBroker, connect: &Connect) -> (Raw, ConnAck) {
        let (raw, ack) = Raw::connect_raw(broker, connect).await;
        assert_eq!(
            ack.code, 0,
            "CONNACK for {:?} refused: {ack:?}",
            connect.client_id
        );
        (raw, ack)
    }

    /// Sends a CONNECT and switches the parser to its protocol version.
    pub async fn send_connect(&mut self, connect: &Connect) {
        self.v5 = connect.is_v5();
        self.send(&connect.encode()).await;
    }

    /// Writes bytes; a write error (the broker already closed) is ignored,
    /// the following read reports the close.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            // A no-op on TCP; TLS and other layered streams may buffer.
            self.stream.flush().await
        })
        .await;
    }

    pub async fn send_publish(&mut self, p: &Pub) {
        let bytes = p.encode(self.v5);
        self.send(&bytes).await;
    }

    /// Waits at most `timeout` for the next packet.
    pub async fn recv_within(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.parse_buffered() {
                return Recv::Packet(p);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet; panics on close or after [`TIMEOUT`].
    pub async fn recv(&mut self) -> Pkt {
        match self.recv_within(TIMEOUT).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    fn parse_buffered(&mut self) -> Option<Pkt> {
        let first = *self.buf.first()?;
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len |= usize::from(b & 0x7F) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(i <= 4, "broker sent a remaining length longer than 4 bytes");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..i + len).skip(i).collect();
        Some(Pkt::parse(first, &body, self.v5))
    }

    pub async fn expect_connack(&mut self) -> ConnAck {
        match self.recv().await {
            Pkt::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Pkt::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    pub async fn expect_puback(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubAck(a) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    pub async fn expect_pubrec(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubRec(a) => a,
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    pub async fn expect_pubrel(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubRel(a) => a,
            other => panic!("expected PUBREL, got {other:?}"),
        }
    }
    pub async fn expect_pubcomp(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubComp(a) => a,
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
    pub async fn expect_suback(&mut self) -> SubAck {
        match self.recv().await {
            Pkt::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    pub async fn expect_unsuback(&mut self) -> SubAck {
        match self.recv().await {
            Pkt::UnsubAck(a) => a,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Panics if any packet arrives within `d`.
    pub async fn expect_nothing(&mut self, d: Duration) {
        match self.recv_within(d).await {
            Recv::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection, returning the DISCONNECT
    /// it sent first, if any. Panics on any other packet or after [`TIMEOUT`].
    pub async fn expect_closed(&mut self) -> Option<ReasonOnly> {
        self.expect_closed_within(TIMEOUT).await
    }

    /// [`Raw::expect_closed`] with an explicit bound.
    pub async fn expect_closed_within(&mut self, timeout: Duration) -> Option<ReasonOnly> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut disconnect = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Closed => return disconnect,
                Recv::Packet(Pkt::Disconnect(d)) if disconnect.is_none() => disconnect = Some(d),
                other => panic!("expected the broker to close the connection, got {other:?}"),
            }
        }
    }

    /// Expects a CONNECT to be refused with CONNACK `code` followed by a
    /// close. The product requires the CONNACK; mosquitto 2.0.11 closes
    /// without one for malformed 5.0 CONNECTs (the specification makes the
    /// CONNACK optional), so under mosquitto a bare close is accepted.
    pub async fn expect_connect_refused(&mut self, code: u8) {
        match self.recv_within(TIMEOUT).await {
            Recv::Packet(Pkt::ConnAck(a)) => {
                assert_eq!(a.code, code, "CONNACK reason code: {a:?}");
                self.expect_closed().await;
            }
            Recv::Closed if target_is_mosquitto() => {
                eprintln!("note: mosquitto closed without CONNACK {code:#04x}");
            }
            other => panic!("expected CONNACK {code:#04x} then close, got {other:?}"),
        }
    }

    /// Subscribes with one SUBSCRIBE and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.subscribe_props(pid, &Props::new(), filters).await
    }

    /// Subscribes with SUBSCRIBE properties (e.g. a subscription identifier).
    pub async fn subscribe_props(
        &mut self,
        pid: u16,
        props: &Props,
        filters: &[(&str, u8)],
    ) -> Vec<u8> {
        let bytes = subscribe(self.v5, pid, props, filters);
        self.send(&bytes).await;
        let ack = self.expect_suback().await;
        assert_eq!(ack.pid, pid, "SUBACK packet identifier");
        ack.codes
    }

    /// Publishes at QoS 1 and waits for the PUBACK, returning its reason code.
    pub async fn publish_qos1(&mut self, p: &Pub) -> u8 {
        assert_eq!(p.qos, 1);
        self.send_publish(p).await;
        let ack = self.expect_puback().await;
        assert_eq!(ack.pid, p.pid, "PUBACK packet identifier");
        ack.reason
    }

    /// Acknowledges a received PUBLISH as its QoS requires (PUBACK, or
    /// PUBREC + wait PUBREL + PUBCOMP).
    pub async fn ack_publish(&mut self, p: &Publish) {
        match p.qos {
            1 => self.send(&ack(kind::PUBACK, p.pid, self.v5, 0)).await,
            2 => {
                self.send(&ack(kind::PUBREC, p.pid, self.v5, 0)).await;
                let rel = self.expect_pubrel().await;
                assert_eq!(rel.pid, p.pid, "PUBREL packet identifier");
                self.send(&ack(kind::PUBCOMP, p.pid, self.v5, 0)).await;
            }
            _ => {}
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close.
    pub async fn disconnect(mut self) {
        let bytes = disconnect(self.v5, 0, &Props::new());
        self.send(&bytes).await;
        let _ = self.recv_within(TIMEOUT).await;
    }
}

/// Connects a raw 5.0 client that only subscribes to `filter` at `qos`, for
/// tests that need to observe what the broker delivers.
pub async fn raw_subscriber5(broker: &TestBroker, id: &str, filter: &str, qos: u8) -> Raw {
    let (mut raw, _) = Raw::connect(broker, &Connect::v5(id)).await;
    let codes = raw.subscribe(1, &[(filter, qos)]).await;
    assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    raw
}

/// Connects a raw 3.1.1 client subscribed to `filter` at `qos`.
pub async fn raw_subscriber4(broker: &TestBroker, id: &str, filter: &str, qos: u8) -> Raw {
    let (mut raw, _) = Raw::connect(broker, &Connect::v4(id)).await;
    let codes = raw.subscribe(1, &[(filter, qos)]).await;
    assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    raw
}

// ---------------------------------------------------------------------------
// Security and operations: extra listeners, HTTP, TLS, signals
// ---------------------------------------------------------------------------

/// Any byte stream a [`Raw`] client can speak MQTT over (TCP, TLS...).
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for S {}

impl Raw {
    /// Wraps an already connected stream (e.g. after a TLS handshake or a
    /// PROXY protocol header); nothing is sent.
    pub fn from_stream(stream: impl RawStream + 'static) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: Vec::new(),
            v5: false,
        }
    }

    /// Opens a TCP connection to `addr` (another listener than the
    /// broker's main one); nothing is sent.
    pub async fn open_addr(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let _ = stream.set_nodelay(true);
        Raw::from_stream(stream)
    }

    /// Sends `connect` on an open connection and returns the CONNACK.
    pub async fn handshake(&mut self, connect: &Connect) -> ConnAck {
        self.send_connect(connect).await;
        self.expect_connack().await
    }

    /// Sends PINGREQ and expects PINGRESP: the connection is alive.
    pub async fn ping(&mut self) {
        self.send(&pingreq()).await;
        match self.recv().await {
            Pkt::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

impl Connect {
    /// Sets the user name and password.
    pub fn login(mut self, username: &str, password: &str) -> Connect {
        self.username = Some(username.into());
        self.password = Some(password.as_bytes().to_vec());
        self
    }

    /// Sets the user name only (no password field).
    pub fn user(mut self, username: &str) -> Connect {
        self.username = Some(username.into());
        self
    }
}

impl TestBroker {
    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`"HUP"`, `"TERM"`...) to the broker with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("broker is running");
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {pid} failed");
    }

    /// Waits until `deadline` for the process to exit (after a signal sent
    /// with [`TestBroker::signal`]). Returns its exit status, or `None` if
    /// it was still running at `deadline` (it is then killed).
    pub async fn wait_exit(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.push_marker(&format!("exited with {status}"));
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.push_marker("did not exit in time, killed");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }
}

/// A kubemqtt [`TestBroker`] with extra listeners and an HTTP server, for
/// the security and operations tests. Dereferences to the [`TestBroker`],
/// whose main plain TCP listener stays available.
///
/// In `opts.extra_toml`, each `{port:NAME}` is replaced by a free port
/// (the same port for every occurrence of a name, a new one at each start
/// attempt), and lines before the first `[table]` header are moved to the
/// top level of the file (e.g. `presence_events = false`).
pub struct OpsBroker {
    inner: TestBroker,
    ports: std::collections::HashMap<String, u16>,
}

impl std::ops::Deref for OpsBroker {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.inner
    }
}

impl std::ops::DerefMut for OpsBroker {
    fn deref_mut(&mut self) -> &mut TestBroker {
        &mut self.inner
    }
}

impl OpsBroker {
    /// Starts the broker and waits until every listener is bound. Returns
    /// `None` (with a note) when the suite targets mosquitto: these features
    /// are kubemqtt's own.
    pub async fn start(opts: BrokerOpts) -> Option<OpsBroker> {
        if skip_on_mosquitto("kubemqtt-only feature") {
            return None;
        }
        let template = opts.extra_toml.clone();
        let split = template
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(template.lines().count());
        let top: String = template
            .lines()
            .take(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let tables: String = template
            .lines()
            .skip(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let mut broker = OpsBroker {
            inner: TestBroker {
                opts: BrokerOpts {
                    extra_toml: String::new(),
                    ..opts
                },
                dir: tempfile::tempdir().expect("create temp dir"),
                port: 0,
                child: None,
                logs: Arc::new(Mutex::new(Vec::new())),
            },
            ports: std::collections::HashMap::new(),
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            broker.inner.port = free_port();
            broker.ports = placeholder_names(&tables)
                .into_iter()
                .map(|name| (name, free_port()))
                .collect();
            let mut extra = tables.clone();
            for (name, port) in &broker.ports {
                extra = extra.replace(&format!("{{port:{name}}}"), &port.to_string());
            }
            let text = format!("{top}{}{extra}", broker.inner.kubemqtt_config());
            std::fs::write(broker.inner.config_path(), text).expect("write broker config");
            let running_before = broker.inner.count_logs(" running");
            match broker.inner.spawn_and_wait().await {
                // The main listener is bound first; "running" follows the last.
                Ok(()) => {
                    let deadline = Instant::now() + TIMEOUT;
                    while broker.inner.count_logs(" running") == running_before {
                        assert!(
                            Instant::now() < deadline,
                            "broker never logged `running`:\n{}",
                            broker.inner.logs().join("\n")
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return Some(broker);
                }
                Err(e) => last_error = e,
            }
        }
        panic!(
            "broker did not start: {last_error}\n--- broker output ---\n{}",
            broker.inner.logs().join("\n")
        );
    }

    /// The port chosen for `{port:NAME}`.
    pub fn port_of(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no {{port:{name}}} in the configuration"))
    }

    /// `127.0.0.1:` the port chosen for `{port:NAME}`.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port_of(name)))
    }

    /// HTTP request to the listener `{port:http}`, with a bearer token.
    pub async fn http(&self, method: &str, path: &str, token: Option<&str>) -> HttpResponse {
        http_request(self.addr_of("http"), method, path, token).await
    }

    /// Scrapes and parses `/metrics` (from `{port:http}`).
    pub async fn metrics(&self) -> PromMetrics {
        let response = self.http("GET", "/metrics", None).await;
        assert_eq!(response.status, 200, "GET /metrics: {response:?}");
        PromMetrics::parse(&response.body)
    }

    /// Scrapes `/metrics` until `check` accepts them (counters are updated
    /// by other tasks), or panics with the last scrape after [`TIMEOUT`].
    pub async fn wait_metrics(&self, what: &str, check: impl Fn(&PromMetrics) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let metrics = self.metrics().await;
            if check(&metrics) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}; last scrape:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The distinct NAMEs of the `{port:NAME}` placeholders in `text`.
fn placeholder_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (start, _) in text.match_indices("{port:") {
        let rest = &text[start + "{port:".len()..];
        let name = rest.split('}').next().unwrap_or_default().to_owned();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Writes `text` to `dir/name` and returns the path, for configuration
/// fixtures (certificates, password files, ACLs).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- HTTP ----------------------------------------------------------------

/// An HTTP response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }
}

/// A minimal HTTP/1.1 client: one request per connection (`Connection:
/// close`), body read to the end, chunked bodies decoded.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> HttpResponse {
    http_request_with_body(addr, method, path, token, "").await
}

/// Like [`http_request`], sending `body`.
pub async fn http_request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            let _ = write!(request, "Authorization: Bearer {token}\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no response in time"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8(raw).expect("HTTP response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn decode_chunked(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

// ----- Prometheus ----------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` scrape. Parsing is strict: every line must be a
/// `# HELP`, a `# TYPE` with a known type, or a well-formed sample.
#[derive(Debug, Clone)]
pub struct PromMetrics {
    pub samples: Vec<Sample>,
    /// Metric family name -> type (`counter`, `gauge`, `histogram`...).
    pub types: std::collections::HashMap<String, String>,
}

impl PromMetrics {
    pub fn parse(text: &str) -> PromMetrics {
        let mut samples = Vec::new();
        let mut types = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown metric type in {line:?}"
                );
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad sample value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    (name.to_owned(), parse_labels(inner, line))
                }
            };
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        PromMetrics { samples, types }
    }

    /// The value of the sample `name` whose labels include all of `labels`
    /// (summed when several match); `None` if no sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`PromMetrics::get`], with 0 for a series not (yet) exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// One `name{labels} value` line per sample, histogram buckets left out:
/// for failure messages.
impl std::fmt::Display for PromMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in self.samples.iter().filter(|s| !s.name.ends_with("_bucket")) {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            writeln!(f, "{}{{{}}} {}", s.name, labels.join(","), s.value)?;
        }
        Ok(())
    }
}

fn parse_labels(mut inner: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    while !inner.is_empty() {
        let (key, rest) = inner
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        inner = &rest[end + 1..];
    }
    labels
}

// ----- TLS -----------------------------------------------------------------

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

// ----- mosquitto_passwd ----------------------------------------------------

/// The real `mosquitto_passwd`, or `None` (with a note) when it is not
/// installed.
pub fn mosquitto_passwd() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/mosquitto_passwd");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: /usr/bin/mosquitto_passwd is not installed");
        None
    }
}

/// Runs `mosquitto_passwd` with `args`; panics if it fails.
pub fn run_mosquitto_passwd(tool: &Path, args: &[&str]) {
    let output = Command::new(tool)
        .args(args)
        .output()
        .expect("run mosquitto_passwd");
    assert!(
        output.status.success(),
        "mosquitto_passwd {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub mod cluster;
