//! Which changes of the rendered `broker.toml` restart the broker pods.
//!
//! The broker re-reads its file when the kubelet updates the ConfigMap
//! volume and puts some keys in force while it runs (limits, logging,
//! authentication, drain settings; the broker's
//! `reload::applies_at_run_time`). Only the other keys go into the pod
//! template's `kubemqtt.io/config-checksum` ([`restart_checksum`]), so
//! that changing a limit or the log level rolls no pod, and changing a
//! listener does. The contract tests (`tests/contract`) hold this list to
//! the broker's.

use super::statefulset::config_checksum;

/// Keys (and everything under them) the broker applies while it runs;
/// `listeners[]` stands for any listener.
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

/// Keys under [`RUN_TIME`] ones that still need a restart: the budget of
/// queued bytes is sized once at start.
const RESTART: &[&str] = &["limits.memory_budget_bytes"];

/// Whether the broker puts a change of `key` (a dotted path such as
/// `limits.max_inflight` or `listeners[1].limits.publish_rate`) in force
/// without a restart.
pub fn applies_at_run_time(key: &str) -> bool {
    let key = without_indexes(key);
    let under = |prefix: &&str| {
        key == *prefix
            || key
                .strip_prefix(*prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    RUN_TIME.iter().any(under) && !RESTART.iter().any(under)
}

/// The checksum of what in `broker_config` needs a restart to change: the
/// file without the keys the broker applies while it runs. A file that is
/// not TOML (never rendered) counts whole.
pub fn restart_checksum(broker_config: &str) -> String {
    match broker_config.parse::<toml::Table>() {
        Ok(table) => {
            let mut value = toml::Value::Table(table);
            strip_run_time(&mut value, "");
            config_checksum(&value.to_string())
        }
        Err(_) => config_checksum(broker_config),
    }
}

/// Removes from `value` (at `path`) every key the broker applies while it
/// runs: the values, never a whole table (a run-time table such as
/// `limits` may hold a key that needs a restart).
fn strip_run_time(value: &mut toml::Value, path: &str) {
    match value {
        toml::Value::Table(table) => {
            table.retain(|key, child| {
                child.is_table()
                    || is_array_of_tables(child)
                    || !applies_at_run_time(&join(path, key))
            });
            for (key, child) in table.iter_mut() {
                strip_run_time(child, &join(path, key));
            }
        }
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
            for item in items {
                strip_run_time(item, &format!("{path}[]"));
            }
        }
        _ => {}
    }
}

fn is_array_of_tables(value: &toml::Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| !items.is_empty() && items.iter().all(toml::Value::is_table))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
node_name = "mq-0"
allow_anonymous = false

[limits]
max_inflight = 100
memory_budget_bytes = 1000000

[log]
level = "info"

[[listeners]]
bind = "0.0.0.0:1883"
max_connections = 1000

[listeners.limits]
publish_rate = 10
"#;

    fn changed(from: &str, to: &str) -> String {
        BASE.replacen(from, to, 1)
    }

    #[test]
    fn run_time_changes_keep_the_checksum() {
        let base = restart_checksum(BASE);
        for (from, to) in [
            ("max_inflight = 100", "max_inflight = 200"),
            ("level = \"info\"", "level = \"debug\""),
            ("allow_anonymous = false", "allow_anonymous = true"),
            ("max_connections = 1000", "max_connections = 5"),
            ("publish_rate = 10", "publish_rate = 20"),
        ] {
            assert_eq!(restart_checksum(&changed(from, to)), base, "{to}");
        }
    }

    #[test]
    fn restart_changes_move_the_checksum() {
        let base = restart_checksum(BASE);
        for (from, to) in [
            ("node_name = \"mq-0\"", "node_name = \"mq-1\""),
            ("memory_budget_bytes = 1000000", "memory_budget_bytes = 2"),
            ("bind = \"0.0.0.0:1883\"", "bind = \"0.0.0.0:1884\""),
        ] {
            assert_ne!(restart_checksum(&changed(from, to)), base, "{to}");
        }
        let more = format!("{BASE}\n[[listeners]]\nbind = \"0.0.0.0:8883\"\n");
        assert_ne!(restart_checksum(&more), base, "a listener added");
    }

    #[test]
    fn keys_match_under_any_listener_and_only_whole_names() {
        assert!(applies_at_run_time("listeners[3].limits.publish_rate"));
        assert!(applies_at_run_time("limits"));
        assert!(!applies_at_run_time("limits.memory_budget_bytes"));
        assert!(!applies_at_run_time("limitsx"));
        assert!(!applies_at_run_time("listeners[0].bind"));
        assert!(!applies_at_run_time("http.bind"));
        assert!(applies_at_run_time("http.admin_token_file"));
    }

    #[test]
    fn a_file_that_is_not_toml_counts_whole() {
        assert_eq!(restart_checksum("not = ["), config_checksum("not = ["));
    }
}
