//! The managed NATS of a rendered broker (`spec.cluster.nats.managed`) as
//! three real `nats-server` processes on this machine.
//!
//! Each server is one pod of the planned StatefulSet: its volumes are laid
//! out under a directory of its own as the kubelet mounts them (the
//! ConfigMap's and the Secret's keys as files, with the Secret volume's
//! mode; the claim and the emptyDir as empty directories), the container's
//! arguments and environment (`POD_NAME` from `metadata.name`) are the
//! StatefulSet's, and `nats.conf` changes only where a pod and this
//! machine must differ (`layout.rs`): the paths move under the pod's
//! directory, and each listener binds a free loopback port instead of its
//! fixed port on `0.0.0.0` (three servers share one loopback).
//!
//! The route URLs keep their Kubernetes DNS names (only their ports
//! change). Rewriting them to `127.0.0.1` cannot work: a server that dials
//! a route checks the peer's certificate for the URL's host, the servers'
//! certificate names the pods' DNS names (`*.<name>-nats-headless...`) and
//! no IP address, and the handshake fails ("x509: cannot validate
//! certificate for 127.0.0.1 because it doesn't contain any IP SANs").
//! Turning verification off (`insecure`) or issuing another certificate
//! would no longer test what the operator renders. So the names are mapped
//! instead, as the cluster's DNS would: each server runs in a user and
//! mount namespace of its own (`unshare`; no privilege needed where
//! unprivileged user namespaces are allowed, as on Debian) whose
//! `/etc/hosts` is a bind mount of a file mapping every pod's DNS name to
//! 127.0.0.1. The routes then dial the rendered names and verify the
//! rendered certificate for them, as in the cluster.
//!
//! (Another way that needs no namespace: nats-server uses the first host
//! name of the route list as the TLS name of routes dialled by IP
//! address, its gossip path; keeping one unresolvable name in each list
//! would do. It was not taken: it changes the route URLs, and every route
//! would be checked against one name.)
//!
//! The test's own client cannot resolve the names either: `broker_tls`
//! (`tls.rs`) dials 127.0.0.1 and verifies the server's certificate for
//! the names the broker dials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubemqtt_operator::plan::nats::NatsPlan;

use super::{collect_lines, free_port};

mod layout;
pub mod tls;

use layout::{config_arg, environment, lay_out, localize};

/// Where Debian installs nats-server.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a server may take to answer its readiness probe.
const READY: Duration = Duration::from_secs(30);

/// Runs the command after `--` with the hosts file given first mounted on
/// `/etc/hosts`, in a user and mount namespace of its own (the process is
/// nats-server itself: `unshare` and `sh` exec it, so a signal reaches it).
const WITH_HOSTS: &str = r#"hosts="$1"; shift; mount --bind "$hosts" /etc/hosts && exec "$@""#;

/// One server: a pod of the NATS StatefulSet.
pub struct NatsPod {
    /// The pod's name (`<broker>-nats-<ordinal>`), the server's name.
    pub name: String,
    /// Its DNS name, as the route URLs and the brokers name it.
    pub host: String,
    /// The loopback ports standing for the container's `client`,
    /// `cluster` and `monitor` ports.
    pub client_port: u16,
    pub route_port: u16,
    pub http_port: u16,
    /// The localized `nats.conf`.
    pub config: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NatsPod {
    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// `GET path` on the monitoring port, as JSON.
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.http_port, path).expect("the monitoring port answers");
        assert_eq!(code, 200, "{} {path}: {body}", self.name);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{} {path}: {e}: {body}", self.name))
    }

    /// SIGKILL, as a node that dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL nats-server");
            child.wait().expect("nats-server reaped");
        }
    }
}

/// The three servers, killed on drop; their logs are printed when a test
/// fails.
pub struct ManagedNats {
    pub pods: Vec<NatsPod>,
    _dir: tempfile::TempDir,
}

impl ManagedNats {
    /// Lays out and starts every pod of `nats`'s StatefulSet (planned with
    /// `cluster_domain`) and waits until each passes the StatefulSet's
    /// readiness probe.
    pub fn start(nats: &NatsPlan, cluster_domain: &str) -> ManagedNats {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sts = &nats.stateful_set;
        let sts_name = sts.metadata.name.clone().expect("the StatefulSet's name");
        let namespace = sts.metadata.namespace.clone().expect("a namespace");
        let spec = sts.spec.as_ref().expect("the StatefulSet's spec");
        let service = spec.service_name.clone().expect("a governing Service");
        let pod_spec = spec.template.spec.as_ref().expect("a pod template");
        let container = pod_spec
            .containers
            .iter()
            .find(|c| c.name == "nats")
            .expect("the nats container");
        let replicas = usize::try_from(spec.replicas.expect("replicas")).expect("replicas");
        let names: Vec<String> = (0..replicas).map(|i| format!("{sts_name}-{i}")).collect();
        // As the headless Service publishes them (Kubernetes' pod DNS names
        // under a StatefulSet's governing Service).
        let hosts: Vec<String> = names
            .iter()
            .map(|pod| format!("{pod}.{service}.{namespace}.svc.{cluster_domain}"))
            .collect();
        let ports: Vec<Ports> = names
            .iter()
            .map(|_| Ports {
                client: free_port(),
                route: free_port(),
                http: free_port(),
            })
            .collect();
        let hosts_file = dir.path().join("hosts");
        let mut mapping = "127.0.0.1 localhost\n".to_owned();
        for host in &hosts {
            mapping.push_str(&format!("127.0.0.1 {host}\n"));
        }
        std::fs::write(&hosts_file, mapping).expect("write the hosts file");
        let readiness = container
            .readiness_probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .and_then(|get| get.path.clone())
            .expect("an HTTP readiness probe");

        let mut pods = Vec::new();
        for (ordinal, name) in names.iter().enumerate() {
            let root = dir.path().join(name);
            let args = lay_out(nats, pod_spec, container, &root);
            let config_path = PathBuf::from(config_arg(&args));
            let rendered = std::fs::read_to_string(&config_path).expect("nats.conf");
            let config = localize(&rendered, container, &root, &hosts, &ports, ordinal);
            std::fs::write(&config_path, &config).expect("write nats.conf");
            let mut command = Command::new("unshare");
            command
                .args(["--user", "--map-root-user", "--mount", "--", "sh", "-c"])
                .arg(WITH_HOSTS)
                .arg("sh")
                .arg(&hosts_file)
                .arg(NATS_SERVER)
                .args(&args)
                .envs(environment(container, name))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn().expect("unshare starts");
            let logs = Arc::new(Mutex::new(Vec::new()));
            if let Some(out) = child.stdout.take() {
                collect_lines(out, logs.clone());
            }
            if let Some(err) = child.stderr.take() {
                collect_lines(err, logs.clone());
            }
            pods.push(NatsPod {
                name: name.clone(),
                host: hosts[ordinal].clone(),
                client_port: ports[ordinal].client,
                route_port: ports[ordinal].route,
                http_port: ports[ordinal].http,
                config,
                child: Some(child),
                logs,
            });
        }
        let mut nats = ManagedNats { pods, _dir: dir };
        for pod in &mut nats.pods {
            let deadline = Instant::now() + READY;
            loop {
                if !pod.running() {
                    panic!(
                        "{} exited (it needs `unshare --user --map-root-user --mount`: \
                         unprivileged user namespaces, or root):\n{}",
                        pod.name,
                        pod.log_text()
                    );
                }
                if probe(pod.http_port, &readiness) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready ({readiness}) within {READY:?}:\n{}",
                    pod.name,
                    pod.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        nats
    }

    /// The pod named `name`.
    pub fn pod_mut(&mut self, name: &str) -> &mut NatsPod {
        self.pods
            .iter_mut()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The pod whose DNS name is `host`.
    pub fn by_host(&self, host: &str) -> &NatsPod {
        self.pods
            .iter()
            .find(|pod| pod.host == host)
            .unwrap_or_else(|| panic!("no pod is called {host}"))
    }
}

impl Drop for ManagedNats {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            pod.kill();
        }
        if std::thread::panicking() {
            for pod in &self.pods {
                eprintln!("--- {} ---\n{}", pod.name, pod.log_text());
            }
        }
    }
}

pub(super) struct Ports {
    pub(super) client: u16,
    pub(super) route: u16,
    pub(super) http: u16,
}

fn probe(port: u16, path: &str) -> bool {
    http_get(port, path).is_ok_and(|(code, _)| code == 200)
}

/// Status and body of `GET path` on the monitoring port. HTTP/1.0: the
/// body comes whole, not in chunks, and the connection closes after it.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
