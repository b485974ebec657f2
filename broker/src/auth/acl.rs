//! Topic access control with mosquitto's `acl_file` semantics.
//!
//! Rules come in three groups, checked in this order for a client:
//!
//! 1. the client's own rules: the `topic` lines of its `user <name>` section
//!    (for a client without a user name, the `topic` lines before any `user`
//!    line) plus its rules from our credentials file;
//! 2. the `pattern` lines, which apply to every client, with `%u` replaced by
//!    the user name and `%c` by the client identifier.
//!
//! Within a group, a matching deny rule refuses access; otherwise a matching
//! rule that grants the requested access allows it; otherwise the next group
//! decides. When no group decides, access is refused. This is mosquitto
//! 2.0's order, so a user's `topic` grant wins over a `pattern deny`.
//!
//! A client whose user name or client identifier contains `+` or `#` gets no
//! access from a group that substitutes `%u` or `%c` (mosquitto denies such
//! clients in the pattern group; CVE-2017-7650).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use super::AuthFileError;
use crate::topic::{self, SharedFilter};

/// Access bit: receive messages (subscribe, deliver).
pub(crate) const READ: u8 = 1;
/// Access bit: publish.
pub(crate) const WRITE: u8 = 2;

/// One configured rule, before `%u` / `%c` substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Topic filter, possibly with `%u` and `%c`.
    pub(crate) filter: String,
    /// The accesses ([`READ`], [`WRITE`]) the rule grants or denies.
    pub(crate) access: u8,
    /// Grant (true) or deny (false).
    pub(crate) allow: bool,
    /// Whether `%u` and `%c` in `filter` are replaced.
    pub(crate) substitute: bool,
}

/// All rules of an ACL file and a credentials file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RuleSet {
    /// `topic` lines before any `user` line: clients without a user name.
    pub(crate) anonymous: Vec<Rule>,
    /// Per-user rules.
    pub(crate) users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines: every client.
    pub(crate) patterns: Vec<Rule>,
}

/// The topic access rules of the whole broker. Immutable; build a new one to
/// reload.
#[derive(Debug, Clone)]
pub struct Acl {
    /// `None`: no rules configured, everything allowed.
    rules: Option<RuleSet>,
}

impl Acl {
    /// An ACL that allows every client everything (no `acl_file` and no
    /// rules configured). The broker still refuses `$SYS` publishes itself.
    pub fn allow_all() -> Acl {
        Acl { rules: None }
    }

    /// An ACL enforcing `rules`: whatever they do not grant is refused.
    pub(crate) fn from_rules(rules: RuleSet) -> Acl {
        Acl { rules: Some(rules) }
    }

    /// The rules for one client, resolved once (patterns substituted) so
    /// that per-message checks are cheap. `username` is `None` for a client
    /// that connected without one. Without rules every client gets the
    /// same shared value: no allocation per connection.
    pub fn client(&self, username: Option<&str>, client_id: &str) -> Arc<ClientAcl> {
        static EVERYTHING: LazyLock<Arc<ClientAcl>> =
            LazyLock::new(|| Arc::new(ClientAcl { groups: None }));
        let Some(rules) = &self.rules else {
            return EVERYTHING.clone();
        };
        let own = match username {
            Some(name) => rules.users.get(name).map(Vec::as_slice).unwrap_or(&[]),
            None => &rules.anonymous,
        };
        let groups = [own, rules.patterns.as_slice()]
            .into_iter()
            .filter(|group| !group.is_empty())
            .map(|group| Group::resolve(group, username, client_id, None))
            .collect();
        Arc::new(ClientAcl {
            groups: Some(groups),
        })
    }

    /// The rules of a fleet device: its own rules (a token's), then its
    /// fleet's template, with `%d` the device id. Without any rule the
    /// device may use every topic (as without an ACL).
    pub(crate) fn fleet_client(
        groups: [&[Rule]; 2],
        username: &str,
        client_id: &str,
        device_id: &str,
    ) -> Arc<ClientAcl> {
        if groups.iter().all(|group| group.is_empty()) {
            return Acl::allow_all().client(None, client_id);
        }
        let groups = groups
            .into_iter()
            .filter(|group| !group.is_empty())
            .map(|group| Group::resolve(group, Some(username), client_id, Some(device_id)))
            .collect();
        Arc::new(ClientAcl {
            groups: Some(groups),
        })
    }

    /// Rules that refuse everything.
    pub(crate) fn deny_all() -> Arc<ClientAcl> {
        Arc::new(ClientAcl {
            groups: Some(Vec::new()),
        })
    }
}

/// The access rules of one connected client.
#[derive(Debug, Clone)]
pub struct ClientAcl {
    /// `None`: everything allowed.
    groups: Option<Vec<Group>>,
}

impl ClientAcl {
    /// Whether the client may publish to the topic name `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        self.check(WRITE, topic, topic::matches)
    }

    /// Whether the client may receive a message published to `topic`.
    ///
    /// Check this for every delivery, retained or not: a subscription that
    /// was allowed may still cover topics that a deny rule refuses, e.g.
    /// `a/#` with `topic deny a/secret`.
    pub fn can_receive(&self, topic: &str) -> bool {
        self.check(READ, topic, topic::matches)
    }

    /// Whether the client may subscribe to `filter`: a read rule must cover
    /// every topic the filter can match (so `#` needs a rule `#`, and
    /// `$SYS/#` a rule starting with `$SYS`), and no deny rule may cover it.
    /// A shared filter `$share/{group}/{filter}` is checked as `{filter}`.
    ///
    /// mosquitto 2.0 grants every SUBSCRIBE and only filters deliveries;
    /// this stricter check tells the client at once.
    pub fn can_subscribe(&self, filter: &str) -> bool {
        let filter = match SharedFilter::parse(filter) {
            Ok(Some(shared)) => shared.filter,
            Ok(None) => filter,
            Err(_) => return false,
        };
        self.check(READ, filter, covers)
    }

    fn check(&self, access: u8, subject: &str, test: fn(&str, &str) -> bool) -> bool {
        let Some(groups) = &self.groups else {
            return true;
        };
        for group in groups {
            if group.deny_all {
                return false;
            }
            let applies =
                |rule: &Resolved| rule.access & access != 0 && test(&rule.filter, subject);
            if group.deny.iter().any(applies) {
                return false;
            }
            if group.allow.iter().any(applies) {
                return true;
            }
        }
        false
    }
}

/// One group of rules resolved for a client.
#[derive(Debug, Clone)]
struct Group {
    /// The client's name or identifier is unsafe to substitute: refuse all.
    deny_all: bool,
    deny: Vec<Resolved>,
    allow: Vec<Resolved>,
}

/// A rule with `%u` / `%c` replaced.
#[derive(Debug, Clone)]
struct Resolved {
    filter: String,
    access: u8,
}

impl Group {
    fn resolve(
        rules: &[Rule],
        username: Option<&str>,
        client_id: &str,
        device_id: Option<&str>,
    ) -> Group {
        let unsafe_ids = [username.unwrap_or(""), client_id, device_id.unwrap_or("")]
            .iter()
            .any(|id| id.contains(['+', '#']));
        let mut group = Group {
            deny_all: unsafe_ids && rules.iter().any(|rule| rule.substitute),
            deny: Vec::new(),
            allow: Vec::new(),
        };
        if group.deny_all {
            return group;
        }
        for rule in rules {
            let filter = if rule.substitute {
                // A `%u` rule cannot apply to a client without a user name.
                match substitute(&rule.filter, username, client_id, device_id) {
                    Some(filter) => filter,
                    None => continue,
                }
            } else {
                rule.filter.clone()
            };
            let resolved = Resolved {
                filter,
                access: rule.access,
            };
            if rule.allow {
                group.allow.push(resolved);
            } else {
                group.deny.push(resolved);
            }
        }
        group
    }
}

/// Replaces `%c` by the client identifier and `%u` by the user name, as
/// mosquitto does (anywhere in the filter), and `%d` by the device id of a
/// fleet device (elsewhere `%d` stays as it is). `None` when the filter
/// uses `%u` and there is no user name.
fn substitute(
    filter: &str,
    username: Option<&str>,
    client_id: &str,
    device_id: Option<&str>,
) -> Option<String> {
    let mut out = String::with_capacity(filter.len());
    let mut rest = filter;
    while let Some((before, after)) = rest.split_once('%') {
        out.push_str(before);
        if let Some(tail) = after.strip_prefix('c') {
            out.push_str(client_id);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('u') {
            out.push_str(username?);
            rest = tail;
        } else if let Some((tail, device)) = after.strip_prefix('d').zip(device_id) {
            out.push_str(device);
            rest = tail;
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Whether the rule filter `rule` matches every topic that the
/// subscription filter `filter` can match (both assumed valid).
///
/// Sound but not complete: `+/#` is not recognised as covering `#`.
pub(crate) fn covers(rule: &str, filter: &str) -> bool {
    let rule_starts_wild = matches!(rule.split('/').next(), Some("+" | "#"));
    if filter.starts_with('$') && rule_starts_wild {
        // Wildcards at the first level never match `$` topics.
        return false;
    }
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (rule_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(r), Some(f)) => {
                let covered = match f {
                    "#" => false,
                    "+" => r == "+",
                    literal => r == "+" || r == literal,
                };
                if !covered {
                    return false;
                }
            }
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

/// Parses the text of a mosquitto `acl_file`; `origin` names it in errors.
///
/// Lines: `user <name>`, `topic [read|write|readwrite|deny] <filter>`,
/// `pattern [read|write|readwrite|deny] <filter>`; `#` starts a comment
/// line; blank lines are ignored. As in mosquitto, a missing access type
/// means `readwrite`, and a filter may contain spaces only after an
/// explicit access type.
pub(crate) fn parse_acl_file(text: &str, origin: &str) -> Result<RuleSet, AuthFileError> {
    let mut rules = RuleSet::default();
    let mut user: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |message: String| AuthFileError::invalid(origin, Some(index + 1), message);
        let (keyword, rest) = split_word(line);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(invalid("`user` needs a user name".to_owned()));
                }
                rules.users.entry(rest.to_owned()).or_default();
                user = Some(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (first, after) = split_word(rest);
                let (access_word, filter) = if after.is_empty() {
                    (None, first)
                } else {
                    (Some(first), after)
                };
                if filter.is_empty() {
                    return Err(invalid(format!("`{keyword}` needs a topic filter")));
                }
                let (access, allow) = match access_word {
                    None | Some("readwrite") => (READ | WRITE, true),
                    Some("read") => (READ, true),
                    Some("write") => (WRITE, true),
                    Some("deny") => (READ | WRITE, false),
                    Some(other) => {
                        return Err(invalid(format!(
                            "invalid access type `{other}` (expected read, write, readwrite \
                             or deny; a topic with spaces needs an access type)"
                        )))
                    }
                };
                if !topic::valid_topic_filter(filter) {
                    return Err(invalid(format!("invalid topic filter `{filter}`")));
                }
                let pattern = keyword == "pattern";
                let rule = Rule {
                    filter: filter.to_owned(),
                    access,
                    allow,
                    substitute: pattern,
                };
                let list = match (&user, pattern) {
                    (_, true) => &mut rules.patterns,
                    (Some(name), false) => rules.users.entry(name.clone()).or_default(),
                    (None, false) => &mut rules.anonymous,
                };
                list.push(rule);
            }
            other => {
                return Err(invalid(format!(
                    "unknown keyword `{other}` (expected user, topic or pattern)"
                )))
            }
        }
    }
    Ok(rules)
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::strategies;
    use proptest::prelude::*;

    fn acl(text: &str) -> Acl {
        Acl::from_rules(parse_acl_file(text, "acl").unwrap())
    }

    fn parse_error(text: &str) -> String {
        parse_acl_file(text, "/etc/acl").unwrap_err().to_string()
    }

    #[test]
    fn allow_all_allows_everything() {
        let client = Acl::allow_all().client(None, "c");
        assert!(client.can_publish("a/b"));
        assert!(client.can_subscribe("#"));
        assert!(client.can_subscribe("$SYS/#"));
        assert!(client.can_receive("$SYS/broker/uptime"));
        // Shared by every client.
        assert!(Arc::ptr_eq(
            &client,
            &Acl::allow_all().client(Some("u"), "d")
        ));
    }

    /// The example from `man mosquitto.conf` plus the access types.
    #[test]
    fn mosquitto_conf_example() {
        let acl = acl("# anonymous clients\n\
                       topic read public/#\n\
                       \n\
                       user alice\n\
                       topic readwrite alice/#\n\
                       topic write logs\n\
                       topic bulletin\n\
                       pattern write sensor/%u/data\n\
                       pattern write $SYS/broker/connection/%c/state\n");
        let anonymous = acl.client(None, "anon-1");
        assert!(anonymous.can_receive("public/news"));
        assert!(anonymous.can_subscribe("public/#"));
        assert!(!anonymous.can_publish("public/news"), "read only");
        assert!(!anonymous.can_receive("alice/x"));
        assert!(
            !anonymous.can_publish("sensor/anon-1/data"),
            "%u needs a user"
        );
        assert!(anonymous.can_publish("$SYS/broker/connection/anon-1/state"));

        let alice = acl.client(Some("alice"), "dev-7");
        assert!(alice.can_publish("alice/x/y"));
        assert!(alice.can_receive("alice/x"));
        assert!(alice.can_publish("logs"));
        assert!(!alice.can_receive("logs"), "write only");
        assert!(alice.can_publish("bulletin") && alice.can_receive("bulletin"));
        assert!(
            !alice.can_receive("public/news"),
            "anonymous rules are not hers"
        );
        assert!(
            alice.can_publish("sensor/alice/data"),
            "patterns apply to all"
        );
        assert!(!alice.can_receive("sensor/alice/data"));
        assert!(!alice.can_publish("sensor/bob/data"));
        assert!(alice.can_publish("$SYS/broker/connection/dev-7/state"));
        assert!(!alice.can_publish("$SYS/broker/connection/other/state"));

        let bob = acl.client(Some("bob"), "b");
        assert!(!bob.can_publish("alice/x"), "no section: only patterns");
        assert!(bob.can_publish("sensor/bob/data"));
    }

    #[test]
    fn deny_overrides_grants_in_the_same_group() {
        let acl = acl("user u\n\
                       topic readwrite home/#\n\
                       topic deny home/secret/#\n\
                       pattern read devices/%c/#\n\
                       pattern deny devices/%c/keys\n");
        let u = acl.client(Some("u"), "d1");
        assert!(u.can_publish("home/kitchen"));
        assert!(!u.can_publish("home/secret"));
        assert!(!u.can_receive("home/secret/x"));
        assert!(u.can_subscribe("home/#"), "deny only covers part of it");
        assert!(!u.can_subscribe("home/secret/#"));
        assert!(!u.can_subscribe("home/secret/+"));
        assert!(u.can_receive("devices/d1/temp"));
        assert!(!u.can_receive("devices/d1/keys"));
    }

    /// mosquitto checks the user's `topic` rules before any pattern, so a
    /// user grant wins over a `pattern deny` (verified with mosquitto 2.0.11).
    #[test]
    fn user_grant_is_checked_before_pattern_deny() {
        let acl = acl("user alice\ntopic readwrite open/#\npattern deny open/%u/secret\n");
        assert!(acl
            .client(Some("alice"), "c")
            .can_publish("open/alice/secret"));
        assert!(!acl.client(Some("bob"), "c").can_publish("open/bob/secret"));
    }

    #[test]
    fn deny_lines_apply_wherever_they_appear() {
        let acl = acl("topic deny a/b\ntopic readwrite a/#\n");
        let client = acl.client(None, "c");
        assert!(!client.can_publish("a/b"));
        assert!(client.can_publish("a/c"));
    }

    #[test]
    fn access_type_is_optional_and_topics_may_contain_spaces() {
        let acl = acl("topic plain\ntopic read with space/x\ntopic read\n");
        let client = acl.client(None, "c");
        assert!(client.can_publish("plain") && client.can_receive("plain"));
        assert!(client.can_receive("with space/x"));
        assert!(!client.can_publish("with space/x"));
        // As in mosquitto, `topic read` names the topic `read`.
        assert!(client.can_publish("read"));
    }

    #[test]
    fn subscribe_needs_a_read_rule_covering_the_filter() {
        let acl = acl("user u\ntopic read sensors/+/temp\ntopic read logs/#\ntopic write cmd/#\n");
        let u = acl.client(Some("u"), "c");
        assert!(u.can_subscribe("sensors/a/temp"));
        assert!(u.can_subscribe("sensors/+/temp"));
        assert!(!u.can_subscribe("sensors/#"));
        assert!(!u.can_subscribe("sensors/a/+"));
        assert!(!u.can_subscribe("#"));
        assert!(u.can_subscribe("logs"));
        assert!(u.can_subscribe("logs/#"));
        assert!(u.can_subscribe("logs/+/x"));
        assert!(
            !u.can_subscribe("cmd/#"),
            "write does not allow subscribing"
        );
        assert!(u.can_subscribe("$share/g/logs/#"));
        assert!(!u.can_subscribe("$share/g/cmd/#"));
        assert!(!u.can_subscribe("$share/g"), "malformed shared filter");
    }

    #[test]
    fn sys_topics_need_an_explicit_rule() {
        let everything = acl("topic readwrite #\n");
        let client = everything.client(None, "c");
        assert!(client.can_receive("a/b"));
        assert!(client.can_subscribe("#"));
        assert!(!client.can_receive("$SYS/broker/uptime"));
        assert!(!client.can_subscribe("$SYS/#"));

        let monitor = acl("user mon\ntopic read $SYS/#\ntopic read #\n");
        let mon = monitor.client(Some("mon"), "c");
        assert!(mon.can_receive("$SYS/broker/uptime"));
        assert!(mon.can_subscribe("$SYS/#"));
        assert!(mon.can_subscribe("$SYS/broker/+"));
        assert!(!mon.can_publish("$SYS/broker/uptime"));
    }

    #[test]
    fn unsafe_ids_get_nothing_from_patterns() {
        let acl = acl("user u\ntopic read own/#\npattern readwrite c/%c/#\n");
        assert!(acl.client(Some("u"), "ok").can_publish("c/ok/x"));
        let sneaky = acl.client(Some("u"), "#");
        assert!(!sneaky.can_publish("c/#/x"));
        assert!(!sneaky.can_receive("c/other/x"));
        assert!(sneaky.can_receive("own/x"), "own topic rules still apply");
        let sneaky_user = acl.client(Some("a+b"), "ok");
        assert!(!sneaky_user.can_publish("c/ok/x"));
    }

    #[test]
    fn empty_acl_file_refuses_everything() {
        let client = acl("# nothing\n").client(Some("u"), "c");
        assert!(!client.can_publish("a"));
        assert!(!client.can_receive("a"));
        assert!(!client.can_subscribe("a"));
    }

    #[test]
    fn user_sections_merge_and_names_may_contain_spaces() {
        let acl = acl("user joe bloggs\ntopic a\nuser x\ntopic b\nuser joe bloggs\ntopic c\n");
        let joe = acl.client(Some("joe bloggs"), "c");
        assert!(joe.can_publish("a") && joe.can_publish("c"));
        assert!(!joe.can_publish("b"));
    }

    #[test]
    fn tabs_and_crlf_are_accepted() {
        let acl = acl("user\tu\r\n  topic\tread\ta/#\r\n");
        assert!(acl.client(Some("u"), "c").can_receive("a/b"));
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        assert_eq!(
            parse_error("user u\n\ntopic sometimes a/b\n"),
            "/etc/acl:3: invalid access type `sometimes` (expected read, write, readwrite or \
             deny; a topic with spaces needs an access type)"
        );
        assert_eq!(
            parse_error("# c\nuser\n"),
            "/etc/acl:2: `user` needs a user name"
        );
        assert_eq!(
            parse_error("topic\n"),
            "/etc/acl:1: `topic` needs a topic filter"
        );
        assert_eq!(
            parse_error("topic read a/#/b\n"),
            "/etc/acl:1: invalid topic filter `a/#/b`"
        );
        assert_eq!(
            parse_error("topic a\nallow all\n"),
            "/etc/acl:2: unknown keyword `allow` (expected user, topic or pattern)"
        );
    }

    #[test]
    fn substitution() {
        assert_eq!(
            substitute("a/%u/%c/x", Some("u"), "c", None).unwrap(),
            "a/u/c/x"
        );
        assert_eq!(substitute("%c-%c/%", None, "id", None).unwrap(), "id-id/%");
        assert_eq!(substitute("a/%x/b", None, "id", None).unwrap(), "a/%x/b");
        assert_eq!(substitute("a/%u", None, "id", None), None);
        assert_eq!(substitute("a/%d", None, "id", None).unwrap(), "a/%d");
        assert_eq!(
            substitute("a/%d/%u", Some("u"), "c", Some("dev")).unwrap(),
            "a/dev/u"
        );
    }

    #[test]
    fn fleet_devices_get_their_own_rules_then_the_template() {
        let template = parse_acl_file(
            "pattern write sensors/%d/#\npattern read cmd/%d\npattern deny sensors/%d/secret\n",
            "t",
        )
        .unwrap()
        .patterns;
        let own = parse_acl_file("pattern write extra/%c\n", "o")
            .unwrap()
            .patterns;
        let dev = Acl::fleet_client([&own, &template], "dev-1@s", "c1", "dev-1");
        assert!(dev.can_publish("sensors/dev-1/temp"));
        assert!(!dev.can_publish("sensors/dev-2/temp"));
        assert!(!dev.can_publish("sensors/dev-1/secret"));
        assert!(dev.can_subscribe("cmd/dev-1"));
        assert!(dev.can_publish("extra/c1"));
        let sneaky = Acl::fleet_client([&own, &template], "u", "c1", "#");
        assert!(!sneaky.can_publish("sensors/#/x"), "unsafe device id");
        let open = Acl::fleet_client([&[], &[]], "u", "c", "d");
        assert!(open.can_publish("any") && open.can_subscribe("#"));
        assert!(!Acl::deny_all().can_publish("any"));
    }

    #[test]
    fn covers_examples() {
        assert!(covers("#", "a/+/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("+/b", "+/b"));
        assert!(!covers("a/+", "a"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("+/x", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/+/x"));
        assert!(!covers("$SYS/#", "#"));
        assert!(!covers("a/b", "a/b/c"));
    }

    proptest! {
        /// Whatever a covered filter matches, the covering rule matches.
        #[test]
        fn covers_is_sound(
            rule in strategies::topic_filter(),
            filter in strategies::topic_filter(),
            topic in strategies::topic_name(),
        ) {
            if covers(&rule, &filter) && topic::matches(&filter, &topic) {
                prop_assert!(topic::matches(&rule, &topic));
            }
        }

        /// A filter without wildcards is covered exactly when it matches.
        #[test]
        fn covers_agrees_with_matches_on_topic_names(
            rule in strategies::topic_filter(),
            topic in strategies::topic_name(),
        ) {
            prop_assert_eq!(covers(&rule, &topic), topic::matches(&rule, &topic));
        }

        #[test]
        fn every_filter_covers_itself(filter in strategies::topic_filter()) {
            prop_assert!(covers(&filter, &filter));
        }
    }
}
