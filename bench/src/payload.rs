//! Benchmark payloads: the send time, then filler up to the requested size.
//!
//! The first eight bytes are the wall-clock send time in nanoseconds since
//! the Unix epoch, big-endian. Wall-clock time (not a process-local
//! monotonic clock) lets a `pub` and a `sub` run in different processes on
//! the same machine and still measure end-to-end latency.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

/// Bytes taken by the time stamp; the smallest payload the generator sends.
pub const STAMP_LEN: usize = 8;

/// Byte used to fill payloads past the stamp.
const FILLER: u8 = b'x';

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Appends a payload of `size` bytes (at least [`STAMP_LEN`]) stamped with
/// `sent_ns`.
pub fn put_stamped(buf: &mut BytesMut, size: usize, sent_ns: u64) {
    buf.put_u64(sent_ns);
    buf.put_bytes(FILLER, size.saturating_sub(STAMP_LEN));
}

/// Microseconds from the payload's stamp to `now_ns`, or `None` for a
/// payload too short to carry one. A stamp in the future counts as 0.
pub fn latency_us(payload: &[u8], now_ns: u64) -> Option<u64> {
    let stamp: [u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
    Some(now_ns.saturating_sub(u64::from_be_bytes(stamp)) / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_payload_has_the_requested_size() {
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, 64, 1_000_000_000);
        assert_eq!(buf.len(), 64);
        assert!(buf[STAMP_LEN..].iter().all(|&b| b == FILLER));
        assert_eq!(latency_us(&buf, 1_002_500_000), Some(2_500));
    }

    #[test]
    fn minimal_payload_is_just_the_stamp() {
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, STAMP_LEN, 42);
        assert_eq!(&buf[..], &42u64.to_be_bytes());
    }

    #[test]
    fn short_payloads_and_future_stamps_are_handled() {
        assert_eq!(latency_us(b"short", 1_000), None);
        let mut buf = BytesMut::new();
        put_stamped(&mut buf, 8, 5_000_000);
        assert_eq!(latency_us(&buf, 1_000), Some(0));
    }

    #[test]
    fn clock_is_after_the_epoch() {
        // 2020-01-01 in nanoseconds: a sanity bound for the stamp source.
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
