//! The contract of `MqttDeviceFleet`s with the real broker.
//!
//! Fleets are planned by the operator's fleet planner (the operator's own
//! CA or fleet secret, and the broker's `<broker>-fleets` Secret), the
//! broker by the broker planner; the broker binary runs on the pod's files
//! with the fleets Secret mounted where the StatefulSet mounts it, and
//! changes reach it the way the kubelet writes a Secret volume.
//!
//! Checked, for a device of each mode, over TLS with a real MQTT client:
//! it logs in with what the factory tools make (`kubemqtt-operator fleet
//! sign` and `fleet secret`, run as processes), gets its fleet's topics
//! and no others, and bad logins get their refusal; the JWT fleet's keys
//! come from the team's Secret; the hook fleet asks a registry over HTTPS
//! (its CA and bearer token from the team's Secrets). The fleet
//! controller's reading of `/metrics` (devices online) matches what the
//! broker writes. Revocations (in the resource and in a ConfigMap) and a
//! deleted fleet disconnect connected devices; so does the fleet
//! controller's push of the revocation lists (the operator's `HttpPusher`
//! against the broker's admin API) before the volume is refreshed.
//! Rotating a fleet secret and a fleet CA keeps old and new devices in
//! during the overlap.

use crate::common;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubemqtt_operator::certs::{generate_ca, CertifiedKeyPem};
use kubemqtt_operator::controller::fleet::{devices_online, FLEETS_PUSH_PATH};
use kubemqtt_operator::controller::push::{CredentialsPusher, HttpPusher, PushError, PushReply};
use kubemqtt_operator::plan::fleet::{CA_CERT_KEY, CA_KEY_KEY, FLEETS_DIR, FLEET_SECRET_KEY};
use kubemqtt_operator::plan::secrets::ADMIN_TOKEN_KEY;
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use std::sync::atomic::Ordering;

use common::cluster::{Operator, Pod};
use common::fleet::*;
use common::registry::Registry;
use common::*;

const REGISTRY_TOKEN: &str = "registry-token-of-the-team";

#[tokio::test]
async fn a_device_of_each_mode_logs_in_to_what_the_operator_planned() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let operator = Operator::new();
    let registry = Registry::start(REGISTRY_TOKEN).await;
    let jwt_key = rcgen::KeyPair::generate().expect("a key");

    let mut fleets = Fleets::new();
    fleets.put(
        "meters",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "certificate",
            "acl": [{"action": "all", "topic": "meters/%d/#"}],
        }),
    );
    fleets.put(
        "sensors",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "derived",
            "acl": [{"action": "all", "topic": "sensors/%d/#"}],
            "derived": {"replayWindowSeconds": 120},
        }),
    );
    let public_key = jwt_key.public_key_pem();
    fleets.put_secret("cars-keys", &[("keys.pem", public_key.as_str())]);
    fleets.put(
        "cars",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "jwt",
            "usernameTemplate": "car",
            "acl": [{"action": "all", "topic": "cars/%d/#"}],
            "jwt": {"keysSecretKeyRef": {"name": "cars-keys", "key": "keys.pem"}},
        }),
    );
    fleets.put_secret(
        "registry",
        &[
            ("token", REGISTRY_TOKEN),
            ("ca.crt", registry.ca_pem.as_str()),
        ],
    );
    fleets.put(
        "vending",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "hook",
            "hook": {
                "url": format!("{}/login", registry.url),
                "aclUrl": format!("{}/acl", registry.url),
                "tokenSecretKeyRef": {"name": "registry", "key": "token"},
                "caSecretKeyRef": {"name": "registry", "key": "ca.crt"},
                "cacheTtlSeconds": 0,
            },
        }),
    );
    let pod = Pod::start_with(operator.plan(), &[&fleets.broker_secret(&operator)]);

    // Certificates: signed at the factory with the operator's fleet CA.
    let fleet_ca = CertifiedKeyPem {
        cert_pem: fleets.own_secret("meters", CA_CERT_KEY),
        key_pem: fleets.own_secret("meters", CA_KEY_KEY),
    };
    let meter = factory_sign(dir.path(), &fleet_ca, "meter-1");
    let (meter_client, mut meter_events) = login_with_certificate(&pod, &operator, "m-1", &meter)
        .await
        .expect("the meter logs in with its certificate");
    assert_eq!(
        subscribe(&meter_client, &mut meter_events, "meters/meter-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&meter_client, &mut meter_events, "meters/meter-2/#").await,
        SubscribeReasonCode::Failure,
        "another device's topics"
    );

    // Derived passwords: the factory's `fleet secret`, the operator's
    // fleet secret.
    let fleet_secret = fleets.own_secret("sensors", FLEET_SECRET_KEY);
    let password = factory_password(dir.path(), &fleet_secret, "sensor-1", "box-1", None);
    let (sensor, mut sensor_events) =
        login(&pod, &operator, "box-1", "sensor-1@sensors", &password)
            .await
            .expect("the sensor logs in");
    assert_eq!(
        subscribe(&sensor, &mut sensor_events, "sensors/sensor-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&sensor, &mut sensor_events, "meters/#").await,
        SubscribeReasonCode::Failure
    );
    let other_client = factory_password(dir.path(), &fleet_secret, "sensor-1", "box-9", None);
    assert_eq!(
        refused(login(&pod, &operator, "box-1", "sensor-1@sensors", &other_client).await),
        ConnectReturnCode::BadUserNamePassword,
        "signed for another client id"
    );
    let old = factory_password(
        dir.path(),
        &fleet_secret,
        "sensor-1",
        "box-1",
        Some(now_secs() - 600),
    );
    assert_eq!(
        refused(login(&pod, &operator, "box-1", "sensor-1@sensors", &old).await),
        ConnectReturnCode::BadUserNamePassword,
        "replayed after the window"
    );

    // JWT: signed by the team's issuer, checked with the keys in its Secret.
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(jwt_key.serialize_pem().as_bytes())
                .expect("an EC key"),
        )
        .expect("a token")
    };
    let token = sign(serde_json::json!({"sub": "car-1", "exp": now_secs() + 600}));
    let (car, mut car_events) = login(&pod, &operator, "car-1", "car", &token)
        .await
        .expect("the car logs in");
    assert_eq!(
        subscribe(&car, &mut car_events, "cars/car-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let expired = sign(serde_json::json!({"sub": "car-2", "exp": now_secs() - 600}));
    assert_eq!(
        refused(login(&pod, &operator, "car-2", "car", &expired).await),
        ConnectReturnCode::BadUserNamePassword
    );

    // HTTP hook: the registry answers over HTTPS.
    let (machine, mut machine_events) = login(&pod, &operator, "v-1", "v-1@vending", "good")
        .await
        .expect("the vending machine logs in");
    assert_eq!(
        subscribe(&machine, &mut machine_events, "vending/v-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&machine, &mut machine_events, "vending/v-2/#").await,
        SubscribeReasonCode::Failure,
        "the registry denies another machine's topics"
    );
    assert_eq!(
        refused(login(&pod, &operator, "v-2", "v-2@vending", "bad").await),
        ConnectReturnCode::NotAuthorized
    );
    assert!(registry.requests.load(Ordering::SeqCst) >= 4);

    // Metrics, as the broker writes them and the fleet controller reads
    // them (status.devicesOnline).
    let (code, metrics) = http_get(pod.http_port, "/metrics", None);
    assert_eq!(code, 200);
    for fleet in ["meters", "sensors", "cars", "vending"] {
        assert_eq!(devices_online(&metrics, fleet), Some(1), "{fleet}");
        assert_eq!(logins(&metrics, fleet, "accepted"), Some(1.0), "{fleet}");
    }
    assert_eq!(logins(&metrics, "sensors", "bad_signature"), Some(1.0));
    assert_eq!(logins(&metrics, "sensors", "replayed"), Some(1.0));
    assert_eq!(logins(&metrics, "cars", "expired"), Some(1.0));
    assert_eq!(logins(&metrics, "vending", "denied"), Some(1.0));
}

#[tokio::test]
async fn revocations_and_deleted_fleets_reach_connected_devices() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let operator = Operator::new();
    let mut fleets = Fleets::new();
    let meters = |revoked: &[&str]| {
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "certificate",
            "revocations": {"devices": revoked},
        })
    };
    fleets.put("meters", meters(&[]));
    let sensors = serde_json::json!({
        "brokerRef": {"name": "mq"},
        "mode": "derived",
        "revocations": {"configMapKeyRef": {"name": "revoked-sensors", "key": "list"}},
    });
    fleets.put_config_map("revoked-sensors", "list", "# none yet\n");
    fleets.put("sensors", sensors);
    let pod = Pod::start_with(operator.plan(), &[&fleets.broker_secret(&operator)]);
    let update = |fleets: &Fleets| {
        pod.files
            .update_secret_volume(FLEETS_DIR, &fleets.broker_secret(&operator))
            .expect("the kubelet writes the Secret");
    };

    let fleet_ca = CertifiedKeyPem {
        cert_pem: fleets.own_secret("meters", CA_CERT_KEY),
        key_pem: fleets.own_secret("meters", CA_KEY_KEY),
    };
    let meter = factory_sign(dir.path(), &fleet_ca, "meter-1");
    let (_meter, mut meter_events) = login_with_certificate(&pod, &operator, "m-1", &meter)
        .await
        .expect("the meter logs in");
    let fleet_secret = fleets.own_secret("sensors", FLEET_SECRET_KEY);
    let password = |device: &str, client: &str| {
        factory_password(dir.path(), &fleet_secret, device, client, None)
    };
    let (_s1, mut s1_events) = login(
        &pod,
        &operator,
        "s-1",
        "sensor-1@sensors",
        &password("sensor-1", "s-1"),
    )
    .await
    .expect("sensor-1 logs in");
    let (_s2, mut s2_events) = login(
        &pod,
        &operator,
        "s-2",
        "sensor-2@sensors",
        &password("sensor-2", "s-2"),
    )
    .await
    .expect("sensor-2 logs in");

    // Revoked in the resource (meter-1) and in the team's ConfigMap
    // (sensor-1): both are disconnected, and refused when they come back.
    fleets.put("meters", meters(&["meter-1"]));
    fleets.put_config_map("revoked-sensors", "list", "device sensor-1\n");
    update(&fleets);
    expect_disconnected(&mut meter_events).await;
    expect_disconnected(&mut s1_events).await;
    assert_eq!(
        refused(login_with_certificate(&pod, &operator, "m-1", &meter).await),
        ConnectReturnCode::NotAuthorized,
        "banned"
    );
    assert_eq!(
        refused(
            login(
                &pod,
                &operator,
                "s-1",
                "sensor-1@sensors",
                &password("sensor-1", "s-1")
            )
            .await
        ),
        ConnectReturnCode::NotAuthorized
    );
    wait_for_metrics(
        &pod,
        "sensor-2 alone online, the revoked login counted",
        |m| {
            devices_online(m, "sensors") == Some(1)
                && devices_online(m, "meters") == Some(0)
                && logins(m, "meters", "revoked") == Some(1.0)
        },
    );

    // The sensors fleet is deleted: its devices leave.
    fleets.delete("sensors");
    update(&fleets);
    expect_disconnected(&mut s2_events).await;
    assert_eq!(
        refused(
            login(
                &pod,
                &operator,
                "s-2",
                "sensor-2@sensors",
                &password("sensor-2", "s-2")
            )
            .await
        ),
        ConnectReturnCode::BadUserNamePassword,
        "an ordinary user name now, and no such user"
    );
}

#[tokio::test]
async fn fleet_secrets_and_cas_rotate_without_a_flag_day() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let operator = Operator::new();
    let mut fleets = Fleets::new();
    let now = Timestamp::now();
    let years = SignedDuration::from_hours(24 * 365);
    let old_ca = generate_ca("meters CA 2026", now, years).expect("a CA");
    let new_ca = generate_ca("meters CA 2027", now, years).expect("a CA");
    // The team brings its CA; during the move both are in the bundle.
    fleets.put_secret("meters-ca", &[("ca.crt", old_ca.cert_pem.as_str())]);
    let meters = serde_json::json!({
        "brokerRef": {"name": "mq"},
        "mode": "certificate",
        "certificate": {"ca": {"secretName": "meters-ca"}},
    });
    fleets.put("meters", meters.clone());
    let old_secret = "the sensors fleet secret of 2026, 32 bytes or more";
    let new_secret = "the sensors fleet secret of 2027, 32 bytes or more";
    fleets.put_secret("sensors-2026", &[("secret", old_secret)]);
    fleets.put_secret("sensors-2027", &[("secret", new_secret)]);
    let sensors = |current: &str, previous: Option<&str>| {
        let mut derived = serde_json::json!({"secretKeyRef": {"name": current, "key": "secret"}});
        if let Some(previous) = previous {
            derived["previousSecretKeyRef"] =
                serde_json::json!({"name": previous, "key": "secret"});
        }
        serde_json::json!({"brokerRef": {"name": "mq"}, "mode": "derived", "derived": derived})
    };
    fleets.put("sensors", sensors("sensors-2026", None));
    let pod = Pod::start_with(operator.plan(), &[&fleets.broker_secret(&operator)]);
    let update = |fleets: &Fleets| {
        pod.files
            .update_secret_volume(FLEETS_DIR, &fleets.broker_secret(&operator))
            .expect("the kubelet writes the Secret");
    };
    let old_meter = factory_sign(dir.path(), &old_ca, "meter-old");
    let new_meter = factory_sign(dir.path(), &new_ca, "meter-new");
    let (keeps, mut keeps_events) = login_with_certificate(&pod, &operator, "m-old", &old_meter)
        .await
        .expect("a device of the old CA");

    // Overlap: both CAs, both fleet secrets (the new one current).
    let bundle = format!("{}{}", old_ca.cert_pem, new_ca.cert_pem);
    fleets.put_secret("meters-ca", &[("ca.crt", bundle.as_str())]);
    fleets.put("meters", meters);
    fleets.put("sensors", sensors("sensors-2027", Some("sensors-2026")));
    update(&fleets);
    let mut new_meter_in = None;
    for _ in 0..100 {
        if let Ok(connected) = login_with_certificate(&pod, &operator, "m-new", &new_meter).await {
            new_meter_in = Some(connected);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(new_meter_in.is_some(), "the new CA's device is taken up");
    login_with_certificate(&pod, &operator, "m-old-2", &old_meter)
        .await
        .expect("the old CA's devices still log in");
    for (secret, device) in [(old_secret, "sensor-old"), (new_secret, "sensor-new")] {
        let password = factory_password(dir.path(), secret, device, device, None);
        login(
            &pod,
            &operator,
            device,
            &format!("{device}@sensors"),
            &password,
        )
        .await
        .unwrap_or_else(|e| panic!("{device} logs in during the overlap: {e}"));
    }
    // The connected device of the old CA was never dropped.
    assert_eq!(
        subscribe(&keeps, &mut keeps_events, "meters/meter-old/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "still connected"
    );

    // The end of the overlap: the old secret no longer logs in.
    fleets.put("sensors", sensors("sensors-2027", None));
    update(&fleets);
    let stale = factory_password(dir.path(), old_secret, "sensor-old", "sensor-old", None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match login(&pod, &operator, "sensor-old", "sensor-old@sensors", &stale).await {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => panic!("the old fleet secret still works: {:?}", other.map(|_| ())),
        }
    }
}

/// The fleet controller's push (`PUT /api/v1/fleets/revocations` by the
/// operator's `HttpPusher`, with the admin token of the broker's auth
/// Secret) revokes a connected device before the kubelet refreshes the
/// fleets volume: the volume is not touched until the end. A repeated or
/// older push changes nothing; a newer Secret on disk wins over the push.
#[tokio::test]
async fn a_pushed_revocation_is_in_force_before_the_volume_catches_up() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let operator = Operator::new();
    let mut fleets = Fleets::new();
    let sensors = |revoked: &[&str]| {
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "mode": "derived",
            "revocations": {"devices": revoked},
        })
    };
    fleets.put("sensors", sensors(&[]));
    let pod = Pod::start_with(
        operator.plan(),
        &[&fleets.broker_secret_at(&operator, 1_000)],
    );
    let fleet_secret = fleets.own_secret("sensors", FLEET_SECRET_KEY);
    let password = |device: &str, client: &str| {
        factory_password(dir.path(), &fleet_secret, device, client, None)
    };
    let sensor = |n: u8| {
        let client = format!("s-{n}");
        let username = format!("sensor-{n}@sensors");
        let secret = password(&format!("sensor-{n}"), &client);
        let pod = &pod;
        let operator = &operator;
        async move { login(pod, operator, &client, &username, &secret).await }
    };
    let (_s1, mut s1_events) = sensor(1).await.expect("sensor-1 logs in");
    let (_s2, _s2_events) = sensor(2).await.expect("sensor-2 logs in");
    wait_for_metrics(&pod, "both sensors online", |m| {
        devices_online(m, "sensors") == Some(2)
    });

    let url = format!("http://127.0.0.1:{}{FLEETS_PUSH_PATH}", pod.http_port);
    let token = secret_text(&operator.plan().auth_secret, ADMIN_TOKEN_KEY);
    let pusher = HttpPusher::default();
    fleets.put("sensors", sensors(&["sensor-1"]));
    let push = fleets.revocation_push(2_000);
    assert!(matches!(
        pusher.push(&url, "not-the-admin-token", &push).await,
        Err(PushError::Refused { status: 401, .. })
    ));
    let pushed_at = std::time::Instant::now();
    assert_eq!(
        pusher.push(&url, &token, &push).await.expect("pushed"),
        PushReply::Applied
    );
    expect_disconnected(&mut s1_events).await;
    let took = pushed_at.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        refused(sensor(1).await),
        ConnectReturnCode::NotAuthorized,
        "revoked by the push"
    );
    wait_for_metrics(&pod, "sensor-2 alone online", |m| {
        devices_online(m, "sensors") == Some(1)
    });

    // The controller pushes the same revision again (a pod it could not
    // confirm), and an older one arrives late: neither changes anything.
    assert_eq!(
        pusher.push(&url, &token, &push).await.expect("pushed"),
        PushReply::AlreadyInForce
    );
    fleets.put("sensors", sensors(&[]));
    assert_eq!(
        pusher
            .push(&url, &token, &fleets.revocation_push(1_500))
            .await
            .expect("answered"),
        PushReply::AlreadyInForce
    );
    assert_eq!(refused(sensor(1).await), ConnectReturnCode::NotAuthorized);

    // The kubelet catches up with the same revision: still revoked. Then
    // the revocation is lifted in a newer Secret: the files win.
    fleets.put("sensors", sensors(&["sensor-1"]));
    pod.files
        .update_secret_volume(FLEETS_DIR, &fleets.broker_secret_at(&operator, 2_000))
        .expect("the kubelet writes the Secret");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(refused(sensor(1).await), ConnectReturnCode::NotAuthorized);
    fleets.put("sensors", sensors(&[]));
    pod.files
        .update_secret_volume(FLEETS_DIR, &fleets.broker_secret_at(&operator, 3_000))
        .expect("the kubelet writes the Secret");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match sensor(1).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("sensor-1 still refused after the newer Secret: {e}"),
        }
    }
}
