//! mosquitto's `password_file`, as `mosquitto_passwd` writes it: one
//! `username:hash` line per user; lines starting with `#` and blank lines are
//! ignored. See [`super::hash`] for the hash formats.

use std::collections::HashMap;

use super::hash::PasswordHash;
use super::AuthFileError;

/// One user of a password file.
#[derive(Debug)]
pub(crate) struct PasswdEntry {
    pub(crate) username: String,
    pub(crate) hash: PasswordHash,
}

/// Parses the text of a password file; `origin` names it in errors.
///
/// Unlike mosquitto, which skips a malformed line with a warning, any such
/// line is an error, so a typo never silently locks a user out.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Vec<PasswdEntry>, AuthFileError> {
    let mut entries = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let invalid = |message: String| AuthFileError::invalid(origin, Some(line), message);
        let Some((username, hash)) = trimmed.split_once(':') else {
            return Err(invalid("expected `username:hash`".to_owned()));
        };
        let username = username.trim();
        if username.is_empty() {
            return Err(invalid("empty user name".to_owned()));
        }
        if let Some(first) = seen.insert(username.to_owned(), line) {
            return Err(invalid(format!(
                "user `{username}` is already defined on line {first}"
            )));
        }
        let hash = PasswordHash::parse(hash.trim())
            .map_err(|message| invalid(format!("user `{username}`: {message}")))?;
        entries.push(PasswdEntry {
            username: username.to_owned(),
            hash,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd` 2.0.11:
    /// `-c -b f alice alice-pw`, `-H sha512 -b f bob 'bob pw'` and
    /// `-b f carol 'çarol-ünïcode'`.
    const FIXTURE: &str = include_str!("../../tests/fixtures/mosquitto.passwd");

    #[test]
    fn parses_fixture_from_real_mosquitto_passwd() {
        let entries = parse(FIXTURE, "mosquitto.passwd").unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        let alice = &entries[0];
        assert!(matches!(alice.hash, PasswordHash::Pbkdf2Sha512 { .. }));
        assert!(alice.hash.verify(b"alice-pw"));
        assert!(!alice.hash.verify(b"bob pw"));
        let bob = &entries[1];
        assert!(matches!(bob.hash, PasswordHash::Sha512 { .. }));
        assert!(bob.hash.verify(b"bob pw"));
        assert!(entries[2].hash.verify("çarol-ünïcode".as_bytes()));
    }

    #[test]
    fn skips_comments_and_blank_lines_and_trims() {
        let text = format!(
            "# users\n\n  \r\nalice : {}  \r\n",
            FIXTURE.lines().next().unwrap().split_once(':').unwrap().1
        );
        let entries = parse(&text, "pw").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].username, "alice");
        assert!(entries[0].hash.verify(b"alice-pw"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let alice = FIXTURE.lines().next().unwrap();
        let cases = [
            (
                format!("{alice}\nno colon here\n"),
                "pw:2: expected `username:hash`",
            ),
            (format!("# c\n:{}\n", "$6$x$y"), "pw:2: empty user name"),
            (
                format!("{alice}\n{alice}\n"),
                "pw:2: user `alice` is already defined on line 1",
            ),
            (
                "\n\ndave:plaintext\n".to_owned(),
                "pw:3: user `dave`: unsupported hash type",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text, "pw").unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }
}
