//! The user controller, with the broker controller, against the fake API
//! server (see [`super::fixtures`] and the broker tests in `tests.rs`).

use std::sync::Arc;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::fixtures::Recorded;
use super::tests::{
    event_post, lines, pair, reads, secret_text, status_patch, Test, AUTH, BROKER, CONFIG_MAP,
    EVENTS, USERS,
};
use super::*;
use crate::api::{MqttUser, MqttUserStatus};

const USER_SECRET: &str = "/api/v1/namespaces/iot/secrets/device-1-mqtt-credentials";

fn user_path(name: &str) -> String {
    format!("{USERS}/{name}")
}

impl Test {
    /// Stores an `MqttUser` as a user would create it.
    fn put_user(&self, name: &str, spec: Value, created: &str) {
        self.server.put(
            &user_path(name),
            json!({
                "apiVersion": "kubemqtt.io/v1alpha1",
                "kind": "MqttUser",
                "metadata": {
                    "name": name,
                    "namespace": "iot",
                    "uid": format!("9e1c7f4a-0000-4000-8000-{:0>12}", name.len()),
                    "generation": 1,
                    "creationTimestamp": created,
                },
                "spec": spec,
            }),
        );
    }

    fn stored_user(&self, name: &str) -> MqttUser {
        serde_json::from_value(self.server.get(&user_path(name)).expect("stored user"))
            .expect("a user")
    }

    async fn reconcile_user(&self, name: &str) -> Result<Action, Error> {
        self.sync_users();
        user::reconcile(Arc::new(self.stored_user(name)), self.ctx.clone()).await
    }

    /// Keeps the status a user reconcile wrote, as the watch would.
    fn keep_user_status(&self, name: &str, requests: &[Recorded]) {
        let mut user = self.server.get(&user_path(name)).unwrap();
        user["status"] = serde_json::to_value(written_user_status(requests, name)).unwrap();
        self.server.put(&user_path(name), user);
    }

    /// Keeps the status a broker reconcile wrote, as the watch would.
    fn keep_broker_status(&self, requests: &[Recorded]) {
        let mut broker = self.server.get(BROKER).unwrap();
        broker["status"] = serde_json::to_value(super::tests::written_status(requests)).unwrap();
        self.server.put(BROKER, broker);
    }

    /// The credentials file in the stored auth Secret.
    fn credentials_file(&self) -> String {
        secret_text(
            &self.server.get(AUTH).expect("auth secret"),
            "credentials.toml",
        )
    }
}

/// `(type, reason)` of every Event posted about MqttUser `name`.
fn user_events(requests: &[Recorded], name: &str) -> Vec<(String, String)> {
    requests
        .iter()
        .filter(|r| r.path.starts_with(EVENTS))
        .filter(|r| r.body["regarding"]["kind"] == "MqttUser")
        .map(|r| {
            assert_eq!(r.body["regarding"]["name"], name);
            let text = |key: &str| r.body[key].as_str().unwrap_or_default().to_owned();
            (text("type"), text("reason"))
        })
        .collect()
}

/// The user status written among `requests`.
fn written_user_status(requests: &[Recorded], name: &str) -> MqttUserStatus {
    let path = format!("{}/status", user_path(name));
    let request = requests
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no status write for {name}"));
    serde_json::from_value(request.body["status"].clone()).expect("a status")
}

fn user_condition(status: &MqttUserStatus, type_: &str) -> (String, String) {
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (condition.status.clone(), condition.reason.clone())
}

/// Whether the broker, loading `file`, lets `user` in with `password`.
fn broker_accepts(file: &str, user: &str, password: &str) -> bool {
    let text = kubemqtt_broker::auth::AuthText {
        text: file.to_owned(),
        origin: "test".to_owned(),
    };
    let (authenticator, _) =
        kubemqtt_broker::auth::build(None, Some(&text), None).expect("the broker loads it");
    authenticator
        .authenticate(user, password.as_bytes(), std::time::SystemTime::now())
        .is_ok()
}

/// The reads of a steady user reconcile: its broker, its Secret and the
/// broker's CA bundle (its fellow users come from the cache).
fn user_reads() -> Vec<String> {
    vec![
        format!("GET {BROKER}"),
        format!("GET {USER_SECRET}"),
        format!("GET {CONFIG_MAP}"),
    ]
}

#[tokio::test]
async fn a_user_is_ready_once_every_broker_pod_confirmed_its_credentials() {
    let test = Test::running().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}, "acl": [{"action": "publish", "topic": "devices/%u/#"}]}),
        "2025-01-01T00:00:00Z",
    );

    let action = test.reconcile_user("device-1").await.expect("reconciles");
    let requests = test.server.take_requests();
    let mut expected = user_reads();
    expected.extend([
        format!("PATCH {USER_SECRET} (dry run)"),
        format!("PATCH {USER_SECRET}"),
        event_post(),
        format!("PATCH {}/status", user_path("device-1")),
    ]);
    assert_eq!(lines(&requests), expected, "no list of the users");
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordCreated".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    // In its Secret, not yet on the broker.
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("False", "Propagating")
    );
    assert_eq!(status.username.as_deref(), Some("device-1"));
    assert_eq!(
        status.secret_name.as_deref(),
        Some("device-1-mqtt-credentials")
    );
    assert_eq!(action, Action::requeue(MAX_REQUEUE));
    test.keep_user_status("device-1", &requests);
    let secret = test.server.get(USER_SECRET).expect("user secret");
    let password = secret_text(&secret, "password");
    let config_map = test.server.get(CONFIG_MAP).expect("config map");
    assert_eq!(
        secret_text(&secret, "ca.crt"),
        config_map["data"]["ca.crt"].as_str().expect("CA bundle"),
        "clients verify the broker with its CA"
    );

    // The broker controller puts it in the credentials file, pushes it to
    // the pod and records which revision holds it on the user's Secret.
    test.reconcile().await.expect("broker reconciles");
    let requests = test.server.take_requests();
    let mut expected = reads();
    expected.extend([
        format!("PATCH {AUTH} (dry run)"),
        format!("PATCH {AUTH}"),
        event_post(),
        status_patch(),
        format!("PATCH {USER_SECRET} by kubemqtt-operator-credentials"),
    ]);
    assert_eq!(lines(&requests), expected);
    test.keep_broker_status(&requests);
    let file = test.credentials_file();
    assert!(broker_accepts(&file, "device-1", &password));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].url, "http://10.0.0.7:8080/api/v1/credentials");
    assert_eq!(pushes[0].body, file);
    let recorded = test.server.get(USER_SECRET).unwrap();
    assert_eq!(
        recorded["metadata"]["annotations"]["kubemqtt.io/credentials-revision"],
        "2"
    );
    // The user's own applies keep what the broker recorded.
    assert_eq!(secret_text(&recorded, "password"), password);

    test.reconcile_user("device-1").await.expect("reconciles");
    let requests = test.server.take_requests();
    let mut expected = user_reads();
    expected.push(format!("PATCH {}/status", user_path("device-1")));
    assert_eq!(lines(&requests), expected);
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("True", "CredentialsInForce")
    );
    assert!(status.conditions[0]
        .message
        .contains("credentials revision 2"));
    test.keep_user_status("device-1", &requests);

    // Nothing changed: three reads for the user, seven for the broker, no
    // write and no push.
    test.reconcile_user("device-1").await.expect("reconciles");
    assert_eq!(lines(&test.server.take_requests()), user_reads());
    test.reconcile().await.expect("broker reconciles");
    assert_eq!(lines(&test.server.take_requests()), reads());
    assert!(test.pushes.take().is_empty());
}

#[tokio::test]
async fn rotation_keeps_the_old_password_for_the_grace_window() {
    let test = Test::running().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}, "rotation": {"graceMinutes": 5}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let old = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    test.server.take_requests();

    let mut user = test.server.get(&user_path("device-1")).unwrap();
    user["metadata"]["annotations"] = json!({"kubemqtt.io/rotate": "2025-06-01"});
    test.server.put(&user_path("device-1"), user);
    let action = test.reconcile_user("device-1").await.expect("rotates");
    let requests = test.server.take_requests();
    let new = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    assert_ne!(new, old);
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordRotated".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Rotating"),
        pair("True", "GraceWindowOpen")
    );
    let until = status.previous_password_valid_until.expect("window end").0;
    let left = until.duration_since(Timestamp::now());
    assert!(left > SignedDuration::from_secs(290) && left <= SignedDuration::from_mins(5));
    assert_ne!(
        action,
        Action::requeue(MAX_REQUEUE),
        "must come back when the window closes"
    );

    test.reconcile().await.expect("broker reconciles");
    let file = test.credentials_file();
    assert!(broker_accepts(&file, "device-1", &new));
    assert!(
        broker_accepts(&file, "device-1", &old),
        "during the grace window"
    );
    assert!(file.contains("not_after"));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1, "the rotation is pushed");
}

#[tokio::test]
async fn a_taken_user_name_is_refused_and_the_holder_is_unaffected() {
    let test = Test::running().await;
    test.put_user(
        "first",
        json!({"brokerRef": {"name": "mq"}, "username": "dev"}),
        "2025-01-01T00:00:00Z",
    );
    test.put_user(
        "second",
        json!({"brokerRef": {"name": "mq"}, "username": "dev"}),
        "2025-02-01T00:00:00Z",
    );
    test.reconcile_user("first").await.expect("reconciles");
    test.server.take_requests();

    let action = test.reconcile_user("second").await.expect("reports");
    let requests = test.server.take_requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::PATCH && r.path.contains("/secrets/")),
        "nothing applied: {:?}",
        lines(&requests)
    );
    let status = written_user_status(&requests, "second");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("False", "UsernameConflict")
    );
    assert_eq!(
        user_events(&requests, "second"),
        [("Warning".to_owned(), "UsernameConflict".to_owned())]
    );
    assert_eq!(action, Action::requeue(user::REFUSED_REQUEUE));
    assert!(status.conditions[0].message.contains("MqttUser `first`"));

    let first_password = secret_text(
        &test
            .server
            .get("/api/v1/namespaces/iot/secrets/first-mqtt-credentials")
            .unwrap(),
        "password",
    );
    test.reconcile().await.expect("broker reconciles");
    assert!(broker_accepts(
        &test.credentials_file(),
        "dev",
        &first_password
    ));
}

#[tokio::test]
async fn an_unknown_broker_is_reported() {
    let test = Test::running().await;
    test.put_user(
        "lost",
        json!({"brokerRef": {"name": "nope"}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("lost").await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        [
            "GET /apis/kubemqtt.io/v1alpha1/namespaces/iot/mqttbrokers/nope".to_owned(),
            "GET /api/v1/namespaces/iot/secrets/lost-mqtt-credentials".to_owned(),
            format!("PATCH {}/status", user_path("lost")),
            event_post(),
        ]
    );
    let status = written_user_status(&requests, "lost");
    assert_eq!(
        user_condition(&status, "Ready"),
        pair("False", "BrokerNotFound")
    );
}

#[tokio::test]
async fn failures_back_off_per_user() {
    let test = Test::running().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}}),
        "2025-01-01T00:00:00Z",
    );
    test.server
        .fail_once(Method::GET, BROKER, false, 503, "ServiceUnavailable");
    let error = test.reconcile_user("device-1").await.expect_err("fails");
    let user = Arc::new(test.stored_user("device-1"));
    let retry = || user::error_policy(user.clone(), &error, test.ctx.clone());
    assert_eq!(retry(), Action::requeue(FIRST_RETRY));
    assert_eq!(retry(), Action::requeue(FIRST_RETRY * 2));
    assert_eq!(retry(), Action::requeue(FIRST_RETRY * 4));
    test.reconcile_user("device-1").await.expect("reconciles");
    assert_eq!(
        retry(),
        Action::requeue(FIRST_RETRY),
        "a success starts over"
    );
}

#[tokio::test]
async fn a_deleted_user_is_revoked_and_unreachable_pods_are_retried() {
    let test = Test::running().await;
    test.put_user(
        "device-1",
        json!({"brokerRef": {"name": "mq"}}),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let password = secret_text(&test.server.get(USER_SECRET).unwrap(), "password");
    test.reconcile().await.expect("broker reconciles");
    assert!(broker_accepts(
        &test.credentials_file(),
        "device-1",
        &password
    ));
    test.pushes.take();

    // Deleted (its Secret lingers until the garbage collector runs), while
    // the pod cannot be reached.
    test.server.remove(&user_path("device-1"));
    test.pushes
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("broker reconciles");
    assert!(!broker_accepts(
        &test.credentials_file(),
        "device-1",
        &password
    ));
    assert_eq!(test.pushes.take().len(), 1);
    assert_eq!(action, Action::requeue(FIRST_RETRY));

    // The pod is back: the same revision is pushed again.
    test.pushes
        .unreachable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("broker reconciles");
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert!(!pushes[0].body.contains("device-1"));
    assert_eq!(action, Action::requeue(MAX_REQUEUE));
}

#[tokio::test]
async fn a_change_of_the_referenced_secret_rotates_and_the_window_closes() {
    let test = Test::running().await;
    let source = "/api/v1/namespaces/iot/secrets/app-password";
    let put_source = |password: &str, labels: Value| {
        let secret = Secret {
            data: Some(std::collections::BTreeMap::from([(
                "pw".to_owned(),
                k8s_openapi::ByteString(password.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        let mut object = serde_json::to_value(secret).unwrap();
        object["metadata"] = json!({"name": "app-password", "namespace": "iot", "labels": labels});
        test.server.put(source, object);
    };
    put_source("first-password", json!({}));
    test.put_user(
        "device-1",
        json!({
            "brokerRef": {"name": "mq"},
            "authentication": {"password": {"valueFrom": {"secretKeyRef": {"name": "app-password", "key": "pw"}}}},
        }),
        "2025-01-01T00:00:00Z",
    );
    test.reconcile_user("device-1").await.expect("reconciles");
    let requests = test.server.take_requests();
    let lines = lines(&requests);
    assert!(lines.contains(&format!("GET {source}")));
    // The team's Secret gets only the label the operator's watch selects.
    assert!(lines.contains(&format!("PATCH {source} by kubemqtt-operator-references")));
    let labelled = test.server.get(source).unwrap();
    assert_eq!(
        labelled["metadata"]["labels"]["kubemqtt.io/referenced"],
        "true"
    );
    assert_eq!(secret_text(&labelled, "pw"), "first-password");
    assert_eq!(
        secret_text(&test.server.get(USER_SECRET).unwrap(), "password"),
        "first-password"
    );

    put_source("second-password", json!({"kubemqtt.io/referenced": "true"}));
    test.reconcile_user("device-1").await.expect("rotates");
    let requests = test.server.take_requests();
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "PasswordRotated".to_owned())]
    );
    assert!(!super::tests::lines(&requests)
        .contains(&format!("PATCH {source} by kubemqtt-operator-references")));
    let stored = test.server.get(USER_SECRET).unwrap();
    assert_eq!(secret_text(&stored, "password"), "second-password");

    // The grace window has passed (as if an hour went by).
    let mut expired = stored.clone();
    expired["metadata"]["annotations"]["kubemqtt.io/previous-password-valid-until"] =
        json!("2025-01-01T00:00:00Z");
    test.server.put(USER_SECRET, expired);
    test.keep_user_status("device-1", &requests);
    test.reconcile_user("device-1")
        .await
        .expect("closes the window");
    let requests = test.server.take_requests();
    assert_eq!(
        user_events(&requests, "device-1"),
        [("Normal".to_owned(), "GraceEnded".to_owned())]
    );
    let status = written_user_status(&requests, "device-1");
    assert_eq!(
        user_condition(&status, "Rotating"),
        pair("False", "NoPreviousPassword")
    );
    assert_eq!(status.previous_password_valid_until, None);
    let stored = test.server.get(USER_SECRET).unwrap();
    assert!(stored["metadata"]["annotations"]
        .get("kubemqtt.io/previous-password-hash")
        .is_none());
}
