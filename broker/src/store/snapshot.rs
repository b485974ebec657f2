//! The snapshot file: the whole durable state at one point, as a sequence
//! of records that rebuild it.
//!
//! Layout: a file header (see [`super::log`]) with the fields generation,
//! next message id and record count, then that many frames. The snapshot
//! is written to a temporary file, fsynced, renamed into place and the
//! directory fsynced, so it is never torn: any damage is reported as
//! [`StoreError::CorruptSnapshot`].

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::log::{
    encode_frame, encode_header, header_len, read_header, sync_dir, FrameError, FrameReader,
};
use super::records::Record;
use super::state::State;
use super::{io_error, StoreError};

/// The snapshot's file name inside the store directory.
pub(super) const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP_FILE: &str = "snapshot.bin.tmp";
const SNAPSHOT_MAGIC: [u8; 8] = *b"KMQTSNAP";
/// generation, next message id, record count.
const HEADER_FIELDS: usize = 3;

/// What the snapshot header says, plus the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SnapshotInfo {
    /// Logs of an older generation are already contained in this snapshot.
    pub(super) generation: u64,
    pub(super) next_message_id: u64,
    pub(super) len: u64,
}

/// Reads the snapshot in `dir`, passing its records to `apply`. `None` if
/// there is no snapshot.
pub(super) fn read(
    dir: &Path,
    mut apply: impl FnMut(Record),
) -> Result<Option<SnapshotInfo>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", &path)(e)),
    };
    let read_err = io_error("read", &path);
    let corrupt = |reason: String| StoreError::CorruptSnapshot {
        path: path.clone(),
        reason,
    };
    let len = file.metadata().map_err(&read_err)?.len();
    let mut reader = BufReader::new(file);
    let [generation, next_message_id, count] =
        read_header::<HEADER_FIELDS>(&mut reader, &SNAPSHOT_MAGIC)
            .map_err(&read_err)?
            .map_err(corrupt)?;

    let mut frames = FrameReader::new(reader, header_len(HEADER_FIELDS) as u64, len);
    for index in 0..count {
        match frames.next_record() {
            Ok(Some(record)) => apply(record),
            Ok(None) => return Err(corrupt(format!("ends after {index} of {count} records"))),
            Err(FrameError::Damaged(reason)) => {
                return Err(corrupt(format!("record {index}: {reason}")))
            }
            Err(FrameError::Decode(e)) => {
                return Err(corrupt(format!("record {index} does not decode: {e}")))
            }
            Err(FrameError::Io(e)) => return Err(read_err(e)),
        }
    }
    if frames.offset() != len {
        return Err(corrupt(format!(
            "{} unexpected bytes after the last record",
            len - frames.offset()
        )));
    }
    Ok(Some(SnapshotInfo {
        generation,
        next_message_id,
        len,
    }))
}

/// A snapshot written and fsynced under its temporary name, not yet in
/// effect.
#[derive(Debug)]
pub(super) struct PendingSnapshot {
    dir: PathBuf,
    len: u64,
}

impl PendingSnapshot {
    /// Renames the snapshot into place and fsyncs the directory; from then
    /// on, logs older than its generation are ignored. Returns its size.
    pub(super) fn install(self) -> Result<u64, StoreError> {
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE)).map_err(io_error("rename", &tmp))?;
        sync_dir(&self.dir)?;
        Ok(self.len)
    }
}

/// Writes `state` as the snapshot of `generation` to a temporary file in
/// `dir` and fsyncs it.
pub(super) fn write(
    dir: &Path,
    generation: u64,
    next_message_id: u64,
    state: &State,
) -> Result<PendingSnapshot, StoreError> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let write_err = io_error("write", &tmp);
    let file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    let mut out = BufWriter::new(file);
    // The record count is only known at the end: write a placeholder
    // header and fill it in afterwards.
    let placeholder = vec![0; header_len(HEADER_FIELDS)];
    out.write_all(&placeholder).map_err(&write_err)?;

    let mut count = 0u64;
    let mut buf = Vec::new();
    state.for_each_record(|record| {
        buf.clear();
        encode_frame(&record, &mut buf)?;
        out.write_all(&buf).map_err(&write_err)?;
        count += 1;
        Ok::<(), StoreError>(())
    })?;

    let mut file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    let len = file.stream_position().map_err(&write_err)?;
    let header = encode_header(&SNAPSHOT_MAGIC, &[generation, next_message_id, count]);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header))
        .and_then(|()| file.sync_all())
        .map_err(&write_err)?;
    Ok(PendingSnapshot {
        dir: dir.to_path_buf(),
        len,
    })
}
