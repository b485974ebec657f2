//! Benchmark payloads: the send time, the message's identity, then filler
//! up to the requested size.
//!
//! Layout (all big-endian):
//!
//! | bytes  | content                                                   |
//! |--------|-----------------------------------------------------------|
//! | 0..8   | wall-clock send time, nanoseconds since the Unix epoch    |
//! | 8..12  | index of the publisher in its run (payloads ≥ 16 bytes)   |
//! | 12..16 | sequence number of the message from that publisher (ditto)|
//! | 16..   | filler                                                    |
//!
//! Wall-clock time (not a process-local monotonic clock) lets a `pub` and a
//! `sub` run in different processes on the same machine and still measure
//! end-to-end latency. The identity lets subscribers tell a duplicate from
//! a first delivery; payloads of 8 to 15 bytes carry the stamp alone.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;

/// Bytes taken by the time stamp; the smallest payload the generator sends.
pub const STAMP_LEN: usize = 8;

/// Smallest payload that carries a [`MessageId`] after the stamp.
pub const ID_END: usize = STAMP_LEN + 8;

/// Byte used to fill payloads past the stamp and the identity.
const FILLER: u8 = b'x';

/// Which message a payload is: the publisher's index in its run and the
/// message's sequence number from that publisher, both counting from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    /// Index of the publisher in its run.
    pub publisher: u32,
    /// Messages the publisher sent before this one.
    pub seq: u32,
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Appends a payload of `size` bytes (at least [`STAMP_LEN`]) stamped with
/// `sent_ns`, carrying `id` if `size` is at least [`ID_END`].
pub fn put_stamped(buf: &mut impl BufMut, size: usize, sent_ns: u64, id: MessageId) {
    buf.put_u64(sent_ns);
    if size >= ID_END {
        buf.put_u32(id.publisher);
        buf.put_u32(id.seq);
        buf.put_bytes(FILLER, size - ID_END);
    } else {
        buf.put_bytes(FILLER, size.saturating_sub(STAMP_LEN));
    }
}

/// Microseconds from the payload's stamp to `now_ns`, or `None` for a
/// payload too short to carry one. A stamp in the future counts as 0.
pub fn latency_us(payload: &[u8], now_ns: u64) -> Option<u64> {
    let stamp: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(now_ns.saturating_sub(u64::from_be_bytes(stamp)) / 1_000)
}

/// The identity carried by a payload of at least [`ID_END`] bytes.
pub fn message_id(payload: &[u8]) -> Option<MessageId> {
    let bytes = payload.get(STAMP_LEN..ID_END)?;
    let (publisher, seq) = bytes.split_at(4);
    Some(MessageId {
        publisher: u32::from_be_bytes(publisher.try_into().ok()?),
        seq: u32::from_be_bytes(seq.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    const ID: MessageId = MessageId {
        publisher: 3,
        seq: 70_000,
    };

    #[test]
    fn stamp_and_id_round_trip_and_payload_has_the_requested_size() {
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, 64, 1_000_000_000, ID);
        assert_eq!(buf.len(), 64);
        assert!(buf[ID_END..].iter().all(|&b| b == FILLER));
        assert_eq!(latency_us(&buf, 1_002_500_000), Some(2_500));
        assert_eq!(message_id(&buf), Some(ID));
    }

    #[test]
    fn a_vec_takes_the_same_payload() {
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, 20, 42, ID);
        let mut vec = Vec::new();
        put_stamped(&mut vec, 20, 42, ID);
        assert_eq!(&buf[..], &vec[..]);
    }

    #[test]
    fn short_payloads_carry_the_stamp_alone() {
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, STAMP_LEN, 42, ID);
        assert_eq!(&buf[..], &42u64.to_be_bytes());
        assert_eq!(message_id(&buf), None);
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, ID_END - 1, 42, ID);
        assert_eq!(buf.len(), ID_END - 1);
        assert!(buf[STAMP_LEN..].iter().all(|&b| b == FILLER));
        assert_eq!(message_id(&buf), None);
    }

    #[test]
    fn short_payloads_and_future_stamps_are_handled() {
        assert_eq!(latency_us(b"short", 1_000), None);
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, 8, 5_000_000, ID);
        assert_eq!(latency_us(&buf, 1_000), Some(0));
    }

    #[test]
    fn clock_is_after_the_epoch() {
        // 2020-01-01 in nanoseconds: a sanity bound for the stamp source.
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
