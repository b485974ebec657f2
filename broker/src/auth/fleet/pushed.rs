//! Revocation lists pushed through the admin API
//! (`PUT /api/v1/fleets/revocations`), in force at once instead of when the
//! kubelet next refreshes the fleets Secret volume (a minute or more).
//!
//! The operator writes the broker's fleets Secret first, with a `revision`
//! key (the file [`REVISION_FILE`] of `auth.fleets_dir`), then pushes the
//! revocation list of every fleet of that revision:
//!
//! ```text
//! revision = 8
//! [revocations]
//! sensors = "device sensor-1\nserial 4f:1a\n"
//! meters = ""
//! ```
//!
//! Each list goes through the revocation file parser; one bad list refuses
//! the whole push and changes nothing. Whichever of the directory and the
//! last push has the higher revision is in force: while the push is newer,
//! its lists stand in for the fleets' revocation files (everything else —
//! CAs, secrets, keys, which fleets exist — comes from the files); once
//! the files reach its revision, the push is dropped and the files (which
//! hold the same lists) are in force, so the kubelet's update changes
//! nothing. A restarted broker forgets the push and reads the files; the
//! operator pushes again to a restarted broker.
//!
//! Only revocation lists are pushed: they are what must act within seconds,
//! they are plain text checked by one parser, and a push never has to
//! write files (the Secret volume is read-only) or hold key material.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::{Fleets, Revocations};
use crate::access::PushOutcome;
use crate::auth::AuthFileError;

/// The file of a fleets directory that holds its revision.
pub const REVISION_FILE: &str = "revision";

/// Where pushes are named in errors.
const ORIGIN: &str = "pushed revocations";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushText {
    revision: u64,
    #[serde(default)]
    revocations: BTreeMap<String, String>,
}

/// A parsed push: its revision and each fleet's list.
#[derive(Debug, Clone)]
pub struct RevocationPush {
    pub revision: u64,
    lists: BTreeMap<String, Arc<Revocations>>,
}

impl RevocationPush {
    /// Parses a push (see the module documentation); errors name the
    /// fleet and the line of its list.
    pub fn parse(text: &str) -> Result<RevocationPush, AuthFileError> {
        let push: PushText = toml::from_str(text).map_err(|e| AuthFileError::Invalid {
            file: ORIGIN.to_owned(),
            line: None,
            message: e.message().to_owned(),
        })?;
        let lists = push
            .revocations
            .iter()
            .map(|(fleet, list)| {
                let origin = format!("{ORIGIN} of fleet {fleet}");
                Ok((fleet.clone(), Arc::new(Revocations::parse(list, &origin)?)))
            })
            .collect::<Result<_, AuthFileError>>()?;
        Ok(RevocationPush {
            revision: push.revision,
            lists,
        })
    }

    /// The fleets it names.
    pub fn fleets(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }
}

/// The last push and the revision in force.
#[derive(Debug, Default)]
pub struct PushedRevocations {
    /// The last push, while it is newer than the files.
    pushed: Option<RevocationPush>,
    /// The revision in force: the files' or the push's (0: none).
    revision: u64,
}

impl PushedRevocations {
    /// The revision in force.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Fleets just read from files of `file_revision`, with the pushed
    /// lists in place of theirs while the push is the newer; a push the
    /// files caught up with is dropped.
    pub fn over_files(&mut self, loaded: Fleets, file_revision: u64) -> Fleets {
        if self
            .pushed
            .as_ref()
            .is_some_and(|pushed| pushed.revision <= file_revision)
        {
            self.pushed = None;
        }
        match &self.pushed {
            Some(pushed) => {
                self.revision = pushed.revision;
                loaded.with_revocations(&pushed.lists)
            }
            None => {
                self.revision = file_revision;
                loaded
            }
        }
    }

    /// Puts `push` in force over the fleets `current` unless the revision
    /// in force is the same or newer; the fleets to store when it applies.
    pub fn push(
        &mut self,
        push: RevocationPush,
        current: &Fleets,
    ) -> (PushOutcome, Option<Fleets>) {
        if push.revision < self.revision {
            let current = self.revision;
            return (PushOutcome::Stale { current }, None);
        }
        if push.revision == self.revision {
            let revision = push.revision;
            return (PushOutcome::Unchanged { revision }, None);
        }
        let fleets = current.with_revocations(&push.lists);
        let revision = push.revision;
        self.revision = revision;
        self.pushed = Some(push);
        (PushOutcome::Applied { revision }, Some(fleets))
    }
}

/// The revision of a fleets directory: its [`REVISION_FILE`], 0 when there
/// is none (fleets written by hand, or without a directory).
pub fn dir_revision(dir: Option<&Path>) -> Result<u64, AuthFileError> {
    let Some(dir) = dir else {
        return Ok(0);
    };
    let path = dir.join(REVISION_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(AuthFileError::Read { path, source }),
    };
    text.trim().parse().map_err(|_| AuthFileError::Invalid {
        file: path.display().to_string(),
        line: Some(1),
        message: format!("`{}` is not a revision number", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_parses_every_list_or_names_the_bad_one() {
        let push = RevocationPush::parse(
            "revision = 4\n[revocations]\nsensors = \"device a\\nserial 0f\\n\"\nmeters = \"\"\n",
        )
        .unwrap();
        assert_eq!(push.revision, 4);
        assert_eq!(push.fleets().collect::<Vec<_>>(), ["meters", "sensors"]);
        assert_eq!(push.lists["sensors"].len(), 2);
        assert!(push.lists["meters"].is_empty());

        let error = RevocationPush::parse(
            "revision = 4\n[revocations]\nsensors = \"device a\\nserial xyz\\n\"\n",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "pushed revocations of fleet sensors:2: `xyz` is not a hex serial number"
        );
        let error = RevocationPush::parse("[revocations]\n").unwrap_err();
        assert!(error.to_string().contains("revision"), "{error}");
        let error = RevocationPush::parse("revision = 1\nrevoked = 2\n").unwrap_err();
        assert!(error.to_string().contains("revoked"), "{error}");
    }

    #[test]
    fn the_directory_revision_is_its_revision_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_revision(None).unwrap(), 0);
        assert_eq!(dir_revision(Some(dir.path())).unwrap(), 0);
        std::fs::write(dir.path().join(REVISION_FILE), "17\n").unwrap();
        assert_eq!(dir_revision(Some(dir.path())).unwrap(), 17);
        std::fs::write(dir.path().join(REVISION_FILE), "seventeen").unwrap();
        let error = dir_revision(Some(dir.path())).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(":1: `seventeen` is not a revision number"),
            "{error}"
        );
    }
}
