//! Errors of the decoder and the encoder.

use super::packet::{ProtocolVersion, ReasonCode};

/// Why bytes received from a peer could not be turned into a [`Packet`].
///
/// Every variant is fatal for the connection. [`DecodeError::reason_code`]
/// gives the MQTT 5.0 reason code to put in the CONNACK or DISCONNECT that
/// closes it.
///
/// [`Packet`]: super::Packet
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the wire format (MQTT 5.0 "Malformed Packet").
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The packet is well formed but breaks a protocol rule (MQTT 5.0
    /// "Protocol Error").
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// CONNECT with a protocol name or level this broker does not speak.
    #[error("unsupported protocol version (level {level})")]
    UnsupportedProtocolVersion {
        /// The protocol level byte of the CONNECT.
        level: u8,
    },
    /// The fixed header announces a packet larger than the configured limit.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total size of the packet, fixed header included.
        size: u32,
        /// The limit that was passed to [`decode`](fn@super::decode).
        max: u32,
    },
    /// The first packet of a connection was not a CONNECT.
    #[error("expected CONNECT as the first packet")]
    ExpectedConnect,
    /// A PUBLISH (or will) topic name that is empty or holds a wildcard.
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
}

impl DecodeError {
    /// The MQTT 5.0 reason code that reports this error to the peer.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::MalformedPacket(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::ProtocolError(_) | DecodeError::ExpectedConnect => {
                ReasonCode::PROTOCOL_ERROR
            }
            DecodeError::UnsupportedProtocolVersion { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}

/// Why a [`Packet`](super::Packet) could not be written for a protocol
/// version. On error nothing has been written to the buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field longer than its 16-bit length prefix allows.
    #[error("field of {len} bytes is longer than 65535 bytes")]
    StringTooLong {
        /// Length of the field in bytes.
        len: usize,
    },
    /// The packet (or a property block inside it) needs a remaining length
    /// beyond the 268435455 bytes a variable byte integer can carry.
    #[error("packet body of {size} bytes exceeds 268435455 bytes")]
    PacketTooLarge {
        /// Size in bytes of the part that did not fit.
        size: usize,
    },
    /// A subscription identifier beyond 268435455.
    #[error("value {value} does not fit a variable byte integer")]
    VarIntTooLarge {
        /// The value that did not fit.
        value: u32,
    },
    /// The packet type does not exist in that protocol version (AUTH in 3.x).
    #[error("{packet} cannot be sent with {version:?}")]
    NotInVersion {
        /// Packet type name, e.g. `AUTH`.
        packet: &'static str,
        /// The version it was to be encoded for.
        version: ProtocolVersion,
    },
    /// The packet breaks a rule of the model that the wire format depends on.
    #[error("invalid packet: {0}")]
    InvalidPacket(&'static str),
}
