//! TLS listeners: MQTT over TLS, client certificates (mutual TLS, user name
//! from the certificate), and certificates replaced on disk while clients
//! stay connected. Certificates are generated for each test with rcgen.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// How long a certificate change may take to be picked up (the reload loop
/// runs every second in these tests).
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// A `tls` listener on `{port:tls}` serving `server`, with extra lines for
/// `[listeners.tls]` (client_auth, ca_file, username_from).
fn tls_listener(dir: &Path, server: &CertKey, tls_extra: &str) -> String {
    let cert = write_file(dir, "server.crt", &server.cert_pem);
    let key = write_file(dir, "server.key", &server.key_pem);
    tls_listener_files(&cert, &key, tls_extra)
}

/// Like [`tls_listener`] with existing files. Also starts the HTTP server
/// on `{port:http}`, and ends inside `[auth]` (reload every second), so
/// that callers may append auth keys.
fn tls_listener_files(cert: &Path, key: &Path, tls_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:{{port:tls}}\"\nprotocol = \"tls\"\n\
         [listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls_extra}\n\
         [http]\nbind = \"127.0.0.1:{{port:http}}\"\n\
         [auth]\nreload_interval_secs = 1\n",
        cert.display(),
        key.display()
    )
}

/// A broker (anonymous clients refused) with a TLS listener on
/// `{port:tls}` serving a certificate of `server_ca`, taking client
/// certificates signed by `clients` (`client_auth`, the user name from
/// `username_from`), with `auth` lines appended to `[auth]`.
async fn start_with_client_certificates(
    dir: &Path,
    server_ca: &TestCa,
    clients: &TestCa,
    client_auth: &str,
    username_from: &str,
    auth: &str,
) -> Option<OpsBroker> {
    let client_ca = write_file(dir, "clients-ca.crt", &clients.cert_pem);
    let tls_extra = format!(
        "ca_file = \"{}\"\nclient_auth = \"{client_auth}\"\nusername_from = \"{username_from}\"",
        client_ca.display()
    );
    OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: format!(
            "{}{auth}",
            tls_listener(dir, &server_ca.server_cert(), &tls_extra)
        ),
        ..BrokerOpts::default()
    })
    .await
}

/// QoS 1 publish on a v5 raw client; returns the PUBACK reason code.
async fn publish_reason(raw: &mut Raw, topic: &str, pid: u16) -> u8 {
    raw.publish_qos1(&Pub::new(topic, b"x").qos(1, pid)).await
}

#[tokio::test]
async fn mqtt_flows_over_a_tls_listener() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: tls_listener(fixtures.path(), &ca.server_cert(), ""),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let (mut secure, ack) = tls_mqtt_connect(
        broker.addr_of("tls"),
        tls_client_config(&ca.cert_pem, None),
        &Connect::v5("secure"),
    )
    .await
    .expect("TLS client connects");
    assert_eq!(ack.code, 0);
    assert_eq!(secure.subscribe(1, &[("t/#", 1)]).await, vec![1]);

    // Plain TCP -> TLS.
    let mut plain = raw_subscriber4(&broker, "plain", "back/#", 1).await;
    plain
        .publish_qos1(&Pub::new("t/in", b"to tls").qos(1, 7))
        .await;
    let msg = secure.expect_publish().await;
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        ("t/in", &b"to tls"[..])
    );
    secure.ack_publish(&msg).await;

    // TLS -> plain TCP.
    assert_eq!(
        secure
            .publish_qos1(&Pub::new("back/out", b"from tls").qos(1, 8))
            .await,
        0
    );
    let msg = plain.expect_publish().await;
    assert_eq!(msg.payload, b"from tls");

    // The connection is logged with the TLS listener's port.
    let line = format!("on port {}.", broker.port_of("tls"));
    assert!(
        broker.wait_for_log(&line, TIMEOUT).await,
        "no `{line}` log line"
    );
    let metrics = broker.metrics().await;
    assert_eq!(
        metrics.get("kubemqtt_connections", &[("listener", "tls")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_real_client_connects_over_tls() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: tls_listener(fixtures.path(), &ca.server_cert(), ""),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let mut options =
        rumqttc::v5::MqttOptions::new("rumqttc-tls", "127.0.0.1", broker.port_of("tls"));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls_client_config(&ca.cert_pem, None)),
    ));
    let (mut client, _) = Client5::connect_options(options).await;
    client
        .subscribe("r/t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    client
        .publish(
            "r/t",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "over tls",
            Default::default(),
        )
        .await;
    assert_eq!(client.recv().await.payload, "over tls");
}

#[tokio::test]
async fn failed_handshakes_are_refused_and_counted() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: tls_listener(fixtures.path(), &ca.server_cert(), ""),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };

    // A client that does not trust the server's CA gives up.
    let other = TestCa::new("other CA");
    let result = tls_connect(
        broker.addr_of("tls"),
        tls_client_config(&other.cert_pem, None),
    )
    .await;
    assert!(
        result.is_err(),
        "handshake with an untrusted server succeeded"
    );

    // Plain MQTT on the TLS port is not a TLS handshake.
    let mut raw = Raw::open_addr(broker.addr_of("tls")).await;
    raw.send_connect(&Connect::v4("plaintext")).await;
    loop {
        match raw.recv_within(TIMEOUT).await {
            Recv::Closed => break,
            // A TLS alert record (content type 21), which the raw parser
            // sees as a packet of type 1.
            Recv::Packet(Pkt::Other(0x15, _)) => {}
            other => panic!("plain MQTT on a TLS port: expected a close, got {other:?}"),
        }
    }

    broker
        .wait_metrics("two failed handshakes counted", |m| {
            m.value(
                "kubemqtt_tls_handshake_failures_total",
                &[("listener", "tls")],
            ) >= 2.0
        })
        .await;
    assert!(broker.wait_for_log("TLS handshake error", TIMEOUT).await);
}

/// `client_auth = "require"`, user name from the certificate CN, no
/// anonymous access, and an ACL that only the CN user name unlocks.
#[tokio::test]
async fn mutual_tls_requires_a_trusted_client_certificate() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let acl = write_file(
        fixtures.path(),
        "acl",
        "user device-7\ntopic readwrite devices/device-7/#\n",
    );
    let auth = format!("acl_file = \"{}\"\n", acl.display());
    let Some(broker) =
        start_with_client_certificates(fixtures.path(), &ca, &clients, "require", "cn", &auth)
            .await
    else {
        return;
    };
    let addr = broker.addr_of("tls");

    // No certificate: refused during or right after the handshake.
    let refused = tls_mqtt_connect(
        addr,
        tls_client_config(&ca.cert_pem, None),
        &Connect::v5("none"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a client without certificate got in: {:?}",
        refused.map(|r| r.1)
    );

    // A certificate from a CA the listener does not trust.
    let rogue = TestCa::new("rogue CA").client_cert("device-7", &[]);
    let refused = tls_mqtt_connect(
        addr,
        tls_client_config(&ca.cert_pem, Some(&rogue)),
        &Connect::v5("rogue"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a rogue certificate got in: {:?}",
        refused.map(|r| r.1)
    );

    // A trusted certificate: no password needed, and the user is the CN,
    // even when CONNECT names someone else.
    let cert = clients.client_cert("device-7", &[]);
    let config = tls_client_config(&ca.cert_pem, Some(&cert));
    for connect in [
        Connect::v5("dev7"),
        Connect::v5("dev7-b").login("admin", "wrong"),
    ] {
        let (mut raw, ack) = tls_mqtt_connect(addr, config.clone(), &connect)
            .await
            .expect("trusted certificate accepted");
        assert_eq!(ack.code, 0, "CONNACK for {connect:?}");
        // 0x10: allowed, no subscribers. 0x87: the ACL refuses.
        assert_eq!(
            publish_reason(&mut raw, "devices/device-7/temp", 1).await,
            0x10
        );
        assert_eq!(
            publish_reason(&mut raw, "devices/device-8/temp", 2).await,
            0x87
        );
        raw.disconnect().await;
    }

    broker
        .wait_metrics("refused client certificates counted", |m| {
            m.value(
                "kubemqtt_tls_handshake_failures_total",
                &[("listener", "tls")],
            ) >= 2.0
        })
        .await;
}

#[tokio::test]
async fn user_name_from_the_subject_alternative_name() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let acl = write_file(
        fixtures.path(),
        "acl",
        "user sensor-3.plant.example\ntopic write plant/%u\npattern write plant/%u/#\n",
    );
    let auth = format!("acl_file = \"{}\"\n", acl.display());
    let Some(broker) =
        start_with_client_certificates(fixtures.path(), &ca, &ca, "require", "san", &auth).await
    else {
        return;
    };
    let cert = ca.client_cert("a common name", &["sensor-3.plant.example"]);
    let (mut raw, ack) = tls_mqtt_connect(
        broker.addr_of("tls"),
        tls_client_config(&ca.cert_pem, Some(&cert)),
        &Connect::v5("s3"),
    )
    .await
    .expect("connect");
    assert_eq!(ack.code, 0);
    assert_eq!(
        publish_reason(&mut raw, "plant/sensor-3.plant.example/t", 1).await,
        0x10
    );
    assert_eq!(
        publish_reason(&mut raw, "plant/a common name/t", 2).await,
        0x87
    );
}

/// `client_auth = "optional"`: a certificate authenticates by itself, and
/// clients without one log in with a password.
#[tokio::test]
async fn optional_client_certificates_or_passwords() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let hash = kubemqtt_broker::auth::hash_password("s3cret").unwrap();
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        &format!("[[users]]\nusername = \"web\"\npasswords = [{{ hash = \"{hash}\" }}]\n"),
    );
    let auth = format!("credentials_file = \"{}\"\n", creds.display());
    let Some(broker) =
        start_with_client_certificates(fixtures.path(), &ca, &ca, "optional", "cn", &auth).await
    else {
        return;
    };
    let addr = broker.addr_of("tls");
    let no_cert = tls_client_config(&ca.cert_pem, None);

    let (_, ack) = tls_mqtt_connect(addr, no_cert.clone(), &Connect::v5("anon"))
        .await
        .expect("handshake without certificate is allowed");
    assert_eq!(ack.code, 0x87, "anonymous without certificate");

    let (_, ack) = tls_mqtt_connect(
        addr,
        no_cert.clone(),
        &Connect::v5("bad").login("web", "nope"),
    )
    .await
    .expect("handshake");
    assert_eq!(ack.code, 0x86, "wrong password without certificate");

    let (mut raw, ack) = tls_mqtt_connect(addr, no_cert, &Connect::v5("pw").login("web", "s3cret"))
        .await
        .expect("handshake");
    assert_eq!(ack.code, 0, "password without certificate");
    raw.ping().await;

    let cert = ca.client_cert("cert-user", &[]);
    let (mut raw, ack) = tls_mqtt_connect(
        addr,
        tls_client_config(&ca.cert_pem, Some(&cert)),
        &Connect::v5("cert"),
    )
    .await
    .expect("handshake with certificate");
    assert_eq!(ack.code, 0, "certificate, no password");
    raw.ping().await;
}

/// `certificate_users = "known"`: a certificate logs in only while its
/// user is defined; removing the user disconnects it and keeps it out,
/// although the certificate itself stays valid.
#[tokio::test]
async fn known_certificate_users_are_revoked_with_the_user() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        "[[users]]\nusername = \"sensor\"\n",
    );
    let auth = format!(
        "credentials_file = \"{}\"\ncertificate_users = \"known\"\n",
        creds.display()
    );
    let Some(broker) =
        start_with_client_certificates(fixtures.path(), &ca, &ca, "optional", "cn", &auth).await
    else {
        return;
    };
    let addr = broker.addr_of("tls");
    let config = |cn: &str| tls_client_config(&ca.cert_pem, Some(&ca.client_cert(cn, &[])));

    let (_, ack) = tls_mqtt_connect(addr, config("stranger"), &Connect::v5("stranger"))
        .await
        .expect("handshake");
    assert_eq!(ack.code, 0x87, "a signed certificate of an unknown user");
    let (mut sensor, ack) = tls_mqtt_connect(addr, config("sensor"), &Connect::v5("sensor"))
        .await
        .expect("handshake");
    assert_eq!(ack.code, 0, "a known certificate user");
    sensor.ping().await;

    write_file(fixtures.path(), "creds.toml", "# nobody left\n");
    let disconnect = sensor.expect_closed_within(RELOAD_BOUND).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    let (_, ack) = tls_mqtt_connect(addr, config("sensor"), &Connect::v5("sensor"))
        .await
        .expect("handshake");
    assert_eq!(ack.code, 0x87, "the removed user's certificate");
}

/// Kubernetes updates a mounted Secret by pointing `..data` at a new
/// directory. Connected clients keep their session; new clients get the new
/// certificate.
#[tokio::test]
async fn certificate_swapped_on_disk_is_served_to_new_clients() {
    let fixtures = tempfile::tempdir().unwrap();
    let dir = fixtures.path();
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    write_secret_version(dir, "..v1", &old_ca.server_cert());
    write_secret_version(dir, "..v2", &new_ca.server_cert());
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: tls_listener_files(&dir.join("tls.crt"), &dir.join("tls.key"), ""),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let addr = broker.addr_of("tls");
    let trusts_old = tls_client_config(&old_ca.cert_pem, None);
    let trusts_new = tls_client_config(&new_ca.cert_pem, None);

    let (mut staying, _) = tls_mqtt_connect(addr, trusts_old.clone(), &Connect::v5("staying"))
        .await
        .expect("old certificate served at start");
    assert_eq!(staying.subscribe(1, &[("swap/#", 1)]).await, vec![1]);
    assert!(tls_connect(addr, trusts_new.clone()).await.is_err());

    // The atomic swap Kubernetes does.
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();

    let mut swapped = false;
    let deadline = std::time::Instant::now() + RELOAD_BOUND;
    while std::time::Instant::now() < deadline {
        if tls_connect(addr, trusts_new.clone()).await.is_ok() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(swapped, "the new certificate was never served");
    assert!(
        tls_connect(addr, trusts_old.clone()).await.is_err(),
        "the old certificate is still served to new clients"
    );
    assert!(
        broker
            .wait_for_log("Reloaded the TLS certificate of listener tls", TIMEOUT)
            .await
    );

    // The client connected before the swap still works, both ways.
    staying.ping().await;
    let (mut newcomer, ack) = tls_mqtt_connect(addr, trusts_new, &Connect::v5("newcomer"))
        .await
        .expect("new client with the new certificate");
    assert_eq!(ack.code, 0);
    newcomer
        .publish_qos1(&Pub::new("swap/x", b"after swap").qos(1, 1))
        .await;
    let msg = staying.expect_publish().await;
    assert_eq!(msg.payload, b"after swap");
}

/// Writes one version directory of a Kubernetes TLS Secret mount.
fn write_secret_version(dir: &Path, name: &str, cert: &CertKey) {
    let version = dir.join(name);
    std::fs::create_dir(&version).unwrap();
    write_file(&version, "tls.crt", &cert.cert_pem);
    write_file(&version, "tls.key", &cert.key_pem);
}

#[tokio::test]
async fn a_broken_new_certificate_is_refused_and_the_old_one_kept() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: tls_listener(fixtures.path(), &ca.server_cert(), ""),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    write_file(fixtures.path(), "server.crt", "not a certificate\n");
    assert!(
        broker
            .wait_for_log(
                "Refused the new TLS certificate of listener tls",
                RELOAD_BOUND
            )
            .await,
        "a broken certificate file was not reported"
    );
    let (mut raw, ack) = tls_mqtt_connect(
        broker.addr_of("tls"),
        tls_client_config(&ca.cert_pem, None),
        &Connect::v5("still"),
    )
    .await
    .expect("the old certificate keeps serving");
    assert_eq!(ack.code, 0);
    raw.ping().await;
}
