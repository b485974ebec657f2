//! What sits between a listening socket and the MQTT protocol: PROXY
//! protocol headers, TLS, and WebSocket framing.

pub mod proxy;
pub mod tls;
pub mod ws;
