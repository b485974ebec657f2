//! MQTT topics as NATS subjects, the way nats-server's own MQTT support
//! maps them, so that a NATS client reads device data, and publishes to
//! devices, on the subjects it would use with nats-server's MQTT:
//!
//! - `/` separates levels: it becomes `.`;
//! - an empty level (a topic starting with `/`, ending with `/`, or with
//!   `//` inside) is kept with a `/` token: `/a` is `/.a`, `a/` is `a./`,
//!   `a//b` is `a./.b`;
//! - a `.` inside a level, which would split a NATS token, becomes `//`;
//! - in filters, `+` becomes `*` and a trailing `#` becomes `>` (and, since
//!   `a/#` also matches `a`, the subject `a` as well);
//! - whitespace and control characters cannot be carried in a NATS
//!   subject: such topics are not mapped (they stay inside the cluster).
//!
//! Every mapped subject is prefixed with the cluster's name:
//! `factory/line-1/temp` in the cluster `broker` is `broker.factory.line-1.temp`.

/// Why a topic or filter has no NATS subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the topic is empty")]
    Empty,
    #[error("whitespace and control characters have no NATS subject form")]
    Unsupported,
    #[error("wildcards are only allowed in filters")]
    Wildcard,
}

/// The NATS subject of a topic name (no wildcards), without the prefix.
pub fn topic_to_subject(topic: &str) -> Result<String, SubjectError> {
    convert(topic, false)
}

/// The NATS subject filter of a topic filter, without the prefix. A
/// trailing `#` gives `>`; the parent level it also matches is returned
/// separately by [`filter_parent`].
pub fn filter_to_subject(filter: &str) -> Result<String, SubjectError> {
    convert(filter, true)
}

/// For a filter ending in `/#`, the subject of the level above it (which
/// `#` also matches): `a/b/#` has the parent `a.b`.
pub fn filter_parent(filter: &str) -> Option<Result<String, SubjectError>> {
    let parent = filter.strip_suffix("/#")?;
    if parent.is_empty() {
        // `/#` also matches the topic `/`... which maps to `/`.
        return Some(Ok("/".to_string()));
    }
    Some(convert(parent, true))
}

fn convert(mqtt: &str, wildcards: bool) -> Result<String, SubjectError> {
    let bytes = mqtt.as_bytes();
    if bytes.is_empty() {
        return Err(SubjectError::Empty);
    }
    if bytes == b"/" {
        return Ok("/".to_string());
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let last = bytes.len() - 1;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                if i == 0 || out.last() == Some(&b'.') {
                    // An empty level before this separator.
                    out.extend_from_slice(b"/.");
                } else if i == last || bytes[i + 1] == b'/' {
                    // An empty level after it.
                    out.extend_from_slice(b"./");
                } else {
                    out.push(b'.');
                }
            }
            b'.' => out.extend_from_slice(b"//"),
            b'+' | b'#' if !wildcards => return Err(SubjectError::Wildcard),
            b'+' => out.push(b'*'),
            b'#' => out.push(b'>'),
            b if b.is_ascii_whitespace() || b.is_ascii_control() || b == 0x7f => {
                return Err(SubjectError::Unsupported)
            }
            b => out.push(b),
        }
    }
    if out.last() == Some(&b'.') {
        out.push(b'/');
    }
    // Only ASCII bytes were inserted or replaced, at ASCII positions, so
    // UTF-8 sequences are intact.
    String::from_utf8(out).map_err(|_| SubjectError::Unsupported)
}

/// The topic of a NATS subject (without the prefix): the inverse of
/// [`topic_to_subject`].
pub fn subject_to_topic(subject: &str) -> String {
    if subject == "/" {
        return "/".to_string();
    }
    let bytes = subject.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if i + 1 < bytes.len() && bytes[i + 1] == b'.' => {
                out.push(b'/');
                i += 2;
            }
            b'/' if i + 1 < bytes.len() && bytes[i + 1] == b'/' => {
                out.push(b'.');
                i += 2;
            }
            // A lone `/` token: an empty level (already separated by the
            // `.` that comes with it).
            b'/' => i += 1,
            b'.' => {
                out.push(b'/');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Bytes were only dropped or replaced at ASCII positions.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn levels_become_tokens() {
        assert_eq!(
            topic_to_subject("factory/line-1/temp").unwrap(),
            "factory.line-1.temp"
        );
        assert_eq!(topic_to_subject("a").unwrap(), "a");
        assert_eq!(topic_to_subject("/").unwrap(), "/");
    }

    #[test]
    fn empty_levels_and_dots_are_escaped_as_nats_server_does() {
        assert_eq!(topic_to_subject("/a").unwrap(), "/.a");
        assert_eq!(topic_to_subject("a/").unwrap(), "a./");
        assert_eq!(topic_to_subject("a//b").unwrap(), "a./.b");
        assert_eq!(topic_to_subject("a.b/c").unwrap(), "a//b.c");
        assert_eq!(topic_to_subject("v1.2").unwrap(), "v1//2");
    }

    #[test]
    fn filters_map_their_wildcards() {
        assert_eq!(filter_to_subject("a/+/c").unwrap(), "a.*.c");
        assert_eq!(filter_to_subject("a/#").unwrap(), "a.>");
        assert_eq!(filter_to_subject("#").unwrap(), ">");
        assert_eq!(filter_parent("a/b/#").unwrap().unwrap(), "a.b");
        assert_eq!(filter_parent("a/+"), None);
    }

    #[test]
    fn what_a_subject_cannot_carry_is_refused() {
        assert_eq!(topic_to_subject("a b"), Err(SubjectError::Unsupported));
        assert_eq!(topic_to_subject("a\tb"), Err(SubjectError::Unsupported));
        assert_eq!(topic_to_subject("a/+"), Err(SubjectError::Wildcard));
        assert_eq!(topic_to_subject(""), Err(SubjectError::Empty));
    }

    #[test]
    fn subjects_map_back() {
        assert_eq!(
            subject_to_topic("factory.line-1.temp"),
            "factory/line-1/temp"
        );
        assert_eq!(subject_to_topic("/.a"), "/a");
        assert_eq!(subject_to_topic("a./"), "a/");
        assert_eq!(subject_to_topic("a./.b"), "a//b");
        assert_eq!(subject_to_topic("a//b.c"), "a.b/c");
        // What a NATS client would publish on.
        assert_eq!(
            subject_to_topic("sensors.kitchen.temp"),
            "sensors/kitchen/temp"
        );
    }

    proptest! {
        /// Every topic that has a subject maps there and back unchanged.
        #[test]
        fn topics_round_trip(topic in "[a-z./\u{e9}\u{4e2d}-]{1,24}") {
            if let Ok(subject) = topic_to_subject(&topic) {
                prop_assert_eq!(subject_to_topic(&subject), topic);
                // A valid NATS subject: no empty tokens, no whitespace.
                prop_assert!(!subject.split('.').any(str::is_empty), "{}", subject);
            }
        }
    }
}
