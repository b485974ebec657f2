//! A refused CONNECT: what the client is told, what is logged, and the
//! single exit that sends it ([`Refusal::send`]).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::broker::Broker;
use crate::codec::{self, Connack, Packet, Properties, ProtocolVersion, ReasonCode};

use super::io::Io;
use super::Peer;

/// Why a CONNECT is refused: what the client is told, and what is logged.
pub(super) struct Refusal {
    pub(super) reason: ReasonCode,
    /// The 5.0 reason string; empty for none.
    pub(super) text: &'static str,
    pub(super) log: RefusalLog,
}

/// The log line of a refusal, in mosquitto's words.
pub(super) enum RefusalLog {
    /// "Client `<addr>` not authorised" (bad credentials, quotas).
    NotAuthorised,
    /// A protocol error: the client id when there is one, and why.
    Protocol(Option<String>, &'static str),
    /// The broker could not keep the session (already logged as an error).
    Unavailable,
}

impl Refusal {
    pub(super) fn not_authorised(reason: ReasonCode, text: &'static str) -> Refusal {
        Refusal {
            reason,
            text,
            log: RefusalLog::NotAuthorised,
        }
    }

    pub(super) fn protocol(
        reason: ReasonCode,
        text: &'static str,
        client_id: Option<&str>,
        why: &'static str,
    ) -> Refusal {
        Refusal {
            reason,
            text,
            log: RefusalLog::Protocol(client_id.map(str::to_string), why),
        }
    }

    /// The single exit of a refused CONNECT: CONNACK with the reason, the
    /// log line, and a close the client can read the CONNACK through.
    pub(super) async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        broker: &Broker,
        io: &mut Io<S>,
        peer: &Peer,
        version: ProtocolVersion,
    ) {
        let mut properties = Properties::default();
        if version.is_v5() && !self.text.is_empty() {
            properties.reason_string = Some(self.text.to_string());
        }
        let connack = Packet::Connack(Connack {
            session_present: false,
            reason: self.reason,
            properties,
        });
        // mosquitto names a refused client by its address.
        broker.logger.sending(&peer.addr.ip().to_string(), &connack);
        let _ = codec::encode(&connack, version, &mut io.wbuf);
        match self.log {
            RefusalLog::NotAuthorised => broker.logger.not_authorised(None),
            RefusalLog::Protocol(client_id, why) => {
                broker.logger.protocol_error(client_id.as_deref(), why)
            }
            RefusalLog::Unavailable => {}
        }
        io.finish_lingering().await;
    }
}
