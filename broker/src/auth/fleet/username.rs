//! A fleet's user name template: which CONNECT user names are its devices,
//! and where the device id is in them (`%d`).

/// `prefix%dsuffix`, or a literal user name (no `%d`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsernameTemplate {
    prefix: String,
    /// `None`: a literal user name, no device id in it.
    suffix: Option<String>,
}

/// What a user name tells about a fleet device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matched<'a> {
    /// The template's `%d` part.
    Device(&'a str),
    /// The literal user name of a template without `%d`.
    Literal,
}

impl UsernameTemplate {
    /// `None` when the template has more than one `%d`, or is only `%d`
    /// (it would claim every user name), or is empty.
    pub(crate) fn parse(text: &str) -> Option<UsernameTemplate> {
        match text.split_once("%d") {
            None if text.is_empty() => None,
            None => Some(UsernameTemplate {
                prefix: text.to_owned(),
                suffix: None,
            }),
            Some((prefix, suffix)) => {
                if suffix.contains("%d") || (prefix.is_empty() && suffix.is_empty()) {
                    return None;
                }
                Some(UsernameTemplate {
                    prefix: prefix.to_owned(),
                    suffix: Some(suffix.to_owned()),
                })
            }
        }
    }

    pub(crate) fn has_device(&self) -> bool {
        self.suffix.is_some()
    }

    /// Whether `username` belongs to the template, and the device id in it.
    /// A device id is never empty.
    pub(crate) fn matches<'a>(&self, username: &'a str) -> Option<Matched<'a>> {
        match &self.suffix {
            None => (username == self.prefix).then_some(Matched::Literal),
            Some(suffix) => {
                let device = username
                    .strip_prefix(self.prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                (!device.is_empty()).then_some(Matched::Device(device))
            }
        }
    }

    /// Whether some user name could match both templates (conservative:
    /// may say yes for templates that only nearly overlap).
    pub(crate) fn overlaps(&self, other: &UsernameTemplate) -> bool {
        match (&self.suffix, &other.suffix) {
            (None, None) => self.prefix == other.prefix,
            (None, Some(_)) => other.matches(&self.prefix).is_some(),
            (Some(_), None) => self.matches(&other.prefix).is_some(),
            (Some(a), Some(b)) => {
                let prefixes = self.prefix.starts_with(&other.prefix)
                    || other.prefix.starts_with(&self.prefix);
                let suffixes = a.ends_with(b.as_str()) || b.ends_with(a.as_str());
                prefixes && suffixes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> UsernameTemplate {
        UsernameTemplate::parse(text).unwrap()
    }

    #[test]
    fn templates_match_and_extract_the_device() {
        assert_eq!(t("%d@s").matches("dev-1@s"), Some(Matched::Device("dev-1")));
        assert_eq!(t("s/%d").matches("s/dev-1"), Some(Matched::Device("dev-1")));
        assert_eq!(t("s/%d/x").matches("s/a/b/x"), Some(Matched::Device("a/b")));
        assert_eq!(t("%d@s").matches("@s"), None, "empty device id");
        assert_eq!(t("%d@s").matches("dev@t"), None);
        assert_eq!(t("fleet").matches("fleet"), Some(Matched::Literal));
        assert_eq!(t("fleet").matches("fleet2"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(UsernameTemplate::parse("%d"), None);
        assert_eq!(UsernameTemplate::parse(""), None);
        assert_eq!(UsernameTemplate::parse("%d-%d"), None);
    }

    #[test]
    fn overlaps() {
        assert!(t("%d@s").overlaps(&t("%d@s")));
        assert!(t("%d@s").overlaps(&t("%d@@s")), "x@@s matches both");
        assert!(t("a%d").overlaps(&t("ab%d")));
        assert!(!t("%d@s").overlaps(&t("%d@t")));
        assert!(!t("s/%d").overlaps(&t("t/%d")));
        assert!(t("x@s").overlaps(&t("%d@s")));
        assert!(!t("x@t").overlaps(&t("%d@s")));
        assert!(!t("a").overlaps(&t("b")));
    }
}
