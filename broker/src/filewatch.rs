//! Noticing that files changed on disk. Kubernetes updates a mounted Secret
//! by swapping a symlink, so the identity of the file a path resolves to is
//! compared, not just its modification time.

use std::path::Path;
use std::time::SystemTime;

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of the file `path` resolves to, or `None` if it is missing.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// Stamps of several files, in order; compare two to see if any changed.
pub fn stamps<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Option<FileStamp>> {
    paths.into_iter().map(stamp).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_swap_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let link = dir.path().join("tls.crt");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = stamp(&link);
        assert_eq!(before, stamp(&link));
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(before, stamp(&link));
        assert!(stamp(&dir.path().join("missing")).is_none());
    }
}
