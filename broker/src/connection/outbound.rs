//! Deliveries to the client: from the session's queue into the write
//! buffer, as far as the in-flight window and the buffer's high-water mark
//! allow, with 5.0 topic aliases and the client's Maximum Packet Size.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{self, Packet, PubResponse, Publish, PublishProperties, PublishRef, ReasonCode};
use crate::queue::DropReason;
use crate::session::{Delivery, SessionFlags};
use crate::store::Record;

use super::{Connection, WRITE_HIGH_WATER};

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// Re-sends, after a reconnect, what was in flight: PUBLISH with DUP for
    /// unacknowledged messages, PUBREL for QoS 2 messages already received.
    pub(super) fn resend_inflight(&mut self) {
        // Everything in flight goes now, those restored late included.
        {
            let mut state = self.session.state.lock();
            state.flags.set(SessionFlags::RESTORED_INFLIGHT, false);
            let _ = state.inflight.take_restored();
        }
        let inflight = self.session.inflight_in_send_order();
        self.resend(inflight);
    }

    /// Sends in-flight deliveries again: PUBLISH with DUP, or PUBREL for
    /// those released.
    fn resend(&mut self, inflight: Vec<(u16, Delivery, bool)>) {
        for (packet_id, delivery, released) in inflight {
            if released {
                self.send(&Packet::Pubrel(PubResponse::new(
                    packet_id,
                    ReasonCode::SUCCESS,
                )));
            } else {
                let publish = self.build_publish(&delivery, Some(packet_id), true, Instant::now());
                self.send(&Packet::Publish(publish));
                self.broker.metrics.sent(delivery.qos);
            }
        }
    }

    /// Moves queued deliveries into the write buffer as far as the in-flight
    /// window and the buffer's high-water mark allow.
    pub(super) fn pull_queue(&mut self) {
        let restored = {
            let mut state = self.session.state.lock();
            if state.flags.take(SessionFlags::RESTORED_INFLIGHT) {
                state.inflight.take_restored()
            } else {
                Vec::new()
            }
        };
        if !restored.is_empty() {
            let restored = restored
                .into_iter()
                .map(|(id, inflight)| (id, inflight.delivery, inflight.released))
                .collect();
            self.resend(restored);
        }
        let now = Instant::now();
        let mut records = Vec::new();
        let mut expired = Vec::new();
        // Counted here and added to the shared metrics once per call: each
        // shared update is several atomic operations (5 % of the broker's
        // time when it did them per delivery).
        let mut sent = [0u64; 3];
        let mut latency: Option<prometheus::local::LocalHistogram> = None;
        while self.io.wbuf.len() < WRITE_HIGH_WATER {
            let next = self.session.state.lock().next_to_send(
                usize::from(self.window),
                now,
                &self.broker.budget,
                &mut expired,
            );
            let Some((packet_id, delivery)) = next else {
                break;
            };
            if !self.write_delivery(&delivery, packet_id, now) {
                // Too large for this client: discard as if delivered.
                let log_due = {
                    let mut state = self.session.state.lock();
                    if let Some(id) = packet_id {
                        state.complete(id);
                    }
                    let limits = state
                        .queue_limits
                        .unwrap_or_else(|| self.broker.queue_limits());
                    state.queue.note_drop(now, &limits)
                };
                self.broker
                    .dropped(&self.session.client_id, DropReason::TooLarge, log_due);
                if delivery.seq != 0 {
                    expired.push(delivery.seq);
                }
                continue;
            }
            if let (Some(id), true) = (packet_id, delivery.seq != 0) {
                records.push(Record::Inflight {
                    client_id: self.session.client_id.to_string(),
                    seq: delivery.seq,
                    packet_id: id,
                });
            }
            sent[delivery.qos as usize] += 1;
            latency
                .get_or_insert_with(|| self.broker.metrics.delivery_latency.local())
                .observe(
                    now.saturating_duration_since(delivery.msg.received_at)
                        .as_secs_f64(),
                );
        }
        self.broker.metrics.sent_many(&sent);
        if let Some(latency) = latency {
            latency.flush();
        }
        for seq in expired {
            records.push(Record::Dequeue {
                client_id: self.session.client_id.to_string(),
                seq,
            });
        }
        self.broker.persist_nowait(records);
    }

    /// Encodes a delivery into the write buffer; false (and nothing
    /// written) when it exceeds the client's 5.0 Maximum Packet Size.
    fn write_delivery(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        now: Instant,
    ) -> bool {
        if self.version.is_v5() || self.broker.logger.verbose() {
            let packet = Packet::Publish(self.build_publish(delivery, packet_id, false, now));
            if self.version.is_v5()
                && codec::encoded_len(&packet, self.version) > self.client_max_packet as usize
            {
                return false;
            }
            self.send(&packet);
            return true;
        }
        // MQTT 3.x carries no properties: the PUBLISH is encoded straight
        // from the message, without building a packet.
        let msg = &delivery.msg;
        let publish = PublishRef {
            dup: false,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &msg.topic,
            packet_id,
            properties: &PublishProperties::default(),
            payload: &msg.payload,
        };
        if let Err(e) = codec::encode_publish(&publish, self.version, &mut self.io.wbuf) {
            self.encode_failed("PUBLISH", &e);
        }
        true
    }

    fn build_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: Instant,
    ) -> Publish {
        let msg = &delivery.msg;
        let mut topic = msg.topic.clone();
        let mut properties = PublishProperties::default();
        if self.version.is_v5() {
            properties = msg.properties.clone();
            properties.subscription_identifiers = delivery.subscription_identifiers.clone();
            properties.message_expiry_interval = msg.remaining_expiry(now);
            if self.client_alias_max > 0 {
                let outbound = &mut self.aliases.get_or_insert_with(Box::default).outbound;
                if let Some(alias) = outbound.get(&msg.topic) {
                    properties.topic_alias = Some(*alias);
                    topic = Arc::from("");
                } else if outbound.len() < usize::from(self.client_alias_max) {
                    let alias = (outbound.len() + 1) as u16;
                    outbound.insert(msg.topic.clone(), alias);
                    properties.topic_alias = Some(alias);
                }
            }
        }
        Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties,
            payload: msg.payload.clone(),
        }
    }

    /// Encodes a packet into the write buffer.
    pub(super) fn send(&mut self, packet: &Packet) {
        if self.broker.logger.verbose() {
            self.broker.logger.sending(&self.session.client_id, packet);
        }
        if let Err(e) = codec::encode(packet, self.version, &mut self.io.wbuf) {
            self.encode_failed(packet.name(), &e);
        }
    }

    fn encode_failed(&self, packet: &str, e: &codec::EncodeError) {
        self.broker.logger.warning(&format!(
            "Cannot encode {packet} for {}: {e}.",
            self.session.client_id
        ));
    }
}
