//! The broker under test: a process on free loopback ports, its
//! configuration and its log lines (or mosquitto's, with the same
//! configuration).

use super::*;

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
    pub(super) opts: BrokerOpts,
    pub(super) dir: tempfile::TempDir,
    pub(super) port: u16,
    pub(super) child: Option<Child>,
    pub(super) logs: Arc<Mutex<Vec<String>>>,
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

    pub(super) fn push_marker(&self, what: &str) {
        if let Ok(mut l) = self.logs.lock() {
            l.push(format!("=== test harness: broker {what} ==="));
        }
    }

    pub(super) fn config_path(&self) -> PathBuf {
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

    pub(super) fn kubemqtt_config(&self) -> String {
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
    pub(super) async fn spawn_and_wait(&mut self) -> Result<(), String> {
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
pub fn is_root() -> bool {
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
pub fn free_port() -> u16 {
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

pub fn capture_lines(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
}
