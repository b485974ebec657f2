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
mod tests;
