//! The packets a client sends: one handler each.

use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::fleet::TopicAction;
use crate::auth::ClientAcl;
use crate::broker::{Broker, PublishError, Publisher};
use crate::client::ClientHandle;
use crate::cluster::Stored;
use crate::codec::{
    self, Disconnect, Packet, Properties, PubResponse, Publish, QoS, ReasonCode, Suback, Subscribe,
    Unsuback, Unsubscribe,
};
use crate::config::RateLimitAction;
use crate::message::Message;
use crate::queue::QueueLimits;
use crate::session::{Acked, DeliveryFlags, InboundQos2};
use crate::store::Record;
use crate::topic;

use super::close::{protocol_error, Close};
use super::Connection;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<S> {
    /// Decodes and handles every complete packet in the read buffer. In a
    /// cluster, the acknowledgements of the batch's PUBLISHes wait until
    /// JetStream stored them, all together, in order.
    pub(super) async fn handle_input(&mut self) -> Result<(), Close> {
        let mut acks = Acks::default();
        let result = self.handle_batch(&mut acks).await;
        // Acknowledged means stored; a closing connection acknowledges
        // nothing more (the client sends those messages again).
        result?;
        self.send_acks(acks).await
    }

    async fn handle_batch(&mut self, acks: &mut Acks) -> Result<(), Close> {
        let max = self.max_inbound_packet;
        // One clock read per batch of packets read together.
        let mut stamped = false;
        loop {
            // Packets held while paused go first once the pause is over.
            if let Some(packet) = self.take_held() {
                self.handle_packet(packet, acks).await?;
                continue;
            }
            // The most frequent packet under QoS 1 load, handled without
            // building a `Packet` (unless every packet is being logged).
            if let Some(packet_id) =
                codec::short_puback(&self.io.rbuf).filter(|_| !self.broker.logger.verbose())
            {
                self.io.rbuf.advance(4);
                if !stamped {
                    self.last_packet = Instant::now();
                    stamped = true;
                }
                self.on_complete(packet_id, QoS::AtLeastOnce);
                continue;
            }
            let buffered = self.io.rbuf.len();
            let packet = match codec::decode(&mut self.io.rbuf, Some(self.version), max) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Close::Protocol(e.reason_code(), e.to_string())),
            };
            if !stamped {
                self.last_packet = Instant::now();
                stamped = true;
            }
            if self.broker.logger.verbose() {
                self.broker
                    .logger
                    .received(&self.session.client_id, &packet);
            }
            if self.is_paused() && !handled_while_paused(&packet) {
                self.hold_packet(packet, buffered - self.io.rbuf.len());
                continue;
            }
            self.handle_packet(packet, acks).await?;
        }
    }

    /// Sends the batch's acknowledgements, in order, each once what it
    /// acknowledges is stored. A message the cluster could not store is
    /// refused: 5.0 clients get its reason, 3.x connections close.
    async fn send_acks(&mut self, acks: Acks) -> Result<(), Close> {
        for (packet, stored) in acks.pending {
            let refused = match stored {
                Some(stored) => stored.wait().await.err(),
                None => None,
            };
            let packet = match (refused, packet) {
                (None, packet) => packet,
                (Some(e), _) if !self.version.is_v5() => {
                    self.broker
                        .logger
                        .error(&format!("Error persisting message: {e}."));
                    return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
                }
                (Some(e), Packet::Puback(r)) => {
                    self.refused(&e);
                    Packet::Puback(PubResponse::new(r.packet_id, ReasonCode::UNSPECIFIED_ERROR))
                }
                (Some(e), Packet::Pubrec(r)) => {
                    self.refused(&e);
                    // A failed QoS 2 exchange ends here (no PUBREL follows).
                    self.session.abandon_inbound_qos2(r.packet_id);
                    Packet::Pubrec(PubResponse::new(r.packet_id, ReasonCode::UNSPECIFIED_ERROR))
                }
                (Some(_), packet) => packet,
            };
            self.send(&packet);
        }
        Ok(())
    }

    fn refused(&self, e: &impl std::fmt::Display) {
        self.broker.logger.warning(&format!(
            "Message from {} refused: {e}.",
            self.session.client_id
        ));
    }

    async fn handle_packet(&mut self, packet: Packet, acks: &mut Acks) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, acks).await,
            Packet::Puback(r) => {
                self.on_complete(r.packet_id, QoS::AtLeastOnce);
                Ok(())
            }
            Packet::Pubrec(r) => self.on_pubrec(r).await,
            Packet::Pubrel(r) => {
                self.on_pubrel(r);
                Ok(())
            }
            Packet::Pubcomp(r) => {
                self.on_complete(r.packet_id, QoS::ExactlyOnce);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => self.on_unsubscribe(u).await,
            Packet::Pingreq => {
                self.send(&Packet::Pingresp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(_) => Err(protocol_error("AUTH without an authentication method")),
            Packet::Connect(_) => Err(protocol_error("second CONNECT")),
            other => Err(protocol_error(&format!(
                "{} is not sent by clients",
                other.name()
            ))),
        }
    }

    async fn on_publish(&mut self, mut p: Publish, acks: &mut Acks) -> Result<(), Close> {
        self.broker.metrics.received(p.qos);
        self.check_publish_rate().await?;
        let topic = self.resolve_topic(&mut p)?;
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let max = usize::from(self.limits.receive_maximum);
            match self.session.begin_inbound_qos2(packet_id, max) {
                InboundQos2::New => {}
                InboundQos2::Duplicate => {
                    // A retransmission of a message we already have:
                    // acknowledge again, route nothing.
                    acks.push(
                        self,
                        Packet::Pubrec(PubResponse::new(packet_id, ReasonCode::SUCCESS)),
                        None,
                    );
                    return Ok(());
                }
                InboundQos2::OverLimit => {
                    self.broker
                        .metrics
                        .quota_refusals
                        .with_label_values(&["receive_maximum"])
                        .inc();
                    return Err(Close::Protocol(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded".into(),
                    ));
                }
            }
        }
        let qos = p.qos;
        let mut stored = None;
        let reason = if topic.starts_with("$SYS")
            || !self.client_acl().can_publish(&topic)
            || !fleet_allows(
                &self.broker,
                &self.client,
                &self.session.client_id,
                TopicAction::Publish,
                &topic,
            )
            .await
        {
            // Only the broker publishes under $SYS.
            self.broker
                .metrics
                .acl_denials
                .with_label_values(&["publish"])
                .inc();
            ReasonCode::NOT_AUTHORIZED
        } else {
            // Stamped when its batch of packets was read.
            let msg = Arc::new(Message::from_publish(p, topic, self.last_packet));
            let publisher = Publisher {
                client_id: &self.session.client_id,
                client: &self.client,
            };
            match self.broker.publish_pipelined(msg, Some(publisher)).await {
                Ok(routed) if routed.matched == 0 => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                Ok(mut routed) => {
                    // QoS 0 has no acknowledgement to hold back.
                    self.routed |= qos != QoS::AtMostOnce;
                    stored = routed.stored.take();
                    self.pause(routed);
                    ReasonCode::SUCCESS
                }
                Err(PublishError::Cluster(e)) if self.version.is_v5() => {
                    // Refused, not lost: the client may send it again.
                    self.broker.logger.warning(&format!(
                        "Message from {} refused: {e}.",
                        self.session.client_id
                    ));
                    ReasonCode::UNSPECIFIED_ERROR
                }
                Err(e) => {
                    self.broker
                        .logger
                        .error(&format!("Error persisting message: {e}."));
                    // 3.x cannot refuse a PUBLISH: the client sends it again
                    // after reconnecting.
                    return Err(Close::Server(ReasonCode::UNSPECIFIED_ERROR));
                }
            }
        };
        let reason = if self.version.is_v5() {
            reason
        } else {
            ReasonCode::SUCCESS
        };
        match qos {
            QoS::AtMostOnce => {
                // Nothing to acknowledge; stored for others regardless.
                if let Some(stored) = stored {
                    let _ = stored.wait().await;
                }
            }
            QoS::AtLeastOnce => {
                acks.push(
                    self,
                    Packet::Puback(PubResponse::new(packet_id, reason)),
                    stored,
                );
            }
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    // A failed QoS 2 exchange ends here (no PUBREL follows).
                    self.session.abandon_inbound_qos2(packet_id);
                } else if let Some(record) = self.session.inbound_qos2_record(packet_id) {
                    self.persist(vec![record]).await?;
                }
                acks.push(
                    self,
                    Packet::Pubrec(PubResponse::new(packet_id, reason)),
                    stored,
                );
            }
        }
        Ok(())
    }

    /// The client's topic rules, re-resolved after an ACL reload.
    pub(super) fn client_acl(&mut self) -> &ClientAcl {
        self.acl.current(
            &self.broker.access,
            &self.client.info,
            &self.session.client_id,
        )
    }

    /// Applies the publish-rate quota: disconnect, or wait (back-pressure:
    /// nothing is read from the client meanwhile).
    async fn check_publish_rate(&mut self) -> Result<(), Close> {
        let Some(bucket) = &mut self.publish_limit else {
            return Ok(());
        };
        let Err(wait) = bucket.try_take(Instant::now()) else {
            return Ok(());
        };
        self.broker
            .metrics
            .quota_refusals
            .with_label_values(&["publish_rate"])
            .inc();
        match self.limits.publish_rate_action {
            RateLimitAction::Disconnect => Err(Close::Protocol(
                ReasonCode::MESSAGE_RATE_TOO_HIGH,
                "publish rate quota exceeded".into(),
            )),
            RateLimitAction::Throttle => {
                tokio::time::sleep(wait).await;
                let _ = bucket.try_take(Instant::now());
                Ok(())
            }
        }
    }

    /// Applies 5.0 topic aliases and returns the message's topic.
    fn resolve_topic(&mut self, p: &mut Publish) -> Result<Arc<str>, Close> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(Close::Protocol(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "empty topic".into(),
                ));
            }
            return Ok(p.topic.clone());
        };
        let max = self.limits.topic_alias_maximum;
        if alias == 0 || alias > max {
            return Err(Close::Protocol(
                ReasonCode::TOPIC_ALIAS_INVALID,
                format!("topic alias {alias} out of range"),
            ));
        }
        if p.topic.is_empty() {
            match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                Some(topic) => Ok(topic.clone()),
                None => Err(Close::Protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("unknown topic alias {alias}"),
                )),
            }
        } else {
            let topic = p.topic.clone();
            self.aliases
                .get_or_insert_with(Box::default)
                .inbound
                .insert(alias, topic.clone());
            Ok(topic)
        }
    }

    fn on_pubrel(&mut self, r: PubResponse) {
        let reason = match self.session.finish_inbound_qos2(r.packet_id) {
            Acked::Applied(record) => {
                self.broker.persist_nowait(record.into_iter().collect());
                ReasonCode::SUCCESS
            }
            Acked::Unknown if self.version.is_v5() => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            Acked::Unknown => ReasonCode::SUCCESS,
        };
        self.send(&Packet::Pubcomp(PubResponse::new(r.packet_id, reason)));
    }

    async fn on_pubrec(&mut self, r: PubResponse) -> Result<(), Close> {
        if r.reason.is_error() {
            // 5.0: the receiver refused the message; the exchange is over.
            self.on_complete(r.packet_id, QoS::ExactlyOnce);
            return Ok(());
        }
        let reason = match self.session.release_delivery(r.packet_id) {
            Acked::Applied(record) => {
                // Stored before the PUBREL goes out: once the client has
                // seen a PUBREL, a restarted broker must send the PUBREL
                // again, never the PUBLISH ([MQTT-4.4.0-1]).
                if let Some(record) = record {
                    self.persist(vec![record]).await?;
                }
                ReasonCode::SUCCESS
            }
            Acked::Unknown if self.version.is_v5() => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            Acked::Unknown => ReasonCode::SUCCESS,
        };
        self.send(&Packet::Pubrel(PubResponse::new(r.packet_id, reason)));
        Ok(())
    }

    /// PUBACK or PUBCOMP: the outbound delivery is done.
    fn on_complete(&mut self, packet_id: u16, expected: QoS) {
        if let Acked::Applied(Some(record)) = self.session.complete_delivery(packet_id, expected) {
            self.broker.persist_nowait(vec![record]);
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let identifier = s.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut records = Vec::new();
        let mut retained_for = Vec::new();
        let mut any_new = false;
        for (filter, options) in &s.filters {
            let shared = match topic::SharedFilter::parse(filter) {
                Ok(shared) => shared,
                Err(_) => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let inner = shared.as_ref().map_or(filter.as_str(), |s| s.filter);
            if !topic::valid_topic_filter(inner) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if shared.is_some() && options.no_local {
                return Err(protocol_error("no local on a shared subscription"));
            }
            if !self.client_acl().can_subscribe(filter)
                || !fleet_allows(
                    &self.broker,
                    &self.client,
                    &self.session.client_id,
                    TopicAction::Subscribe,
                    filter,
                )
                .await
            {
                self.broker
                    .metrics
                    .acl_denials
                    .with_label_values(&["subscribe"])
                    .inc();
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            if let Some(max) = self.max_subscriptions {
                if !self.session.subscription_fits(filter, max) {
                    self.broker
                        .metrics
                        .quota_refusals
                        .with_label_values(&["subscriptions"])
                        .inc();
                    reasons.push(ReasonCode::QUOTA_EXCEEDED);
                    continue;
                }
            }
            let is_new =
                self.broker
                    .subscribe(&self.session, filter, *options, identifier, &mut records);
            any_new |= is_new;
            reasons.push(ReasonCode(options.qos.as_u8()));
            let send_retained = shared.is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            if send_retained {
                retained_for.push((filter.clone(), options.qos));
            }
        }
        self.persist(records).await?;
        if any_new {
            // In a cluster, what other nodes publish from now on must find
            // the subscription too.
            self.broker.interest_recorded().await;
        }
        self.send(&Packet::Suback(Suback {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        // Retained messages follow the SUBACK.
        let mut records = Vec::new();
        let limits = QueueLimits::from_limits(&self.limits);
        for (filter, qos) in retained_for {
            for (_, msg) in self.broker.retained.matching(&filter) {
                if msg.is_expired(Instant::now()) {
                    continue;
                }
                let flags = DeliveryFlags {
                    qos: msg.qos.min(qos),
                    retain: true,
                    subscription_identifiers: identifier.into_iter().collect(),
                    shared_group: None,
                };
                self.broker
                    .enqueue(&self.session, &msg, flags, &limits, None, &mut records);
            }
        }
        self.persist(records).await
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let mut records = Vec::new();
        let reasons = u
            .filters
            .iter()
            .map(|filter| {
                if self.broker.unsubscribe(&self.session, filter, &mut records) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.persist(records).await?;
        self.send(&Packet::Unsuback(Unsuback {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        Ok(())
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry == 0 && expiry != 0 {
                return Err(protocol_error(
                    "session expiry set on DISCONNECT after 0 at CONNECT",
                ));
            }
            self.session
                .set_expiry_interval(expiry.min(self.limits.max_session_expiry));
        }
        Err(Close::ClientDisconnect {
            with_will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
        })
    }

    /// Stores `records` before the caller answers the client; a store that
    /// fails ends the connection (5.0: 0x80), since the broker cannot keep
    /// what it would acknowledge.
    async fn persist(&mut self, records: Vec<Record>) -> Result<(), Close> {
        self.broker.persist(records).await.map_err(|e| {
            self.broker.logger.error(&format!("Error persisting: {e}."));
            Close::Server(ReasonCode::UNSPECIFIED_ERROR)
        })
    }
}

/// Whether a device of a hook fleet may use the topic, as its registry
/// says (true at once for every other client).
async fn fleet_allows(
    broker: &Broker,
    client: &ClientHandle,
    client_id: &str,
    action: TopicAction,
    topic: &str,
) -> bool {
    let Some(device) = client.info.fleet.as_deref() else {
        return true;
    };
    broker
        .access
        .fleet_allows(Some(device), client_id, action, topic)
        .await
}

/// Whether a packet read while paused is handled at once rather than held:
/// acknowledgements (they drain queues, perhaps the very ones the pause
/// waits for) and PINGREQ.
fn handled_while_paused(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Puback(_)
            | Packet::Pubrec(_)
            | Packet::Pubrel(_)
            | Packet::Pubcomp(_)
            | Packet::Pingreq
    )
}

/// The acknowledgements of one batch of PUBLISHes. While none waits for
/// the cluster, each goes out at once (as on a single node); from the first
/// that does, they all wait, to keep their order.
#[derive(Default)]
struct Acks {
    pending: Vec<(Packet, Option<Stored>)>,
}

impl Acks {
    fn push<S>(&mut self, conn: &mut Connection<S>, packet: Packet, stored: Option<Stored>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if stored.is_none() && self.pending.is_empty() {
            conn.send(&packet);
        } else {
            self.pending.push((packet, stored));
        }
    }
}
