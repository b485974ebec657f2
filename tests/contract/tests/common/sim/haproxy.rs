//! HAProxy (Debian's) as the stand-in for the broker's load balancer: TCP
//! mode, round robin, each broker checked on its HTTP port's `/readyz`
//! every 200 ms (one failure takes it out of rotation, one success puts it
//! back), as a Service's endpoints follow the pods' readiness.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{collect_lines, free_port};

/// Where Debian installs HAProxy.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A backend server: a broker's MQTT and HTTP ports.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The server's name (the replica's).
    pub name: String,
    /// Its MQTT (plain TCP) port.
    pub mqtt_port: u16,
    /// Its HTTP port, for the health check.
    pub http_port: u16,
}

/// A running HAProxy, killed on drop.
pub struct LoadBalancer {
    /// Where clients connect.
    pub port: u16,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl LoadBalancer {
    /// Starts HAProxy in front of `backends` (servers that do not run yet
    /// simply fail their checks, as a StatefulSet's pods not yet created).
    pub fn start(backends: &[Backend]) -> LoadBalancer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut config = format!(
            "global\n    maxconn 4096\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    \
             timeout server 120s\n    retries 3\n    option redispatch\n\n\
             frontend mqtt\n    bind 127.0.0.1:{port}\n    default_backend brokers\n\n\
             backend brokers\n    balance roundrobin\n    option httpchk GET /readyz\n    \
             default-server inter 200ms fall 1 rise 1\n"
        );
        for backend in backends {
            let _ = writeln!(
                config,
                "    server {} 127.0.0.1:{} check port {}",
                backend.name, backend.mqtt_port, backend.http_port
            );
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write the HAProxy configuration");
        let mut child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("HAProxy starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect_lines(out, logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, logs.clone());
        }
        let mut lb = LoadBalancer {
            port,
            child,
            logs,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("HAProxy exited with {status}:\n{}", lb.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy does not listen:\n{}",
                lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    /// What HAProxy printed.
    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
