//! Topic names and topic filters (MQTT 3.1.1 section 4.7, MQTT 5.0 section 4.7
//! and 4.8.2).
//!
//! A *topic name* is what a PUBLISH carries: levels separated by `/`, no
//! wildcards. A *topic filter* is what a SUBSCRIBE carries: it may use `+`
//! (exactly one level) and `#` (any number of levels, including zero, only as
//! the last level). A filter of the form `$share/{group}/{filter}` is a shared
//! subscription; see [`SharedFilter`].

use thiserror::Error;

/// Longest topic name or filter, in bytes: an MQTT UTF-8 string carries a
/// 16-bit length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription filter.
const SHARE_PREFIX: &str = "$share/";

/// Whether `name` is a valid topic name for PUBLISH: non-empty, at most
/// [`MAX_TOPIC_LEN`] bytes, and free of `+`, `#` and NUL.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TOPIC_LEN && !name.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter for SUBSCRIBE / UNSUBSCRIBE:
/// non-empty, at most [`MAX_TOPIC_LEN`] bytes, free of NUL, with `+` only as
/// a whole level and `#` only as the whole last level.
///
/// A shared filter (`$share/g/f`) passes when it is well formed as a plain
/// filter; use [`SharedFilter::parse`] to check its shared-subscription rules.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            other if other.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether the topic filter `filter` matches the topic name `topic`.
///
/// Both are assumed valid (see [`valid_topic_filter`] and
/// [`valid_topic_name`]). Besides the usual wildcard rules:
/// - `#` also matches the parent level: `sport/#` matches `sport`;
/// - a topic starting with `$` is not matched by a filter whose first level
///   is `+` or `#` (MQTT 5.0 section 4.7.2), so `#` does not match `$SYS/x`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    let mut first = true;
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#" | "+"), _) if first && topic.starts_with('$') => return false,
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Why a `$share/...` filter is not a valid shared subscription.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// `$share/{group}` with no filter after the group.
    #[error("shared subscription has no topic filter after the share name")]
    MissingFilter,
    /// `$share//{filter}`.
    #[error("shared subscription has an empty share name")]
    EmptyGroup,
    /// The share name contains `+` or `#`.
    #[error("share name {0:?} contains a wildcard")]
    WildcardInGroup(String),
    /// The filter after the share name is not a valid topic filter.
    #[error("invalid topic filter {0:?} in shared subscription")]
    InvalidFilter(String),
}

/// A shared subscription filter `$share/{group}/{filter}`, split into its
/// share name and its topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (group).
    pub group: &'a str,
    /// The topic filter that the group subscribes to.
    pub filter: &'a str,
}

impl<'a> SharedFilter<'a> {
    /// Splits a shared subscription filter.
    ///
    /// Returns `Ok(None)` when `filter` does not start with `$share/` (an
    /// ordinary filter), and an error when it does but is malformed: no filter
    /// after the group, an empty group, a group containing `+` or `#`, or an
    /// invalid inner filter.
    pub fn parse(filter: &'a str) -> Result<Option<SharedFilter<'a>>, FilterError> {
        let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
            return Ok(None);
        };
        let (group, inner) = rest.split_once('/').ok_or(FilterError::MissingFilter)?;
        if group.is_empty() {
            return Err(FilterError::EmptyGroup);
        }
        if group.contains(['+', '#']) {
            return Err(FilterError::WildcardInGroup(group.to_owned()));
        }
        if inner.is_empty() {
            return Err(FilterError::MissingFilter);
        }
        if !valid_topic_filter(inner) {
            return Err(FilterError::InvalidFilter(inner.to_owned()));
        }
        Ok(Some(SharedFilter {
            group,
            filter: inner,
        }))
    }
}

/// Proptest strategies for valid topic names and filters, shared by the
/// tests of the modules that match topics.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;

    /// The levels of a valid topic name, from a small alphabet (including an
    /// empty level and a `$` level) so that filters often match.
    pub(crate) fn topic_levels() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$s"]), 1..4)
            .prop_filter("a topic name is not empty", |levels| levels != &[""])
    }

    /// The levels of a valid topic filter over the same alphabet.
    pub(crate) fn filter_levels() -> impl Strategy<Value = Vec<&'static str>> {
        let level = prop::sample::select(vec!["a", "b", "", "$s", "+"]);
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map(
            "a filter is not empty",
            |(mut levels, multi_level)| {
                if multi_level {
                    levels.push("#");
                }
                (!levels.is_empty() && levels != [""]).then_some(levels)
            },
        )
    }

    /// A valid topic name built from [`topic_levels`].
    pub(crate) fn topic_name() -> impl Strategy<Value = String> {
        topic_levels().prop_map(|levels| levels.join("/"))
    }

    /// A valid topic filter built from [`filter_levels`].
    pub(crate) fn topic_filter() -> impl Strategy<Value = String> {
        filter_levels().prop_map(|levels| levels.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a"));
        assert!(valid_topic_name("a/b/c"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("$SYS/broker/uptime"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+b"));
        assert!(!valid_topic_name("a\0b"));
        assert!(valid_topic_name(&"x".repeat(MAX_TOPIC_LEN)));
        assert!(!valid_topic_name(&"x".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "a", "#", "+", "a/#", "+/+", "a/+/b", "/", "+/", "/#", "$SYS/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "+a/b", "a/b+", "##", "a/\0"] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
        assert!(!valid_topic_filter(&"x".repeat(MAX_TOPIC_LEN + 1)));
    }

    #[test]
    fn matching_rules() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("+/+", "/b", true),
            ("+", "a", true),
            ("+", "/", false),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("a/$b", "a/$b", true),
            ("a/+", "a/$b", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(SharedFilter::parse("a/b"), Ok(None));
        assert_eq!(SharedFilter::parse("$share"), Ok(None));
        assert_eq!(SharedFilter::parse("$shared/g/a"), Ok(None));
        assert_eq!(
            SharedFilter::parse("$share/g/a/+/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+/#"
            }))
        );
        assert_eq!(
            SharedFilter::parse("$share/g"),
            Err(FilterError::MissingFilter)
        );
        assert_eq!(
            SharedFilter::parse("$share/g/"),
            Err(FilterError::MissingFilter)
        );
        assert_eq!(
            SharedFilter::parse("$share//a"),
            Err(FilterError::EmptyGroup)
        );
        assert_eq!(
            SharedFilter::parse("$share/g+/a"),
            Err(FilterError::WildcardInGroup("g+".into()))
        );
        assert_eq!(
            SharedFilter::parse("$share/#/a"),
            Err(FilterError::WildcardInGroup("#".into()))
        );
        assert_eq!(
            SharedFilter::parse("$share/g/a/#/b"),
            Err(FilterError::InvalidFilter("a/#/b".into()))
        );
    }

    /// Reference matcher written independently of [`matches`]: a filter
    /// matches when it can be turned into the topic by replacing each `+`
    /// with one level and a trailing `#` with zero or more levels.
    fn reference_match(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, t))) => reference_match(f, t),
            (Some((f0, f)), Some((t0, t))) => f0 == t0 && reference_match(f, t),
            (None, None) => true,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(
            filter in strategies::filter_levels(),
            topic in strategies::topic_levels(),
        ) {
            let filter_str = filter.join("/");
            let topic_str = topic.join("/");
            prop_assert!(valid_topic_filter(&filter_str));
            prop_assert!(valid_topic_name(&topic_str));
            let dollar_blocked = topic_str.starts_with('$') && matches!(filter[0], "+" | "#");
            let expected = !dollar_blocked && reference_match(&filter, &topic);
            prop_assert_eq!(matches(&filter_str, &topic_str), expected);
        }
    }
}
