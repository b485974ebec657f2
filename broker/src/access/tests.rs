use super::*;

#[test]
fn user_slots_are_counted_and_released() {
    let access = Access::load(&AuthConfig::default()).unwrap();
    let a = access.acquire_user_slot("u", Some(2)).unwrap();
    let _b = access.acquire_user_slot("u", Some(2)).unwrap();
    assert!(access.acquire_user_slot("u", Some(2)).is_none());
    assert!(access.acquire_user_slot("other", Some(2)).is_some());
    drop(a);
    assert!(access.acquire_user_slot("u", Some(2)).is_some());
    assert!(access.acquire_user_slot("v", None).is_some());
}

#[test]
fn reload_swaps_only_valid_files_and_bumps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read a/#\n").unwrap();
    let config = AuthConfig {
        acl_file: Some(acl.clone()),
        ..AuthConfig::default()
    };
    let access = Access::load(&config).unwrap();
    assert!(access.reload_if_changed().is_none());
    let g = access.generation();
    assert!(access.acl().client(None, "c").can_receive("a/b"));

    std::fs::write(&acl, "topic read b/#\n# longer\n").unwrap();
    assert!(matches!(access.reload_if_changed(), Some(Ok(()))));
    assert_eq!(access.generation(), g + 1);
    assert!(!access.acl().client(None, "c").can_receive("a/b"));

    std::fs::write(&acl, "topic sideways x\n# broken, and longer again\n").unwrap();
    assert!(matches!(access.reload_if_changed(), Some(Err(_))));
    assert_eq!(access.generation(), g + 1);
    assert!(access.acl().client(None, "c").can_receive("b/c"));
}

const HASH: &str = "$7$101$QnKBAv9+UMW2UYpr$CdLza+MzawgoFLcPiqhVsspAzVMZrrj4I/yiSk5QtmVFMBHR7hkfUJuYKm+C8ULFQMbtdsnNSgpl+2X7tJdWzg==";

fn creds(revision: u64, users: &[&str]) -> String {
    let mut text = format!("revision = {revision}\n");
    for user in users {
        text.push_str(&format!(
            "[[users]]\nusername = \"{user}\"\npasswords = [{{ hash = \"{HASH}\" }}]\n"
        ));
    }
    text
}

#[test]
fn the_newer_of_file_and_push_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("creds.toml");
    std::fs::write(&file, creds(3, &["from-file"])).unwrap();
    let config = AuthConfig {
        credentials_file: Some(file.clone()),
        ..AuthConfig::default()
    };
    let access = Access::load(&config).unwrap();
    assert_eq!(access.credentials_revision(), 3);
    assert!(access.authenticator().has_user("from-file"));

    // Older or equal pushes change nothing.
    assert_eq!(
        access.push_credentials(creds(2, &["old"])).unwrap(),
        PushOutcome::Stale { current: 3 }
    );
    assert_eq!(
        access.push_credentials(creds(3, &["same"])).unwrap(),
        PushOutcome::Unchanged { revision: 3 }
    );
    assert!(!access.authenticator().has_user("old"));
    let g = access.generation();

    // A newer push wins, also over a reload of the older file.
    assert_eq!(
        access.push_credentials(creds(4, &["pushed"])).unwrap(),
        PushOutcome::Applied { revision: 4 }
    );
    assert_eq!(access.generation(), g + 1);
    assert!(access.authenticator().has_user("pushed"));
    assert!(!access.authenticator().has_user("from-file"));
    access.reload().unwrap();
    assert!(access.authenticator().has_user("pushed"));
    assert_eq!(access.credentials_revision(), 4);

    // Once the file catches up, the file is in force again.
    std::fs::write(&file, creds(5, &["caught-up", "and-longer"])).unwrap();
    assert!(matches!(access.reload_if_changed(), Some(Ok(()))));
    assert!(access.authenticator().has_user("caught-up"));
    assert!(!access.authenticator().has_user("pushed"));
    assert_eq!(access.credentials_revision(), 5);
}

#[test]
fn an_invalid_push_changes_nothing() {
    let access = Access::load(&AuthConfig::default()).unwrap();
    assert!(!access.has_user_files());
    let error = access
        .push_credentials("[[users]]\nusername = \"u\"\n".to_owned())
        .unwrap_err();
    assert!(error.to_string().contains("need a `revision`"), "{error}");
    let error = access
        .push_credentials("revision = 2\n[[users]]\nusername = \"\"\n".to_owned())
        .unwrap_err();
    assert!(error.to_string().contains("empty user name"), "{error}");
    assert_eq!(access.credentials_revision(), 0);
    assert!(!access.has_user_files());

    access.push_credentials(creds(1, &["u"])).unwrap();
    assert!(access.has_user_files());
    assert!(access.authenticator().has_user("u"));
}

#[test]
fn reconfigure_reads_the_new_files_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("acl-1");
    let second = dir.path().join("acl-2");
    std::fs::write(&first, "topic read a/#\n").unwrap();
    std::fs::write(&second, "topic read b/#\n").unwrap();
    let config = |acl: &std::path::Path| AuthConfig {
        acl_file: Some(acl.to_owned()),
        ..AuthConfig::default()
    };
    let access = Access::load(&config(&first)).unwrap();
    access.reconfigure(&config(&second)).unwrap();
    assert!(access.acl().client(None, "c").can_receive("b/c"));
    assert!(!access.acl().client(None, "c").can_receive("a/b"));
    // Later changes of the new file are picked up, not of the old one.
    std::fs::write(&first, "topic read x/#\n# longer now\n").unwrap();
    assert!(access.reload_if_changed().is_none());

    let missing = dir.path().join("missing");
    assert!(access.reconfigure(&config(&missing)).is_err());
    assert!(access.acl().client(None, "c").can_receive("b/c"));
    assert!(access.reload_if_changed().is_none());
}

#[test]
fn known_certificate_users_must_be_defined() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("creds.toml");
    std::fs::write(&file, "[[users]]\nusername = \"device\"\n").unwrap();
    let mut config = AuthConfig {
        credentials_file: Some(file),
        ..AuthConfig::default()
    };
    let any = Access::load(&config).unwrap();
    assert!(any.certificate_user_allowed("stranger"));
    config.certificate_users = CertificateUsers::Known;
    let known = Access::load(&config).unwrap();
    assert!(known.certificate_user_allowed("device"));
    assert!(!known.certificate_user_allowed("stranger"));
}
