//! Topic templates: `%i` is the client's index in its group, `%c` its client
//! identifier, `%p` the run's client-identifier prefix (unique per run by
//! default, so consecutive runs do not see each other's messages), `%%` a
//! literal `%`.

use std::fmt::Write as _;
use std::str::FromStr;

use thiserror::Error;

/// A `%` sequence the template language does not know.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `%` followed by something other than `i`, `c`, `p` or `%`.
    #[error("unknown placeholder `%{0}` in topic template (use %i, %c, %p or %%)")]
    UnknownPlaceholder(char),
    /// A template ending in a lone `%`.
    #[error("topic template ends with a lone `%` (write %% for a literal %)")]
    TrailingPercent,
    /// An empty template.
    #[error("topic template is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Index,
    ClientId,
    Prefix,
}

/// A parsed topic template, rendered once per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// The topic for the client with this index and identifier, in the run
    /// whose client identifiers start with `prefix`.
    pub fn render(&self, index: usize, client_id: &str, prefix: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                // Writing to a String cannot fail.
                Part::Index => {
                    let _ = write!(out, "{index}");
                }
                Part::ClientId => out.push_str(client_id),
                Part::Prefix => out.push_str(prefix),
            }
        }
        out
    }

    /// Whether the template contains `%i`.
    pub fn has_index(&self) -> bool {
        self.parts.contains(&Part::Index)
    }

    /// Whether this is a shared-subscription filter (`$share/<group>/...`),
    /// whose subscribers split the messages between them.
    pub fn is_shared(&self) -> bool {
        matches!(self.parts.first(), Some(Part::Literal(text)) if text.starts_with("$share/"))
    }
}

impl FromStr for TopicTemplate {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let placeholder = match chars.next() {
                Some('%') => {
                    literal.push('%');
                    continue;
                }
                Some('i') => Part::Index,
                Some('c') => Part::ClientId,
                Some('p') => Part::Prefix,
                Some(other) => return Err(TemplateError::UnknownPlaceholder(other)),
                None => return Err(TemplateError::TrailingPercent),
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(placeholder);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(TopicTemplate { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> TopicTemplate {
        s.parse().unwrap()
    }

    #[test]
    fn placeholders_are_substituted() {
        let t = parse("bench/%p/%i/from/%c");
        assert_eq!(
            t.render(7, "kmqb9-p7", "kmqb9"),
            "bench/kmqb9/7/from/kmqb9-p7"
        );
        assert!(t.has_index());
        assert!(!parse("bench/%c").has_index());
    }

    #[test]
    fn fixed_topics_render_the_same_for_everyone() {
        let t = parse("bench/fanout");
        assert_eq!(t.render(0, "a", "run"), "bench/fanout");
        assert_eq!(t.render(9, "b", "run"), "bench/fanout");
        assert!(!t.has_index());
    }

    #[test]
    fn double_percent_is_a_literal_and_wildcards_pass_through() {
        let t = parse("$share/g/100%%/+/%i#");
        assert_eq!(t.render(3, "x", "run"), "$share/g/100%/+/3#");
        assert!(!parse("a%%i").has_index(), "%%i is a literal %i");
        assert!(parse("$share/g/100%%/+/%i#").is_shared());
        assert!(parse("$share/bench/bench/%p/fanin/+").is_shared());
        assert!(!parse("bench/$share/x").is_shared());
        assert!(!parse("%p/$share/x").is_shared());
        assert_eq!(parse("a%%i").render(1, "x", "run"), "a%i");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(
            "a/%x".parse::<TopicTemplate>(),
            Err(TemplateError::UnknownPlaceholder('x'))
        );
        assert_eq!(
            "a/%".parse::<TopicTemplate>(),
            Err(TemplateError::TrailingPercent)
        );
        assert_eq!("".parse::<TopicTemplate>(), Err(TemplateError::Empty));
    }
}
