//! Authentication: mosquitto password files made by the real
//! `mosquitto_passwd`, our credentials file with password rotation and
//! expiry, and reloads (on change and on SIGHUP) that disconnect removed
//! users while everyone else stays connected.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// How long a change of an auth file may take to apply (files are checked
/// every second in these tests).
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// `[auth]` with the given file keys, checked for changes every `interval`
/// seconds, and the HTTP server on `{port:http}`.
fn auth_toml(files: &[(&str, &Path)], interval: u64) -> String {
    let mut toml = format!(
        "[http]\nbind = \"127.0.0.1:{{port:http}}\"\n[auth]\nreload_interval_secs = {interval}\n"
    );
    for (key, path) in files {
        toml.push_str(&format!("{key} = \"{}\"\n", path.display()));
    }
    toml
}

fn passwd_arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A password file with `alice` ($7$, mosquitto 2.0's default) and `bob`
/// ($6$, `-H sha512`), made by the real tool.
fn make_password_file(tool: &Path, dir: &Path) -> PathBuf {
    let file = dir.join("passwd");
    let f = passwd_arg(&file);
    run_mosquitto_passwd(tool, &["-c", "-b", f, "alice", "alice-pw"]);
    run_mosquitto_passwd(tool, &["-H", "sha512", "-b", f, "bob", "bob-pw"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$7$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");
    file
}

async fn refused_with(broker: &TestBroker, connect: &Connect) -> u8 {
    let (mut raw, ack) = Raw::connect_raw(broker, connect).await;
    if ack.code != 0 {
        raw.expect_closed().await;
    }
    ack.code
}

#[tokio::test]
async fn password_file_from_mosquitto_passwd() {
    let Some(tool) = mosquitto_passwd() else {
        return;
    };
    let fixtures = tempfile::tempdir().unwrap();
    let passwd = make_password_file(&tool, fixtures.path());
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("password_file", &passwd)], 1),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };

    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let (mut raw, _) = Raw::connect(&broker, &Connect::v5(user).login(user, password)).await;
        raw.ping().await;
        let (raw, _) = Raw::connect(&broker, &Connect::v4(user).login(user, password)).await;
        raw.disconnect().await;
    }

    // 5.0 reason codes, then the 3.1.1 return codes.
    let cases = [
        (Connect::v5("c1").login("alice", "bob-pw"), 0x86),
        (Connect::v5("c2").login("bob", ""), 0x86),
        (Connect::v5("c3").login("mallory", "alice-pw"), 0x86),
        (Connect::v5("c4"), 0x87),
        (Connect::v4("c5").login("alice", "wrong"), 4),
        (Connect::v4("c6").login("nobody", "x"), 4),
        (Connect::v4("c7"), 5),
    ];
    for (connect, code) in &cases {
        assert_eq!(refused_with(&broker, connect).await, *code, "{connect:?}");
    }

    broker
        .wait_metrics("refused logins counted by reason", |m| {
            let count = |reason| m.value("kubemqtt_auth_failures_total", &[("reason", reason)]);
            count("bad_password") == 3.0
                && count("unknown_user") == 2.0
                && count("anonymous") == 2.0
        })
        .await;
    assert!(
        broker
            .wait_for_log("Login refused for user alice from 127.0.0.1:", TIMEOUT)
            .await
    );
    let logs = broker.logs().join("\n");
    for secret in ["alice-pw", "bob-pw", "wrong"] {
        assert!(!logs.contains(secret), "a password was logged: {secret}");
    }
}

/// RFC 3339 UTC time of `unix` seconds, e.g. `2026-11-25T12:00:00Z`.
fn rfc3339(unix: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn rfc3339_formats_known_instants() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_732_569_600), "2024-11-25T21:20:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn rotation_two_passwords_then_the_old_one_expires() {
    let fixtures = tempfile::tempdir().unwrap();
    let hash = |pw| kubemqtt_broker::auth::hash_password(pw).unwrap();
    let expires = unix_now() + 3;
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        &format!(
            "[[users]]\nusername = \"dev-1\"\n\
             [[users.passwords]]\nhash = \"{}\"\n\
             [[users.passwords]]\nhash = \"{}\"\nnot_after = \"{}\"\n\
             [[users]]\nusername = \"legacy\"\n\
             passwords = [{{ hash = \"{}\", not_after = \"2001-01-01T00:00:00Z\" }}]\n",
            hash("new-pw"),
            hash("old-pw"),
            rfc3339(expires),
            hash("legacy-pw"),
        ),
    );
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("credentials_file", &creds)], 1),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };

    // Before not_after both passwords work.
    let (old, _) = Raw::connect(&broker, &Connect::v5("d1-old").login("dev-1", "old-pw")).await;
    let (new, _) = Raw::connect(&broker, &Connect::v5("d1-new").login("dev-1", "new-pw")).await;
    old.disconnect().await;
    new.disconnect().await;
    // A password that expired long ago.
    let legacy = Connect::v5("legacy").login("legacy", "legacy-pw");
    assert_eq!(refused_with(&broker, &legacy).await, 0x86);

    // After not_after only the new one does.
    let wait = (expires + 1).saturating_sub(unix_now()) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let old = Connect::v5("d1-old").login("dev-1", "old-pw");
    assert_eq!(refused_with(&broker, &old).await, 0x86);
    let old311 = Connect::v4("d1-old").login("dev-1", "old-pw");
    assert_eq!(refused_with(&broker, &old311).await, 4);
    let (mut new, _) = Raw::connect(&broker, &Connect::v5("d1-new").login("dev-1", "new-pw")).await;
    new.ping().await;

    assert!(
        broker
            .wait_for_log("Login refused for user dev-1 from 127.0.0.1:", TIMEOUT)
            .await
    );
    assert!(broker.logs().iter().any(|l| l.contains("password expired")));
    broker
        .wait_metrics("expired passwords counted", |m| {
            m.value(
                "kubemqtt_auth_failures_total",
                &[("reason", "password_expired")],
            ) == 3.0
        })
        .await;
}

/// Deleting a user with `mosquitto_passwd -D` disconnects their clients
/// (5.0: DISCONNECT 0x87 first) within seconds; other users stay.
#[tokio::test]
async fn removed_user_is_disconnected_and_others_stay() {
    let Some(tool) = mosquitto_passwd() else {
        return;
    };
    let fixtures = tempfile::tempdir().unwrap();
    let passwd = make_password_file(&tool, fixtures.path());
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("password_file", &passwd)], 1),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let (mut alice5, _) =
        Raw::connect(&broker, &Connect::v5("alice5").login("alice", "alice-pw")).await;
    let (mut alice4, _) =
        Raw::connect(&broker, &Connect::v4("alice4").login("alice", "alice-pw")).await;
    let (mut bob, _) = Raw::connect(&broker, &Connect::v5("bob").login("bob", "bob-pw")).await;

    run_mosquitto_passwd(&tool, &["-D", passwd_arg(&passwd), "alice"]);

    let disconnect = alice5.expect_closed_within(RELOAD_BOUND).await;
    let reason = disconnect.expect("5.0 client gets a DISCONNECT").reason;
    assert!(
        matches!(reason, 0x87 | 0x8C),
        "DISCONNECT reason {reason:#04x}"
    );
    assert!(alice4.expect_closed_within(RELOAD_BOUND).await.is_none());
    bob.ping().await;

    let again = Connect::v5("alice5").login("alice", "alice-pw");
    assert_eq!(refused_with(&broker, &again).await, 0x86);
    assert!(broker
        .logs()
        .iter()
        .any(|l| l.contains("user alice was removed")));
    bob.ping().await;
}

/// With a long check interval only SIGHUP reloads: a new user can log in
/// and a removed one is disconnected, without a restart.
#[tokio::test]
async fn sighup_reloads_the_files() {
    let Some(tool) = mosquitto_passwd() else {
        return;
    };
    let fixtures = tempfile::tempdir().unwrap();
    let passwd = make_password_file(&tool, fixtures.path());
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("password_file", &passwd)], 3600),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let pid = broker.pid();
    let (mut bob, _) = Raw::connect(&broker, &Connect::v5("bob").login("bob", "bob-pw")).await;
    let (mut alice, _) =
        Raw::connect(&broker, &Connect::v5("alice").login("alice", "alice-pw")).await;

    run_mosquitto_passwd(&tool, &["-b", passwd_arg(&passwd), "carol", "carol-pw"]);
    run_mosquitto_passwd(&tool, &["-D", passwd_arg(&passwd), "bob"]);
    let carol = Connect::v5("carol").login("carol", "carol-pw");
    assert_eq!(
        refused_with(&broker, &carol).await,
        0x86,
        "the change applied before SIGHUP"
    );
    bob.ping().await;

    broker.signal("HUP");
    assert!(
        broker
            .wait_for_log(
                "Reloaded the password, credentials and ACL files",
                RELOAD_BOUND
            )
            .await
    );
    let (mut carol, _) = Raw::connect(&broker, &carol).await;
    carol.ping().await;
    let disconnect = bob.expect_closed_within(RELOAD_BOUND).await;
    assert!(matches!(disconnect.map(|d| d.reason), Some(0x87 | 0x8C)));
    alice.ping().await;
    assert_eq!(broker.pid(), pid, "the broker was not restarted");
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_previous_one_stays() {
    let Some(tool) = mosquitto_passwd() else {
        return;
    };
    let fixtures = tempfile::tempdir().unwrap();
    let passwd = make_password_file(&tool, fixtures.path());
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("password_file", &passwd)], 1),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let (mut alice, _) =
        Raw::connect(&broker, &Connect::v5("alice").login("alice", "alice-pw")).await;

    // A truncated copy: alice's line is cut in the middle of the hash.
    let text = std::fs::read_to_string(&passwd).unwrap();
    let broken = &text[..text.find("alice:").unwrap() + 20];
    write_file(fixtures.path(), "passwd", broken);
    assert!(
        broker
            .wait_for_log(
                "Refused the changed auth files, keeping the previous ones",
                RELOAD_BOUND
            )
            .await
    );
    alice.ping().await;
    let (mut again, _) =
        Raw::connect(&broker, &Connect::v5("alice2").login("alice", "alice-pw")).await;
    again.ping().await;
}

/// Editing the credentials file: a removed user is disconnected, a new
/// password of another user works, without a restart.
#[tokio::test]
async fn credentials_file_change_applies_while_running() {
    let fixtures = tempfile::tempdir().unwrap();
    let hash = |pw| kubemqtt_broker::auth::hash_password(pw).unwrap();
    let user = |name: &str, hashes: &[String]| {
        let list: Vec<String> = hashes
            .iter()
            .map(|h| format!("{{ hash = \"{h}\" }}"))
            .collect();
        format!(
            "[[users]]\nusername = \"{name}\"\npasswords = [{}]\n",
            list.join(", ")
        )
    };
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        &(user("leaving", &[hash("pw")]) + &user("staying", &[hash("pw")])),
    );
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: auth_toml(&[("credentials_file", &creds)], 1),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let (mut leaving, _) =
        Raw::connect(&broker, &Connect::v5("leaving").login("leaving", "pw")).await;
    let (mut staying, _) =
        Raw::connect(&broker, &Connect::v5("staying").login("staying", "pw")).await;

    write_file(
        fixtures.path(),
        "creds.toml",
        &user("staying", &[hash("pw"), hash("next-pw")]),
    );
    let disconnect = leaving.expect_closed_within(RELOAD_BOUND).await;
    assert!(matches!(disconnect.map(|d| d.reason), Some(0x87 | 0x8C)));
    staying.ping().await;
    let (mut next, _) =
        Raw::connect(&broker, &Connect::v5("next").login("staying", "next-pw")).await;
    next.ping().await;
}

/// The operator's fast path: credentials pushed to `PUT /api/v1/credentials`
/// are in force at once (the file is only checked once a minute here), ahead
/// of the older file. A rotation keeps the connected client connected and
/// both passwords working until `not_after`; a removal disconnects.
#[tokio::test]
async fn pushed_credentials_apply_at_once_and_keep_clients() {
    const TOKEN: &str = "push-token";
    let fixtures = tempfile::tempdir().unwrap();
    let hash = |pw| kubemqtt_broker::auth::hash_password(pw).unwrap();
    let user = |revision: u64, passwords: &str| {
        format!("revision = {revision}\n[[users]]\nusername = \"dev-1\"\n{passwords}")
    };
    let creds = write_file(
        fixtures.path(),
        "creds.toml",
        &user(
            1,
            &format!("passwords = [{{ hash = \"{}\" }}]\n", hash("old-pw")),
        ),
    );
    let token = write_file(fixtures.path(), "token", TOKEN);
    let Some(broker) = OpsBroker::start(BrokerOpts {
        deny_anonymous: true,
        extra_toml: format!(
            "[http]\nbind = \"127.0.0.1:{{port:http}}\"\nadmin_token_file = \"{}\"\n\
             [auth]\nreload_interval_secs = 60\ncredentials_file = \"{}\"\n",
            token.display(),
            creds.display()
        ),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let push = |body: String| {
        let addr = broker.addr_of("http");
        async move {
            http_request_with_body(addr, "PUT", "/api/v1/credentials", Some(TOKEN), &body).await
        }
    };
    let (mut connected, _) =
        Raw::connect(&broker, &Connect::v5("d1").login("dev-1", "old-pw")).await;

    // Rotation: the new password, and the old one for three more seconds.
    let expires = unix_now() + 3;
    let rotated = user(
        2,
        &format!(
            "[[users.passwords]]\nhash = \"{}\"\n[[users.passwords]]\nhash = \"{}\"\nnot_after = \"{}\"\n",
            hash("new-pw"),
            hash("old-pw"),
            rfc3339(expires)
        ),
    );
    let response = push(rotated.clone()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["applied"], true);
    assert_eq!(response.json()["disconnected"], 0);
    let (new, _) = Raw::connect(&broker, &Connect::v5("d1-new").login("dev-1", "new-pw")).await;
    let (old, _) = Raw::connect(&broker, &Connect::v5("d1-old").login("dev-1", "old-pw")).await;
    new.disconnect().await;
    old.disconnect().await;
    connected.ping().await;

    // Pushing the same revision again, an older one or a broken one changes
    // nothing.
    let again = push(rotated).await;
    assert_eq!(
        (again.status, &again.json()["applied"]),
        (200, &false.into())
    );
    let stale = push(user(1, "")).await;
    assert_eq!(stale.status, 409, "{stale:?}");
    assert_eq!(stale.json()["revision"], 2);
    let broken = push("revision = 9\n[[users]]\nusername = \"\"\n".to_owned()).await;
    assert_eq!(broken.status, 422, "{broken:?}");
    assert!(broken.json()["error"]
        .as_str()
        .unwrap()
        .contains("empty user name"));
    let unauthorized = http_request_with_body(
        broker.addr_of("http"),
        "PUT",
        "/api/v1/credentials",
        Some("wrong"),
        &user(10, ""),
    )
    .await;
    assert_eq!(unauthorized.status, 401);

    // After the grace window the old password is refused; the client that
    // logged in with it stays connected.
    let wait = (expires + 1).saturating_sub(unix_now()) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let old = Connect::v5("d1-old").login("dev-1", "old-pw");
    assert_eq!(refused_with(&broker, &old).await, 0x86);
    connected.ping().await;

    // Removing the user disconnects it at once.
    let removed = push("revision = 3\n".to_owned()).await;
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(removed.json()["disconnected"], 1);
    let disconnect = connected.expect_closed_within(Duration::from_secs(5)).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x87));
    let new = Connect::v5("d1-new").login("dev-1", "new-pw");
    assert_eq!(refused_with(&broker, &new).await, 0x86);
}
