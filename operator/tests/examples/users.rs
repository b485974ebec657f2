//! Users in the examples: admitted, in their Secret, in force on the broker.

use super::*;

/// Every document of the examples as typed objects, each without a
/// namespace put in [`NAMESPACE`]; Secrets with `stringData` folded into
/// `data`, as the apiserver stores them.
pub(super) struct ExampleObjects {
    brokers: Vec<MqttBroker>,
    users: Vec<MqttUser>,
    secrets: Vec<Secret>,
}

pub(super) fn example_objects() -> ExampleObjects {
    let mut objects = ExampleObjects {
        brokers: Vec::new(),
        users: Vec::new(),
        secrets: Vec::new(),
    };
    for file in examples() {
        for mut document in documents(&file) {
            if document["metadata"]["namespace"].is_null() {
                document["metadata"]["namespace"] = json!(NAMESPACE);
            }
            let file = file.display();
            match kind(&document) {
                "MqttBroker" => objects.brokers.push(typed(document, &file)),
                "MqttUser" => objects.users.push(typed(document, &file)),
                // Planned and validated by tests/bridge_examples.rs.
                "MqttBridge" => {}
                // Planned and validated by tests/fleet_examples.rs.
                "MqttDeviceFleet" => {}
                "Secret" => {
                    let mut secret: Secret = typed(document, &file);
                    let string_data = secret.string_data.take().unwrap_or_default();
                    let data = secret.data.get_or_insert_with(BTreeMap::new);
                    for (key, value) in string_data {
                        data.insert(key, ByteString(value.into_bytes()));
                    }
                    objects.secrets.push(secret);
                }
                other => panic!("{file}: unexpected kind `{other}`"),
            }
        }
    }
    objects
}

/// `document` as a `T`; `file` names it in the panic.
fn typed<T: serde::de::DeserializeOwned>(document: Value, file: &impl std::fmt::Display) -> T {
    serde_json::from_value(document).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8(value.0.clone()).expect("UTF-8"))
}

fn same_place(a: &impl ResourceExt, b: &impl ResourceExt) -> bool {
    a.namespace() == b.namespace()
}

/// Each example user planned against the example broker it names, at
/// [`now`]: its credentials Secret.
pub(super) fn user_secrets(objects: &ExampleObjects) -> Vec<(MqttUser, Secret)> {
    assert!(
        objects.users.len() >= 2,
        "expected the device and backend users"
    );
    objects
        .users
        .iter()
        .map(|user| {
            let broker_name = &user.spec.broker_ref.name;
            let broker = objects
                .brokers
                .iter()
                .find(|b| b.name_any() == *broker_name && same_place(*b, user))
                .unwrap_or_else(|| {
                    panic!(
                        "MqttUser {} names MqttBroker {broker_name}, which no example defines",
                        user.name_any()
                    )
                });
            let broker_plan = plan(broker, &Observed::default(), &Settings::default(), now())
                .expect("the example broker plans");
            let trust_bundle = broker_plan
                .config_map
                .data
                .as_ref()
                .and_then(|data| data.get(CA_BUNDLE_KEY))
                .cloned();
            let siblings: Vec<MqttUser> = objects
                .users
                .iter()
                .filter(|u| u.spec.broker_ref.name == *broker_name && same_place(*u, user))
                .cloned()
                .collect();
            let password_source =
                user.spec
                    .authentication
                    .password
                    .value_from
                    .as_ref()
                    .map(|from| {
                        objects
                            .secrets
                            .iter()
                            .find(|s| {
                                s.name_any() == from.secret_key_ref.name && same_place(*s, user)
                            })
                            .unwrap_or_else(|| {
                                panic!(
                                    "MqttUser {}: its password Secret {} is not in the examples",
                                    user.name_any(),
                                    from.secret_key_ref.name
                                )
                            })
                    });
            let observed = UserObserved {
                broker: Some(broker),
                siblings: &siblings,
                password_source,
                trust_bundle: trust_bundle.as_deref(),
                ..UserObserved::default()
            };
            let user_plan = plan_user(user, &observed, &Settings::default(), now())
                .unwrap_or_else(|e| panic!("MqttUser {}: {} ({e})", user.name_any(), e.reason()));
            (user.clone(), user_plan.secret)
        })
        .collect()
}

#[test]
fn example_users_get_their_secret_and_are_in_force_as_documented() {
    let objects = example_objects();
    let secrets = user_secrets(&objects);
    for (user, secret) in &secrets {
        let name = user.name_any();
        assert_eq!(secret.name_any(), format!("{name}-mqtt-credentials"));
        for key in [
            "username", "password", "ca.crt", "host", "port", "tls-port", "uri",
        ] {
            assert!(secret_text(secret, key).is_some(), "{name}: no `{key}`");
        }
        if let Some(from) = &user.spec.authentication.password.value_from {
            let source = objects
                .secrets
                .iter()
                .find(|s| s.name_any() == from.secret_key_ref.name)
                .expect("the password Secret");
            assert_eq!(
                secret_text(secret, "password"),
                secret_text(source, &from.secret_key_ref.key),
                "{name}: the password is the one of its Secret"
            );
        }
    }

    // The broker's credentials file with these users, read by the broker.
    let broker = objects
        .brokers
        .iter()
        .find(|b| b.name_any() == "broker")
        .expect("examples/broker.yaml");
    let observed = Observed {
        users: secrets
            .iter()
            .filter(|(user, _)| user.spec.broker_ref.name == "broker")
            .map(|(user, secret)| (user.clone(), Some(secret.clone())))
            .collect(),
        ..Observed::default()
    };
    let broker_plan = plan(broker, &observed, &Settings::default(), now()).expect("plans");
    let file = AuthText {
        text: secret_text(&broker_plan.auth_secret, CREDENTIALS_KEY).expect("credentials file"),
        origin: "examples' credentials".to_owned(),
    };
    let (authenticator, acl) = auth::build(None, Some(&file), None).expect("the broker reads it");
    let password = |user: &str| {
        let (_, secret) = secrets
            .iter()
            .find(|(u, _)| u.name_any() == user)
            .unwrap_or_else(|| panic!("no example user {user}"));
        secret_text(secret, "password").expect("a password")
    };
    for user in ["device-1", "backend-reader"] {
        authenticator
            .authenticate(user, password(user).as_bytes(), SystemTime::now())
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e:?}"));
        assert!(authenticator
            .authenticate(user, b"not-the-password", SystemTime::now())
            .is_err());
    }

    // examples/user-device.yaml: its own topics only, one connection,
    // 10 PUBLISH a second.
    let device = acl.client(Some("device-1"), "device-1-sensor");
    assert!(device.can_publish("devices/device-1/temperature"));
    assert!(!device.can_publish("devices/device-2/temperature"));
    assert!(!device.can_subscribe("devices/device-1/#"));
    assert!(device.can_subscribe("commands/device-1/#"));
    assert!(!device.can_subscribe("commands/#"));
    assert!(!device.can_publish("commands/device-1/reboot"));
    let quotas = authenticator.quotas("device-1").expect("quotas");
    assert_eq!(quotas.connections.map(|n| n.get()), Some(1));
    assert_eq!(quotas.publish_rate.map(|n| n.get()), Some(10));

    // examples/user-backend.yaml: every device's messages (also as a
    // shared subscription), commands to any device, nothing else.
    let backend = acl.client(Some("backend-reader"), "backend-7f9c");
    assert!(backend.can_subscribe("devices/#"));
    assert!(backend.can_subscribe("$share/backend/devices/#"));
    assert!(backend.can_receive("devices/device-1/temperature"));
    assert!(backend.can_publish("commands/device-1/reboot"));
    assert!(!backend.can_publish("devices/device-1/temperature"));
    assert!(!backend.can_subscribe("#"));
    assert!(!backend.can_subscribe("$SYS/#"));
    assert!(authenticator.quotas("backend-reader").is_none());
}
