//! A connect storm against a real `kubemqtt-broker` process over TLS, per
//! login mode: password users from a file (the baseline), and the four
//! device fleet modes. Reports logins per second, the broker's CPU time
//! per login (from /proc), and what the login check alone costs in
//! process (without TLS and the socket). With `--revoked N`, also the
//! broker's memory with N revoked device ids against none.
//!
//! ```text
//! cargo build --release -p kubemqtt-broker --bin kubemqtt-broker --example fleet_logins
//! target/release/examples/fleet_logins --broker target/release/kubemqtt-broker \
//!     --devices 10000 --concurrency 64 --modes password,certificate,derived,jwt,hook
//! ```
//!
//! `scripts/bench-fleets.sh` runs it as docs/benchmarks.md reports it.
//! Every connection stays open until all have logged in (the devices are
//! all connected at the end), then all close.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubemqtt_broker::auth::fleet::derived::{device_secret, sign_login};
use kubemqtt_broker::auth::fleet::{FleetLogin, Fleets, LoginRequest};
use kubemqtt_broker::auth::verify_password;
use kubemqtt_broker::config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FLEET_SECRET: &str = "bench fleet secret, 32 bytes or more";

struct Args {
    broker: PathBuf,
    devices: usize,
    concurrency: usize,
    modes: Vec<String>,
    revoked: usize,
}

fn args() -> Args {
    let mut args = Args {
        broker: PathBuf::from("target/release/kubemqtt-broker"),
        devices: 10_000,
        concurrency: 64,
        modes: vec!["password", "certificate", "derived", "jwt", "hook"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        revoked: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => args.broker = value.into(),
            "--devices" => args.devices = value.parse().expect("a number"),
            "--concurrency" => args.concurrency = value.parse().expect("a number"),
            "--modes" => args.modes = value.split(',').map(str::to_owned).collect(),
            "--revoked" => args.revoked = value.parse().expect("a number"),
            other => panic!("unknown option {other}"),
        }
    }
    args
}

/// A CA that signs.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_owned()]
        } else {
            vec![]
        };
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What one device sends: user name, password, client certificate (in
/// its TLS configuration, and alone for the in-process check).
struct Login {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    certificate: Option<CertificateDer<'static>>,
}

fn client_config(ca_pem: &str, cert: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

fn connect_packet(login: &Login) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0x02;
    if login.username.is_some() {
        flags |= 0x80;
    }
    if login.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    string(&mut body, login.client_id.as_bytes());
    if let Some(u) = &login.username {
        string(&mut body, u.as_bytes());
    }
    if let Some(p) = &login.password {
        string(&mut body, p.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if n == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

type Held = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS, CONNECT, CONNACK; the connection is kept.
async fn log_in(addr: SocketAddr, login: &Login) -> Result<Held, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio_rustls::TlsConnector::from(login.tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(&connect_packet(login))
        .await
        .map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack)
        .await
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(format!("refused: {connack:?}"));
    }
    Ok(tls)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(bin: &Path, dir: &Path, auth: &str, client_ca: Option<&Path>) -> Broker {
    let port = free_port();
    let client_auth = client_ca
        .map(|ca| {
            format!(
                "ca_file = \"{}\"\nclient_auth = \"optional\"\n",
                ca.display()
            )
        })
        .unwrap_or_default();
    let toml = format!(
        "[[listeners]]\nbind = \"127.0.0.1:{port}\"\nprotocol = \"tls\"\n\
         [listeners.tls]\ncert_file = \"{dir}/server.crt\"\nkey_file = \"{dir}/server.key\"\n\
         {client_auth}\
         [log]\nlevel = \"warning\"\n\
         [auth]\n{auth}",
        dir = dir.display()
    );
    let config = dir.join("broker.toml");
    std::fs::write(&config, toml).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child, addr }
}

/// The registry of hook fleets: allows every login and topic.
async fn registry() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    let reply = "{\"result\": \"allow\"}";
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    buf.clear();
                }
            });
        }
    });
    url
}

/// The broker's `[auth]` lines for `mode`, and each device's login.
async fn setup(
    mode: &str,
    dir: &Path,
    server_ca: &Ca,
    devices: usize,
) -> (String, Option<PathBuf>, Vec<Login>) {
    let plain = client_config(&server_ca.pem, None);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ids: Vec<String> = (0..devices).map(|i| format!("dev-{i:06}")).collect();
    match mode {
        "password" => {
            let mut file = String::new();
            for id in &ids {
                let hash = kubemqtt_broker::auth::hash_password(&format!("pw-{id}")).unwrap();
                file.push_str(&format!("{id}:{hash}\n"));
            }
            std::fs::write(dir.join("passwd"), file).unwrap();
            let auth = format!("password_file = \"{}/passwd\"\n", dir.display());
            let logins = ids
                .iter()
                .map(|id| Login {
                    client_id: id.clone(),
                    username: Some(id.clone()),
                    password: Some(format!("pw-{id}")),
                    tls: plain.clone(),
                    certificate: None,
                })
                .collect();
            (auth, None, logins)
        }
        "certificate" => {
            let fleet_ca = Ca::new("bench fleet CA");
            std::fs::write(dir.join("fleet-ca.pem"), &fleet_ca.pem).unwrap();
            let auth = format!(
                "[[auth.fleets]]\nname = \"meters\"\nmode = \"certificate\"\n\
                 [[auth.fleets.acl]]\naction = \"publish\"\ntopic = \"m/%d/#\"\n\
                 [auth.fleets.certificate]\nca_file = \"{}/fleet-ca.pem\"\n",
                dir.display()
            );
            let logins = ids
                .iter()
                .map(|id| {
                    let (cert, key) = fleet_ca.issue(id, false);
                    Login {
                        client_id: id.clone(),
                        username: None,
                        password: None,
                        tls: client_config(&server_ca.pem, Some((&cert, &key))),
                        certificate: CertificateDer::from_pem_slice(cert.as_bytes()).ok(),
                    }
                })
                .collect();
            (auth, Some(dir.join("fleet-ca.pem")), logins)
        }
        "derived" => {
            std::fs::write(dir.join("fleet.secret"), FLEET_SECRET).unwrap();
            let auth = format!(
                "[[auth.fleets]]\nname = \"sensors\"\nmode = \"derived\"\nusername = \"%d@sensors\"\n\
                 [[auth.fleets.acl]]\naction = \"publish\"\ntopic = \"s/%d/#\"\n\
                 [auth.fleets.derived]\nsecret_file = \"{}/fleet.secret\"\n",
                dir.display()
            );
            let logins = ids
                .iter()
                .map(|id| Login {
                    client_id: id.clone(),
                    username: Some(format!("{id}@sensors")),
                    password: Some(sign_login(
                        &device_secret(FLEET_SECRET.as_bytes(), id),
                        id,
                        id,
                        now,
                    )),
                    tls: plain.clone(),
                    certificate: None,
                })
                .collect();
            (auth, None, logins)
        }
        "jwt" => {
            let key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.join("keys.pem"), key.public_key_pem()).unwrap();
            let encoding =
                jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            let auth = format!(
                "[[auth.fleets]]\nname = \"cars\"\nmode = \"jwt\"\nusername = \"car\"\n\
                 [[auth.fleets.acl]]\naction = \"publish\"\ntopic = \"c/%d/#\"\n\
                 [auth.fleets.jwt]\nkeys_file = \"{}/keys.pem\"\n",
                dir.display()
            );
            let logins = ids
                .iter()
                .map(|id| {
                    let claims = serde_json::json!({"sub": id, "exp": now + 3600});
                    Login {
                        client_id: id.clone(),
                        username: Some("car".into()),
                        password: Some(jsonwebtoken::encode(&header, &claims, &encoding).unwrap()),
                        tls: plain.clone(),
                        certificate: None,
                    }
                })
                .collect();
            (auth, None, logins)
        }
        "hook" => {
            let url = registry().await;
            let auth = format!(
                "[[auth.fleets]]\nname = \"vending\"\nmode = \"hook\"\nusername = \"%d@vending\"\n\
                 [auth.fleets.hook]\nurl = \"{url}/login\"\n"
            );
            let logins = ids
                .iter()
                .map(|id| Login {
                    client_id: id.clone(),
                    username: Some(format!("{id}@vending")),
                    password: Some("pw".into()),
                    tls: plain.clone(),
                    certificate: None,
                })
                .collect();
            (auth, None, logins)
        }
        other => panic!("unknown mode {other}"),
    }
}

async fn storm(
    broker: &Broker,
    logins: Vec<Login>,
    concurrency: usize,
) -> (usize, Duration, Vec<Held>) {
    let logins = Arc::new(logins);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (logins, next, addr) = (logins.clone(), next.clone(), broker.addr);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(login) = logins.get(i) else { break };
                match log_in(addr, login).await {
                    Ok(stream) => held.push(stream),
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("login {i}: {e}");
                        }
                    }
                }
            }
            held
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.extend(task.await.unwrap());
    }
    (held.len(), started.elapsed(), held)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let server_ca = Ca::new("bench server CA");
    println!(
        "| mode | devices | logged in | wall s | logins/s | broker CPU s | CPU ms per login |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mode in &args.modes {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_ca.issue("localhost", true);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let (auth, client_ca, logins) = setup(mode, dir.path(), &server_ca, args.devices).await;
        let broker = start_broker(&args.broker, dir.path(), &auth, client_ca.as_deref());
        let pid = broker.child.id();
        let cpu_before = cpu_seconds(pid);
        let (ok, wall, held) = storm(&broker, logins, args.concurrency).await;
        let cpu = cpu_seconds(pid) - cpu_before;
        println!(
            "| {mode} | {} | {ok} | {:.2} | {:.0} | {:.2} | {:.3} |",
            args.devices,
            wall.as_secs_f64(),
            ok as f64 / wall.as_secs_f64(),
            cpu,
            cpu * 1000.0 / ok.max(1) as f64
        );
        std::io::stdout().flush().unwrap();
        drop(held);
        drop(broker);
    }
    verify_costs(&args, &server_ca).await;
    if args.revoked > 0 {
        revoked_memory(&args, &server_ca).await;
    }
}

/// What the login check alone costs, in this process: every device's
/// check of each mode, one after the other, without TLS or a socket
/// (`verify_password` for the password file, `Fleets::login` for fleets;
/// the hook's is an HTTP round trip to a local registry, asked every time,
/// whose answering is in this process's CPU time too). The devices are
/// checked again until a second of CPU time has passed (/proc counts in
/// 10 ms ticks). CPU time is what a check costs; wall time also shows how
/// busy the machine was.
async fn verify_costs(args: &Args, server_ca: &Ca) {
    println!();
    println!("| mode | checks | CPU µs per check | wall µs per check |");
    println!("|---|---|---|---|");
    let me = std::process::id();
    for mode in &args.modes {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _, logins) = setup(mode, dir.path(), server_ca, args.devices).await;
        let checker = Checker::new(mode, dir.path(), &auth);
        let (started, cpu) = (Instant::now(), cpu_seconds(me));
        let mut checks = 0;
        while checks == 0 || cpu_seconds(me) - cpu < 1.0 {
            for login in &logins {
                assert!(checker.check(login).await, "{mode}: every check passes");
            }
            checks += logins.len();
        }
        let (wall, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds(me) - cpu);
        println!(
            "| {mode} | {checks} | {:.1} | {:.1} |",
            cpu * 1e6 / checks.max(1) as f64,
            wall * 1e6 / checks.max(1) as f64
        );
    }
}

/// One mode's login check, without the broker around it.
enum Checker {
    Password(std::collections::HashMap<String, String>),
    Fleet(Fleets),
}

impl Checker {
    fn new(mode: &str, dir: &Path, auth: &str) -> Checker {
        if mode == "password" {
            let text = std::fs::read_to_string(dir.join("passwd")).unwrap();
            let hashes = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(user, hash)| (user.to_owned(), hash.to_owned()))
                .collect();
            return Checker::Password(hashes);
        }
        // Ask the registry every time: the devices are checked more than once.
        let auth = auth.replace(
            "[auth.fleets.hook]\n",
            "[auth.fleets.hook]\ncache_ttl_secs = 0\n",
        );
        let config = Config::from_toml_str(&format!("[auth]\n{auth}"), "bench").unwrap();
        Checker::Fleet(Fleets::load(&config.auth.fleets, None).unwrap())
    }

    async fn check(&self, login: &Login) -> bool {
        match self {
            Checker::Password(hashes) => {
                let user = login.username.as_deref().unwrap_or_default();
                let password = login.password.as_deref().unwrap_or_default();
                hashes
                    .get(user)
                    .is_some_and(|hash| verify_password(hash, password))
            }
            Checker::Fleet(fleets) => {
                let chain = login.certificate.clone().map(|c| vec![c]);
                let request = LoginRequest {
                    certificates: chain.as_deref(),
                    username: login.username.as_deref(),
                    password: login.password.as_deref().map(str::as_bytes),
                    client_id: &login.client_id,
                    peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                };
                matches!(fleets.login(&request).await, FleetLogin::Accepted(_))
            }
        }
    }
}

/// The broker's RSS with a fleet of `--revoked` revoked ids against none.
async fn revoked_memory(args: &Args, server_ca: &Ca) {
    let mut rows = Vec::new();
    for revoked in [0, args.revoked] {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_ca.issue("localhost", true);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("fleet.secret"), FLEET_SECRET).unwrap();
        let list: String = (0..revoked).map(|i| format!("device-{i:08}\n")).collect();
        std::fs::write(dir.path().join("revoked"), &list).unwrap();
        let auth = format!(
            "[[auth.fleets]]\nname = \"sensors\"\nmode = \"derived\"\nusername = \"%d@sensors\"\n\
             revocation_file = \"{0}/revoked\"\n\
             [auth.fleets.derived]\nsecret_file = \"{0}/fleet.secret\"\n",
            dir.path().display()
        );
        let started = Instant::now();
        let broker = start_broker(&args.broker, dir.path(), &auth, None);
        let up = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows.push((revoked, list.len(), rss_kib(broker.child.id()), up));
    }
    println!();
    println!("| revoked ids | list file MiB | broker RSS MiB | start to listening s |");
    println!("|---|---|---|---|");
    for (revoked, bytes, rss, up) in rows {
        println!(
            "| {revoked} | {:.1} | {:.1} | {:.2} |",
            bytes as f64 / 1048576.0,
            rss as f64 / 1024.0,
            up.as_secs_f64()
        );
    }
}
