//! A broker cluster on one machine, for the cluster tests: real
//! `nats-server` processes (Debian's, JetStream on, clustered over
//! loopback routes, each with its own store directory) and several
//! `kubemqtt-broker` processes sharing them.
//!
//! `nats-server` must be installed (`scripts/test.sh` installs it): a
//! missing binary fails the test, it is never skipped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    ack, capture_lines, disconnect, free_port, kind, prop, BrokerOpts, ConnAck, Connect, OpsBroker,
    Pkt, Props, Pub, Publish, Raw, Recv, TIMEOUT,
};

/// Where Debian installs nats-server.
const NATS_SERVER: &str = "/usr/sbin/nats-server";
/// How long a JetStream cluster may take to elect its leaders.
const NATS_READY: Duration = Duration::from_secs(30);

/// One nats-server of a [`NatsCluster`].
pub struct NatsServer {
    pub name: String,
    pub client_port: u16,
    route_port: u16,
    http_port: u16,
    config: PathBuf,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A cluster of nats-servers with JetStream, killed on drop.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
    /// One cluster at a time per test binary: several, each with its NATS
    /// servers and brokers, would starve each other on a small machine.
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// Whose turn it is to run a cluster.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl NatsCluster {
    /// Starts `n` clustered servers and waits until JetStream is up on each.
    /// Starts over on other ports when a server could not bind one (the
    /// free ports found are free only until some other process, another
    /// test binary running alongside, takes them).
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, true, "").await
    }

    /// As [`NatsCluster::start`], with `extra` added to every server's
    /// configuration (`tls {...}`, `authorization {...}`).
    pub async fn start_configured(n: usize, extra: &str) -> NatsCluster {
        NatsCluster::start_with(n, true, extra).await
    }

    /// As [`NatsCluster::start`], with servers that do not tell clients
    /// about each other (`no_advertise`): a client reaches only the URLs
    /// it is given (a broker behind a [`CutProxy`] stays behind it).
    pub async fn start_unadvertised(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, false, "").await
    }

    async fn start_with(n: usize, advertise: bool, extra: &str) -> NatsCluster {
        let turn = TURN.lock().await;
        assert!(
            std::path::Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: install Debian's nats-server (scripts/test.sh does)"
        );
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::spawn(n, advertise, extra);
            let mut not_ready = None;
            for i in 0..n {
                if let Err(logs) = cluster.ready(i).await {
                    not_ready = Some((i, logs));
                    break;
                }
            }
            let Some((i, logs)) = not_ready else {
                cluster._turn = Some(turn);
                return cluster;
            };
            let port_taken = logs.contains("address already in use");
            assert!(
                port_taken && attempt < 3,
                "nats-server nats-{i} not ready:\n{logs}"
            );
            attempt += 1;
        }
    }

    /// Writes the configuration of `n` clustered servers on free ports, and
    /// starts them.
    fn spawn(n: usize, advertise: bool, extra: &str) -> NatsCluster {
        let dir = tempfile::tempdir().expect("create temp dir");
        let mut servers: Vec<NatsServer> = (0..n)
            .map(|i| NatsServer {
                name: format!("nats-{i}"),
                client_port: free_port(),
                route_port: free_port(),
                http_port: free_port(),
                config: dir.path().join(format!("nats-{i}.conf")),
                child: None,
                logs: Arc::new(Mutex::new(Vec::new())),
            })
            .collect();
        let routes: Vec<String> = servers
            .iter()
            .map(|s| format!("nats-route://127.0.0.1:{}", s.route_port))
            .collect();
        for server in &servers {
            let mut text = String::new();
            let store = dir.path().join(format!("{}-store", server.name));
            let _ = writeln!(text, "server_name: {}", server.name);
            let _ = writeln!(text, "listen: 127.0.0.1:{}", server.client_port);
            let _ = writeln!(text, "http: 127.0.0.1:{}", server.http_port);
            let _ = writeln!(text, "jetstream {{ store_dir: \"{}\" }}", store.display());
            if n > 1 {
                let _ = writeln!(
                    text,
                    "cluster {{ name: kmqtest, listen: 127.0.0.1:{}, routes: [{}], no_advertise: {} }}",
                    server.route_port,
                    routes.join(", "),
                    !advertise
                );
            }
            text.push_str(extra);
            std::fs::write(&server.config, text).expect("write nats config");
        }
        for server in &mut servers {
            server.spawn();
        }
        NatsCluster {
            servers,
            _dir: dir,
            _turn: None,
        }
    }

    /// Bytes server `i` received from the client whose connection name
    /// ends with `name` (`/connz`), if connected there.
    pub async fn client_in_bytes(&self, i: usize, name: &str) -> Option<u64> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.servers[i].http_port));
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /connz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        let body = response.split_once("\r\n\r\n")?.1;
        let connz: serde_json::Value = serde_json::from_str(body).ok()?;
        connz["connections"]
            .as_array()?
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.ends_with(name)))?["in_bytes"]
            .as_u64()
    }

    /// `nats://127.0.0.1:<port>` of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stalls server `i` (SIGSTOP): its connections stay open, nothing is
    /// answered on them, and its peers elect new leaders without it.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let child = self.servers[i].child.as_ref().expect("a running server");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} nats-{i}");
    }

    /// Starts server `i` again (same ports and store) and waits for it.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.servers[i].spawn();
        self.wait_ready(i).await;
    }

    async fn wait_ready(&self, i: usize) {
        if let Err(logs) = self.ready(i).await {
            panic!("nats-server {} not ready:\n{logs}", self.servers[i].name);
        }
    }

    /// Waits until JetStream is up on server `i`; its log when it does not
    /// come up within [`NATS_READY`] (or exited).
    async fn ready(&self, i: usize) -> Result<(), String> {
        let server = &self.servers[i];
        let addr = SocketAddr::from(([127, 0, 0, 1], server.http_port));
        let deadline = Instant::now() + NATS_READY;
        loop {
            if http_ok(addr, "/healthz?js-enabled-only=true").await {
                return Ok(());
            }
            let logs = || server.logs.lock().map(|l| l.join("\n")).unwrap_or_default();
            if Instant::now() >= deadline || logs().contains("[FTL]") {
                // (A fatal error ends the server: no use waiting.)
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl NatsServer {
    fn spawn(&mut self) {
        let mut child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        if let Some(out) = child.stdout.take() {
            capture_lines(out, Arc::clone(&self.logs));
        }
        if let Some(err) = child.stderr.take() {
            capture_lines(err, Arc::clone(&self.logs));
        }
        self.child = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            // What JetStream did (elections, lost quorum) explains most
            // failures of the brokers on top of it.
            for server in &self.servers {
                eprintln!(
                    "--- {} output (last {NATS_LOG_TAIL} lines) ---",
                    server.name
                );
                if let Ok(logs) = server.logs.lock() {
                    for line in &logs[logs.len().saturating_sub(NATS_LOG_TAIL)..] {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// How many of its last lines each nats-server shows when a test fails.
const NATS_LOG_TAIL: usize = 80;

/// Options of the brokers of a [`BrokerCluster`].
#[derive(Clone, Default)]
pub struct ClusterOpts {
    /// Lines appended to every broker's `[cluster]` table.
    pub cluster_toml: String,
    /// Lines for every broker's `[limits]` table.
    pub limits: String,
    /// Tables appended to every broker's configuration (`[auth]`...).
    pub extra_tables: String,
    /// Durable storage on every broker.
    pub persistence: bool,
    /// An admin API token file (the token is `tok`).
    pub admin_token: bool,
    /// The NATS servers (indices) every broker is given; all when empty.
    pub nats_servers: Vec<usize>,
    /// The NATS servers of each node, by node, where given (instead of
    /// `nats_servers`).
    pub node_nats_servers: Vec<Vec<usize>>,
    /// `node_timeout_secs` (3 when not given).
    pub node_timeout_secs: Option<u64>,
    /// The NATS URLs of each node, by node, where given (instead of the
    /// servers': e.g. a [`CutProxy`]'s).
    pub node_nats_urls: Vec<Vec<String>>,
    /// Lines appended to each node's `[cluster]` table, by node (after
    /// `cluster_toml`): its own NATS credentials.
    pub node_cluster_toml: Vec<String>,
}

/// Several brokers (`node-0`, `node-1`...) in one cluster on `nats`.
pub struct BrokerCluster {
    pub nodes: Vec<OpsBroker>,
    pub name: String,
    /// The NATS servers' URLs, the copies JetStream keeps, and how every
    /// node is configured (for nodes added later).
    urls: Vec<String>,
    replicas: usize,
    opts: ClusterOpts,
    token_dir: tempfile::TempDir,
}

impl BrokerCluster {
    /// Starts `n` brokers sharing `nats` and waits until each is ready
    /// (`/readyz`: connected, streams and buckets in place).
    pub async fn start(nats: &NatsCluster, n: usize, opts: ClusterOpts) -> BrokerCluster {
        let mut cluster = BrokerCluster {
            nodes: Vec::new(),
            name: format!("kmq{}", free_port()),
            urls: nats.urls(),
            replicas: nats.servers.len().min(3),
            opts,
            token_dir: tempfile::tempdir().expect("create temp dir"),
        };
        for _ in 0..n {
            let node = cluster.spawn_node().await;
            cluster.nodes.push(node);
        }
        for i in 0..n {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Starts one more broker (`node-<n>`) in the cluster without waiting
    /// for it to be ready. Returns its index.
    pub async fn add_node_unready(&mut self) -> usize {
        let node = self.spawn_node().await;
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Starts one more broker (`node-<n>`) in the cluster, as a scale-up
    /// does, and waits until it is ready. Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let node = self.spawn_node().await;
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.wait_ready(i).await;
        i
    }

    /// Starts broker `node-<nodes.len()>` (not waiting for it to be ready).
    async fn spawn_node(&self) -> OpsBroker {
        let i = self.nodes.len();
        let opts = &self.opts;
        let given = opts.node_nats_servers.get(i).unwrap_or(&opts.nats_servers);
        let servers: Vec<String> = match opts.node_nats_urls.get(i) {
            Some(urls) => urls.iter().map(|u| format!("\"{u}\"")).collect(),
            None => self
                .urls
                .iter()
                .enumerate()
                .filter(|(i, _)| given.is_empty() || given.contains(i))
                .map(|(_, u)| format!("\"{u}\""))
                .collect(),
        };
        let admin = if opts.admin_token {
            let path = self.token_dir.path().join("admin-token");
            std::fs::write(&path, "tok\n").expect("write the admin token");
            format!("admin_token_file = \"{}\"\n", path.display())
        } else {
            String::new()
        };
        let extra_toml = format!(
            "node_name = \"node-{i}\"\n\
             [http]\nbind = \"127.0.0.1:{{port:http}}\"\n{admin}\
             [limits]\n{}\n\
             [cluster]\nservers = [{}]\nname = \"{}\"\nreplicas = {}\nnode_timeout_secs = {}\n{}\n{}\n{}",
            opts.limits,
            servers.join(", "),
            self.name,
            self.replicas,
            opts.node_timeout_secs.unwrap_or(3),
            opts.cluster_toml,
            opts.node_cluster_toml.get(i).map_or("", String::as_str),
            opts.extra_tables,
        );
        OpsBroker::start(BrokerOpts {
            persistence: opts.persistence,
            extra_toml,
            ..BrokerOpts::default()
        })
        .await
        .expect("the cluster tests run against kubemqtt only")
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + NATS_READY;
        loop {
            let response = self.nodes[i].http("GET", "/readyz", None).await;
            if response.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node-{i} not ready: {response:?}\n{}",
                self.nodes[i].logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `i`'s counter or gauge `name` (0 when absent).
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        self.nodes[i].metrics().await.value(name, &[])
    }
}

/// Waits until `check` holds, up to [`TIMEOUT`] (or panics with `what`).
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `GET path` on `addr` answers 200 (false while nothing listens).
async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b"200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

// ---------------------------------------------------------------- clients
// What the cluster tests do with their clients.

/// 5.0 DISCONNECT reason: Session taken over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

/// Upper bound for what crosses NATS: generous, since a busy machine (CI's
/// two cores running several NATS servers and brokers) slows JetStream
/// leader elections and watches; a healthy run takes milliseconds.
pub const SLOW: Duration = Duration::from_secs(20);

/// Waits until a message published on `from` reaches `subs` (routes take a
/// moment to spread): publishes QoS 0 probes on `topic` until each
/// subscriber got one, then drains further probes.
pub async fn await_routes(from: &mut Raw, topic: &str, subs: &mut [&mut Raw]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reached = vec![false; subs.len()];
    while reached.iter().any(|r| !r) {
        assert!(
            Instant::now() < deadline,
            "routes never reached {reached:?}"
        );
        from.send_publish(&Pub::new(topic, b"probe")).await;
        for (i, sub) in subs.iter_mut().enumerate() {
            while let Recv::Packet(Pkt::Publish(p)) =
                sub.recv_within(Duration::from_millis(50)).await
            {
                if p.topic == topic {
                    reached[i] = true;
                }
                if p.qos > 0 {
                    sub.send(&ack(kind::PUBACK, p.pid, sub.v5, 0)).await;
                }
            }
        }
    }
    for sub in subs.iter_mut() {
        while let Recv::Packet(_) = sub.recv_within(Duration::from_millis(100)).await {}
    }
}

/// Receives `n` PUBLISHes, acknowledging QoS 1 and completing QoS 2.
pub async fn receive(sub: &mut Raw, n: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        let packet = match sub.recv_within(SLOW).await {
            Recv::Packet(packet) => packet,
            other => panic!(
                "expected PUBLISH, got {other:?} after {} messages",
                got.len()
            ),
        };
        match packet {
            Pkt::Publish(p) => {
                match p.qos {
                    1 => sub.send(&ack(kind::PUBACK, p.pid, sub.v5, 0)).await,
                    2 => sub.send(&ack(kind::PUBREC, p.pid, sub.v5, 0)).await,
                    _ => {}
                }
                got.push(p);
            }
            Pkt::PubRel(r) => sub.send(&ack(kind::PUBCOMP, r.pid, sub.v5, 0)).await,
            other => panic!(
                "expected PUBLISH, got {other:?} after {} messages",
                got.len()
            ),
        }
    }
    got
}

pub fn payloads(got: &[Publish]) -> Vec<String> {
    got.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).to_string())
        .collect()
}

/// Publishes QoS 1 messages `prefix-0..n` on `topic` one by one.
pub async fn publish_qos1(publisher: &mut Raw, topic: &str, prefix: &str, n: u16) {
    publish_qos1_or_say(publisher, topic, prefix, n, "").await
}

/// [`publish_qos1`], with `context` in the message of a PUBACK that is not
/// a success.
pub async fn publish_qos1_or_say(
    publisher: &mut Raw,
    topic: &str,
    prefix: &str,
    n: u16,
    context: &str,
) {
    for i in 0..n {
        let body = format!("{prefix}-{i}");
        publisher
            .send_publish(&Pub::new(topic, body.as_bytes()).qos(1, i + 1))
            .await;
        let ack = match publisher.recv_within(SLOW).await {
            Recv::Packet(Pkt::PubAck(ack)) => ack,
            other => panic!("expected the PUBACK of {body}, got {other:?}"),
        };
        assert_eq!(ack.reason, 0, "PUBACK of {body}: {ack:?}\n{context}");
    }
}

/// Connects `connect` to `node`, again while it answers 0x88 (server
/// unavailable: a JetStream election, a session still being handed over
/// elsewhere), for up to a minute (a loaded machine, CI, may take that
/// long to elect leaders). Panics on any other answer.
pub async fn connect_when_available(node: &OpsBroker, connect: &Connect) -> (Raw, ConnAck) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut raw = Raw::open(node).await;
        raw.send_connect(connect).await;
        let ack = match raw.recv_within(SLOW).await {
            Recv::Packet(Pkt::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        if ack.code == 0 {
            return (raw, ack);
        }
        assert_eq!(ack.code, 0x88, "{ack:?}");
        assert!(Instant::now() < deadline, "never available: {ack:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Leaves a persistent session `mover` in the cluster: connected to node
/// `on`, subscribed to `filter` at QoS 1, reached by what a publisher
/// ("pub", returned) on node `publisher_on` sends, then disconnected; once
/// node `on` has stopped following the session (every node applied the
/// move), messages for it go straight to its queue, in order. (Before
/// that, one routed to the node it left comes into the queue through that
/// node, possibly after a later one: docs/clustering.md, "Known limits".)
pub async fn leave_mover_in_the_cluster(
    cluster: &BrokerCluster,
    on: usize,
    publisher_on: usize,
    filter: &str,
) -> Raw {
    let (mut mover, ack) = Raw::connect(&cluster.nodes[on], &persistent("mover")).await;
    assert!(!ack.session_present);
    mover.subscribe(1, &[(filter, 1)]).await;
    // No keepalive, like the mover's (`persistent`).
    let publisher_connect = Connect::v5("pub").keepalive(0);
    let (mut publisher, _) = Raw::connect(&cluster.nodes[publisher_on], &publisher_connect).await;
    let probe = filter.replace('#', "probe");
    await_routes(&mut publisher, &probe, &mut [&mut mover]).await;
    mover.send(&disconnect(true, 0, &Props::new())).await;
    drop(mover);
    assert!(
        cluster.nodes[on]
            .wait_for_log("Session of mover handed to the cluster", SLOW)
            .await
    );
    assert!(
        cluster.nodes[on]
            .wait_for_log("Session of mover no longer followed here", SLOW)
            .await
    );
    publisher
}

/// A 5.0 CONNECT that resumes a session kept for an hour.
///
/// No keepalive: a raw client sends no PINGREQ of its own, and tests wait
/// for JetStream to recover from a failure for longer than a keepalive
/// allows (CI on 2026-12-05: a client idle for over 45 s while JetStream
/// had no metadata leader was closed with 0x8D before the test looked).
pub fn persistent(client_id: &str) -> Connect {
    Connect::v5(client_id)
        .keepalive(0)
        .clean(false)
        .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 3600))
}

/// What the cluster's interest bucket holds now, message by message of its
/// stream (subject, sequence, put or delete), and every node's log: what a
/// test prints when a message found no subscriber it should have.
pub async fn interest_and_logs(nats: &NatsCluster, cluster: &BrokerCluster) -> String {
    let mut text = String::new();
    match interest_history(nats, &cluster.name).await {
        Ok(lines) => {
            let _ = writeln!(text, "interest bucket:\n{lines}");
        }
        Err(e) => {
            let _ = writeln!(text, "interest bucket unreadable: {e}");
        }
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let _ = writeln!(text, "node {i}:\n{}", node.logs().join("\n"));
    }
    text
}

async fn interest_history(nats: &NatsCluster, cluster: &str) -> Result<String, String> {
    let client = async_nats::connect(nats.urls()[0].as_str())
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(format!("KV_KMQ_{cluster}_interest"))
        .await
        .map_err(|e| e.to_string())?;
    let state = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .clone();
    let mut lines = String::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let operation = message
            .headers
            .get("KV-Operation")
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| "PUT".into());
        let _ = writeln!(lines, "  {seq} {} {operation}", message.subject);
    }
    Ok(lines)
}

/// A TCP proxy in front of one NATS server that a test can cut (every
/// connection through it dropped, new ones closed at once) and heal: a
/// network partition between a broker and NATS. Stops on drop.
pub struct CutProxy {
    pub url: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on a free loopback port to `target` (`nats://host:port`).
    pub async fn start(target: &str) -> CutProxy {
        let target = target.trim_start_matches("nats://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("nats://{}", listener.local_addr().expect("proxy address"));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, pipes) = (cut.clone(), pipes.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::Acquire) {
                        continue; // dropped: closed at once
                    }
                    let target = target.clone();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    pipes.lock().unwrap().push(pipe);
                }
            })
        };
        CutProxy {
            url,
            cut,
            pipes,
            accept,
        }
    }

    /// Drops every connection through the proxy and closes new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}
