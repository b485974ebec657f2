use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::SignedDuration;
use kubemqtt_broker::auth::{self, AuthText};

use super::*;
use crate::plan::testing::{now, user, user_at};

fn secret_with(annotations: &[(&str, String)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

fn hash(password: &str) -> String {
    auth::hash_password(password).unwrap()
}

/// Whether the broker, loading `file`, lets `username` in with
/// `password` at `at`.
fn login(file: &str, username: &str, password: &str, at: Timestamp) -> bool {
    let text = AuthText {
        text: file.to_owned(),
        origin: "test".to_owned(),
    };
    let (authenticator, _) = auth::build(None, Some(&text), None).expect("the broker loads it");
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at.as_second() as u64);
    authenticator
        .authenticate(username, password.as_bytes(), at)
        .is_ok()
}

#[test]
fn admitting_all_at_once_agrees_with_admitting_one_by_one() {
    let users = vec![
        user_at(
            "b",
            "brokerRef: {name: mq}\nusername: dev",
            "2025-02-01T00:00:00Z",
        ),
        user_at(
            "a",
            "brokerRef: {name: mq}\nusername: dev",
            "2025-02-01T00:00:00Z",
        ),
        user_at(
            "c",
            "brokerRef: {name: mq}\nusername: dev",
            "2025-01-01T00:00:00Z",
        ),
        user("bad", "acl: [{action: publish, topic: 'a/#/b'}]"),
        user("solo", ""),
    ];
    let broker_users: Vec<BrokerUser<'_>> = users
        .iter()
        .map(|user| BrokerUser { user, secret: None })
        .collect();
    let at_once: Vec<String> = admitted(&broker_users)
        .iter()
        .map(|u| u.user.name_any())
        .collect();
    let one_by_one: Vec<String> = users
        .iter()
        .filter(|u| admission(u, &users).is_ok())
        .map(|u| u.name_any())
        .collect();
    assert_eq!(at_once, one_by_one);
    assert_eq!(at_once, ["c", "solo"]);
}

#[test]
fn conflicts_go_to_the_oldest_valid_user() {
    let older = user_at(
        "a",
        "brokerRef: {name: mq}\nusername: shared",
        "2025-01-01T00:00:00Z",
    );
    let newer = user_at(
        "b",
        "brokerRef: {name: mq}\nusername: shared",
        "2025-02-01T00:00:00Z",
    );
    let broken_oldest = user_at(
        "c",
        "brokerRef: {name: mq}\nusername: shared\nacl: [{action: all, topic: '#/x'}]",
        "2024-01-01T00:00:00Z",
    );
    let all = [older.clone(), newer.clone(), broken_oldest.clone()];
    assert_eq!(admission(&older, &all), Ok(()));
    assert_eq!(
        admission(&newer, &all),
        Err(Refusal::UsernameConflict {
            username: "shared".to_owned(),
            holder: "a".to_owned(),
        })
    );
    assert!(matches!(
        admission(&broken_oldest, &all),
        Err(Refusal::InvalidAcl { index: 0, .. })
    ));
    // Same creation time: the smaller name wins.
    let twin = user_at(
        "0",
        "brokerRef: {name: mq}\nusername: shared",
        "2025-01-01T00:00:00Z",
    );
    assert!(admission(&older, &[older.clone(), twin.clone()]).is_err());
    assert_eq!(admission(&twin, &[older, twin.clone()]), Ok(()));
}

#[test]
fn reserved_and_invalid_user_names_are_refused() {
    let admin = user("x", "username: kubemqtt-admin");
    assert_eq!(
        admission(&admin, &[]),
        Err(Refusal::ReservedUsername("kubemqtt-admin".to_owned()))
    );
    let plus = user("y", "username: 'a+b'");
    assert_eq!(
        admission(&plus, &[]),
        Err(Refusal::InvalidUsername("a+b".to_owned()))
    );
    assert_eq!(username(&user("dev-7", "")), "dev-7");
}

#[test]
fn the_file_lists_admitted_users_with_their_passwords_rules_and_quotas() {
    let device = user(
            "device-1",
            "acl: [{action: publish, topic: 'devices/%u/#'}, {action: subscribe, topic: 'devices/%u/secret', allow: false}]\n\
             quotas: {connections: 2, publishRate: 5}",
        );
    let open = user("backend", "");
    let conflicting = user_at(
        "late",
        "brokerRef: {name: mq}\nusername: device-1",
        "2026-01-01T00:00:00Z",
    );
    let pending = user("pending", "");
    let device_secret = secret_with(&[(PASSWORD_HASH_ANNOTATION, hash("device-pw"))]);
    let backend_secret = secret_with(&[(PASSWORD_HASH_ANNOTATION, hash("backend-pw"))]);
    let late_secret = secret_with(&[(PASSWORD_HASH_ANNOTATION, hash("late-pw"))]);
    let users = [
        BrokerUser {
            user: &device,
            secret: Some(&device_secret),
        },
        BrokerUser {
            user: &open,
            secret: Some(&backend_secret),
        },
        BrokerUser {
            user: &conflicting,
            secret: Some(&late_secret),
        },
        BrokerUser {
            user: &pending,
            secret: None,
        },
    ];
    let file = credentials_file(&hash("admin-pw"), &users, None, now()).unwrap();
    assert!(file.starts_with("# Managed by kubemqtt-operator"), "{file}");
    assert!(file.contains("revision = 1\n"), "{file}");
    assert!(login(&file, "device-1", "device-pw", now()));
    assert!(login(&file, "backend", "backend-pw", now()));
    assert!(login(&file, ADMIN_USERNAME, "admin-pw", now()));
    assert!(
        !login(&file, "device-1", "late-pw", now()),
        "the conflicting user is left out"
    );
    assert!(
        !file.contains("pending"),
        "no password yet: not listed\n{file}"
    );

    let table: toml::Table = toml::from_str(&file).unwrap();
    let entries = table["users"].as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, [ADMIN_USERNAME, "backend", "device-1"]);
    let device_entry = &entries[2];
    assert_eq!(device_entry["quotas"]["connections"].as_integer(), Some(2));
    assert_eq!(device_entry["quotas"]["publish_rate"].as_integer(), Some(5));
    let rules = device_entry["acl"].as_array().unwrap();
    assert_eq!(rules[0]["topic"].as_str(), Some("devices/%u/#"));
    assert_eq!(rules[1]["allow"].as_bool(), Some(false));
    // A user without rules may use every topic.
    let backend_rules = entries[1]["acl"].as_array().unwrap();
    assert_eq!(backend_rules.len(), 1);
    assert_eq!(backend_rules[0]["topic"].as_str(), Some("#"));
    assert_eq!(backend_rules[0]["action"].as_str(), Some("all"));

    // The operator's user keeps every topic and `$SYS` among users with
    // rules.
    let text = AuthText {
        text: file.clone(),
        origin: "t".to_owned(),
    };
    let (_, acl) = auth::build(None, Some(&text), None).unwrap();
    let admin = acl.client(Some(ADMIN_USERNAME), "health");
    assert!(admin.can_receive("devices/device-1/temp"));
    assert!(admin.can_receive("$SYS/broker/uptime"));
    let device = acl.client(Some("device-1"), "d");
    assert!(!device.can_receive("$SYS/broker/uptime"));
}

#[test]
fn the_previous_password_is_listed_until_its_window_closes() {
    let device = user("device-1", "");
    let until = now() + SignedDuration::from_mins(60);
    let secret = secret_with(&[
        (PASSWORD_HASH_ANNOTATION, hash("new")),
        (PREVIOUS_PASSWORD_HASH_ANNOTATION, hash("old")),
        (PREVIOUS_PASSWORD_VALID_UNTIL_ANNOTATION, until.to_string()),
    ]);
    let users = [BrokerUser {
        user: &device,
        secret: Some(&secret),
    }];
    let file = credentials_file("$7$101$x$y", &users, None, now());
    // An unreadable admin hash is the broker's to refuse.
    assert!(auth::build(
        None,
        Some(&AuthText {
            text: file.unwrap(),
            origin: "t".into()
        }),
        None
    )
    .is_err());

    let admin = hash("admin");
    let file = credentials_file(&admin, &users, None, now()).unwrap();
    assert!(login(&file, "device-1", "new", now()));
    assert!(login(&file, "device-1", "old", now()));
    assert!(
        login(&file, "device-1", "old", until),
        "valid up to and including the end"
    );
    assert!(!login(
        &file,
        "device-1",
        "old",
        until + SignedDuration::from_secs(1)
    ));
    let after = credentials_file(&admin, &users, Some(&file), until).unwrap();
    assert!(
        !after.contains("not_after"),
        "dropped once the window closed\n{after}"
    );
    assert!(after.contains("revision = 2\n"));
}

#[test]
fn the_revision_moves_only_when_the_content_does() {
    let device = user("device-1", "");
    let secret = secret_with(&[(PASSWORD_HASH_ANNOTATION, hash("pw"))]);
    let users = [BrokerUser {
        user: &device,
        secret: Some(&secret),
    }];
    let admin = hash("admin");
    let first = credentials_file(&admin, &users, None, now()).unwrap();
    let same = credentials_file(&admin, &users, Some(&first), now()).unwrap();
    assert_eq!(same, first);
    let without = credentials_file(&admin, &[], Some(&first), now()).unwrap();
    assert!(without.contains("revision = 2\n"), "{without}");
    assert!(
        !login(&without, "device-1", "pw", now()),
        "a deleted user is revoked"
    );
    let back = credentials_file(&admin, &users, Some(&without), now()).unwrap();
    assert!(
        back.contains("revision = 3\n"),
        "never back to an older revision"
    );
    assert_eq!(stored_admin_hash(&back), Some(admin));
}
