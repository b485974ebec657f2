//! [`Raw`]: a raw-socket client speaking in the hand-written packets.

use super::*;

/// A raw-socket MQTT client: sends hand-made bytes, parses what comes back.
pub struct Raw {
    stream: Box<dyn RawStream>,
    buf: Vec<u8>,
    /// Parse incoming packets with the 5.0 layout (set by [`Raw::send_connect`]).
    pub v5: bool,
}

impl Raw {
    /// Opens a TCP connection; nothing is sent.
    pub async fn open(broker: &TestBroker) -> Raw {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(broker.addr()))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let _ = stream.set_nodelay(true);
        Raw::from_stream(stream)
    }

    /// Opens a connection, sends `connect` and returns the CONNACK (whatever its code).
    pub async fn connect_raw(broker: &TestBroker, connect: &Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(broker).await;
        raw.send_connect(connect).await;
        let ack = raw.expect_connack().await;
        (raw, ack)
    }

    /// Opens a connection and completes a successful CONNECT.
    pub async fn connect(broker: &TestBroker, connect: &Connect) -> (Raw, ConnAck) {
        let (raw, ack) = Raw::connect_raw(broker, connect).await;
        assert_eq!(
            ack.code, 0,
            "CONNACK for {:?} refused: {ack:?}",
            connect.client_id
        );
        (raw, ack)
    }

    /// Sends a CONNECT and switches the parser to its protocol version.
    pub async fn send_connect(&mut self, connect: &Connect) {
        self.v5 = connect.is_v5();
        self.send(&connect.encode()).await;
    }

    /// Writes bytes; a write error (the broker already closed) is ignored,
    /// the following read reports the close.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            // A no-op on TCP; TLS and other layered streams may buffer.
            self.stream.flush().await
        })
        .await;
    }

    pub async fn send_publish(&mut self, p: &Pub) {
        let bytes = p.encode(self.v5);
        self.send(&bytes).await;
    }

    /// Waits at most `timeout` for the next packet.
    pub async fn recv_within(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.parse_buffered() {
                return Recv::Packet(p);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet; panics on close or after [`TIMEOUT`].
    pub async fn recv(&mut self) -> Pkt {
        match self.recv_within(TIMEOUT).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    fn parse_buffered(&mut self) -> Option<Pkt> {
        let first = *self.buf.first()?;
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let b = *self.buf.get(i)?;
            len |= usize::from(b & 0x7F) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            assert!(i <= 4, "broker sent a remaining length longer than 4 bytes");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..i + len).skip(i).collect();
        Some(Pkt::parse(first, &body, self.v5))
    }

    pub async fn expect_connack(&mut self) -> ConnAck {
        match self.recv().await {
            Pkt::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Pkt::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    pub async fn expect_puback(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubAck(a) => a,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    pub async fn expect_pubrec(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubRec(a) => a,
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    pub async fn expect_pubrel(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubRel(a) => a,
            other => panic!("expected PUBREL, got {other:?}"),
        }
    }
    pub async fn expect_pubcomp(&mut self) -> Ack {
        match self.recv().await {
            Pkt::PubComp(a) => a,
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
    pub async fn expect_suback(&mut self) -> SubAck {
        match self.recv().await {
            Pkt::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    pub async fn expect_unsuback(&mut self) -> SubAck {
        match self.recv().await {
            Pkt::UnsubAck(a) => a,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Panics if any packet arrives within `d`.
    pub async fn expect_nothing(&mut self, d: Duration) {
        match self.recv_within(d).await {
            Recv::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection, returning the DISCONNECT
    /// it sent first, if any. Panics on any other packet or after [`TIMEOUT`].
    pub async fn expect_closed(&mut self) -> Option<ReasonOnly> {
        self.expect_closed_within(TIMEOUT).await
    }

    /// [`Raw::expect_closed`] with an explicit bound.
    pub async fn expect_closed_within(&mut self, timeout: Duration) -> Option<ReasonOnly> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut disconnect = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Closed => return disconnect,
                Recv::Packet(Pkt::Disconnect(d)) if disconnect.is_none() => disconnect = Some(d),
                other => panic!("expected the broker to close the connection, got {other:?}"),
            }
        }
    }

    /// Expects a CONNECT to be refused with CONNACK `code` followed by a
    /// close. The product requires the CONNACK; mosquitto 2.0.11 closes
    /// without one for malformed 5.0 CONNECTs (the specification makes the
    /// CONNACK optional), so under mosquitto a bare close is accepted.
    pub async fn expect_connect_refused(&mut self, code: u8) {
        match self.recv_within(TIMEOUT).await {
            Recv::Packet(Pkt::ConnAck(a)) => {
                assert_eq!(a.code, code, "CONNACK reason code: {a:?}");
                self.expect_closed().await;
            }
            Recv::Closed if target_is_mosquitto() => {
                eprintln!("note: mosquitto closed without CONNACK {code:#04x}");
            }
            other => panic!("expected CONNACK {code:#04x} then close, got {other:?}"),
        }
    }

    /// Subscribes with one SUBSCRIBE and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.subscribe_props(pid, &Props::new(), filters).await
    }

    /// Subscribes with SUBSCRIBE properties (e.g. a subscription identifier).
    pub async fn subscribe_props(
        &mut self,
        pid: u16,
        props: &Props,
        filters: &[(&str, u8)],
    ) -> Vec<u8> {
        let bytes = subscribe(self.v5, pid, props, filters);
        self.send(&bytes).await;
        let ack = self.expect_suback().await;
        assert_eq!(ack.pid, pid, "SUBACK packet identifier");
        ack.codes
    }

    /// Publishes at QoS 1 and waits for the PUBACK, returning its reason code.
    pub async fn publish_qos1(&mut self, p: &Pub) -> u8 {
        assert_eq!(p.qos, 1);
        self.send_publish(p).await;
        let ack = self.expect_puback().await;
        assert_eq!(ack.pid, p.pid, "PUBACK packet identifier");
        ack.reason
    }

    /// Acknowledges a received PUBLISH as its QoS requires (PUBACK, or
    /// PUBREC + wait PUBREL + PUBCOMP).
    pub async fn ack_publish(&mut self, p: &Publish) {
        match p.qos {
            1 => self.send(&ack(kind::PUBACK, p.pid, self.v5, 0)).await,
            2 => {
                self.send(&ack(kind::PUBREC, p.pid, self.v5, 0)).await;
                let rel = self.expect_pubrel().await;
                assert_eq!(rel.pid, p.pid, "PUBREL packet identifier");
                self.send(&ack(kind::PUBCOMP, p.pid, self.v5, 0)).await;
            }
            _ => {}
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close.
    pub async fn disconnect(mut self) {
        let bytes = disconnect(self.v5, 0, &Props::new());
        self.send(&bytes).await;
        let _ = self.recv_within(TIMEOUT).await;
    }
}

/// Connects a raw 5.0 client that only subscribes to `filter` at `qos`, for
/// tests that need to observe what the broker delivers.
pub async fn raw_subscriber5(broker: &TestBroker, id: &str, filter: &str, qos: u8) -> Raw {
    let (mut raw, _) = Raw::connect(broker, &Connect::v5(id)).await;
    let codes = raw.subscribe(1, &[(filter, qos)]).await;
    assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    raw
}

/// Connects a raw 3.1.1 client subscribed to `filter` at `qos`.
pub async fn raw_subscriber4(broker: &TestBroker, id: &str, filter: &str, qos: u8) -> Raw {
    let (mut raw, _) = Raw::connect(broker, &Connect::v4(id)).await;
    let codes = raw.subscribe(1, &[(filter, qos)]).await;
    assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    raw
}

/// Any byte stream a [`Raw`] client can speak MQTT over (TCP, TLS...).
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for S {}

impl Raw {
    /// Wraps an already connected stream (e.g. after a TLS handshake or a
    /// PROXY protocol header); nothing is sent.
    pub fn from_stream(stream: impl RawStream + 'static) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: Vec::new(),
            v5: false,
        }
    }

    /// Opens a TCP connection to `addr` (another listener than the
    /// broker's main one); nothing is sent.
    pub async fn open_addr(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let _ = stream.set_nodelay(true);
        Raw::from_stream(stream)
    }

    /// Sends `connect` on an open connection and returns the CONNACK.
    pub async fn handshake(&mut self, connect: &Connect) -> ConnAck {
        self.send_connect(connect).await;
        self.expect_connack().await
    }

    /// Sends PINGREQ and expects PINGRESP: the connection is alive.
    pub async fn ping(&mut self) {
        self.send(&pingreq()).await;
        match self.recv().await {
            Pkt::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}
