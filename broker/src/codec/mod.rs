//! MQTT wire format: the packet model ([`packet`]) and its decoder and encoder.

pub mod packet;

pub use packet::*;
