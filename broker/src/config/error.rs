//! What is wrong with a configuration, and where: the file, the line
//! and the key.

use std::collections::HashMap;
use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML, does not fit the schema, or breaks a rule that
    /// spans several fields.
    #[error("{}", describe(origin.as_deref(), *line, key.as_deref(), message))]
    Invalid {
        /// The file (or other source) name, when parsing text.
        origin: Option<String>,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// Dotted path of the offending key, e.g. `limits.max_packet_size` or
        /// `listeners[1].bind`; `None` for TOML syntax errors.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The dotted path of the offending key, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// The 1-based line of the error in the source text, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }

    /// A rule violation found by [`Config::validate`](super::Config::validate) (no file or line yet).
    pub(super) fn rule(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: None,
            line: None,
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// Renders `origin:line: key `k`: message`, leaving out what is unknown.
fn describe(origin: Option<&str>, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut text = String::new();
    match (origin, line) {
        (Some(origin), Some(line)) => text.push_str(&format!("{origin}:{line}: ")),
        (Some(origin), None) => text.push_str(&format!("{origin}: ")),
        (None, Some(line)) => text.push_str(&format!("line {line}: ")),
        (None, None) => {}
    }
    if let Some(key) = key {
        text.push_str(&format!("key `{key}`: "));
    }
    text.push_str(message);
    text
}

/// Joins the lines of a multi-line parser message with `; `, so that every
/// error is one line.
pub(super) fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("; ")
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Finds the line that sets `key` (a path such as `limits.max_inflight` or
/// `listeners[1].bind`) by following table headers. Falls back to the line of
/// the innermost enclosing table or inline table; `None` if neither appears.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    let mut array_lengths: HashMap<String, usize> = HashMap::new();
    let mut enclosing = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let path = if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or_default().trim();
            let length = array_lengths.entry(name.to_owned()).or_insert(0);
            table = format!("{name}[{length}]");
            *length += 1;
            table.clone()
        } else if let Some(rest) = line.strip_prefix('[') {
            table = rest.split(']').next().unwrap_or_default().trim().to_owned();
            // A sub-table of an array of tables (`[auth.fleets.derived]`
            // after `[[auth.fleets]]`) belongs to its last element.
            let array = array_lengths
                .iter()
                .filter(|(name, _)| {
                    table
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .max_by_key(|(name, _)| name.len());
            if let Some((name, length)) = array {
                table = format!("{name}[{}]{}", length - 1, &table[name.len()..]);
            }
            table.clone()
        } else if let Some((name, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            let name = name.trim().trim_matches('"');
            if table.is_empty() {
                name.to_owned()
            } else {
                format!("{table}.{name}")
            }
        } else {
            continue;
        };
        if path == key {
            return Some(index + 1);
        }
        if key
            .strip_prefix(path.as_str())
            .is_some_and(|rest| rest.starts_with(['.', '[']))
        {
            enclosing = Some(index + 1);
        }
    }
    enclosing
}
