//! Which keys of a reloaded `broker.toml` changed, which of them apply
//! while the broker runs, and the configuration to put in force: the new
//! one with every key that needs a restart kept at its running value.

use serde_json::Value;

use crate::config::Config;

/// The keys a reload found changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Now in force.
    pub applied: Vec<String>,
    /// Changed in the file, still running with the old value.
    pub need_restart: Vec<String>,
}

/// Whether a change of `key` (a dotted path such as `limits.max_inflight`
/// or `listeners[1].limits.publish_rate`) can be put in force while the
/// broker runs.
pub fn applies_at_run_time(key: &str) -> bool {
    const RUN_TIME: &[&str] = &[
        "allow_anonymous",
        "presence_events",
        "limits",
        "log",
        "auth",
        "http.admin_token_file",
        "drain",
        "listeners[].limits",
        "listeners[].max_connections",
        "listeners[].max_connection_rate",
    ];
    // Sized once at start: the budget of queued bytes.
    const RESTART: &[&str] = &["limits.memory_budget_bytes"];
    let key = without_indexes(key);
    let under = |prefix: &&str| {
        key == *prefix
            || key
                .strip_prefix(*prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    RUN_TIME.iter().any(under) && !RESTART.iter().any(under)
}

/// `listeners[1].bind` -> `listeners[].bind`.
fn without_indexes(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Compares the running configuration with the one just read: returns the
/// configuration to put in force (`wanted`, with every key that needs a
/// restart kept at its running value) and the keys that changed.
pub fn plan(running: &Config, wanted: &Config) -> (Config, Changes) {
    let (Ok(old), Ok(new)) = (serde_json::to_value(running), serde_json::to_value(wanted)) else {
        // Every configuration serializes (the operator writes this file).
        return (running.clone(), Changes::default());
    };
    let mut changed = Vec::new();
    diff(String::new(), Some(&old), Some(&new), &mut changed);
    let mut merged = new;
    let mut changes = Changes::default();
    for key in changed {
        if applies_at_run_time(&key) {
            changes.applied.push(key);
        } else {
            restore(&mut merged, &old, &key);
            changes.need_restart.push(key);
        }
    }
    match serde_json::from_value(merged) {
        Ok(config) => (config, changes),
        Err(_) => {
            // Cannot happen: the value was made of two valid configurations.
            let need_restart = [changes.applied, changes.need_restart].concat();
            (
                running.clone(),
                Changes {
                    applied: Vec::new(),
                    need_restart,
                },
            )
        }
    }
}

/// The dotted paths of every leaf that differs. Arrays of different
/// lengths (a listener added or removed) count as one change of the array.
fn diff(path: String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                diff(join(key), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => out.push(path),
        _ => {}
    }
}

/// Sets `key` in `target` to its value in `source` (or removes it when
/// `source` has none).
fn restore(target: &mut Value, source: &Value, key: &str) {
    let steps = split_key(key);
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut to = target;
    let mut from = Some(source);
    for step in parents {
        from = from.and_then(|v| step.get(v));
        let Some(next) = step.get_mut(to) else { return };
        to = next;
    }
    let value = from.and_then(|v| last.get(v)).cloned();
    match (last, to, value) {
        (Step::Key(k), Value::Object(map), Some(v)) => {
            map.insert(k.clone(), v);
        }
        (Step::Key(k), Value::Object(map), None) => {
            map.remove(k);
        }
        (Step::Index(i), Value::Array(items), Some(v)) if *i < items.len() => items[*i] = v,
        _ => {}
    }
}

enum Step {
    Key(String),
    Index(usize),
}

impl Step {
    fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        match self {
            Step::Key(k) => value.get(k),
            Step::Index(i) => value.get(i),
        }
    }

    fn get_mut<'a>(&self, value: &'a mut Value) -> Option<&'a mut Value> {
        match self {
            Step::Key(k) => value.get_mut(k),
            Step::Index(i) => value.get_mut(i),
        }
    }
}

/// `listeners[1].limits.x` -> Key(listeners), Index(1), Key(limits), Key(x).
fn split_key(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next() {
            steps.push(Step::Key(name.to_owned()));
        }
        for index in pieces {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogLevel;

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, "broker.toml").unwrap()
    }

    const BASE: &str = r#"
node_name = "n1"
[[listeners]]
bind = "127.0.0.1:1883"
[[listeners]]
name = "edge"
bind = "127.0.0.1:1884"
[listeners.limits]
publish_rate = 10
[limits]
max_inflight = 10
memory_budget_bytes = 1000000
"#;

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = parse(BASE);
        let (next, changes) = plan(&running, &parse(BASE));
        assert_eq!(next, running);
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn run_time_keys_apply_and_the_others_keep_their_running_value() {
        let running = parse(BASE);
        let wanted = parse(
            &BASE
                .replace(
                    "node_name = \"n1\"",
                    "node_name = \"n2\"\nallow_anonymous = true",
                )
                .replace("max_inflight = 10", "max_inflight = 5")
                .replace("publish_rate = 10", "publish_rate = 20")
                .replace("127.0.0.1:1884", "127.0.0.1:1885")
                .replace(
                    "memory_budget_bytes = 1000000",
                    "memory_budget_bytes = 2000000\n[log]\nlevel = \"debug\"",
                ),
        );
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(
            changes.applied,
            [
                "allow_anonymous",
                "limits.max_inflight",
                "listeners[1].limits.publish_rate",
                "log.level",
            ]
        );
        assert_eq!(
            changes.need_restart,
            [
                "limits.memory_budget_bytes",
                "listeners[1].bind",
                "node_name"
            ]
        );
        assert!(next.allow_anonymous);
        assert_eq!(next.limits.max_inflight, 5);
        assert_eq!(next.log.level, LogLevel::Debug);
        assert_eq!(next.listeners[1].limits.publish_rate, Some(20));
        assert_eq!(next.node_name, "n1");
        assert_eq!(next.listeners[1].bind, running.listeners[1].bind);
        assert_eq!(next.limits.memory_budget_bytes, 1_000_000);
    }

    #[test]
    fn keys_absent_from_one_side_are_restored_or_removed() {
        let running = parse(&format!("{BASE}[http]\nbind = \"127.0.0.1:8080\"\n"));
        let wanted = parse(&format!(
            "{BASE}[http]\nadmin_token_file = \"/run/token\"\n"
        ));
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(changes.applied, ["http.admin_token_file"]);
        assert_eq!(changes.need_restart, ["http.bind"]);
        assert_eq!(next.http.bind, running.http.bind);
        assert_eq!(
            next.http.admin_token_file.as_deref(),
            Some(std::path::Path::new("/run/token"))
        );
    }

    #[test]
    fn adding_a_listener_needs_a_restart_and_keeps_the_running_ones() {
        let running = parse(BASE);
        let wanted = parse(&format!("{BASE}[[listeners]]\nbind = \"127.0.0.1:1886\"\n"));
        let (next, changes) = plan(&running, &wanted);
        assert_eq!(changes.need_restart, ["listeners"]);
        assert_eq!(next.listeners, running.listeners);
    }

    #[test]
    fn run_time_keys_are_recognised_under_any_listener_index() {
        for key in [
            "limits.publish_rate",
            "log.format",
            "auth.acl_file",
            "drain.deadline_secs",
            "listeners[3].limits.max_packet_size",
            "listeners[0].max_connections",
        ] {
            assert!(applies_at_run_time(key), "{key}");
        }
        for key in [
            "limits.memory_budget_bytes",
            "listeners[0].bind",
            "listeners[0].tls.cert_file",
            "persistence.dir",
            "http.bind",
            "sys.interval_secs",
            "node_name",
            "logx",
            "listeners",
        ] {
            assert!(!applies_at_run_time(key), "{key}");
        }
    }
}
