//! Security and operations: extra listeners and the HTTP server on free
//! ports, signals, files, and `mosquitto_passwd`.

use super::*;

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
pub fn placeholder_names(text: &str) -> Vec<String> {
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
