//! The append-only log file, and the framing and file headers it shares
//! with the snapshot.
//!
//! A store file starts with a header: 8 magic bytes, the format version
//! (u32 LE), a number of u64 LE fields and a CRC-32 (u32 LE) of everything
//! before it. The log's single field is its generation. Records follow as
//! frames: `[u32 LE payload length][u32 LE CRC-32 of payload][postcard
//! payload]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::records::Record;
use super::{io_error, StoreError};

/// The log's file name inside the store directory.
pub(super) const LOG_FILE: &str = "log.bin";
const LOG_TMP_FILE: &str = "log.bin.tmp";
const LOG_MAGIC: [u8; 8] = *b"KMQTLOG\0";
/// Version of the header, frame and record encoding; bump on any change.
const FORMAT_VERSION: u32 = 1;
const FRAME_HEADER_LEN: usize = 8;

/// Length of a file header with `fields` u64 fields.
pub(super) const fn header_len(fields: usize) -> usize {
    8 + 4 + 8 * fields + 4
}

/// Encodes a file header (magic, version, fields, CRC).
pub(super) fn encode_header(magic: &[u8; 8], fields: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(fields.len()));
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for field in fields {
        out.extend_from_slice(&field.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads and checks a file header with `N` fields. `Err` holds the reason
/// the header is not acceptable, or an IO error.
pub(super) fn read_header<const N: usize>(
    reader: &mut impl Read,
    magic: &[u8; 8],
) -> io::Result<Result<[u64; N], String>> {
    let mut bytes = vec![0; header_len(N)];
    match reader.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Err("file too short for its header".into()))
        }
        Err(e) => return Err(e),
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let (found_magic, rest) = body.split_at(8);
    if found_magic != magic {
        return Ok(Err("not a KubeMQTT store file of this kind".into()));
    }
    let (version, mut rest) = rest.split_at(4);
    let version = u32::from_le_bytes(version.try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Ok(Err(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION})"
        )));
    }
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Ok(Err("header checksum mismatch".into()));
    }
    let mut fields = [0u64; N];
    for field in &mut fields {
        let (value, tail) = rest.split_at(8);
        *field = u64::from_le_bytes(value.try_into().unwrap_or_default());
        rest = tail;
    }
    Ok(Ok(fields))
}

/// Appends one frame holding `record` to `buf`. On error `buf` is left as
/// it was.
pub(super) fn encode_frame(record: &Record, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = postcard::to_io(record, &mut *buf) {
        buf.truncate(start);
        return Err(StoreError::Encode(e));
    }
    let payload_start = start + FRAME_HEADER_LEN;
    let payload_len = buf.len() - payload_start;
    let Ok(len) = u32::try_from(payload_len) else {
        buf.truncate(start);
        return Err(StoreError::RecordTooLarge(payload_len));
    };
    let crc = crc32fast::hash(&buf[payload_start..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Why reading the next frame failed.
#[derive(Debug)]
pub(super) enum FrameError {
    /// The frame is incomplete or fails its checksum: a torn or damaged
    /// write. The reason is for the log.
    Damaged(&'static str),
    /// The frame is intact but does not decode as a [`Record`].
    Decode(postcard::Error),
    Io(io::Error),
}

/// Reads frames from `offset` up to `end` (the file size).
pub(super) struct FrameReader<R> {
    reader: R,
    offset: u64,
    end: u64,
}

impl<R: Read> FrameReader<R> {
    /// `reader` must be positioned at `offset`.
    pub(super) fn new(reader: R, offset: u64, end: u64) -> Self {
        FrameReader {
            reader,
            offset,
            end,
        }
    }

    /// The end of the last frame read successfully.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record, or `None` at the end of the file.
    pub(super) fn next_record(&mut self) -> Result<Option<Record>, FrameError> {
        let remaining = self.end.saturating_sub(self.offset);
        if remaining == 0 {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        if remaining < FRAME_HEADER_LEN as u64 {
            return Err(FrameError::Damaged("incomplete frame header"));
        }
        self.reader
            .read_exact(&mut header)
            .map_err(FrameError::Io)?;
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        // Every record encodes to at least one byte; a zero length is what
        // a zero-filled tail (power loss on some file systems) looks like.
        if len == 0 {
            return Err(FrameError::Damaged("zero-length frame"));
        }
        if u64::from(len) > remaining - FRAME_HEADER_LEN as u64 {
            return Err(FrameError::Damaged(
                "frame extends past the end of the file",
            ));
        }
        let mut payload = vec![0; len as usize];
        self.reader
            .read_exact(&mut payload)
            .map_err(FrameError::Io)?;
        if crc32fast::hash(&payload) != crc {
            return Err(FrameError::Damaged("frame checksum mismatch"));
        }
        let record = postcard::from_bytes(&payload).map_err(FrameError::Decode)?;
        self.offset += FRAME_HEADER_LEN as u64 + u64::from(len);
        Ok(Some(record))
    }
}

/// Fsyncs a directory so that a rename inside it is durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// The open log, positioned at its end for appending. Only the writer
/// thread appends to it.
#[derive(Debug)]
pub(super) struct Log {
    file: File,
    path: PathBuf,
    len: u64,
    generation: u64,
}

impl Log {
    /// Creates an empty log of `generation`, atomically replacing any log in
    /// `dir`: the header is written to a temporary file, fsynced, and
    /// renamed over the log.
    pub(super) fn create(dir: &Path, generation: u64) -> Result<Log, StoreError> {
        let tmp = dir.join(LOG_TMP_FILE);
        let path = dir.join(LOG_FILE);
        let header = encode_header(&LOG_MAGIC, &[generation]);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        file.write_all(&header)
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
        sync_dir(dir)?;
        Ok(Log {
            file,
            path,
            len: header.len() as u64,
            generation,
        })
    }

    /// Opens the log in `dir` after the snapshot of `snapshot_generation`
    /// was loaded, passing each record that follows the snapshot to
    /// `apply`. A missing log, or one older than the snapshot (a compaction
    /// was interrupted after installing the snapshot), is replaced by an
    /// empty one. A damaged tail is cut off with a warning.
    pub(super) fn recover(
        dir: &Path,
        snapshot_generation: u64,
        mut apply: impl FnMut(Record),
    ) -> Result<Log, StoreError> {
        let path = dir.join(LOG_FILE);
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Log::create(dir, snapshot_generation)
            }
            Err(e) => return Err(io_error("open", &path)(e)),
        };
        // A closure rather than `io_error`'s opaque type, whose borrow of
        // `path` would last until the end of the function.
        let read_err = |e| io_error("read", &path)(e);
        let end = file.metadata().map_err(&read_err)?.len();
        let mut reader = BufReader::new(&mut file);
        let [generation] = read_header::<1>(&mut reader, &LOG_MAGIC)
            .map_err(&read_err)?
            .map_err(|reason| StoreError::Format {
                path: path.clone(),
                reason,
            })?;
        if generation < snapshot_generation {
            tracing::info!(
                path = %path.display(),
                generation,
                snapshot_generation,
                "log predates the snapshot (interrupted compaction); starting a new log"
            );
            return Log::create(dir, snapshot_generation);
        }
        if generation > snapshot_generation {
            return Err(StoreError::Format {
                path,
                reason: format!(
                    "log generation {generation} is newer than the snapshot's \
                     ({snapshot_generation}); is the snapshot missing?"
                ),
            });
        }

        let mut frames = FrameReader::new(reader, header_len(1) as u64, end);
        loop {
            match frames.next_record() {
                Ok(Some(record)) => apply(record),
                Ok(None) => break,
                Err(FrameError::Damaged(reason)) => {
                    tracing::warn!(
                        path = %path.display(),
                        offset = frames.offset(),
                        discarded_bytes = end - frames.offset(),
                        reason,
                        "damaged log tail (torn write); truncating to the last complete record"
                    );
                    break;
                }
                Err(FrameError::Decode(e)) => {
                    return Err(StoreError::Format {
                        path,
                        reason: format!(
                            "record at offset {} does not decode: {e}",
                            frames.offset()
                        ),
                    })
                }
                Err(FrameError::Io(e)) => return Err(read_err(e)),
            }
        }

        let len = frames.offset();
        if len < end {
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(io_error("truncate", &path))?;
        }
        file.seek(SeekFrom::Start(len))
            .map_err(io_error("seek", &path))?;
        Ok(Log {
            file,
            path,
            len,
            generation,
        })
    }

    /// Writes `bytes` (whole frames) at the end of the log.
    pub(super) fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .map_err(io_error("write", &self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Fsyncs the log's data.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_error("fsync", &self.path))
    }

    /// The log's size in bytes, header included.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The snapshot generation this log follows.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u16) -> Record {
        Record::InboundQos2 {
            client_id: format!("client-{n}"),
            packet_id: n,
        }
    }

    fn frames(records: &[Record]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in records {
            encode_frame(r, &mut buf).unwrap();
        }
        buf
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<FrameError>, u64) {
        let mut reader = FrameReader::new(bytes, 0, bytes.len() as u64);
        let mut out = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return (out, None, reader.offset()),
                Err(e) => return (out, Some(e), reader.offset()),
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let records: Vec<Record> = (0..5).map(record).collect();
        let bytes = frames(&records);
        let (read, err, offset) = read_all(&bytes);
        assert_eq!(read, records);
        assert!(err.is_none());
        assert_eq!(offset, bytes.len() as u64);
    }

    #[test]
    fn every_truncation_of_the_last_frame_is_damage() {
        let records: Vec<Record> = (0..3).map(record).collect();
        let bytes = frames(&records);
        let good = frames(&records[..2]).len();
        for cut in good + 1..bytes.len() {
            let (read, err, offset) = read_all(&bytes[..cut]);
            assert_eq!(read, records[..2], "cut at {cut}");
            assert!(matches!(err, Some(FrameError::Damaged(_))), "cut at {cut}");
            assert_eq!(offset, good as u64);
        }
    }

    #[test]
    fn zero_filled_tail_is_damage() {
        let mut bytes = frames(&[record(1)]);
        bytes.extend_from_slice(&[0; 32]);
        let (read, err, _) = read_all(&bytes);
        assert_eq!(read, vec![record(1)]);
        assert!(matches!(
            err,
            Some(FrameError::Damaged("zero-length frame"))
        ));
    }

    #[test]
    fn header_checks() {
        let header = encode_header(&LOG_MAGIC, &[7]);
        assert_eq!(
            read_header::<1>(&mut &header[..], &LOG_MAGIC).unwrap(),
            Ok([7])
        );
        assert!(read_header::<1>(&mut &header[..], b"SOMETHIN")
            .unwrap()
            .is_err());
        assert!(read_header::<1>(&mut &header[..10], &LOG_MAGIC)
            .unwrap()
            .is_err());
        let mut bad_version = header.clone();
        bad_version[8] = 99;
        let reason = read_header::<1>(&mut &bad_version[..], &LOG_MAGIC)
            .unwrap()
            .unwrap_err();
        assert!(reason.contains("version 99"), "{reason}");
        let mut flipped = header;
        flipped[13] ^= 1;
        assert!(read_header::<1>(&mut &flipped[..], &LOG_MAGIC)
            .unwrap()
            .is_err());
    }
}
