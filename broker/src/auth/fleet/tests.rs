//! Fleets as the login path sees them: which logins a fleet claims, the
//! refusal of each bad input with its CONNACK reason, and that a refusal
//! touches nothing else (other devices, other fleets, plain users).

use std::path::Path;

use super::certificate::tests::TestCa;
use super::derived::{device_secret, sign_login};
use super::*;
use crate::config::Config;

const SECRET: &str = "0123456789abcdef0123456789abcdef-sensors";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn request<'a>(username: &'a str, password: &'a str, client_id: &'a str) -> LoginRequest<'a> {
    LoginRequest {
        certificates: None,
        username: Some(username),
        password: Some(password.as_bytes()),
        client_id,
        peer: "127.0.0.1:40000".parse().unwrap(),
    }
}

/// A configuration with a derived fleet `sensors`, a certificate fleet
/// `meters` and a JWT fleet `cars`, their files in `dir`.
fn configs(dir: &Path, ca: &TestCa) -> Vec<FleetConfig> {
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("revoked"), "device sensor-9\nserial 99\n").unwrap();
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(b"jwt fleet key for the tests, 32 bytes+");
    std::fs::write(
        dir.join("jwks.json"),
        format!("{{\"keys\": [{{\"kty\": \"oct\", \"kid\": \"k\", \"k\": \"{k}\"}}]}}"),
    )
    .unwrap();
    let text = format!(
        r#"
[[auth.fleets]]
name = "sensors"
mode = "derived"
username = "%d@sensors"
revocation_file = "{dir}/revoked"
[[auth.fleets.acl]]
action = "publish"
topic = "sensors/%d/#"
[auth.fleets.quotas]
connections = 1
[auth.fleets.derived]
secret_file = "{dir}/secret"
replay_window_secs = 60

[[auth.fleets]]
name = "meters"
mode = "certificate"
revocation_file = "{dir}/revoked"
[auth.fleets.certificate]
ca_file = "{dir}/ca.pem"

[[auth.fleets]]
name = "cars"
mode = "jwt"
username = "car"
[auth.fleets.jwt]
keys_file = "{dir}/jwks.json"
"#,
        dir = dir.display()
    );
    Config::from_toml_str(&text, "broker.toml")
        .unwrap()
        .auth
        .fleets
}

fn fleets() -> (tempfile::TempDir, TestCa, Fleets) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("meters CA");
    let fleets = Fleets::load(&configs(dir.path(), &ca), None).unwrap();
    (dir, ca, fleets)
}

fn password(device: &str, client_id: &str, at: u64) -> String {
    sign_login(
        &device_secret(SECRET.as_bytes(), device),
        client_id,
        device,
        at,
    )
}

async fn refusal(fleets: &Fleets, request: &LoginRequest<'_>) -> (String, Refused) {
    match fleets.login(request).await {
        FleetLogin::Refused(r) => (r.fleet.to_string(), r.reason),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_derived_device_logs_in_and_gets_its_template() {
    let (_dir, _ca, fleets) = fleets();
    let pw = password("sensor-1", "c1", now_secs());
    let FleetLogin::Accepted(device) = fleets.login(&request("sensor-1@sensors", &pw, "c1")).await
    else {
        panic!("refused")
    };
    assert_eq!(&*device.fleet, "sensors");
    assert_eq!(&*device.device_id, "sensor-1");
    assert_eq!(&*device.username, "sensor-1@sensors");
    let acl = fleets.client_acl(&device, "c1");
    assert!(acl.can_publish("sensors/sensor-1/temp"));
    assert!(!acl.can_publish("sensors/sensor-2/temp"));
    assert_eq!(fleets.quotas(&device).connections.map(|n| n.get()), Some(1));
    assert_eq!(fleets.check_connected(&device), Ok(()));
}

#[tokio::test]
async fn each_bad_login_is_refused_with_its_reason() {
    let (_dir, _ca, fleets) = fleets();
    let now = now_secs();
    let cases = [
        // (user name, password, expected)
        ("sensor-1@sensors", "garbage".to_owned(), Refused::Malformed),
        (
            "sensor-1@sensors",
            password("sensor-2", "c1", now),
            Refused::BadSignature,
        ),
        (
            "sensor-1@sensors",
            password("sensor-1", "c1", now - 61),
            Refused::Replayed,
        ),
        (
            "sensor-9@sensors",
            password("sensor-9", "c1", now),
            Refused::Revoked,
        ),
        ("car", "not.a.jwt".to_owned(), Refused::Malformed),
    ];
    for (username, pw, expected) in cases {
        let (_, reason) = refusal(&fleets, &request(username, &pw, "c1")).await;
        assert_eq!(reason, expected, "{username} {pw}");
    }
    assert_eq!(
        Refused::Malformed.reason_code(),
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(Refused::Revoked.reason_code(), ReasonCode::BANNED);
    assert_eq!(Refused::Denied.reason_code(), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        Refused::Unavailable.reason_code(),
        ReasonCode::SERVER_UNAVAILABLE
    );
    // Nothing else was affected: a good device still logs in.
    let pw = password("sensor-1", "c1", now);
    assert!(matches!(
        fleets.login(&request("sensor-1@sensors", &pw, "c1")).await,
        FleetLogin::Accepted(_)
    ));
}

#[tokio::test]
async fn other_user_names_are_not_the_fleets() {
    let (_dir, _ca, fleets) = fleets();
    for username in ["alice", "sensor-1@other", "@sensors", "cars"] {
        assert!(
            matches!(
                fleets.login(&request(username, "pw", "c")).await,
                FleetLogin::NotAFleetDevice
            ),
            "{username}"
        );
    }
    let anonymous = LoginRequest {
        username: None,
        ..request("x", "", "c")
    };
    assert!(matches!(
        fleets.login(&anonymous).await,
        FleetLogin::NotAFleetDevice
    ));
    assert!(matches!(
        Fleets::default()
            .login(&request("a@sensors", "", "c"))
            .await,
        FleetLogin::NotAFleetDevice
    ));
}

#[tokio::test]
async fn certificates_of_the_fleet_ca_are_its_devices() {
    let (_dir, ca, fleets) = fleets();
    let (cert, _, _) = ca.device("meter-1", None, 0x10);
    let chain = [cert];
    let login = LoginRequest {
        certificates: Some(&chain),
        username: Some("whatever@sensors"),
        ..request("x", "", "c")
    };
    let FleetLogin::Accepted(device) = fleets.login(&login).await else {
        panic!("refused")
    };
    assert_eq!(&*device.fleet, "meters");
    assert_eq!(
        &*device.username, "meter-1",
        "the certificate names the device"
    );
    assert!(device.by_certificate);
    assert_eq!(device.serial.as_deref(), Some("10"));

    let (revoked, _, _) = ca.device("meter-2", None, 0x99);
    let chain = [revoked];
    let login = LoginRequest {
        certificates: Some(&chain),
        ..request("x", "", "c")
    };
    assert_eq!(
        refusal(&fleets, &login).await,
        ("meters".to_owned(), Refused::Revoked)
    );

    let stranger = TestCa::new("meters CA");
    let (cert, _, _) = stranger.device("meter-1", None, 0x11);
    let chain = [cert];
    let login = LoginRequest {
        certificates: Some(&chain),
        username: None,
        ..request("x", "", "c")
    };
    assert!(matches!(
        fleets.login(&login).await,
        FleetLogin::NotAFleetDevice
    ));
}

#[tokio::test]
async fn a_revocation_reaches_connected_devices_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("meters CA");
    let configs = configs(dir.path(), &ca);
    let fleets = Fleets::load(&configs, None).unwrap();
    let pw = password("sensor-1", "c1", now_secs());
    let FleetLogin::Accepted(device) = fleets.login(&request("sensor-1@sensors", &pw, "c1")).await
    else {
        panic!("refused")
    };
    std::fs::write(dir.path().join("revoked"), "sensor-1\n").unwrap();
    let reloaded = Fleets::load(&configs, Some(&fleets)).unwrap();
    assert_eq!(reloaded.check_connected(&device), Err("revoked"));
    let without = Fleets::load(&configs[1..], Some(&reloaded)).unwrap();
    assert_eq!(without.check_connected(&device), Err("fleet_removed"));
    assert!(!without
        .client_acl(&device, "c1")
        .can_publish("sensors/sensor-1/x"));
}

#[test]
fn files_that_cannot_be_used_are_errors_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let configs = configs(dir.path(), &ca);
    std::fs::write(dir.path().join("secret"), "short\n").unwrap();
    let error = Fleets::load(&configs, None).unwrap_err().to_string();
    assert!(
        error.contains("secret") && error.contains("at least 32 bytes"),
        "{error}"
    );
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("revoked"), "device ok\nserial zz\n").unwrap();
    let error = Fleets::load(&configs, None).unwrap_err().to_string();
    assert!(
        error.ends_with("revoked:2: `zz` is not a hex serial number"),
        "{error}"
    );
}

#[test]
fn configuration_errors_name_the_line() {
    let text = "[[auth.fleets]]\nname = \"s\"\nmode = \"derived\"\nusername = \"%d@s\"\n\
                [auth.fleets.derived]\nsecret_file = \"/s\"\nreplay_window_secs = 0\n";
    let error = Config::from_toml_str(text, "broker.toml").unwrap_err();
    assert_eq!(
        error.to_string(),
        "broker.toml:7: key `auth.fleets[0].derived.replay_window_secs`: must be above 0"
    );
    let text = "[[auth.fleets]]\nname = \"s\"\nmode = \"derived\"\nusername = \"%d@s\"\n\
                [auth.fleets.derived]\nsecret_file = \"/s\"\n\
                [[auth.fleets]]\nname = \"t\"\nmode = \"derived\"\nusername = \"%d@s\"\n\
                [auth.fleets.derived]\nsecret_file = \"/t\"\n";
    let error = Config::from_toml_str(text, "broker.toml").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("broker.toml:10: key `auth.fleets[1].username`"),
        "{error}"
    );
    let text = "[[auth.fleets]]\nname = \"s\"\nmode = \"sideways\"\n";
    let error = Config::from_toml_str(text, "broker.toml").unwrap_err();
    assert_eq!(error.line(), Some(3), "{error}");
}

#[test]
fn a_fleet_configuration_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let fleets = configs(dir.path(), &ca);
    let mut config = Config::local_default();
    config.auth.fleets = fleets;
    let text = toml::to_string(&config).unwrap();
    let back = Config::from_toml_str(&text, "round-trip").unwrap();
    assert_eq!(back.auth.fleets, config.auth.fleets);
}

#[test]
fn revocation_lists_of_a_million_ids_are_small() {
    let text: String = (0..1_000_000).map(|i| format!("device-{i:08}\n")).collect();
    let list = Revocations::parse(&text, "r").unwrap();
    assert_eq!(list.len(), 1_000_000);
    // 15 bytes of id and a 4-byte offset each.
    assert!(list.heap_bytes() <= 1_000_000 * 19, "{}", list.heap_bytes());
    assert!(list.check("device-00999999", None).is_some());
}
