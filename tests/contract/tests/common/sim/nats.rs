//! Three `nats-server` processes (Debian's) as one JetStream cluster over
//! loopback routes, each with its own store directory, as the broker's
//! own cluster tests run them (broker/tests/common/cluster.rs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{collect_lines, free_port};

use super::http::request;

/// Where Debian installs nats-server.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a JetStream cluster may take to elect its leaders.
const NATS_READY: Duration = Duration::from_secs(30);

/// One server of a [`NatsCluster`].
struct NatsServer {
    name: String,
    client_port: u16,
    http_port: u16,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

/// A JetStream cluster, killed on drop.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` clustered servers and waits until JetStream answers on
    /// each.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client_port, route_port, http_port)) in ports.into_iter().enumerate() {
            let name = format!("nats-{i}");
            let config = write_config(
                dir.path(),
                &name,
                (client_port, route_port, http_port),
                &routes,
            );
            let mut child = Command::new(NATS_SERVER)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nats-server starts");
            let logs = Arc::new(Mutex::new(Vec::new()));
            if let Some(out) = child.stdout.take() {
                collect_lines(out, logs.clone());
            }
            if let Some(err) = child.stderr.take() {
                collect_lines(err, logs.clone());
            }
            servers.push(NatsServer {
                name,
                client_port,
                http_port,
                child,
                logs,
            });
        }
        let cluster = NatsCluster { servers, _dir: dir };
        for server in &cluster.servers {
            let deadline = Instant::now() + NATS_READY;
            loop {
                let health = request(
                    server.http_port,
                    "GET",
                    "/healthz?js-enabled-only=true",
                    None,
                )
                .await;
                if matches!(health, Some((200, _))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready:\n{}",
                    server.name,
                    server.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    /// `nats://127.0.0.1:<port>` of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }
}

fn write_config(
    dir: &Path,
    name: &str,
    (client_port, route_port, http_port): (u16, u16, u16),
    routes: &[String],
) -> PathBuf {
    let mut text = String::new();
    let store = dir.join(format!("{name}-store"));
    let _ = writeln!(text, "server_name: {name}");
    let _ = writeln!(text, "listen: 127.0.0.1:{client_port}");
    let _ = writeln!(text, "http: 127.0.0.1:{http_port}");
    let _ = writeln!(text, "jetstream {{ store_dir: \"{}\" }}", store.display());
    let _ = writeln!(
        text,
        "cluster {{ name: kmqsim, listen: 127.0.0.1:{route_port}, routes: [{}] }}",
        routes.join(", ")
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, text).expect("write the nats-server configuration");
    path
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
    }
}
