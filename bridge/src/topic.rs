//! MQTT topic filters: checking one, and matching a topic against it.

/// Checks an MQTT topic filter: not empty, `#` only as the last level,
/// `+` and `#` only as whole levels, no NUL.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    if filter.contains('\0') {
        return Err(format!("topic filter `{filter}` contains NUL"));
    }
    if filter.starts_with("$share/") {
        return Err(format!(
            "topic filter `{filter}`: write the filter alone; the bridge subscribes as $share/<bridge>/<filter>"
        ));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wildcard = level.contains('#') || level.contains('+');
        if wildcard && level.len() != 1 {
            return Err(format!(
                "topic filter `{filter}`: `+` and `#` must fill a whole level"
            ));
        }
        if *level == "#" && i != levels.len() - 1 {
            return Err(format!(
                "topic filter `{filter}`: `#` must be the last level"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` (MQTT rules: `+` one level, `#` the
/// rest; filters starting with a wildcard do not match `$` topics).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(matches("sensors/+/temp", "sensors/kitchen/temp"));
        assert!(!matches("sensors/+/temp", "sensors/kitchen/hum"));
        assert!(!matches("sensors/+/temp", "sensors/kitchen/temp/x"));
        assert!(matches("sensors/#", "sensors"));
        assert!(matches("sensors/#", "sensors/a/b"));
        assert!(matches("#", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/b", "a"));
    }

    #[test]
    fn checking() {
        assert!(check_filter("a/+/b/#").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("").is_err());
        assert!(check_filter("$share/g/a").is_err());
    }
}
