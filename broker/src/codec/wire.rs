//! Primitive data types of the MQTT wire format (section 1.5 of both specs):
//! integers, variable byte integers, UTF-8 strings and binary data, read
//! with bounds checks and written to any [`Sink`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// Largest value of a variable byte integer (four bytes of seven bits).
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// Reads the body of one packet. Every read checks the remaining length, so
/// truncated or lying input yields [`DecodeError::MalformedPacket`] rather
/// than a panic. Binary fields are sliced from the shared buffer, not copied.
pub(crate) struct Reader {
    buf: Bytes,
}

const ENDS_EARLY: DecodeError = DecodeError::MalformedPacket("packet ends before a field");

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(ENDS_EARLY);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(ENDS_EARLY);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(ENDS_EARLY);
        }
        Ok(self.buf.get_u32())
    }

    /// A variable byte integer (at most four bytes).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(ENDS_EARLY),
        }
    }

    /// The next `len` bytes, shared with the packet buffer.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(ENDS_EARLY);
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 encoded string: valid UTF-8 without U+0000
    /// ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        self.string_as(str::to_owned)
    }

    /// A string shared by reference count (a PUBLISH topic, which every
    /// delivery of the message reuses).
    pub(crate) fn shared_string(&mut self) -> Result<Arc<str>, DecodeError> {
        self.string_as(|s: &str| Arc::<str>::from(s))
    }

    /// Reads a UTF-8 string and converts it without an intermediate copy.
    fn string_as<T>(&mut self, convert: impl FnOnce(&str) -> T) -> Result<T, DecodeError> {
        let len = usize::from(self.u16()?);
        let raw = self.buf.get(..len).ok_or(ENDS_EARLY)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| DecodeError::MalformedPacket("string is not valid UTF-8"))?;
        if raw.contains(&0) {
            return Err(DecodeError::MalformedPacket("string contains U+0000"));
        }
        let s = convert(s);
        self.buf.advance(len);
        Ok(s)
    }

    /// Everything not read yet (e.g. a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Fails if bytes are left over after the last field of a packet.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::MalformedPacket(
                "unexpected bytes after the last field",
            ))
        }
    }
}

/// Parses a variable byte integer at the start of `bytes`: `Ok(None)` when
/// more bytes are needed, else the value and the number of bytes it took. A
/// fourth byte with the continuation bit set is malformed as soon as it is
/// seen.
pub(crate) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedPacket(
            "variable byte integer longer than four bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Number of bytes the variable byte integer encoding of `value` takes.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Destination of the encoder: a real buffer, or a [`Counter`] that only adds
/// up lengths. Running the same code against both keeps
/// [`encoded_len`](super::encoded_len) and the length prefixes exact.
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        BufMut::put_slice(self, v);
    }
}

/// A [`Sink`] that counts bytes instead of writing them.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0 += v.len();
    }
}

/// Writes a variable byte integer; `value` must not exceed [`MAX_VARINT`].
pub(crate) fn put_varint(out: &mut impl Sink, value: usize) -> Result<(), EncodeError> {
    if value > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge { size: value });
    }
    let mut rest = value;
    loop {
        // Truncation is intended: the low seven bits.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Writes binary data (or a string's bytes) with its two-byte length.
pub(crate) fn put_binary(out: &mut impl Sink, data: &[u8]) -> Result<(), EncodeError> {
    let len =
        u16::try_from(data.len()).map_err(|_| EncodeError::StringTooLong { len: data.len() })?;
    out.put_u16(len);
    out.put_slice(data);
    Ok(())
}

/// Writes a UTF-8 encoded string with its two-byte length.
pub(crate) fn put_string(out: &mut impl Sink, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(value: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, value).unwrap();
        buf.to_vec()
    }

    #[test]
    fn varint_examples_from_the_spec() {
        // MQTT 3.1.1 table 2.4 / 5.0 table 1-1.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(varint_bytes(value), bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len(), "length of {value}");
            assert_eq!(
                parse_varint(bytes).unwrap(),
                Some((value as u32, bytes.len())),
                "decoding {value}"
            );
        }
    }

    #[test]
    fn varint_too_large_to_encode() {
        let mut counter = Counter::default();
        assert_eq!(
            put_varint(&mut counter, MAX_VARINT + 1),
            Err(EncodeError::PacketTooLarge {
                size: MAX_VARINT + 1
            })
        );
    }

    #[test]
    fn varint_needs_more_bytes_or_is_malformed() {
        assert_eq!(parse_varint(&[]).unwrap(), None);
        assert_eq!(parse_varint(&[0x80, 0x80]).unwrap(), None);
        assert!(parse_varint(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xC3, 0xA9]));
        assert_eq!(r.string().unwrap(), "é");
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0xFF]));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, b'a', 0x00]));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::MalformedPacket(_))));
    }

    #[test]
    fn long_fields_cannot_be_encoded() {
        let long = vec![b'a'; 65_536];
        assert_eq!(
            put_binary(&mut Counter::default(), &long),
            Err(EncodeError::StringTooLong { len: 65_536 })
        );
        let mut counter = Counter::default();
        put_binary(&mut counter, &long[..65_535]).unwrap();
        assert_eq!(counter.0, 65_537);
    }
}
