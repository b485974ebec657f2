//! MQTT 5.0 properties (section 2.2.2): the property block of each packet,
//! which properties each packet type allows (table 2-4), and the value rules
//! the specification makes a protocol error.

use super::error::{DecodeError, EncodeError};
use super::packet::{Properties, PublishProperties};
use super::wire::{put_binary, put_string, put_varint, Counter, Reader, Sink, MAX_VARINT};

// Property identifiers (MQTT 5.0 table 2-4).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The place a property block sits in; decides which properties it allows.
/// A bit set so that table 2-4 reads as one line per property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctx(u16);

impl Ctx {
    pub(crate) const CONNECT: Ctx = Ctx(1 << 0);
    pub(crate) const CONNACK: Ctx = Ctx(1 << 1);
    pub(crate) const PUBLISH: Ctx = Ctx(1 << 2);
    pub(crate) const WILL: Ctx = Ctx(1 << 3);
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    pub(crate) const PUB_RESPONSE: Ctx = Ctx(1 << 4);
    pub(crate) const SUBSCRIBE: Ctx = Ctx(1 << 5);
    pub(crate) const SUBACK: Ctx = Ctx(1 << 6);
    pub(crate) const UNSUBSCRIBE: Ctx = Ctx(1 << 7);
    pub(crate) const UNSUBACK: Ctx = Ctx(1 << 8);
    pub(crate) const DISCONNECT: Ctx = Ctx(1 << 9);
    pub(crate) const AUTH: Ctx = Ctx(1 << 10);
    const ALL: Ctx = Ctx((1 << 11) - 1);

    const fn or(self, other: Ctx) -> Ctx {
        Ctx(self.0 | other.0)
    }

    fn allows(self, id: u8) -> bool {
        allowed_in(id).is_some_and(|set| set.0 & self.0 != 0)
    }
}

/// Where a property may appear (MQTT 5.0 table 2-4), or `None` for an
/// identifier the specification does not define.
fn allowed_in(id: u8) -> Option<Ctx> {
    const MESSAGE: Ctx = Ctx::PUBLISH.or(Ctx::WILL);
    const CONNECT_CONNACK: Ctx = Ctx::CONNECT.or(Ctx::CONNACK);
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => MESSAGE,
        SUBSCRIPTION_IDENTIFIER => Ctx::PUBLISH.or(Ctx::SUBSCRIBE),
        SESSION_EXPIRY_INTERVAL => CONNECT_CONNACK.or(Ctx::DISCONNECT),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Ctx::CONNACK,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => CONNECT_CONNACK.or(Ctx::AUTH),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => Ctx::CONNECT,
        WILL_DELAY_INTERVAL => Ctx::WILL,
        SERVER_REFERENCE => Ctx::CONNACK.or(Ctx::DISCONNECT),
        REASON_STRING => Ctx::CONNACK
            .or(Ctx::PUB_RESPONSE)
            .or(Ctx::SUBACK)
            .or(Ctx::UNSUBACK)
            .or(Ctx::DISCONNECT)
            .or(Ctx::AUTH),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => CONNECT_CONNACK,
        TOPIC_ALIAS => Ctx::PUBLISH,
        USER_PROPERTY => Ctx::ALL,
        _ => return None,
    })
}

const NOT_ALLOWED: DecodeError = DecodeError::ProtocolError("property not allowed in this packet");

/// Reads the property length and returns a reader over the block.
fn block(r: &mut Reader) -> Result<Reader, DecodeError> {
    let len = r.varint()?;
    let bytes = r.take(len as usize)?;
    Ok(Reader::new(bytes))
}

/// Reads a property identifier and checks that `ctx` allows it: an unknown
/// identifier is malformed, a known one in the wrong packet a protocol error.
fn read_id(block: &mut Reader, ctx: Ctx) -> Result<u8, DecodeError> {
    let id = u8::try_from(block.varint()?)
        .map_err(|_| DecodeError::MalformedPacket("unknown property identifier"))?;
    match allowed_in(id) {
        None => Err(DecodeError::MalformedPacket("unknown property identifier")),
        Some(_) if !ctx.allows(id) => Err(NOT_ALLOWED),
        Some(_) => Ok(id),
    }
}

/// Stores a property that may appear at most once.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::ProtocolError(
            "property included more than once",
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property whose only values are 0 and 1.
fn read_flag(block: &mut Reader) -> Result<u8, DecodeError> {
    match block.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::ProtocolError("property value must be 0 or 1")),
    }
}

/// A two- or four-byte property for which 0 is a protocol error.
fn nonzero<T: Default + PartialEq>(value: T, what: &'static str) -> Result<T, DecodeError> {
    if value == T::default() {
        Err(DecodeError::ProtocolError(what))
    } else {
        Ok(value)
    }
}

fn read_subscription_id(block: &mut Reader) -> Result<u32, DecodeError> {
    nonzero(block.varint()?, "subscription identifier 0")
}

/// Reads the property block of any packet but PUBLISH and the will.
pub(crate) fn read_properties(r: &mut Reader, ctx: Ctx) -> Result<Properties, DecodeError> {
    let mut p = Properties::default();
    let mut b = block(r)?;
    while b.remaining() > 0 {
        match read_id(&mut b, ctx)? {
            SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, b.u32()?)?,
            ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut p.assigned_client_identifier, b.string()?)?,
            SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, b.u16()?)?,
            AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, b.string()?)?,
            AUTHENTICATION_DATA => set_once(&mut p.authentication_data, b.binary()?)?,
            REQUEST_PROBLEM_INFORMATION => {
                set_once(&mut p.request_problem_information, read_flag(&mut b)?)?
            }
            REQUEST_RESPONSE_INFORMATION => {
                set_once(&mut p.request_response_information, read_flag(&mut b)?)?
            }
            RESPONSE_INFORMATION => set_once(&mut p.response_information, b.string()?)?,
            SERVER_REFERENCE => set_once(&mut p.server_reference, b.string()?)?,
            REASON_STRING => set_once(&mut p.reason_string, b.string()?)?,
            RECEIVE_MAXIMUM => set_once(
                &mut p.receive_maximum,
                nonzero(b.u16()?, "receive maximum 0")?,
            )?,
            TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, b.u16()?)?,
            MAXIMUM_QOS => set_once(&mut p.maximum_qos, read_flag(&mut b)?)?,
            RETAIN_AVAILABLE => set_once(&mut p.retain_available, read_flag(&mut b)?)?,
            USER_PROPERTY => p.user_properties.push((b.string()?, b.string()?)),
            MAXIMUM_PACKET_SIZE => set_once(
                &mut p.maximum_packet_size,
                nonzero(b.u32()?, "maximum packet size 0")?,
            )?,
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut p.wildcard_subscription_available, read_flag(&mut b)?)?
            }
            SUBSCRIPTION_IDENTIFIER => set_once(
                &mut p.subscription_identifier,
                read_subscription_id(&mut b)?,
            )?,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                set_once(&mut p.subscription_identifier_available, read_flag(&mut b)?)?
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                set_once(&mut p.shared_subscription_available, read_flag(&mut b)?)?
            }
            // Application-message properties: `read_id` only lets them
            // through for PUBLISH and the will, which do not come here.
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok(p)
}

/// Reads the property block of a PUBLISH ([`Ctx::PUBLISH`]) or a will
/// ([`Ctx::WILL`]); the second value is the will delay interval.
pub(crate) fn read_publish_properties(
    r: &mut Reader,
    ctx: Ctx,
) -> Result<(PublishProperties, Option<u32>), DecodeError> {
    let mut p = PublishProperties::default();
    let mut will_delay = None;
    let mut b = block(r)?;
    while b.remaining() > 0 {
        match read_id(&mut b, ctx)? {
            PAYLOAD_FORMAT_INDICATOR => {
                set_once(&mut p.payload_format_indicator, read_flag(&mut b)?)?
            }
            MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, b.u32()?)?,
            CONTENT_TYPE => set_once(&mut p.content_type, b.string()?)?,
            RESPONSE_TOPIC => set_once(&mut p.response_topic, b.string()?)?,
            CORRELATION_DATA => set_once(&mut p.correlation_data, b.binary()?)?,
            SUBSCRIPTION_IDENTIFIER => p
                .subscription_identifiers
                .push(read_subscription_id(&mut b)?),
            // Alias 0 is invalid, but the connection answers it with the
            // specific reason (0x94 Topic Alias invalid), so it passes here.
            TOPIC_ALIAS => set_once(&mut p.topic_alias, b.u16()?)?,
            USER_PROPERTY => p.user_properties.push((b.string()?, b.string()?)),
            WILL_DELAY_INTERVAL => set_once(&mut will_delay, b.u32()?)?,
            _ => return Err(NOT_ALLOWED),
        }
    }
    Ok((p, will_delay))
}

/// Writes the properties that `ctx` allows, skipping the others, so that
/// the output is always a valid block for its packet.
struct FieldWriter<'a, S: Sink> {
    out: &'a mut S,
    ctx: Ctx,
}

impl<S: Sink> FieldWriter<'_, S> {
    fn u8(&mut self, id: u8, value: Option<u8>) {
        if let Some(v) = value.filter(|_| self.ctx.allows(id)) {
            self.out.put_u8(id);
            self.out.put_u8(v);
        }
    }

    fn u16(&mut self, id: u8, value: Option<u16>) {
        if let Some(v) = value.filter(|_| self.ctx.allows(id)) {
            self.out.put_u8(id);
            self.out.put_u16(v);
        }
    }

    fn u32(&mut self, id: u8, value: Option<u32>) {
        if let Some(v) = value.filter(|_| self.ctx.allows(id)) {
            self.out.put_u8(id);
            self.out.put_u32(v);
        }
    }

    fn varint(&mut self, id: u8, value: u32) -> Result<(), EncodeError> {
        if self.ctx.allows(id) {
            if value as usize > MAX_VARINT {
                return Err(EncodeError::VarIntTooLarge { value });
            }
            self.out.put_u8(id);
            put_varint(self.out, value as usize)?;
        }
        Ok(())
    }

    fn binary(&mut self, id: u8, value: Option<&[u8]>) -> Result<(), EncodeError> {
        match value.filter(|_| self.ctx.allows(id)) {
            Some(v) => {
                self.out.put_u8(id);
                put_binary(self.out, v)
            }
            None => Ok(()),
        }
    }

    fn string(&mut self, id: u8, value: Option<&String>) -> Result<(), EncodeError> {
        self.binary(id, value.map(String::as_bytes))
    }

    fn user_properties(&mut self, pairs: &[(String, String)]) -> Result<(), EncodeError> {
        for (name, value) in pairs {
            self.out.put_u8(USER_PROPERTY);
            put_string(self.out, name)?;
            put_string(self.out, value)?;
        }
        Ok(())
    }
}

fn put_fields(out: &mut impl Sink, p: &Properties, ctx: Ctx) -> Result<(), EncodeError> {
    let mut w = FieldWriter { out, ctx };
    if let Some(id) = p.subscription_identifier {
        w.varint(SUBSCRIPTION_IDENTIFIER, id)?;
    }
    w.u32(SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    w.string(
        ASSIGNED_CLIENT_IDENTIFIER,
        p.assigned_client_identifier.as_ref(),
    )?;
    w.u16(SERVER_KEEP_ALIVE, p.server_keep_alive);
    w.string(AUTHENTICATION_METHOD, p.authentication_method.as_ref())?;
    w.binary(AUTHENTICATION_DATA, p.authentication_data.as_deref())?;
    w.u8(REQUEST_PROBLEM_INFORMATION, p.request_problem_information);
    w.u8(REQUEST_RESPONSE_INFORMATION, p.request_response_information);
    w.string(RESPONSE_INFORMATION, p.response_information.as_ref())?;
    w.string(SERVER_REFERENCE, p.server_reference.as_ref())?;
    w.string(REASON_STRING, p.reason_string.as_ref())?;
    w.u16(RECEIVE_MAXIMUM, p.receive_maximum);
    w.u16(TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    w.u8(MAXIMUM_QOS, p.maximum_qos);
    w.u8(RETAIN_AVAILABLE, p.retain_available);
    w.u32(MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    w.u8(
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    w.u8(
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    w.u8(
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    w.user_properties(&p.user_properties)
}

fn put_publish_fields(
    out: &mut impl Sink,
    p: &PublishProperties,
    will_delay: Option<u32>,
    ctx: Ctx,
) -> Result<(), EncodeError> {
    let mut w = FieldWriter { out, ctx };
    w.u8(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    w.u32(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    w.string(CONTENT_TYPE, p.content_type.as_ref())?;
    w.string(RESPONSE_TOPIC, p.response_topic.as_ref())?;
    w.binary(CORRELATION_DATA, p.correlation_data.as_deref())?;
    for &id in &p.subscription_identifiers {
        w.varint(SUBSCRIPTION_IDENTIFIER, id)?;
    }
    w.u16(TOPIC_ALIAS, p.topic_alias);
    w.u32(WILL_DELAY_INTERVAL, will_delay);
    w.user_properties(&p.user_properties)
}

/// Size of the properties of `p` that `ctx` allows, without the length
/// prefix. 0 means the block is empty.
pub(crate) fn properties_len(p: &Properties, ctx: Ctx) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    put_fields(&mut counter, p, ctx)?;
    Ok(counter.0)
}

/// Writes a property block (length, then the properties `ctx` allows).
pub(crate) fn put_properties(
    out: &mut impl Sink,
    p: &Properties,
    ctx: Ctx,
) -> Result<(), EncodeError> {
    put_varint(out, properties_len(p, ctx)?)?;
    put_fields(out, p, ctx)
}

/// Writes the property block of a PUBLISH or, with `will_delay`, a will.
pub(crate) fn put_publish_properties(
    out: &mut impl Sink,
    p: &PublishProperties,
    will_delay: Option<u32>,
    ctx: Ctx,
) -> Result<(), EncodeError> {
    let mut counter = Counter::default();
    put_publish_fields(&mut counter, p, will_delay, ctx)?;
    put_varint(out, counter.0)?;
    put_publish_fields(out, p, will_delay, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn read(bytes: &'static [u8], ctx: Ctx) -> Result<Properties, DecodeError> {
        read_properties(&mut Reader::new(Bytes::from_static(bytes)), ctx)
    }

    fn read_publish(
        bytes: &'static [u8],
        ctx: Ctx,
    ) -> Result<(PublishProperties, Option<u32>), DecodeError> {
        read_publish_properties(&mut Reader::new(Bytes::from_static(bytes)), ctx)
    }

    #[test]
    fn table_2_4_spot_checks() {
        assert!(Ctx::CONNECT.allows(SESSION_EXPIRY_INTERVAL));
        assert!(Ctx::DISCONNECT.allows(SESSION_EXPIRY_INTERVAL));
        assert!(!Ctx::PUB_RESPONSE.allows(SESSION_EXPIRY_INTERVAL));
        assert!(Ctx::WILL.allows(WILL_DELAY_INTERVAL));
        assert!(!Ctx::PUBLISH.allows(WILL_DELAY_INTERVAL));
        assert!(Ctx::PUBLISH.allows(TOPIC_ALIAS));
        assert!(!Ctx::WILL.allows(TOPIC_ALIAS));
        assert!(!Ctx::CONNECT.allows(REASON_STRING));
        assert!(Ctx::AUTH.allows(REASON_STRING));
        assert!(Ctx::UNSUBSCRIBE.allows(USER_PROPERTY));
        assert!(!Ctx::UNSUBSCRIBE.allows(SUBSCRIPTION_IDENTIFIER));
        assert!(!Ctx::ALL.allows(0x14));
    }

    #[test]
    fn reads_connect_properties() {
        // Session expiry 10, receive maximum 20, user property a=b.
        let p = read(
            &[
                15, 0x11, 0, 0, 0, 10, 0x21, 0, 20, 0x26, 0, 1, b'a', 0, 1, b'b',
            ],
            Ctx::CONNECT,
        )
        .unwrap();
        assert_eq!(p.session_expiry_interval, Some(10));
        assert_eq!(p.receive_maximum, Some(20));
        assert_eq!(p.user_properties, vec![("a".into(), "b".into())]);
    }

    #[test]
    fn duplicate_property_is_a_protocol_error() {
        assert!(matches!(
            read(&[10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], Ctx::CONNECT),
            Err(DecodeError::ProtocolError(_))
        ));
        // User properties may repeat.
        let p = read(
            &[12, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0],
            Ctx::CONNECT,
        )
        .unwrap();
        assert_eq!(p.user_properties.len(), 2);
    }

    #[test]
    fn property_in_the_wrong_packet_is_a_protocol_error() {
        // Server keep alive is CONNACK only.
        assert!(matches!(
            read(&[3, 0x13, 0, 5], Ctx::CONNECT),
            Err(DecodeError::ProtocolError(_))
        ));
        // Topic alias is not allowed in a will.
        assert!(matches!(
            read_publish(&[3, 0x23, 0, 1], Ctx::WILL),
            Err(DecodeError::ProtocolError(_))
        ));
    }

    #[test]
    fn unknown_property_is_malformed() {
        assert!(matches!(
            read(&[2, 0x14, 0], Ctx::CONNECT),
            Err(DecodeError::MalformedPacket(_))
        ));
    }

    #[test]
    fn block_longer_than_packet_or_cut_value_is_malformed() {
        assert!(matches!(
            read(&[9, 0x11, 0, 0, 0, 1], Ctx::CONNECT),
            Err(DecodeError::MalformedPacket(_))
        ));
        assert!(matches!(
            read(&[3, 0x11, 0, 0], Ctx::CONNECT),
            Err(DecodeError::MalformedPacket(_))
        ));
    }

    #[test]
    fn zero_values_that_are_protocol_errors() {
        for bytes in [
            &[3u8, 0x21, 0, 0][..],     // receive maximum 0
            &[5, 0x27, 0, 0, 0, 0][..], // maximum packet size 0
        ] {
            let r = read_properties(
                &mut Reader::new(Bytes::copy_from_slice(bytes)),
                Ctx::CONNECT,
            );
            assert!(matches!(r, Err(DecodeError::ProtocolError(_))), "{bytes:?}");
        }
        assert!(matches!(
            read(&[2, 0x0B, 0], Ctx::SUBSCRIBE),
            Err(DecodeError::ProtocolError(_))
        ));
        assert!(matches!(
            read_publish(&[2, 0x0B, 0], Ctx::PUBLISH),
            Err(DecodeError::ProtocolError(_))
        ));
        // Topic alias 0 decodes; the connection answers it with 0x94.
        assert_eq!(
            read_publish(&[3, 0x23, 0, 0], Ctx::PUBLISH)
                .ok()
                .and_then(|(p, _)| p.topic_alias),
            Some(0)
        );
        assert!(matches!(
            read(&[2, 0x17, 2], Ctx::CONNECT),
            Err(DecodeError::ProtocolError(_))
        ));
    }

    #[test]
    fn publish_properties_and_will_delay() {
        let (p, delay) = read_publish(
            &[
                15, 0x01, 1, 0x0B, 0x80, 0x01, 0x0B, 5, 0x02, 0, 0, 0, 60, 0x03, 0, 0,
            ],
            Ctx::PUBLISH,
        )
        .unwrap();
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.subscription_identifiers, vec![128, 5]);
        assert_eq!(p.message_expiry_interval, Some(60));
        assert_eq!(p.content_type.as_deref(), Some(""));
        assert_eq!(delay, None);

        let (_, delay) = read_publish(&[5, 0x18, 0, 0, 0, 30], Ctx::WILL).unwrap();
        assert_eq!(delay, Some(30));
    }

    #[test]
    fn writer_skips_properties_the_packet_does_not_allow() {
        let p = Properties {
            server_keep_alive: Some(5),
            reason_string: Some("x".into()),
            ..Properties::default()
        };
        let mut buf = BytesMut::new();
        put_properties(&mut buf, &p, Ctx::PUB_RESPONSE).unwrap();
        assert_eq!(&buf[..], &[4, 0x1F, 0, 1, b'x']);
        assert_eq!(properties_len(&p, Ctx::CONNECT).unwrap(), 0);
    }

    #[test]
    fn oversized_subscription_identifier_cannot_be_encoded() {
        let p = Properties {
            subscription_identifier: Some(268_435_456),
            ..Properties::default()
        };
        assert_eq!(
            properties_len(&p, Ctx::SUBSCRIBE),
            Err(EncodeError::VarIntTooLarge { value: 268_435_456 })
        );
    }
}
