use super::*;

fn fleet(text: &str) -> FleetConfig {
    toml::from_str(text).unwrap()
}

fn check(fleets: &[FleetConfig]) -> Result<(), FleetConfigError> {
    validate(fleets)
}

const DERIVED: &str = "name = \"s\"\nmode = \"derived\"\nusername = \"%d@s\"\n\
                       [derived]\nsecret_file = \"/x\"\n";

#[test]
fn a_fleet_needs_the_table_of_its_mode_and_no_other() {
    assert_eq!(check(&[fleet(DERIVED)]), Ok(()));
    let missing = fleet("name = \"s\"\nmode = \"jwt\"\nusername = \"u\"\n");
    assert_eq!(
        check(&[missing]).unwrap_err(),
        (
            "auth.fleets[0].mode".to_owned(),
            "mode = \"jwt\" needs an [auth.fleets.jwt] table".to_owned()
        )
    );
    let both = fleet(&format!("{DERIVED}[certificate]\nca_file = \"/ca\"\n"));
    assert_eq!(check(&[both]).unwrap_err().0, "auth.fleets[0].certificate");
}

#[test]
fn user_name_templates_are_checked() {
    let bare = fleet(&DERIVED.replace("%d@s", "%d"));
    assert!(check(&[bare]).unwrap_err().1.contains("bare `%d`"));
    let literal = fleet(&DERIVED.replace("%d@s", "fixed"));
    assert!(check(&[literal]).unwrap_err().1.contains("needs `%d`"));
    let cert = fleet("name = \"c\"\nmode = \"certificate\"\nusername = \"%d\"\n[certificate]\nca_file = \"/ca\"\n");
    assert_eq!(check(&[cert]).unwrap_err().0, "auth.fleets[0].username");
    let jwt = fleet("name = \"j\"\nmode = \"jwt\"\n[jwt]\nkeys_file = \"/k\"\n");
    assert!(check(&[jwt]).unwrap_err().1.contains("needs a user name"));
}

#[test]
fn fleets_may_not_share_names_or_user_names() {
    let a = fleet(DERIVED);
    let b = fleet(&DERIVED.replace("name = \"s\"", "name = \"t\""));
    let error = check(&[a.clone(), b]).unwrap_err();
    assert_eq!(error.0, "auth.fleets[1].username");
    assert!(error.1.contains("fleet `s`"), "{}", error.1);
    let same_name = fleet(&DERIVED.replace("%d@s", "%d@t"));
    assert_eq!(
        check(&[a.clone(), same_name]).unwrap_err().0,
        "auth.fleets[1].name"
    );
    let other = fleet(
        &DERIVED
            .replace("name = \"s\"", "name = \"t\"")
            .replace("%d@s", "%d@t"),
    );
    assert_eq!(check(&[a, other]), Ok(()));
}

#[test]
fn mode_settings_are_checked() {
    let jwt = |extra: &str| {
        fleet(&format!(
            "name = \"j\"\nmode = \"jwt\"\nusername = \"%d@j\"\n[jwt]\n{extra}"
        ))
    };
    assert_eq!(check(&[jwt("keys_file = \"/k\"\n")]), Ok(()));
    assert!(check(&[jwt("")])
        .unwrap_err()
        .1
        .contains("one of keys_file"));
    assert_eq!(
        check(&[jwt("jwks_url = \"ftp://x\"\n")]).unwrap_err().0,
        "auth.fleets[0].jwt.jwks_url"
    );
    let hook = |extra: &str| {
        fleet(&format!(
            "name = \"h\"\nmode = \"hook\"\nusername = \"%d@h\"\n[hook]\nurl = \"http://r/login\"\n{extra}"
        ))
    };
    assert_eq!(check(&[hook("")]), Ok(()));
    assert_eq!(
        check(&[hook("timeout_ms = 0\n")]).unwrap_err().0,
        "auth.fleets[0].hook.timeout_ms"
    );
    assert_eq!(
        check(&[hook("acl_url = \"r/acl\"\n")]).unwrap_err().0,
        "auth.fleets[0].hook.acl_url"
    );
    let bad_rule = fleet(&format!(
        "{DERIVED}[[acl]]\naction = \"publish\"\ntopic = \"a/#/b\"\n"
    ));
    assert_eq!(
        check(&[bad_rule]).unwrap_err().0,
        "auth.fleets[0].acl[0].topic"
    );
    let bad_name = fleet(&DERIVED.replace("name = \"s\"", "name = \"a b\""));
    assert_eq!(check(&[bad_name]).unwrap_err().0, "auth.fleets[0].name");
}

#[test]
fn a_fleets_directory_adds_fleets_with_paths_next_to_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        DERIVED.replace("\"/x\"", "\"b.secret\""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        DERIVED
            .replace("name = \"s\"", "name = \"t\"")
            .replace("%d@s", "%d@t"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.secret"), "not a fleet").unwrap();
    let fleets = all_fleets(&[], Some(dir.path())).unwrap();
    let names: Vec<_> = fleets.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["t", "s"], "sorted by file name");
    assert_eq!(
        fleets[1].derived.as_ref().unwrap().secret_file,
        dir.path().join("b.secret")
    );
    assert_eq!(
        fleets[0].derived.as_ref().unwrap().secret_file,
        Path::new("/x")
    );
    let watched = watched_files(&[], Some(dir.path()));
    assert!(watched.contains(&dir.path().join("b.secret")));
    assert!(watched.contains(&dir.path().join("a.toml")));
    assert!(watched.contains(&dir.path().join("revision")));
    assert!(all_fleets(&[], Some(&dir.path().join("missing")))
        .unwrap()
        .is_empty());

    // A clash with a table of broker.toml names the file.
    let error = all_fleets(&[fleet(DERIVED)], Some(dir.path())).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "{}: key `name`",
            dir.path().join("b.toml").display()
        )),
        "{error}"
    );
    std::fs::write(dir.path().join("c.toml"), "name = \"c\"\nmode = 5\n").unwrap();
    let error = all_fleets(&[], Some(dir.path())).unwrap_err().to_string();
    assert!(error.contains("c.toml:2: key `mode`"), "{error}");
}

#[test]
fn files_are_listed_for_watching() {
    let f = fleet(&format!(
        "revocation_file = \"/r\"\n{}previous_secret_file = \"/p\"\n",
        DERIVED
    ));
    let files: Vec<_> = f.files().iter().map(|p| p.display().to_string()).collect();
    assert_eq!(files, ["/r", "/x", "/p"]);
}
