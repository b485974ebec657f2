//! MQTT wire format: the packet model ([`packet`]) and its decoder and
//! encoder for MQTT 3.1, 3.1.1 and 5.0.
//!
//! - [`decode()`] takes one packet from the front of a receive buffer, checking
//!   the normative well-formedness rules of the specifications.
//! - [`encode()`] writes a packet for the connection's protocol version,
//!   mapping 5.0 reason codes and dropping properties for 3.x.
//! - [`encoded_len`] tells the size of the encoding without writing it (for
//!   the peer's Maximum Packet Size).

mod decode;
mod encode;
mod error;
pub mod packet;
mod properties;
mod wire;

#[cfg(test)]
mod tests;

pub use decode::{decode, short_puback};
pub use encode::{encode, encode_publish, encoded_len, PublishRef};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
