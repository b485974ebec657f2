//! The fleet planner: each mode's entry loads in the broker as it is, the
//! operator's material is made once and kept, and a fleet that cannot be
//! used is left out alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::api::MqttDeviceFleet;

fn fleet(name: &str, spec: serde_json::Value) -> MqttDeviceFleet {
    serde_json::from_value(json!({
        "apiVersion": "kubemqtt.io/v1alpha1",
        "kind": "MqttDeviceFleet",
        "metadata": {"name": name, "namespace": "iot", "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .unwrap()
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("iot".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn now() -> Timestamp {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

/// Writes the files where the broker would see them and loads them as the
/// broker does.
fn load_in_broker(files: &BTreeMap<String, String>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let configs = kubemqtt_broker::auth::fleet::config::all_fleets(&[], Some(dir.path())).unwrap();
    let fleets = kubemqtt_broker::auth::fleet::Fleets::load(&configs, None).unwrap();
    fleets.names().map(str::to_owned).collect()
}

#[test]
fn a_derived_fleet_gets_a_generated_secret_kept_across_plans() {
    let sensors = fleet(
        "sensors",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "acl": [{"action": "publish", "topic": "sensors/%d/#"}],
               "quotas": {"connections": 1},
               "revocations": {"devices": ["sensor-9"]}}),
    );
    let own = plan_own_secret(&sensors, None, now()).unwrap().unwrap();
    assert_eq!(own.metadata.name.as_deref(), Some("sensors-fleet-secret"));
    let generated = text(&own, FLEET_SECRET_KEY).unwrap().to_owned();
    assert_eq!(generated.len(), 64);
    let again = plan_own_secret(&sensors, Some(&own), now())
        .unwrap()
        .unwrap();
    assert_eq!(
        text(&again, FLEET_SECRET_KEY),
        Some(generated.as_str()),
        "kept"
    );

    let empty = BTreeMap::new();
    let built = BrokerFleets::build(&[FleetSources {
        fleet: &sensors,
        own_secret: Some(&own),
        secrets: &empty,
        config_maps: &BTreeMap::new(),
    }]);
    assert_eq!(built.included, ["sensors"]);
    assert_eq!(
        built.files.keys().collect::<Vec<_>>(),
        ["sensors.revoked", "sensors.secret", "sensors.toml"]
    );
    assert_eq!(built.revoked["sensors"], 1);
    let toml = &built.files["sensors.toml"];
    assert!(toml.contains("username = \"%d@sensors\""), "{toml}");
    assert!(toml.contains("secret_file = \"sensors.secret\""), "{toml}");
    assert_eq!(load_in_broker(&built.files), ["sensors"]);
}

#[test]
fn a_certificate_fleet_gets_a_ca_kept_across_plans() {
    let meters = fleet(
        "meters",
        json!({"brokerRef": {"name": "mq"}, "mode": "certificate",
               "certificate": {"deviceIdFrom": "san"}}),
    );
    let own = plan_own_secret(&meters, None, now()).unwrap().unwrap();
    let ca = text(&own, CA_CERT_KEY).unwrap().to_owned();
    assert!(certs::is_ca(&ca));
    let again = plan_own_secret(&meters, Some(&own), now())
        .unwrap()
        .unwrap();
    assert_eq!(text(&again, CA_CERT_KEY), Some(ca.as_str()));
    let built = BrokerFleets::build(&[FleetSources {
        fleet: &meters,
        own_secret: Some(&own),
        secrets: &BTreeMap::new(),
        config_maps: &BTreeMap::new(),
    }]);
    assert_eq!(built.files["meters.ca.crt"], ca);
    assert!(!built.files["meters.toml"].contains("username"));
    assert_eq!(load_in_broker(&built.files), ["meters"]);

    // A team's CA instead: no Secret of the operator's.
    let own_ca = fleet(
        "lamps",
        json!({"brokerRef": {"name": "mq"}, "mode": "certificate",
               "certificate": {"ca": {"secretName": "lamps-ca"}}}),
    );
    assert_eq!(plan_own_secret(&own_ca, None, now()).unwrap(), None);
    let secrets = BTreeMap::from([(
        "lamps-ca".to_owned(),
        secret("lamps-ca", &[("tls.crt", &ca)]),
    )]);
    let built = BrokerFleets::build(&[FleetSources {
        fleet: &own_ca,
        own_secret: None,
        secrets: &secrets,
        config_maps: &BTreeMap::new(),
    }]);
    assert_eq!(built.included, ["lamps"]);
}

#[test]
fn jwt_and_hook_fleets_take_their_secrets() {
    let key = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let secrets = BTreeMap::from([
        (
            "car-keys".to_owned(),
            secret("car-keys", &[("keys.pem", &key)]),
        ),
        (
            "registry".to_owned(),
            secret("registry", &[("token", "t0ken")]),
        ),
    ]);
    let cars = fleet(
        "cars",
        json!({"brokerRef": {"name": "mq"}, "mode": "jwt", "usernameTemplate": "car",
               "jwt": {"keysSecretKeyRef": {"name": "car-keys", "key": "keys.pem"},
                       "disconnectAtExpiry": true}}),
    );
    let hooked = fleet(
        "vending",
        json!({"brokerRef": {"name": "mq"}, "mode": "hook",
               "hook": {"url": "https://registry.iot.svc/login",
                        "tokenSecretKeyRef": {"name": "registry", "key": "token"},
                        "whenDown": "allowCached"}}),
    );
    let no_maps = BTreeMap::new();
    let sources = |fleet| FleetSources {
        fleet,
        own_secret: None,
        secrets: &secrets,
        config_maps: &no_maps,
    };
    let built = BrokerFleets::build(&[sources(&cars), sources(&hooked)]);
    assert_eq!(built.included, ["cars", "vending"], "{:?}", built.refused);
    assert_eq!(built.files["vending.token"], "t0ken");
    assert!(built.files["vending.toml"].contains("when_down = \"allow_cached\""));
    assert!(built.files["cars.toml"].contains("disconnect_at_expiry = true"));
    assert_eq!(load_in_broker(&built.files), ["cars", "vending"]);
}

#[test]
fn a_fleet_that_cannot_be_used_is_left_out_alone() {
    let good = fleet(
        "good",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived"}),
    );
    let own = plan_own_secret(&good, None, now()).unwrap().unwrap();
    let missing = fleet(
        "missing",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "derived": {"secretKeyRef": {"name": "nowhere", "key": "s"}}}),
    );
    let clash = fleet(
        "clash",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived", "usernameTemplate": "%d@good",
               "derived": {"secretKeyRef": {"name": "long", "key": "s"}}}),
    );
    let short = fleet(
        "short",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "derived": {"secretKeyRef": {"name": "short", "key": "s"}}}),
    );
    let bad_list = fleet(
        "badlist",
        json!({"brokerRef": {"name": "mq"}, "mode": "derived",
               "derived": {"secretKeyRef": {"name": "long", "key": "s"}},
               "revocations": {"configMapKeyRef": {"name": "revoked", "key": "list"}}}),
    );
    let secrets = BTreeMap::from([
        (
            "long".to_owned(),
            secret("long", &[("s", "a fleet secret of more than 32 bytes")]),
        ),
        ("short".to_owned(), secret("short", &[("s", "too short")])),
    ]);
    let config_maps: BTreeMap<String, ConfigMap> = BTreeMap::from([(
        "revoked".to_owned(),
        serde_json::from_value(json!({"metadata": {"name": "revoked"},
                                      "data": {"list": "device ok\nserial not-hex\n"}}))
        .unwrap(),
    )]);
    let sources = |fleet, own_secret| FleetSources {
        fleet,
        own_secret,
        secrets: &secrets,
        config_maps: &config_maps,
    };
    let built = BrokerFleets::build(&[
        sources(&good, Some(&own)),
        sources(&missing, None),
        sources(&clash, None),
        sources(&short, None),
        sources(&bad_list, None),
    ]);
    assert_eq!(built.included, ["good"]);
    assert_eq!(built.refused["missing"].reason(), "MissingReference");
    assert!(
        built.refused["clash"].to_string().contains("fleet `good`"),
        "{}",
        built.refused["clash"]
    );
    assert!(built.refused["short"].to_string().contains("at least 32"));
    assert!(built.refused["badlist"]
        .to_string()
        .contains("not a hex serial"));
    assert!(built.files.keys().all(|k| k.starts_with("good.")));
    assert_eq!(load_in_broker(&built.files), ["good"]);
}

#[test]
fn the_fleets_secret_gets_a_new_revision_only_when_its_files_change() {
    let broker: MqttBroker = serde_json::from_value(json!({
        "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBroker",
        "metadata": {"name": "mq", "namespace": "iot", "uid": "uid-mq"},
        "spec": {},
    }))
    .unwrap();
    let sensors = |devices: &[&str]| {
        fleet(
            "sensors",
            json!({"brokerRef": {"name": "mq"}, "mode": "derived",
                   "revocations": {"devices": devices}}),
        )
    };
    // The same generated secret every time.
    let own = plan_own_secret(&sensors(&[]), None, now())
        .unwrap()
        .unwrap();
    let plan = |devices: &[&str]| {
        let sensors = sensors(devices);
        let (secrets, maps) = (BTreeMap::new(), BTreeMap::new());
        BrokerFleets::build(&[FleetSources {
            fleet: &sensors,
            own_secret: Some(&own),
            secrets: &secrets,
            config_maps: &maps,
        }])
    };
    let first = plan(&["s-9"]);
    let now_secs = u64::try_from(now().as_second()).unwrap();
    let (written, revision) = first.secret_after(&broker, None, now());
    assert_eq!(revision, now_secs, "a new Secret starts at the time");
    assert_eq!(secret_revision(&written), revision);
    let (again, same) = plan(&["s-9"]).secret_after(&broker, Some(&written), now());
    assert_eq!((same, again.data.clone()), (revision, written.data.clone()));
    let (next, newer) = plan(&["s-9", "s-1"]).secret_after(&broker, Some(&written), now());
    assert_eq!(newer, revision + 1);
    assert_eq!(secret_revision(&next), revision + 1);
    // An older clock does not go back below the Secret's revision.
    let earlier: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    assert_eq!(
        plan(&["s-1"]).secret_after(&broker, Some(&next), earlier).1,
        newer + 1
    );

    // The push holds every fleet's list, and the broker takes it.
    let push = plan(&["s-9", "s-1"]).revocation_push(newer);
    let parsed = kubemqtt_broker::auth::fleet::pushed::RevocationPush::parse(&push).unwrap();
    assert_eq!(parsed.revision, newer);
    assert_eq!(parsed.fleets().collect::<Vec<_>>(), ["sensors"]);
    let none = plan(&[]).revocation_push(3);
    assert!(none.contains("sensors = \"\""), "{none}");
    // The broker reads the revision from the directory the Secret becomes.
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in next.data.as_ref().unwrap() {
        std::fs::write(dir.path().join(key), &value.0).unwrap();
    }
    assert_eq!(
        kubemqtt_broker::auth::fleet::pushed::dir_revision(Some(dir.path())).unwrap(),
        newer
    );
}
