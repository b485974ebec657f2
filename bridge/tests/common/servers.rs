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
        let mut postgres = Postgres {
            port: free_port(),
            dir,
            running: false,
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
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
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
}

impl Nats {
    pub fn start() -> Option<Nats> {
        require("/usr/sbin/nats-server")?;
        let mut nats = Nats {
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            process: None,
        };
        nats.resume();
        Some(nats)
    }

    pub fn resume(&mut self) {
        let mut process = Process::spawn(
            "nats-server",
            Command::new("/usr/sbin/nats-server")
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-sd",
                ])
                .arg(self.dir.path()),
        );
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
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        require("/usr/sbin/mosquitto")?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlog_dest stderr\n",
                dir.path().display()
            ),
        )
        .expect("config written");
        let mut mosquitto = Mosquitto {
            port,
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
    node: String,
    dir: PathBuf,
    process: std::sync::Mutex<Option<Process>>,
}

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

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
        let rabbit = Rabbit {
            port,
            node: format!("bridge-test-{port}@localhost"),
            dir,
            process: std::sync::Mutex::new(None),
        };
        std::fs::create_dir_all(rabbit.dir.join("mnesia")).expect("dir");
        std::fs::create_dir_all(rabbit.dir.join("log")).expect("dir");
        std::fs::write(rabbit.dir.join("enabled_plugins"), "[].\n").expect("plugins file");
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

    /// Stops the AMQP service (connections are closed, the port closes).
    pub fn stop(&self) {
        self.ctl(&["stop_app"]);
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
}
