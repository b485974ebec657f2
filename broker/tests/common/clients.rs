//! rumqttc clients (MQTT 3.1.1 and 5.0) whose packets are collected for
//! the tests to wait on.

use super::*;

/// Incoming packets of a rumqttc event loop, buffered so that a test can wait
/// for one kind of packet without losing the others.
pub struct Events<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    pending: VecDeque<P>,
    /// Set once the event loop reported an error (the connection is gone).
    pub closed: Option<String>,
}

impl<P: std::fmt::Debug> Events<P> {
    /// Removes and returns the first packet accepted by `pick`, waiting at
    /// most `timeout`. Other packets stay buffered in order.
    pub async fn take<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let p = self.pending.remove(i)?;
            return pick(&p);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => match pick(&p) {
                    Some(t) => return Some(t),
                    None => self.pending.push_back(p),
                },
                Ok(Some(Err(e))) => {
                    self.closed = Some(e);
                    return None;
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits until the event loop reports that the connection ended.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        if self.closed.is_some() {
            return self.closed.clone();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => self.pending.push_back(p),
                Ok(Some(Err(e))) => {
                    self.closed = Some(e.clone());
                    return Some(e);
                }
                Ok(None) => return Some("event loop ended".into()),
                Err(_) => return None,
            }
        }
    }
}

/// An MQTT 3.1.1 rumqttc client. Dropping it aborts the event loop, which
/// closes the socket without DISCONNECT (an abnormal disconnect).
pub struct Client4 {
    pub client: rumqttc::AsyncClient,
    pub events: Events<rumqttc::Packet>,
    task: JoinHandle<()>,
}

impl Client4 {
    /// Connects with client id `id` (clean session, keepalive 30 s unless
    /// `configure` changes them) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &TestBroker,
        id: &str,
        configure: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> (Client4, rumqttc::ConnAck) {
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        configure(&mut options);
        Client4::connect_options(options).await
    }

    /// Connects with fully prepared options (e.g. a WebSocket or TLS
    /// transport, whose address is a URL) and waits for a successful CONNACK.
    pub async fn connect_options(options: rumqttc::MqttOptions) -> (Client4, rumqttc::ConnAck) {
        let id = options.client_id();
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut eventloop = eventloop;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Stop here: rumqttc would reconnect on the next poll.
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client4 {
            client,
            events: Events {
                rx,
                pending: VecDeque::new(),
                closed: None,
            },
            task,
        };
        let connack = c
            .events
            .take(TIMEOUT, |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        match connack {
            Some(a) => (c, a),
            None => panic!("{id}: no CONNACK ({:?})", c.events.closed),
        }
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue UNSUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| {
                matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("no UNSUBACK for {filter}"));
    }

    /// Publishes and, for QoS 1/2, waits until the broker acknowledged it
    /// (PUBACK, or PUBCOMP after the PUBREC/PUBREL exchange).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("queue PUBLISH");
        let done = match qos {
            rumqttc::QoS::AtMostOnce => return,
            rumqttc::QoS::AtLeastOnce => {
                self.events
                    .take(TIMEOUT, |p| {
                        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                    })
                    .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.events
                    .take(TIMEOUT, |p| {
                        matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                    })
                    .await
            }
        };
        assert!(
            done.is_some(),
            "publish to {topic} not acknowledged ({:?})",
            self.events.closed
        );
    }

    /// Next application message, or `None` after `timeout`.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<rumqttc::Publish> {
        self.events
            .take(timeout, |p| match p {
                rumqttc::Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// Next application message; panics after [`TIMEOUT`].
    pub async fn recv(&mut self) -> rumqttc::Publish {
        match self.next_publish(TIMEOUT).await {
            Some(p) => p,
            None => panic!("no PUBLISH received ({:?})", self.events.closed),
        }
    }

    /// Panics if an application message arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.next_publish(QUIET).await {
            panic!("unexpected PUBLISH: {p:?}");
        }
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.events.wait_closed(TIMEOUT).await;
    }
}

impl Drop for Client4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT 5.0 rumqttc client; see [`Client4`].
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: Events<rumqttc::v5::mqttbytes::v5::Packet>,
    task: JoinHandle<()>,
}

impl Client5 {
    /// Connects with client id `id` (clean start, keepalive 30 s unless
    /// `configure` changes them) and waits for a successful CONNACK.
    pub async fn connect(
        broker: &TestBroker,
        id: &str,
        configure: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (Client5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(1 << 20));
        configure(&mut options);
        Client5::connect_options(options).await
    }

    /// Connects with fully prepared options (e.g. a WebSocket or TLS
    /// transport, whose address is a URL) and waits for a successful CONNACK.
    pub async fn connect_options(
        options: rumqttc::v5::MqttOptions,
    ) -> (Client5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let id = options.client_id();
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut eventloop = eventloop;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                    Err(e) => {
                        // Stop here: rumqttc would reconnect on the next poll.
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = Client5 {
            client,
            events: Events {
                rx,
                pending: VecDeque::new(),
                closed: None,
            },
            task,
        };
        let connack = c
            .events
            .take(TIMEOUT, |p| match p {
                Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        match connack {
            Some(a) => (c, a),
            None => panic!("{id}: no CONNACK ({:?})", c.events.closed),
        }
    }

    /// Subscribes and returns the SUBACK reason codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .take(TIMEOUT, |p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Publishes with properties and, for QoS 1/2, waits until the broker
    /// acknowledged it.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        use rumqttc::v5::mqttbytes::{v5::Packet, QoS};
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), properties)
            .await
            .expect("queue PUBLISH");
        let done = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => {
                self.events
                    .take(TIMEOUT, |p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.events
                    .take(TIMEOUT, |p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        };
        assert!(
            done.is_some(),
            "publish to {topic} not acknowledged ({:?})",
            self.events.closed
        );
    }

    /// Next application message, or `None` after `timeout`.
    pub async fn next_publish(
        &mut self,
        timeout: Duration,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.events
            .take(timeout, |p| match p {
                Packet::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
    }

    /// Next application message; panics after [`TIMEOUT`].
    pub async fn recv(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.next_publish(TIMEOUT).await {
            Some(p) => p,
            None => panic!("no PUBLISH received ({:?})", self.events.closed),
        }
    }

    /// Panics if an application message arrives within [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(p) = self.next_publish(QUIET).await {
            panic!("unexpected PUBLISH: {p:?}");
        }
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let _ = self.events.wait_closed(TIMEOUT).await;
    }
}

impl Drop for Client5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
