//! On what terms a client is let in: authentication, quotas, client id,
//! session expiry and keep-alive, and the CONNACK's properties. Nothing
//! is attached here (`connect` does that).

use std::sync::Arc;
use std::time::SystemTime;

use crate::access::UserSlot;
use crate::auth::UserQuotas;
use crate::broker::{Broker, ClientKey};
use crate::client::{ClientHandle, ClientInfo};
use crate::codec::{Connect, Properties, ProtocolVersion, ReasonCode};

use super::login::{login, Login};
use super::refusal::Refusal;
use super::Peer;

/// What the CONNECT negotiated, when the client is let in: the terms its
/// session is attached on.
pub(super) struct Terms {
    pub(super) connection_id: u64,
    pub(super) client: Arc<ClientHandle>,
    pub(super) client_id: ClientKey,
    /// The CONNACK's properties (5.0).
    pub(super) properties: Properties,
    pub(super) expiry: u32,
    pub(super) keep_alive: u16,
    pub(super) quotas: UserQuotas,
    pub(super) user_slot: Option<UserSlot>,
}

/// Decides whether the client is let in and on what terms:
/// authentication, quotas, client id, keep-alive. Nothing is attached.
pub(super) async fn negotiate(
    broker: &Arc<Broker>,
    peer: &Peer,
    connect: &Connect,
) -> Result<Terms, Refusal> {
    let version = connect.protocol;
    let limits = &peer.limits;

    // Enhanced authentication is not configured on this broker.
    if version.is_v5() && connect.properties.authentication_method.is_some() {
        return Err(Refusal::not_authorised(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "",
        ));
    }

    let Login {
        device,
        username,
        cert_authenticated,
        quotas,
        user_slot,
    } = login(broker, peer, connect).await?;

    let mut assigned = None;
    let client_id: ClientKey = if connect.client_id.is_empty() {
        let allowed = match version {
            ProtocolVersion::V5 => true,
            ProtocolVersion::V311 => connect.clean_start,
            ProtocolVersion::V31 => false,
        };
        if !allowed {
            return Err(Refusal::protocol(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "",
                None,
                "empty client id",
            ));
        }
        let id = generate_client_id(broker);
        assigned = Some(id.clone());
        Arc::from(id.as_str())
    } else {
        if connect.client_id.len() > usize::from(limits.max_client_id_len) {
            return Err(Refusal::protocol(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client identifier too long",
                Some(&connect.client_id),
                "client id too long",
            ));
        }
        Arc::from(connect.client_id.as_str())
    };

    // Session expiry: 3.1.1 clean session false means "never expires".
    let requested_expiry = match version {
        ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => u32::MAX,
    };
    let expiry = requested_expiry.min(limits.max_session_expiry);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    // Keepalive 0 ("never") is fine unless an upper bound is configured.
    let too_long =
        keep_alive > limits.max_keepalive || (keep_alive == 0 && limits.max_keepalive < u16::MAX);
    if too_long && version.is_v5() {
        keep_alive = limits.max_keepalive;
        server_keep_alive = Some(keep_alive);
    } else if too_long && keep_alive != 0 {
        // 3.x cannot be told another value; mosquitto refuses the same way.
        return Err(Refusal::protocol(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "",
            Some(&connect.client_id),
            "keepalive too long",
        ));
    }

    let client = Arc::new(ClientHandle::new(ClientInfo {
        address: peer.addr,
        username: username.as_deref().map(Arc::from),
        cert_authenticated,
        protocol: version,
        keep_alive,
        listener: peer.listener.clone(),
        connected_at: SystemTime::now(),
        fleet: device.map(Arc::new),
    }));
    let mut properties = Properties::default();
    if version.is_v5() {
        if expiry != requested_expiry {
            properties.session_expiry_interval = Some(expiry);
        }
        if limits.receive_maximum != u16::MAX {
            properties.receive_maximum = Some(limits.receive_maximum);
        }
        properties.maximum_packet_size = Some(limits.max_packet_size);
        if limits.topic_alias_maximum > 0 {
            properties.topic_alias_maximum = Some(limits.topic_alias_maximum);
        }
        properties.assigned_client_identifier = assigned;
        properties.server_keep_alive = server_keep_alive;
    }
    Ok(Terms {
        connection_id: broker.next_connection_id(),
        client,
        client_id,
        properties,
        expiry,
        keep_alive,
        quotas,
        user_slot,
    })
}

/// An identifier for a client that sent an empty one (`auto-` and 32 hex
/// digits, like mosquitto's).
fn generate_client_id(broker: &Broker) -> String {
    use std::hash::{BuildHasher, Hasher};
    let seed = ahash::RandomState::new();
    let mut h1 = seed.build_hasher();
    h1.write_u64(broker.next_connection_id());
    let mut h2 = seed.build_hasher();
    h2.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("auto-{:016x}{:016x}", h1.finish(), h2.finish())
}
