//! Device fleets against the real broker over TLS: a device of each mode
//! (certificates, derived passwords, JWT, HTTP hook) logs in, gets its
//! fleet's topics and no others; bad logins get the right CONNACK reason
//! and are counted per fleet; revocation and token expiry disconnect
//! connected devices; plain users are not affected. The hook's registry is
//! a small HTTP server inside the test.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use kubemqtt_broker::auth::fleet::derived::{device_secret, sign_login};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLEET_SECRET: &str = "sensors fleet secret: 32 bytes or more";

/// A TLS listener `tls` (server certificate of `ca`; client certificates
/// optional, checked against `client_cas`), HTTP on `{port:http}`, and
/// `[auth]` (re-read every second) followed by `auth`.
fn broker_toml(dir: &Path, ca: &TestCa, client_cas: &[&TestCa], auth: &str) -> String {
    let server = ca.server_cert();
    let cert = write_file(dir, "server.crt", &server.cert_pem);
    let key = write_file(dir, "server.key", &server.key_pem);
    let client_auth = if client_cas.is_empty() {
        String::new()
    } else {
        let bundle: String = client_cas.iter().map(|ca| ca.cert_pem.clone()).collect();
        let path = write_file(dir, "client-cas.pem", &bundle);
        format!(
            "ca_file = \"{}\"\nclient_auth = \"optional\"\nusername_from = \"cn\"\n",
            path.display()
        )
    };
    format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{{port:tls}}\"\nprotocol = \"tls\"\n\
         [listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{client_auth}\
         [http]\nbind = \"127.0.0.1:{{port:http}}\"\n\
         [auth]\nreload_interval_secs = 1\n{auth}",
        cert.display(),
        key.display()
    )
}

async fn start(toml: String) -> Option<OpsBroker> {
    OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: toml,
        ..BrokerOpts::default()
    })
    .await
}

/// CONNECT over TLS as `username` / `password` (5.0), with a client
/// certificate when given.
async fn login(
    broker: &OpsBroker,
    ca: &TestCa,
    cert: Option<&CertKey>,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> (Raw, ConnAck) {
    let mut connect = Connect::v5(client_id);
    connect.username = username.map(str::to_owned);
    connect.password = password.map(|p| p.as_bytes().to_vec());
    tls_mqtt_connect(
        broker.addr_of("tls"),
        tls_client_config(&ca.cert_pem, cert),
        &connect,
    )
    .await
    .expect("TLS and CONNECT")
}

async fn connack(
    broker: &OpsBroker,
    ca: &TestCa,
    client_id: &str,
    username: &str,
    password: &str,
) -> u8 {
    login(broker, ca, None, client_id, Some(username), Some(password))
        .await
        .1
        .code
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(device: &str, client_id: &str, at: u64) -> String {
    sign_login(
        &device_secret(FLEET_SECRET.as_bytes(), device),
        client_id,
        device,
        at,
    )
}

async fn fleet_metric(broker: &OpsBroker, fleet: &str, result: &str) -> f64 {
    broker
        .metrics()
        .await
        .get(
            "kubemqtt_fleet_logins_total",
            &[("fleet", fleet), ("result", result)],
        )
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn derived_password_devices_log_in_and_bad_logins_get_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    write_file(dir.path(), "secret", &format!("{FLEET_SECRET}\n"));
    let revoked = write_file(dir.path(), "revoked", "device sensor-9\n");
    let passwd = write_file(
        dir.path(),
        "passwd",
        // "alice" / "alice-pw" (mosquitto_passwd).
        include_str!("fixtures/mosquitto.passwd"),
    );
    let auth = format!(
        "password_file = \"{}\"\n\
         [[auth.fleets]]\nname = \"sensors\"\nmode = \"derived\"\nusername = \"%d@sensors\"\n\
         revocation_file = \"{}\"\n\
         [[auth.fleets.acl]]\naction = \"publish\"\ntopic = \"sensors/%d/#\"\n\
         [[auth.fleets.acl]]\naction = \"subscribe\"\ntopic = \"cmd/%d\"\n\
         [auth.fleets.derived]\nsecret_file = \"{}\"\nreplay_window_secs = 60\n",
        passwd.display(),
        revoked.display(),
        dir.path().join("secret").display()
    );
    let Some(broker) = start(broker_toml(dir.path(), &ca, &[], &auth)).await else {
        return;
    };

    let now = now_secs();
    let (mut device, ack) = login(
        &broker,
        &ca,
        None,
        "box-1",
        Some("sensor-1@sensors"),
        Some(&signed("sensor-1", "box-1", now)),
    )
    .await;
    assert_eq!(ack.code, 0, "a signed login");
    assert_eq!(
        device
            .publish_qos1(&Pub::new("sensors/sensor-1/temp", b"21").qos(1, 1))
            .await,
        0x10,
        "its own topic (no subscribers)"
    );
    assert_eq!(
        device
            .publish_qos1(&Pub::new("sensors/sensor-2/temp", b"21").qos(1, 2))
            .await,
        0x87,
        "another device's topic"
    );
    assert_eq!(device.subscribe(3, &[("cmd/sensor-1", 1)]).await, vec![1]);
    assert_eq!(device.subscribe(4, &[("cmd/#", 1)]).await, vec![0x87]);

    let cases = [
        (
            "sensor-1@sensors",
            "not a signature".to_owned(),
            0x86,
            "malformed",
        ),
        (
            "sensor-1@sensors",
            signed("sensor-2", "box-2", now),
            0x86,
            "bad_signature",
        ),
        (
            "sensor-1@sensors",
            signed("sensor-1", "box-2", now - 120),
            0x86,
            "replayed",
        ),
        (
            "sensor-9@sensors",
            signed("sensor-9", "box-2", now),
            0x8A,
            "revoked",
        ),
    ];
    for (username, password, code, reason) in &cases {
        assert_eq!(
            connack(&broker, &ca, "box-2", username, password).await,
            *code,
            "{reason}"
        );
    }
    for (_, _, _, reason) in &cases {
        assert_eq!(
            fleet_metric(&broker, "sensors", reason).await,
            1.0,
            "{reason}"
        );
    }
    assert_eq!(fleet_metric(&broker, "sensors", "accepted").await, 1.0);

    // Users of the password file are not the fleet's.
    assert_eq!(connack(&broker, &ca, "a", "alice", "alice-pw").await, 0);
    assert_eq!(connack(&broker, &ca, "a", "alice", "wrong").await, 0x86);
    // The connected device was not affected by any of it.
    assert_eq!(
        device
            .publish_qos1(&Pub::new("sensors/sensor-1/temp", b"22").qos(1, 5))
            .await,
        0x10
    );
    let metrics = broker.metrics().await;
    assert_eq!(
        metrics.get("kubemqtt_fleet_devices_online", &[("fleet", "sensors")]),
        Some(1.0)
    );

    // Revoking the connected device disconnects it within seconds, and it
    // cannot come back.
    std::fs::write(
        &revoked,
        "device sensor-9\ndevice sensor-1\n# revoked now\n",
    )
    .unwrap();
    let disconnect = device.expect_closed_within(Duration::from_secs(10)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    let again = signed("sensor-1", "box-1", now_secs());
    assert_eq!(
        connack(&broker, &ca, "box-1", "sensor-1@sensors", &again).await,
        0x8A
    );
    broker
        .wait_metrics("the device is offline and the disconnect counted", |m| {
            m.get("kubemqtt_fleet_devices_online", &[("fleet", "sensors")]) == Some(0.0)
                && m.get(
                    "kubemqtt_fleet_disconnects_total",
                    &[("fleet", "sensors"), ("reason", "revoked")],
                ) == Some(1.0)
        })
        .await;
}

#[tokio::test]
async fn certificate_devices_are_named_by_their_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let fleet_ca = TestCa::new("meters fleet CA");
    let users_ca = TestCa::new("users CA");
    let fleet_ca_file = write_file(dir.path(), "fleet-ca.pem", &fleet_ca.cert_pem);
    let revoked_device = fleet_ca.client_cert("meter-2", &[]);
    let serial = serial_of(&revoked_device.cert_pem);
    let revoked = write_file(dir.path(), "revoked", &format!("serial {serial}\n"));
    let auth = format!(
        "[[auth.fleets]]\nname = \"meters\"\nmode = \"certificate\"\nrevocation_file = \"{}\"\n\
         [[auth.fleets.acl]]\naction = \"all\"\ntopic = \"meters/%d/#\"\n\
         [auth.fleets.quotas]\nconnections = 1\n\
         [auth.fleets.certificate]\nca_file = \"{}\"\n",
        revoked.display(),
        fleet_ca_file.display()
    );
    let Some(broker) = start(broker_toml(dir.path(), &ca, &[&fleet_ca, &users_ca], &auth)).await
    else {
        return;
    };

    let meter = fleet_ca.client_cert("meter-1", &[]);
    // The user name a device sends does not matter: the certificate names it.
    let (mut device, ack) = login(&broker, &ca, Some(&meter), "m1", Some("admin"), None).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        device
            .publish_qos1(&Pub::new("meters/meter-1/kwh", b"7").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        device
            .publish_qos1(&Pub::new("meters/admin/kwh", b"7").qos(1, 2))
            .await,
        0x87
    );
    // One connection per device: a second one is refused (quota).
    let (_, second) = login(&broker, &ca, Some(&meter), "m1-bis", None, None).await;
    assert_eq!(second.code, 0x97);

    let (_, refused) = login(&broker, &ca, Some(&revoked_device), "m2", None, None).await;
    assert_eq!(refused.code, 0x8A, "revoked by serial");

    // A certificate of the users' CA is a certificate user, not a device.
    let user = users_ca.client_cert("operator", &[]);
    let (mut operator, ack) = login(&broker, &ca, Some(&user), "op", None, None).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        operator
            .publish_qos1(&Pub::new("meters/x/y", b"1").qos(1, 1))
            .await,
        0x10,
        "no ACL for users: the fleet template is not theirs"
    );

    // Revoking meter-1 by its serial disconnects it.
    let serial_1 = serial_of(&meter.cert_pem);
    std::fs::write(&revoked, format!("serial {serial}\nserial {serial_1}\n")).unwrap();
    let disconnect = device.expect_closed_within(Duration::from_secs(10)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    assert_eq!(fleet_metric(&broker, "meters", "revoked").await, 1.0);
    assert_eq!(fleet_metric(&broker, "meters", "quota").await, 1.0);
}

/// The serial of a PEM certificate, as hex.
fn serial_of(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

#[tokio::test]
async fn jwt_devices_log_in_until_their_token_expires() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let keys = write_file(dir.path(), "keys.pem", &key.public_key_pem());
    let auth = format!(
        "[[auth.fleets]]\nname = \"cars\"\nmode = \"jwt\"\nusername = \"car\"\n\
         [[auth.fleets.acl]]\naction = \"publish\"\ntopic = \"cars/%d/#\"\n\
         [auth.fleets.jwt]\nkeys_file = \"{}\"\nleeway_secs = 0\nrules_claim = \"topics\"\n\
         disconnect_at_expiry = true\n",
        keys.display()
    );
    let Some(broker) = start(broker_toml(dir.path(), &ca, &[], &auth)).await else {
        return;
    };
    let sign = |claims: serde_json::Value, pem: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let fleet_key = key.serialize_pem();
    let now = now_secs();
    let expired = sign(
        serde_json::json!({"sub": "car-8", "exp": now - 10}),
        &fleet_key,
    );
    assert_eq!(connack(&broker, &ca, "car-8", "car", &expired).await, 0x86);
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let forged = sign(
        serde_json::json!({"sub": "car-8", "exp": now + 60}),
        &other_key,
    );
    assert_eq!(connack(&broker, &ca, "car-8", "car", &forged).await, 0x86);
    assert_eq!(connack(&broker, &ca, "car-8", "car", "garbage").await, 0x86);

    let token = sign(
        serde_json::json!({"sub": "car-7", "exp": now_secs() + 3, "topics": {"subscribe": ["fleet/updates"]}}),
        &fleet_key,
    );
    let (mut car, ack) = login(&broker, &ca, None, "car-7", Some("car"), Some(&token)).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        car.publish_qos1(&Pub::new("cars/car-7/gps", b"x").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        car.subscribe(2, &[("fleet/updates", 0)]).await,
        vec![0],
        "claim rule"
    );
    assert_eq!(car.subscribe(3, &[("fleet/other", 0)]).await, vec![0x87]);

    // The token expires while connected: DISCONNECT 0xA0.
    let disconnect = car.expect_closed_within(Duration::from_secs(10)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0xA0));
    for (result, n) in [
        ("expired", 1.0),
        ("bad_signature", 1.0),
        ("malformed", 1.0),
        ("accepted", 1.0),
    ] {
        assert_eq!(fleet_metric(&broker, "cars", result).await, n, "{result}");
    }
    broker
        .wait_metrics("the expiry disconnect counted", |m| {
            m.get(
                "kubemqtt_fleet_disconnects_total",
                &[("fleet", "cars"), ("reason", "token_expired")],
            ) == Some(1.0)
        })
        .await;
}

/// A device registry: logins with password "good" are allowed; topics
/// under `allowed/` too. Counts requests; `down` makes it answer 503.
struct Registry {
    url: String,
    requests: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

impl Registry {
    async fn start() -> Registry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, is_down) = (requests.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (count, is_down) = (count.clone(), is_down.clone());
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
                        count.fetch_add(1, Ordering::SeqCst);
                        let json: serde_json::Value =
                            serde_json::from_str(&body[..length]).unwrap_or_default();
                        let authorized = head.contains("Bearer registry-token")
                            || head.contains("authorization: Bearer registry-token");
                        let allow = authorized
                            && match json.get("topic") {
                                Some(topic) => topic.as_str().unwrap_or("").starts_with("allowed/"),
                                None => json["password"] == "good",
                            };
                        let (status, reply) = if is_down.load(Ordering::SeqCst) {
                            (503, "{}".to_owned())
                        } else {
                            let result = if allow { "allow" } else { "deny" };
                            (200, format!("{{\"result\": \"{result}\"}}"))
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{reply}",
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
        Registry {
            url,
            requests,
            down,
            _task: task,
        }
    }
}

#[tokio::test]
async fn hook_devices_are_asked_about_and_the_registry_being_down_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let registry = Registry::start().await;
    let token = write_file(dir.path(), "token", "registry-token\n");
    let fleet = |name: &str, when_down: &str| {
        format!(
            "[[auth.fleets]]\nname = \"{name}\"\nmode = \"hook\"\nusername = \"%d@{name}\"\n\
             [auth.fleets.hook]\nurl = \"{url}/login\"\nacl_url = \"{url}/acl\"\n\
             token_file = \"{token}\"\ntimeout_ms = 500\ncache_ttl_secs = 0\n\
             when_down = \"{when_down}\"\n",
            url = registry.url,
            token = token.display()
        )
    };
    let auth = format!(
        "{}{}",
        fleet("strict", "deny"),
        fleet("lenient", "allow_cached")
    );
    let Some(broker) = start(broker_toml(dir.path(), &ca, &[], &auth)).await else {
        return;
    };

    let (mut device, ack) = login(&broker, &ca, None, "d1", Some("d1@strict"), Some("good")).await;
    assert_eq!(ack.code, 0);
    assert_eq!(
        device
            .publish_qos1(&Pub::new("allowed/d1", b"x").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        device
            .publish_qos1(&Pub::new("secret/d1", b"x").qos(1, 2))
            .await,
        0x87,
        "the registry denies the topic"
    );
    assert_eq!(device.subscribe(3, &[("secret/#", 0)]).await, vec![0x87]);
    assert_eq!(connack(&broker, &ca, "d2", "d2@strict", "bad").await, 0x87);
    assert!(registry.requests.load(Ordering::SeqCst) >= 5);

    assert_eq!(connack(&broker, &ca, "d3", "d3@lenient", "good").await, 0);
    registry.down.store(true, Ordering::SeqCst);
    // Down: the strict fleet answers 0x88, the lenient one lets in what the
    // registry last allowed (and only that).
    assert_eq!(
        connack(&broker, &ca, "d1b", "d1@strict", "good").await,
        0x88
    );
    assert_eq!(connack(&broker, &ca, "d3", "d3@lenient", "good").await, 0);
    assert_eq!(
        connack(&broker, &ca, "d4", "d4@lenient", "good").await,
        0x88
    );
    assert_eq!(
        device
            .publish_qos1(&Pub::new("allowed/d1", b"x").qos(1, 4))
            .await,
        0x87,
        "strict: topics are refused while the registry is down"
    );
    assert_eq!(fleet_metric(&broker, "strict", "registry_down").await, 1.0);
    assert_eq!(fleet_metric(&broker, "strict", "denied").await, 1.0);
    assert_eq!(fleet_metric(&broker, "lenient", "registry_down").await, 1.0);
    assert_eq!(fleet_metric(&broker, "lenient", "accepted").await, 2.0);
}

#[tokio::test]
async fn fleets_come_and_go_in_a_directory_and_their_cas_are_trusted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fleets = dir.path().join("fleets");
    std::fs::create_dir(&fleets).unwrap();
    let ca = TestCa::new("server CA");
    let users_ca = TestCa::new("users CA");
    let fleet_ca = TestCa::new("lamps fleet CA");
    // The listener's ca_file holds only the users' CA: the fleet's CA is
    // trusted because a certificate fleet names it.
    let auth = format!("fleets_dir = \"{}\"\n", fleets.display());
    let Some(broker) = start(broker_toml(dir.path(), &ca, &[&users_ca], &auth)).await else {
        return;
    };
    let lamp = fleet_ca.client_cert("lamp-1", &[]);
    let refused = tls_mqtt_connect(
        broker.addr_of("tls"),
        tls_client_config(&ca.cert_pem, Some(&lamp)),
        &Connect::v5("lamp-1"),
    )
    .await;
    assert!(refused.is_err(), "no fleet yet: an unknown CA");

    // A fleet file appears (as the operator's Secret would): taken up
    // without a restart, its CA trusted by the running listener.
    write_file(&fleets, "lamps.ca.crt", &fleet_ca.cert_pem);
    write_file(
        &fleets,
        "lamps.toml",
        "name = \"lamps\"\nmode = \"certificate\"\n\
         [[acl]]\naction = \"publish\"\ntopic = \"lamps/%d\"\n\
         [certificate]\nca_file = \"lamps.ca.crt\"\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut device, ack) = loop {
        if let Ok(connected) = tls_mqtt_connect(
            broker.addr_of("tls"),
            tls_client_config(&ca.cert_pem, Some(&lamp)),
            &Connect::v5("lamp-1"),
        )
        .await
        {
            break connected;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fleet file not taken up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ack.code, 0);
    assert_eq!(
        device
            .publish_qos1(&Pub::new("lamps/lamp-1", b"on").qos(1, 1))
            .await,
        0x10
    );
    assert_eq!(
        device
            .publish_qos1(&Pub::new("lamps/lamp-2", b"on").qos(1, 2))
            .await,
        0x87
    );

    // The fleet file goes: its devices are disconnected.
    std::fs::remove_file(fleets.join("lamps.toml")).unwrap();
    let disconnect = device.expect_closed_within(Duration::from_secs(10)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    broker
        .wait_metrics("the disconnect counted", |m| {
            m.get(
                "kubemqtt_fleet_disconnects_total",
                &[("fleet", "lamps"), ("reason", "fleet_removed")],
            ) == Some(1.0)
        })
        .await;
}

/// The operator's fast path for revocation: the lists pushed to
/// `PUT /api/v1/fleets/revocations` are in force at once (the fleets
/// directory is only looked at once a minute here): a connected device
/// they revoke is disconnected within a second and refused afterwards.
/// While the directory holds an older revision the push stands; the
/// directory's update to the pushed revision changes nothing.
#[tokio::test]
async fn a_pushed_revocation_disconnects_a_device_at_once_and_outlives_older_files() {
    const TOKEN: &str = "fleet-push-token";
    let dir = tempfile::tempdir().unwrap();
    let fleets = dir.path().join("fleets");
    std::fs::create_dir(&fleets).unwrap();
    let ca = TestCa::new("server CA");
    write_file(&fleets, "sensors.secret", &format!("{FLEET_SECRET}\n"));
    write_file(&fleets, "sensors.revoked", "device sensor-9\n");
    write_file(&fleets, "revision", "1\n");
    write_file(
        &fleets,
        "sensors.toml",
        "name = \"sensors\"\nmode = \"derived\"\nusername = \"%d@sensors\"\n\
         revocation_file = \"sensors.revoked\"\n\
         [[acl]]\naction = \"publish\"\ntopic = \"sensors/%d/#\"\n\
         [derived]\nsecret_file = \"sensors.secret\"\nreplay_window_secs = 60\n",
    );
    let token = write_file(dir.path(), "token", TOKEN);
    let auth = format!("fleets_dir = \"{}\"\n", fleets.display());
    let toml = broker_toml(dir.path(), &ca, &[], &auth)
        .replace(
            "[http]\n",
            &format!("[http]\nadmin_token_file = \"{}\"\n", token.display()),
        )
        .replace("reload_interval_secs = 1", "reload_interval_secs = 60");
    let Some(broker) = start(toml).await else {
        return;
    };
    let push = |body: String| {
        let addr = broker.addr_of("http");
        async move {
            http_request_with_body(
                addr,
                "PUT",
                "/api/v1/fleets/revocations",
                Some(TOKEN),
                &body,
            )
            .await
        }
    };
    let reload = || {
        let addr = broker.addr_of("http");
        async move { http_request(addr, "POST", "/api/v1/reload", Some(TOKEN)).await }
    };
    let sensor_1 = || async {
        let password = signed("sensor-1", "box-1", now_secs());
        connack(&broker, &ca, "box-1", "sensor-1@sensors", &password).await
    };
    let (mut device, ack) = login(
        &broker,
        &ca,
        None,
        "box-1",
        Some("sensor-1@sensors"),
        Some(&signed("sensor-1", "box-1", now_secs())),
    )
    .await;
    assert_eq!(ack.code, 0);

    // A bad list, or a push without the token, changes nothing.
    let bad = push("revision = 2\n[revocations]\nsensors = \"serial xyz\"\n".into()).await;
    assert_eq!(bad.status, 422, "{bad:?}");
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("pushed revocations of fleet sensors:1"),
        "{bad:?}"
    );
    let anonymous = http_request_with_body(
        broker.addr_of("http"),
        "PUT",
        "/api/v1/fleets/revocations",
        None,
        "revision = 2\n",
    )
    .await;
    assert_eq!(anonymous.status, 401);

    // Revision 2 revokes sensor-1: disconnected within a second.
    let revoking =
        "revision = 2\n[revocations]\nsensors = \"device sensor-9\\ndevice sensor-1\\n\"\n";
    let applied = push(revoking.into()).await;
    assert_eq!(applied.status, 200, "{applied:?}");
    assert_eq!(applied.json()["applied"], true);
    assert_eq!(applied.json()["disconnected"], 1);
    let disconnect = device.expect_closed_within(Duration::from_secs(1)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    assert_eq!(sensor_1().await, 0x8A, "refused afterwards");
    // The same revision again is no change; an older one is refused.
    assert_eq!(push(revoking.into()).await.json()["applied"], false);
    let stale = push("revision = 1\n[revocations]\nsensors = \"\"\n".into()).await;
    assert_eq!(stale.status, 409, "{stale:?}");
    assert_eq!(sensor_1().await, 0x8A);

    // Re-reading the directory, still at revision 1, keeps the push.
    assert_eq!(reload().await.status, 200);
    assert_eq!(
        sensor_1().await,
        0x8A,
        "the older files do not undo the push"
    );

    // The kubelet's update to revision 2 holds the same list: nothing
    // changes, nobody else is disconnected.
    let (mut other, ack) = login(
        &broker,
        &ca,
        None,
        "box-2",
        Some("sensor-2@sensors"),
        Some(&signed("sensor-2", "box-2", now_secs())),
    )
    .await;
    assert_eq!(ack.code, 0);
    write_file(
        &fleets,
        "sensors.revoked",
        "device sensor-9\ndevice sensor-1\n",
    );
    write_file(&fleets, "revision", "2\n");
    let reloaded = reload().await;
    assert_eq!(reloaded.json()["disconnected"], 0, "{reloaded:?}");
    assert_eq!(sensor_1().await, 0x8A);
    assert_eq!(
        other
            .publish_qos1(&Pub::new("sensors/sensor-2/t", b"1").qos(1, 1))
            .await,
        0x10,
        "another device stays connected"
    );
    // A later push takes the revocation back.
    let lifted =
        push("revision = 3\n[revocations]\nsensors = \"device sensor-9\\n\"\n".into()).await;
    assert_eq!(lifted.json()["applied"], true, "{lifted:?}");
    assert_eq!(sensor_1().await, 0);
    assert_eq!(
        broker.metrics().await.get(
            "kubemqtt_fleet_disconnects_total",
            &[("fleet", "sensors"), ("reason", "revoked")],
        ),
        Some(1.0)
    );
}
