//! The samples in the documentation do what the text beside them says.

use std::path::Path;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `hash = "..."` after `marker` in `text`.
fn hash_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` not found"));
    let rest = &text[at..];
    let start = rest.find("hash = \"").expect("a hash follows") + "hash = \"".len();
    let end = rest[start..].find('"').expect("closing quote");
    &rest[start..start + end]
}

#[test]
fn the_sample_hashes_in_auth_md_are_of_the_passwords_beside_them() {
    let text = doc("auth.md");
    let line = |user: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no sample line for {user}"))
            .to_owned()
    };
    let alice = line("alice");
    let bob = line("bob");
    assert!(alice.starts_with("$7$") && bob.starts_with("$6$"));
    assert!(text.contains("alice 'alice-password'") && text.contains("bob 'bob-password'"));
    assert!(kubemqtt_broker::auth::verify_password(
        &alice,
        "alice-password"
    ));
    assert!(kubemqtt_broker::auth::verify_password(&bob, "bob-password"));
    assert!(!kubemqtt_broker::auth::verify_password(
        &alice,
        "bob-password"
    ));

    let new = hash_after(&text, "# the new password: new-password");
    let old = hash_after(&text, "# the old one, old-password,");
    assert!(kubemqtt_broker::auth::verify_password(new, "new-password"));
    assert!(kubemqtt_broker::auth::verify_password(old, "old-password"));
}

#[test]
fn every_login_refusal_reason_is_documented() {
    let auth = doc("auth.md");
    for reason in kubemqtt_broker::metrics::AUTH_FAILURE_REASONS {
        if reason == "anonymous" {
            assert!(auth.contains("reason=\"anonymous\""));
            continue;
        }
        let words = reason.replace('_', " ");
        assert!(
            auth.contains(&format!("- `{words}`:")),
            "docs/auth.md lacks `{words}`"
        );
    }
    let quickstart = doc("quickstart.md");
    for words in [
        "bad password",
        "password expired",
        "unknown user",
        "no users",
    ] {
        assert!(
            quickstart.contains(&format!("| `{words}` |")),
            "docs/quickstart.md's table lacks `{words}`"
        );
    }
}
