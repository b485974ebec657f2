use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::api::{EndpointsStatus, MqttBrokerStatus};
use crate::certs;
use crate::plan::testing::{broker, now, user};

fn mq() -> MqttBroker {
    let mut broker = broker(Default::default());
    broker.status = Some(MqttBrokerStatus {
        endpoints: Some(EndpointsStatus {
            internal: "mq.iot.svc".to_owned(),
            external: Some("203.0.113.7".to_owned()),
        }),
        ..MqttBrokerStatus::default()
    });
    broker
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Plans `user` at `at`, with `secret` as its stored Secret.
fn plan_at(user: &MqttUser, secret: Option<&Secret>, at: Timestamp) -> UserPlan {
    let broker = mq();
    let siblings = [user.clone()];
    let observed = UserObserved {
        broker: Some(&broker),
        siblings: &siblings,
        secret,
        trust_bundle: Some("CA PEM"),
        ..UserObserved::default()
    };
    plan_user(user, &observed, &Settings::default(), at).expect("plans")
}

fn with_annotation(mut user: MqttUser, value: &str) -> MqttUser {
    user.annotations_mut()
        .insert(ROTATE_ANNOTATION.to_owned(), value.to_owned());
    user
}

fn minutes(n: i64) -> SignedDuration {
    SignedDuration::from_mins(n)
}

#[test]
fn a_new_user_gets_a_password_and_everything_to_connect() {
    let device = user("device-1", "");
    let plan = plan_at(&device, None, now());
    let secret = &plan.secret;
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("device-1-mqtt-credentials")
    );
    assert_eq!(secret.metadata.namespace.as_deref(), Some("iot"));
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("MqttUser", "device-1")
    );
    let labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[BROKER_LABEL], "mq");
    assert_eq!(labels[USER_LABEL], "device-1");
    let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "external-host",
            "host",
            "password",
            "port",
            "tls-port",
            "uri",
            "username"
        ]
    );
    assert_eq!(data(secret, "username"), "device-1");
    assert_eq!(data(secret, "host"), "mq.iot.svc.cluster.local");
    assert_eq!(data(secret, "external-host"), "203.0.113.7");
    assert_eq!(data(secret, "port"), "1883");
    assert_eq!(data(secret, "tls-port"), "8883");
    assert_eq!(data(secret, "uri"), "mqtts://mq.iot.svc.cluster.local:8883");
    assert_eq!(data(secret, "ca.crt"), "CA PEM");
    let password = data(secret, "password");
    assert_eq!(password.len(), 32);
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    let hash = annotation(secret, PASSWORD_HASH_ANNOTATION).unwrap();
    assert!(kubemqtt_broker::auth::verify_password(&hash, &password));
    assert_eq!(plan.change, Some(CredentialChange::PasswordCreated));
    assert_eq!(plan.password_rotated_at, Some(now()));
    assert_eq!(plan.previous_password_valid_until, None);
    assert_eq!(plan.recheck_at, None, "nothing changes with time alone");
}

#[test]
fn the_external_host_prefers_the_dns_name_of_extra_sans() {
    let device = user("device-1", "");
    let external_host = |extra_sans: &str, load_balancer: Option<&str>| {
        let mut broker = mq();
        broker.spec = serde_saphyr::from_str(&format!(
            "tls: {{generated: {{extraSANs: [{extra_sans}]}}}}"
        ))
        .unwrap();
        if let Some(endpoints) = broker.status.as_mut().unwrap().endpoints.as_mut() {
            endpoints.external = load_balancer.map(str::to_owned);
        }
        let siblings = [device.clone()];
        let observed = UserObserved {
            broker: Some(&broker),
            siblings: &siblings,
            trust_bundle: Some("CA PEM"),
            ..UserObserved::default()
        };
        let plan = plan_user(&device, &observed, &Settings::default(), now()).unwrap();
        let data = plan.secret.data.unwrap_or_default();
        data.get(EXTERNAL_HOST_KEY)
            .map(|value| String::from_utf8(value.0.clone()).unwrap())
    };
    // The first DNS name a team points at the load balancer, not an
    // address or a wildcard, and not the load balancer's address.
    assert_eq!(
        external_host(
            "198.51.100.9, '*.devices.example.com', mqtt.example.com, other.example.com",
            Some("203.0.113.7")
        )
        .as_deref(),
        Some("mqtt.example.com")
    );
    // Known before the load balancer has an address.
    assert_eq!(
        external_host("mqtt.example.com", None).as_deref(),
        Some("mqtt.example.com")
    );
    // No DNS name: the load balancer's address, once it has one.
    assert_eq!(
        external_host("198.51.100.9, '*.devices.example.com'", Some("203.0.113.7")).as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(external_host("198.51.100.9", None), None);
}

#[test]
fn the_stored_password_is_kept() {
    let device = user("device-1", "authentication: {password: {length: 20}}");
    let first = plan_at(&device, None, now());
    assert_eq!(data(&first.secret, "password").len(), 20);
    let later = plan_at(&device, Some(&first.secret), now() + minutes(600));
    assert_eq!(later.secret, first.secret);
    assert_eq!(later.change, None);
}

#[test]
fn the_rotate_annotation_rotates_once_per_value_with_a_grace_window() {
    let device = user("device-1", "rotation: {graceMinutes: 30}");
    let first = plan_at(&device, None, now());
    let old_password = data(&first.secret, "password");
    let old_hash = annotation(&first.secret, PASSWORD_HASH_ANNOTATION).unwrap();

    let at = now() + minutes(60);
    let rotated = plan_at(
        &with_annotation(device.clone(), "1"),
        Some(&first.secret),
        at,
    );
    let new_password = data(&rotated.secret, "password");
    assert_ne!(new_password, old_password);
    assert_eq!(
        rotated.change,
        Some(CredentialChange::PasswordRotated(RotationCause::Annotation))
    );
    assert_eq!(
        annotation(&rotated.secret, PREVIOUS_PASSWORD_HASH_ANNOTATION),
        Some(old_hash)
    );
    let until = at + minutes(30);
    assert_eq!(rotated.previous_password_valid_until, Some(until));
    assert_eq!(
        annotation(&rotated.secret, PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION),
        Some(until.to_string())
    );
    assert_eq!(
        annotation(&rotated.secret, ROTATE_ANNOTATION).as_deref(),
        Some("1")
    );
    assert_eq!(rotated.password_rotated_at, Some(at));
    assert_eq!(
        rotated.recheck_at,
        Some(until),
        "come back when the window closes"
    );

    // The same value again does nothing.
    let again = plan_at(
        &with_annotation(device.clone(), "1"),
        Some(&rotated.secret),
        at + minutes(1),
    );
    assert_eq!(again.secret, rotated.secret);
    assert_eq!(again.change, None);

    // When the window closes, the previous password is dropped.
    let closed = plan_at(
        &with_annotation(device.clone(), "1"),
        Some(&rotated.secret),
        until,
    );
    assert_eq!(closed.change, Some(CredentialChange::GraceEnded));
    assert_eq!(closed.previous_password_valid_until, None);
    assert_eq!(
        annotation(&closed.secret, PREVIOUS_PASSWORD_HASH_ANNOTATION),
        None
    );
    assert_eq!(data(&closed.secret, "password"), new_password);

    // A new value rotates again.
    let second = plan_at(&with_annotation(device, "2"), Some(&closed.secret), until);
    assert_ne!(data(&second.secret, "password"), new_password);
}

#[test]
fn no_grace_means_the_old_password_stops_at_once() {
    let device = user("device-1", "rotation: {graceMinutes: 0}");
    let first = plan_at(&device, None, now());
    let rotated = plan_at(&with_annotation(device, "x"), Some(&first.secret), now());
    assert_eq!(rotated.previous_password_valid_until, None);
    assert_eq!(
        annotation(&rotated.secret, PREVIOUS_PASSWORD_HASH_ANNOTATION),
        None
    );
    assert_eq!(
        rotated.change,
        Some(CredentialChange::PasswordRotated(RotationCause::Annotation))
    );
}

#[test]
fn scheduled_rotation_after_the_interval() {
    let device = user("device-1", "rotation: {intervalDays: 30}");
    let first = plan_at(&device, None, now());
    let due = now() + SignedDuration::from_hours(24 * 30);
    assert_eq!(first.recheck_at, Some(due));
    let early = plan_at(&device, Some(&first.secret), due - minutes(1));
    assert_eq!(early.change, None);
    let on_time = plan_at(&device, Some(&first.secret), due);
    assert_eq!(
        on_time.change,
        Some(CredentialChange::PasswordRotated(RotationCause::Schedule))
    );
    assert_eq!(on_time.password_rotated_at, Some(due));
    assert_eq!(
        on_time.recheck_at,
        Some(due + minutes(60)),
        "the grace window ends before the next rotation"
    );
}

fn source_secret(password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("app-password".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "pw".to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[test]
fn a_password_from_the_users_secret_follows_it() {
    let app = user(
        "app",
        "authentication: {password: {valueFrom: {secretKeyRef: {name: app-password, key: pw}}}}",
    );
    let plan = |source: Option<&Secret>, stored: Option<&Secret>| {
        let broker = mq();
        let siblings = [app.clone()];
        let observed = UserObserved {
            broker: Some(&broker),
            siblings: &siblings,
            secret: stored,
            password_source: source,
            ..UserObserved::default()
        };
        plan_user(&app, &observed, &Settings::default(), now())
    };
    let first = plan(Some(&source_secret("first-password")), None).unwrap();
    assert_eq!(data(&first.secret, "password"), "first-password");
    assert_eq!(first.change, Some(CredentialChange::PasswordCreated));
    let same = plan(Some(&source_secret("first-password")), Some(&first.secret)).unwrap();
    assert_eq!(same.change, None);
    let changed = plan(Some(&source_secret("second-password")), Some(&first.secret)).unwrap();
    assert_eq!(data(&changed.secret, "password"), "second-password");
    assert_eq!(
        changed.change,
        Some(CredentialChange::PasswordRotated(
            RotationCause::SourceChanged
        ))
    );
    assert!(changed.previous_password_valid_until.is_some());

    let missing = plan(None, Some(&first.secret)).unwrap_err();
    assert_eq!(missing.reason(), "PasswordSecretInvalid");
    assert!(missing
        .to_string()
        .contains("Secret `app-password` does not exist"));
    let short = plan(Some(&source_secret("short")), None).unwrap_err();
    assert!(short.to_string().contains("shorter than 8"), "{short}");
    let mut no_key = source_secret("whatever-long");
    no_key.data = Some(BTreeMap::new());
    let error = plan(Some(&no_key), None).unwrap_err();
    assert!(error.to_string().contains("has no key `pw`"), "{error}");
}

#[test]
fn refusals_name_their_reason() {
    let device = user("device-1", "");
    let observed = UserObserved::default();
    let error = plan_user(&device, &observed, &Settings::default(), now()).unwrap_err();
    assert_eq!(error.reason(), "BrokerNotFound");
    assert_eq!(
        error.to_string(),
        "MqttBroker `mq` does not exist in this namespace"
    );

    let broker = mq();
    let bad_acl = user("bad", "acl: [{action: publish, topic: 'a/#/b'}]");
    let siblings = [bad_acl.clone()];
    let observed = UserObserved {
        broker: Some(&broker),
        siblings: &siblings,
        ..UserObserved::default()
    };
    let error = plan_user(&bad_acl, &observed, &Settings::default(), now()).unwrap_err();
    assert_eq!(error.reason(), "InvalidAcl");
    assert_eq!(
        error.to_string(),
        "spec.acl[0].topic `a/#/b` is not a valid topic filter"
    );
}

#[test]
fn certificate_users_get_a_certificate_from_the_clients_ca() {
    let sensor = user("sensor", "authentication: {type: tls}");
    let broker = mq();
    let ca = certs::generate_ca("clients", now(), SignedDuration::from_hours(24 * 3650)).unwrap();
    let siblings = [sensor.clone()];
    let plan = |stored: Option<&Secret>, ca: Option<&CertifiedKeyPem>, at: Timestamp| {
        let observed = UserObserved {
            broker: Some(&broker),
            siblings: &siblings,
            secret: stored,
            clients_ca: ca,
            ..UserObserved::default()
        };
        plan_user(&sensor, &observed, &Settings::default(), at)
    };
    let waiting = plan(None, None, now()).unwrap_err();
    assert_eq!(waiting.reason(), "WaitingForBroker");

    let first = plan(None, Some(&ca), now()).unwrap();
    let cert = data(&first.secret, TLS_CERT_KEY);
    assert!(certs::is_signed_by(&cert, &ca.cert_pem));
    assert!(certs::key_matches(&cert, &data(&first.secret, TLS_KEY_KEY)));
    assert_eq!(certs::common_name(&cert).as_deref(), Some("sensor"));
    assert!(!first
        .secret
        .data
        .as_ref()
        .unwrap()
        .contains_key(PASSWORD_KEY));
    assert_eq!(
        first.change,
        Some(CredentialChange::CertificateIssued(RenewalReason::Missing))
    );
    let not_after = first.certificate_not_after.unwrap();
    assert_eq!(
        first.recheck_at,
        Some(not_after - SignedDuration::from_hours(24 * 30))
    );

    let kept = plan(Some(&first.secret), Some(&ca), now() + minutes(60)).unwrap();
    assert_eq!(kept.secret, first.secret);
    assert_eq!(kept.change, None);

    let renewed = plan(Some(&first.secret), Some(&ca), first.recheck_at.unwrap()).unwrap();
    assert_eq!(
        renewed.change,
        Some(CredentialChange::CertificateIssued(RenewalReason::Expiring))
    );

    let other_ca =
        certs::generate_ca("other", now(), SignedDuration::from_hours(24 * 3650)).unwrap();
    let reissued = plan(Some(&first.secret), Some(&other_ca), now()).unwrap();
    assert_eq!(
        reissued.change,
        Some(CredentialChange::CertificateIssued(
            RenewalReason::IssuerChanged
        ))
    );

    let no_tls = crate::plan::testing::broker_yaml("listeners: {mqtts: {enabled: false}}");
    let observed = UserObserved {
        broker: Some(&no_tls),
        siblings: &siblings,
        clients_ca: Some(&ca),
        ..UserObserved::default()
    };
    let error = plan_user(&sensor, &observed, &Settings::default(), now()).unwrap_err();
    assert!(error.to_string().contains("mqtts"), "{error}");
}

#[test]
fn generated_passwords_are_random_letters_and_digits() {
    let a = generate_password(64).unwrap();
    let b = generate_password(64).unwrap();
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
}
