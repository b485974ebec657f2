//! Real servers for the sinks, each on a free loopback port in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL 15 cluster (initdb) run by the `postgres` user when the
/// test runs as root (PostgreSQL refuses to run as root).
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
    /// `ssl = on` with these files (in the data directory).
    ssl: Option<PostgresSsl>,
}

struct PostgresSsl {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

fn as_postgres(program: &Path) -> Command {
    // SAFETY-free check of the effective user: `id -u`.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// initdb (trust authentication, user `postgres`) and start.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`] with `ssl = on` and the certificate of `tls`;
    /// when `tls` requires client certificates, the user `bridge` (which
    /// the test creates) may only come over TLS, with a client certificate
    /// naming it (`clientcert=verify-full`), while the test's own plain
    /// connections as `postgres` are still let in.
    pub fn start_with(tls: Option<&pki::ServerTls>) -> Option<Postgres> {
        let initdb = require(&format!("{PG_BIN}/initdb"))?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let output = as_postgres(&initdb)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let data = dir.path().join("data");
        let ssl = tls.map(|tls| {
            // PostgreSQL wants its key owned by it and private.
            let copy = |from: &Path, name: &str, mode: u32| {
                let to = data.join(name);
                std::fs::copy(from, &to).expect("TLS file copied");
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .expect("TLS file mode");
                let _ = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&to)
                    .status();
                to
            };
            if tls.client_ca.is_some() {
                let hba = data.join("pg_hba.conf");
                let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
                std::fs::write(
                    &hba,
                    format!(
                        "hostssl all bridge 127.0.0.1/32 trust clientcert=verify-full\n\
                         hostnossl all bridge 127.0.0.1/32 reject\n{rules}"
                    ),
                )
                .expect("pg_hba.conf written");
            }
            PostgresSsl {
                cert: copy(&tls.server.cert, "server.crt", 0o644),
                key: copy(&tls.server.key, "server.key", 0o600),
                client_ca: tls
                    .client_ca
                    .as_ref()
                    .map(|ca| copy(ca, "client-ca.crt", 0o644)),
            }
        });
        let mut postgres = Postgres {
            port: free_port(),
            dir,
            running: false,
            ssl,
        };
        postgres.resume();
        Some(postgres)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let output = as_postgres(&PathBuf::from(format!("{PG_BIN}/pg_ctl")))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&mut self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if let Some(ssl) = &self.ssl {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                ssl.cert.display(),
                ssl.key.display()
            ));
            if let Some(ca) = &ssl.client_ca {
                options.push_str(&format!(" -c ssl_ca_file={}", ca.display()));
            }
        }
        let log = self.dir.path().join("log");
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "-l",
            &log.to_string_lossy(),
            "start",
        ]);
        self.running = true;
    }

    /// Stops (fast shutdown: connections are cut).
    pub fn stop(&mut self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        self.running = false;
    }

    /// The connection string for user `postgres`.
    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// A client for the test's own queries.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.connection(), tokio_postgres::NoTls)
                .await
                .expect("the test connects to PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres(&PathBuf::from(format!("{PG_BIN}/pg_ctl")))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

/// nats-server with JetStream, its store in a temp dir.
pub struct Nats {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
    tls: Option<pki::ServerTls>,
}

impl Nats {
    pub fn start() -> Option<Nats> {
        Nats::start_with(None)
    }

    /// [`Nats::start`], TLS only, with the certificate of `tls` (and
    /// client certificates verified when it asks for them).
    pub fn start_with(tls: Option<&pki::ServerTls>) -> Option<Nats> {
        require("/usr/sbin/nats-server")?;
        let mut nats = Nats {
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            process: None,
            tls: tls.cloned(),
        };
        nats.resume();
        Some(nats)
    }

    pub fn resume(&mut self) {
        let mut command = Command::new("/usr/sbin/nats-server");
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path());
        if let Some(tls) = &self.tls {
            command
                .arg("--tlscert")
                .arg(&tls.server.cert)
                .arg("--tlskey")
                .arg(&tls.server.key);
            if let Some(ca) = &tls.client_ca {
                command.arg("--tlsverify").arg("--tlscacert").arg(ca);
            }
        }
        let mut process = Process::spawn("nats-server", &mut command);
        wait_for_port(self.port, "nats-server", &mut process);
        self.process = Some(process);
    }

    /// SIGTERM: a clean stop, the store kept.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// mosquitto with persistence, as the remote broker of the MQTT sink.
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, when it has one.
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        Mosquitto::start_with(None)
    }

    /// [`Mosquitto::start`] with a TLS listener (`tls_port`) besides the
    /// plain one, with the certificate of `tls`; client certificates are
    /// required when it asks for them.
    pub fn start_with(tls: Option<&pki::ServerTls>) -> Option<Mosquitto> {
        require("/usr/sbin/mosquitto")?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlog_dest stderr\n",
            dir.path().display()
        );
        let tls_port = tls.map(|tls| {
            let tls_port = free_port();
            config.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                tls.server.cert.display(),
                tls.server.key.display()
            ));
            if let Some(ca) = &tls.client_ca {
                config.push_str(&format!(
                    "cafile {}\nrequire_certificate true\n",
                    ca.display()
                ));
            }
            tls_port
        });
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("config written");
        let mut mosquitto = Mosquitto {
            port,
            tls_port,
            dir,
            process: None,
        };
        mosquitto.resume();
        Some(mosquitto)
    }

    pub fn resume(&mut self) {
        let mut process = Process::spawn(
            "mosquitto",
            Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(self.dir.path().join("mosquitto.conf")),
        );
        wait_for_port(self.port, "mosquitto", &mut process);
        if let Some(tls_port) = self.tls_port {
            wait_for_port(tls_port, "mosquitto (TLS)", &mut process);
        }
        self.process = Some(process);
    }

    /// SIGTERM: mosquitto saves its sessions and queued messages.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }
}

/// One RabbitMQ node for the whole test binary (it takes seconds to
/// start); tests use queues of their own.
pub struct Rabbit {
    pub port: u16,
    /// The `amqps` listener: a server certificate for
    /// [`RABBIT_TLS_NAME`] of `pki`, client certificates of `pki` required.
    pub tls_port: u16,
    pub pki: pki::Pki,
    /// A client certificate of `pki`.
    pub client: pki::Pair,
    node: String,
    dir: PathBuf,
    process: std::sync::Mutex<Option<Process>>,
}

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// The only name on the certificate of RabbitMQ's `amqps` listener.
pub const RABBIT_TLS_NAME: &str = "rabbit.kubemqtt.test";

impl Rabbit {
    /// The shared node, started at the first call.
    pub fn shared() -> Option<&'static Rabbit> {
        static RABBIT: std::sync::OnceLock<Option<Rabbit>> = std::sync::OnceLock::new();
        RABBIT.get_or_init(Rabbit::start).as_ref()
    }

    fn start() -> Option<Rabbit> {
        require(&format!("{RABBIT_BIN}/rabbitmq-server"))?;
        let dir = tempfile::Builder::new()
            .prefix("kubemqtt-bridge-rabbit")
            .tempdir()
            .expect("a temp dir")
            .keep();
        let port = free_port();
        // In the node's directory, which the watchdog removes.
        let pki = pki::Pki::new_in("rabbit", &dir);
        let server = pki.server("rabbit", &[RABBIT_TLS_NAME]);
        let client = pki.client("bridge");
        let rabbit = Rabbit {
            port,
            tls_port: free_port(),
            node: format!("bridge-test-{port}@localhost"),
            dir,
            process: std::sync::Mutex::new(None),
            pki,
            client,
        };
        std::fs::create_dir_all(rabbit.dir.join("mnesia")).expect("dir");
        std::fs::create_dir_all(rabbit.dir.join("log")).expect("dir");
        std::fs::write(rabbit.dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            rabbit.dir.join("rabbitmq.conf"),
            format!(
                "listeners.ssl.default = 127.0.0.1:{}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                rabbit.tls_port,
                rabbit.pki.ca.display(),
                server.cert.display(),
                server.key.display()
            ),
        )
        .expect("rabbitmq.conf");
        // A static is never dropped: a watchdog stops the node (and removes
        // its directory) once this test process is gone.
        let mut server = rabbit.command("rabbitmq-server");
        let watchdog = format!(
            "( while kill -0 {test} 2>/dev/null; do sleep 1; done; {RABBIT_BIN}/rabbitmqctl -n {node} stop >/dev/null 2>&1; rm -rf {dir} ) & exec {RABBIT_BIN}/rabbitmq-server",
            test = std::process::id(),
            node = rabbit.node,
            dir = rabbit.dir.display(),
        );
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(watchdog);
        for (name, value) in server.get_envs() {
            if let Some(value) = value {
                shell.env(name, value);
            }
        }
        server = shell;
        let mut process = Process::spawn("rabbitmq-server", &mut server);
        wait_for_port(port, "rabbitmq-server", &mut process);
        wait_for_port(rabbit.tls_port, "rabbitmq-server (amqps)", &mut process);
        *rabbit.process.lock().unwrap() = Some(process);
        Some(rabbit)
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(format!("{RABBIT_BIN}/{tool}"));
        let dir = &self.dir;
        command
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"));
        command
    }

    fn ctl(&self, args: &[&str]) {
        let output = self
            .command("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops the AMQP service (connections are closed, the port closes);
    /// returns once the port refuses connections.
    pub fn stop(&self) {
        self.ctl(&["stop_app"]);
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
            assert!(Instant::now() < deadline, "RabbitMQ still listens");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again and waits for the port.
    pub fn resume(&self) {
        self.ctl(&["start_app"]);
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(Instant::now() < deadline, "RabbitMQ does not listen again");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The `amqps` listener's URL.
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.tls_port)
    }
}
