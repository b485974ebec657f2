//! The contract of `MqttUser`s with the real broker.
//!
//! Users are planned by the operator's user planner (their credentials
//! Secrets), the broker by the broker planner with those users observed
//! (its credentials file), and the broker binary runs on the rendered files.
//! Changes then reach the running broker the way the operator sends them: a
//! new plan, pushed to the admin API by the operator's own `HttpPusher`.
//!
//! Checked: a device logs in with its Secret over TLS; its topic rules are
//! enforced; a rotation keeps the connected device connected while the old
//! and new passwords both work, and the old one fails after the grace
//! window; deleting a user disconnects its client and keeps it out; a
//! certificate user logs in with the certificate from its Secret and is
//! revoked the same way.

use crate::common;

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rumqttc::{AsyncClient, ConnectReturnCode, EventLoop, Incoming, QoS, SubscribeReasonCode};

use common::cluster::{connect, Operator, Pod};
use common::*;
use kubemqtt_operator::controller::push::PushReply;

/// Publishes at QoS 1 from `from`, and waits until `to` receives it.
async fn relay(
    from: (&AsyncClient, &mut EventLoop),
    to: &mut EventLoop,
    topic: &str,
    payload: &str,
) {
    let (client, events) = from;
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("publish");
    // Drive the publisher until its PUBACK, then the subscriber.
    wait_for(events, "PUBACK", |packet| {
        matches!(packet, Incoming::PubAck(_))
    })
    .await;
    wait_for(to, "the message", |packet| {
        matches!(packet, Incoming::Publish(message)
            if message.topic == topic && message.payload.as_ref() == payload.as_bytes())
    })
    .await;
}

#[tokio::test]
async fn users_connect_rotate_and_are_revoked_on_the_real_broker() {
    let mut operator = Operator::new();
    let now = Timestamp::now();
    operator.put_user(
        "device-1",
        serde_json::json!({
            "brokerRef": {"name": "mq"},
            "acl": [
                {"action": "publish", "topic": "devices/%u/#"},
                {"action": "subscribe", "topic": "commands/%u/#"},
            ],
            "rotation": {"graceMinutes": 1},
        }),
        now,
    );
    operator.put_user(
        "backend",
        serde_json::json!({"brokerRef": {"name": "mq"}}),
        now,
    );
    let pod = Pod::start(operator.reconcile_broker());

    // The backend (no rules: every topic) and the device log in with what
    // their Secrets hold.
    let (backend, mut backend_events) = pod
        .connect(
            &operator,
            "backend",
            "backend",
            &operator.secret("backend", "password"),
        )
        .await
        .expect("the backend logs in");
    assert_eq!(
        subscribe(&backend, &mut backend_events, "devices/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let old_password = operator.secret("device-1", "password");
    assert_eq!(operator.secret("device-1", "username"), "device-1");
    let (device, mut device_events) = pod
        .connect(&operator, "device-1-client", "device-1", &old_password)
        .await
        .expect("the device logs in");

    // Its rules: its own command topics yes, everybody's telemetry no.
    assert_eq!(
        subscribe(&device, &mut device_events, "commands/device-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&device, &mut device_events, "devices/#").await,
        SubscribeReasonCode::Failure
    );
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "21.5",
    )
    .await;
    relay(
        (&backend, &mut backend_events),
        &mut device_events,
        "commands/device-1/led",
        "on",
    )
    .await;

    // Rotation, pushed: both passwords work, the device stays connected.
    // The rotation is dated so that the one-minute window ends in 3 s.
    let rotated_at = Timestamp::now() - SignedDuration::from_secs(57);
    operator.annotate("device-1", "rotate-1", rotated_at);
    let new_password = operator.secret("device-1", "password");
    assert_ne!(new_password, old_password);
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    let (_new, _) = pod
        .connect(&operator, "device-1-new", "device-1", &new_password)
        .await
        .expect("the new password works");
    let (_old, _) = pod
        .connect(&operator, "device-1-old", "device-1", &old_password)
        .await
        .expect("the old password works during the grace window");
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "still connected",
    )
    .await;

    // After the window the old password is refused; the device that logged
    // in with it is still connected.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let code = refused(
        pod.connect(&operator, "device-1-late", "device-1", &old_password)
            .await,
    );
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    relay(
        (&device, &mut device_events),
        &mut backend_events,
        "devices/device-1/temp",
        "after the window",
    )
    .await;

    // Deleting the user disconnects it and keeps it out.
    operator.delete_user("device-1");
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    expect_disconnected(&mut device_events).await;
    let code = refused(
        pod.connect(&operator, "device-1-again", "device-1", &new_password)
            .await,
    );
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    pod.broker
        .wait_for_log(|line| line.contains("user device-1 was removed"));

    // The backend was never disturbed.
    backend
        .publish("devices/x", QoS::AtLeastOnce, false, "ping")
        .await
        .expect("publish");
    wait_for(
        &mut backend_events,
        "its own message",
        |packet| matches!(packet, Incoming::Publish(message) if message.topic == "devices/x"),
    )
    .await;
}

#[tokio::test]
async fn certificate_users_log_in_with_their_secret_and_are_revoked() {
    let mut operator = Operator::new();
    operator.put_user(
        "sensor",
        serde_json::json!({"brokerRef": {"name": "mq"}, "authentication": {"type": "tls"}}),
        Timestamp::now(),
    );
    let pod = Pod::start(operator.reconcile_broker());
    let tls = tls_config_with_certificate(
        &operator.secret("sensor", "ca.crt"),
        &operator.secret("sensor", "tls.crt"),
        &operator.secret("sensor", "tls.key"),
    );

    // No password: the certificate names the user.
    let (sensor, mut events) = connect(pod.options("sensor-1", tls.clone()))
        .await
        .expect("the certificate logs in");
    assert_eq!(
        subscribe(&sensor, &mut events, "anything/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    pod.broker
        .wait_for_log(|line| line.contains("as sensor-1") && line.contains("u'sensor'"));

    // A client with neither certificate nor password is refused.
    let code = refused(connect(pod.options("nobody", tls_config(&operator.trust_bundle()))).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);

    // Deleted: the still valid certificate no longer gets in.
    operator.delete_user("sensor");
    let plan = operator.reconcile_broker().clone();
    assert_eq!(pod.push(&plan).await, PushReply::Applied);
    expect_disconnected(&mut events).await;
    let code = refused(connect(pod.options("sensor-2", tls)).await);
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}
