//! How a connection ends: why ([`Close`]), its will, its session let go,
//! and the last packet, which the client gets to read.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::Control;
use crate::codec::{Disconnect, Packet, Properties, ReasonCode};

use super::Connection;

/// Why a connection ends.
#[derive(Debug)]
pub(super) enum Close {
    /// DISCONNECT received; `with_will` for 5.0 reason 0x04.
    ClientDisconnect {
        with_will: bool,
    },
    /// The peer closed the socket without DISCONNECT.
    Eof,
    SocketError(std::io::Error),
    KeepAlive,
    /// We close because the client broke the protocol.
    Protocol(ReasonCode, String),
    TakenOver(tokio::sync::oneshot::Sender<()>),
    /// The session no longer lists this connection (a takeover that timed out).
    Detached,
    /// Administrative disconnect.
    Server(ReasonCode),
    Shutdown,
    /// Sent to another node of the cluster.
    Relocate,
    /// Taken over by another node while this one was cut off.
    ClaimedElsewhere,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// Ends the connection: logs why, tells a 5.0 client why, publishes the
    /// will when due, detaches from the session, and closes the socket.
    pub(super) async fn close(mut self, close: Close) {
        self.client.mailbox.close();
        self.end_pause();
        if let Some(keep_alive) = &self.keep_alive {
            self.broker
                .keep_alive
                .cancel(keep_alive.registration, &self.client);
        }
        let reason_label = close.label();
        let mut publish_will = true;
        let mut ack = None;
        // Whether the client is sent a DISCONNECT that says why.
        let told_why = match close {
            Close::ClientDisconnect { with_will } => {
                publish_will = with_will;
                self.broker.logger.disconnected(&self.session.client_id);
                false
            }
            Close::Eof => {
                self.broker
                    .logger
                    .connection_closed(Some(&self.session.client_id));
                false
            }
            Close::SocketError(e) => {
                self.broker
                    .logger
                    .socket_error(Some(&self.session.client_id), &e);
                false
            }
            Close::KeepAlive => {
                self.broker
                    .logger
                    .keepalive_timeout(&self.session.client_id);
                self.disconnect_v5(ReasonCode::KEEP_ALIVE_TIMEOUT, None)
            }
            Close::Protocol(reason, text) => {
                let id = Some(&*self.session.client_id);
                match reason {
                    ReasonCode::MALFORMED_PACKET => self.broker.logger.malformed_packet(id, &text),
                    ReasonCode::PACKET_TOO_LARGE => {
                        self.broker
                            .metrics
                            .quota_refusals
                            .with_label_values(&["packet_size"])
                            .inc();
                        self.broker.logger.oversize_packet(id)
                    }
                    _ => self.broker.logger.protocol_error(id, &text),
                }
                self.disconnect_v5(reason, Some(text))
            }
            Close::TakenOver(tx) => {
                ack = Some(tx);
                self.disconnect_v5(ReasonCode::SESSION_TAKEN_OVER, None)
            }
            Close::Detached => self.disconnect_v5(ReasonCode::SESSION_TAKEN_OVER, None),
            // Whoever closed it logged why (a removed user, the admin
            // API, a slow subscriber); mosquitto's `Client X disconnected.`
            // is for a client's own DISCONNECT.
            Close::Server(reason) => self.disconnect_v5(reason, None),
            Close::Shutdown => {
                publish_will = false;
                self.disconnect_v5(ReasonCode::SERVER_SHUTTING_DOWN, None)
            }
            Close::Relocate => {
                publish_will = false;
                self.broker.logger.info(&format!(
                    "Client {} sent to another node.",
                    self.session.client_id
                ));
                self.disconnect_v5(ReasonCode::USE_ANOTHER_SERVER, None)
            }
            Close::ClaimedElsewhere => {
                // The node that took it over published the will.
                publish_will = false;
                self.broker.logger.warning(&format!(
                    "Client {} disconnected: another node took it over while this one was cut off from the cluster.",
                    self.session.client_id
                ));
                self.disconnect_v5(ReasonCode::SESSION_TAKEN_OVER, None)
            }
        };
        let mut will = if publish_will {
            self.will.take().map(|w| *w)
        } else {
            None
        };
        if let Some(w) = &will {
            if w.topic.starts_with("$SYS") || !self.client_acl().can_publish(&w.topic) {
                self.broker
                    .metrics
                    .acl_denials
                    .with_label_values(&["will"])
                    .inc();
                will = None;
            }
        }
        self.broker.detach(&self.session, self.id, will);
        self.broker.presence(
            &self.session.client_id,
            &self.client.info,
            "disconnected",
            reason_label,
        );
        self.broker
            .metrics
            .client_disconnected(&self.client.info.listener);
        if let Some(tx) = ack {
            let _ = tx.send(());
        }
        if told_why {
            self.io.finish_lingering().await;
        } else {
            self.io.finish().await;
        }
    }

    /// Server-initiated DISCONNECT (5.0 only; 3.x connections just close).
    /// Returns whether one was written.
    pub(super) fn disconnect_v5(&mut self, reason: ReasonCode, text: Option<String>) -> bool {
        if !self.version.is_v5() {
            return false;
        }
        let mut properties = Properties::default();
        if self.problem_info {
            properties.reason_string = text;
        }
        self.send(&Packet::Disconnect(Disconnect { reason, properties }));
        true
    }
}

impl From<Control> for Close {
    /// Every control message ends the connection.
    fn from(control: Control) -> Close {
        match control {
            Control::TakenOver(ack) => Close::TakenOver(ack),
            Control::Disconnect(reason) => Close::Server(reason),
            Control::Shutdown => Close::Shutdown,
            Control::Relocate => Close::Relocate,
            Control::Detached => Close::Detached,
            Control::ClaimedElsewhere => Close::ClaimedElsewhere,
        }
    }
}

impl Close {
    /// A short name for presence events and metrics.
    fn label(&self) -> &'static str {
        match self {
            Close::ClientDisconnect { .. } => "normal",
            Close::Eof => "closed",
            Close::SocketError(_) => "socket_error",
            Close::KeepAlive => "keepalive_timeout",
            Close::Protocol(..) => "protocol_error",
            Close::TakenOver(_) | Close::Detached | Close::ClaimedElsewhere => "taken_over",
            Close::Server(_) => "kicked",
            Close::Shutdown => "shutdown",
            Close::Relocate => "relocated",
        }
    }
}

pub(super) fn protocol_error(text: &str) -> Close {
    Close::Protocol(ReasonCode::PROTOCOL_ERROR, text.to_string())
}
