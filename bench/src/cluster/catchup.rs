//! `catchup`: a persistent session's queued messages, delivered when its
//! client comes back, possibly on another node.
//!
//! 1. The subscriber opens a fresh persistent session on `--sub-broker`,
//!    subscribes to the topic, and disconnects.
//! 2. After `--settle` seconds, a publisher on `--broker` publishes
//!    `--count` messages at QoS 1 (or 2) and waits for every
//!    acknowledgement: the broker now holds them for the offline session.
//! 3. After `--settle` seconds more, the subscriber reconnects (Clean
//!    Session off) on `--resume-broker` and takes the messages, until it
//!    has every one that was acknowledged or `--drain` runs out.
//!
//! Timed from the CONNECT of step 3: the CONNACK, the first delivery, and
//! the last new one; the rate is distinct messages over that last time.
//! Duplicates, messages out of order and messages missing are counted
//! apart. The session is wiped at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::cli::{self, ClientArgs, Outcome};
use crate::client::{ClientError, ClientOptions, Connection, Opened};
use crate::codec::{self, Ack, Packet, QoS};
use crate::payload;
use crate::seen::Seen;
use crate::template::TopicTemplate;

use super::{acknowledge, millis, options_at, wipe_session};

/// `catchup`: queued messages delivered on reconnect.
#[derive(Debug, Args)]
pub struct CatchupCmd {
    /// Messages published while the subscriber is away.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1 << 28))]
    pub count: u64,

    /// QoS of the subscription and of the messages.
    #[arg(short = 'q', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub qos: u8,

    /// Payload size in bytes (at least 16: the stamp and the message's
    /// identity).
    #[arg(short = 's', long, default_value_t = 16, value_parser = cli::identified_payload_size)]
    pub size: usize,

    /// Messages the publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,

    /// The topic (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/catchup")]
    pub topic: TopicTemplate,

    /// Where the subscriber subscribes before it leaves [default: --broker].
    #[arg(long, value_name = "ADDR")]
    pub sub_broker: Option<String>,

    /// Where the subscriber comes back [default: --sub-broker].
    #[arg(long, value_name = "ADDR")]
    pub resume_broker: Option<String>,

    /// Seconds to wait after the subscriber left, and after the last
    /// acknowledgement, before the next step.
    #[arg(long, default_value_t = 1.0, value_parser = cli::non_negative)]
    pub settle: f64,

    /// Seconds the returning subscriber waits for the messages at most
    /// (also the bound on publishing them).
    #[arg(long, default_value_t = 60.0, value_parser = cli::positive)]
    pub drain: f64,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// What a `catchup` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatchupReport {
    pub scenario: &'static str,
    /// The publisher's broker.
    pub broker: String,
    /// Where the subscriber subscribed.
    pub sub_broker: String,
    /// Where it came back.
    pub resume_broker: String,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages published while the subscriber was away.
    pub sent: u64,
    /// Of those, acknowledged to the publisher: what the session must get.
    pub acked: u64,
    /// From the first PUBLISH to the last acknowledgement, in seconds.
    pub publish_secs: f64,
    /// CONNACK's Session Present flag on return.
    pub session_present: Option<bool>,
    /// From the CONNECT on return to its CONNACK, in milliseconds.
    pub connack_ms: Option<f64>,
    /// From the CONNECT on return to the first delivery.
    pub first_delivery_ms: Option<f64>,
    /// From the CONNECT on return to the last new delivery.
    pub catchup_ms: Option<f64>,
    /// PUBLISH packets received on return.
    pub delivered: u64,
    /// Distinct messages among them.
    pub distinct: u64,
    /// Deliveries of a message already received.
    pub duplicates: u64,
    /// Acknowledged messages never received.
    pub missing: u64,
    /// New messages that arrived after one published later.
    pub out_of_order: u64,
    /// `distinct` over `catchup_ms`.
    pub delivered_per_sec: Option<f64>,
    /// What went wrong, if anything did (the step, then the error).
    pub error: Option<String>,
}

impl Outcome for CatchupReport {
    fn to_text(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let mut text = format!(
            "catchup: published on {}, subscribed on {}, back on {}  QoS {}  payload {} B\n\
             queued       {} sent, {} acknowledged in {:.2} s\n\
             on return    session present {}, CONNACK {}, first message {}, all {}\n\
             delivered    {} ({} distinct, {} duplicates, {} missing, {} out of order) = {} msg/s\n",
            self.broker,
            self.sub_broker,
            self.resume_broker,
            self.qos,
            self.payload_bytes,
            self.sent,
            self.acked,
            self.publish_secs,
            self.session_present
                .map_or("-".to_string(), |p| p.to_string()),
            ms(self.connack_ms),
            ms(self.first_delivery_ms),
            ms(self.catchup_ms),
            self.delivered,
            self.distinct,
            self.duplicates,
            self.missing,
            self.out_of_order,
            self.delivered_per_sec
                .map_or("-".to_string(), |r| format!("{r:.0}")),
        );
        if let Some(e) = &self.error {
            text.push_str(&format!("error        {e}\n"));
        }
        text
    }
}

/// What the returning subscriber saw.
#[derive(Debug, Default)]
struct Return {
    session_present: Option<bool>,
    connack: Option<Duration>,
    first: Option<Duration>,
    last_new: Option<Duration>,
    delivered: u64,
    out_of_order: u64,
    seen: Seen,
}

/// Runs the scenario. Fails only when an address does not resolve; what
/// goes wrong later is in the report's `error`.
pub async fn run(cmd: CatchupCmd) -> Result<CatchupReport, String> {
    let settings = cmd.client.settings().await?;
    let pub_addr = settings.client.addr;
    let sub_addr = match &cmd.sub_broker {
        Some(addr) => cli::resolve(addr).await?,
        None => pub_addr,
    };
    let resume_addr = match &cmd.resume_broker {
        Some(addr) => cli::resolve(addr).await?,
        None => sub_addr,
    };
    let prefix = &settings.client_prefix;
    let sub_id = format!("{prefix}-s0");
    let pub_id = format!("{prefix}-p0");
    let topic = cmd.topic.render(0, &pub_id, prefix);
    let qos = QoS::from_u8(cmd.qos).unwrap_or(QoS::AtLeastOnce);
    let base = &settings.client;
    let drain = Duration::from_secs_f64(cmd.drain);
    let settle = Duration::from_secs_f64(cmd.settle);

    let mut report = CatchupReport {
        scenario: "catchup",
        broker: pub_addr.to_string(),
        sub_broker: sub_addr.to_string(),
        resume_broker: resume_addr.to_string(),
        qos: cmd.qos,
        payload_bytes: cmd.size,
        sent: 0,
        acked: 0,
        publish_secs: 0.0,
        session_present: None,
        connack_ms: None,
        first_delivery_ms: None,
        catchup_ms: None,
        delivered: 0,
        distinct: 0,
        duplicates: 0,
        missing: 0,
        out_of_order: 0,
        delivered_per_sec: None,
        error: None,
    };

    // 1. A fresh persistent session, subscribed, then offline.
    match super::fresh_subscription(base, sub_addr, &sub_id, &topic, qos).await {
        Ok(connection) => connection.disconnect().await,
        Err(e) => {
            report.error = Some(format!("subscribing on {sub_addr}: {e}"));
            return Ok(report);
        }
    }
    tokio::time::sleep(settle).await;

    // 2. The messages, each acknowledged.
    let publisher = Connection::open(&options_at(base, pub_addr, true), &pub_id).await;
    let mut publisher = match publisher {
        Ok((connection, _)) => connection,
        Err(e) => {
            report.error = Some(format!("publisher connecting to {pub_addr}: {e}"));
            return Ok(report);
        }
    };
    let window = usize::from(cmd.inflight);
    let deadline = Instant::now() + drain;
    let (burst, published) = super::publish_burst(
        &mut publisher,
        &topic,
        qos,
        cmd.count,
        cmd.size,
        window,
        deadline,
    )
    .await;
    (report.sent, report.acked) = (burst.sent, burst.acked);
    report.publish_secs = burst.took.as_secs_f64();
    if let Err(e) = published {
        report.error = Some(format!("publishing on {pub_addr}: {e}"));
    }
    publisher.disconnect().await;
    tokio::time::sleep(settle).await;

    // 3. Back, on the resume broker.
    let mut back = Return {
        seen: Seen::new(1),
        ..Return::default()
    };
    let resumed = resume(base, resume_addr, &sub_id, report.acked, drain, &mut back).await;
    if let Err(e) = resumed {
        report
            .error
            .get_or_insert(format!("resuming on {resume_addr}: {e}"));
    }
    report.session_present = back.session_present;
    report.connack_ms = back.connack.map(millis);
    report.first_delivery_ms = back.first.map(millis);
    report.catchup_ms = back.last_new.map(millis);
    report.delivered = back.delivered;
    report.distinct = back.seen.distinct();
    report.duplicates = back.seen.duplicates();
    report.missing = report.acked.saturating_sub(report.distinct);
    report.out_of_order = back.out_of_order;
    report.delivered_per_sec = back
        .last_new
        .filter(|d| !d.is_zero())
        .map(|d| report.distinct as f64 / d.as_secs_f64());

    if let Err(e) = wipe_session(base, resume_addr, &sub_id).await {
        report
            .error
            .get_or_insert(format!("wiping the session on {resume_addr}: {e}"));
    }
    Ok(report)
}

/// Reconnects with Clean Session off and takes messages (acknowledging
/// each) until `expected` distinct ones arrived or `drain` ran out.
async fn resume(
    base: &ClientOptions,
    addr: SocketAddr,
    client_id: &str,
    expected: u64,
    drain: Duration,
    back: &mut Return,
) -> Result<(), ClientError> {
    let begun = Instant::now();
    let Opened {
        mut connection,
        took,
        session_present,
    } = Connection::open_session(&options_at(base, addr, false), client_id).await?;
    back.session_present = Some(session_present);
    back.connack = Some(took);
    let deadline = begun + drain;
    let mut highest: Option<u32> = None;
    loop {
        // What is buffered first: the queued messages may arrive in the
        // same segment as the CONNACK.
        while let Some(packet) = connection.reader.next_packet()? {
            match packet {
                Packet::Publish(publish) => {
                    back.delivered += 1;
                    back.first.get_or_insert_with(|| begun.elapsed());
                    acknowledge(&mut connection.writer.buf, publish.qos, publish.pkid);
                    let Some(id) = payload::message_id(&publish.payload) else {
                        continue;
                    };
                    let before = back.seen.distinct();
                    back.seen.record(id);
                    if back.seen.distinct() > before {
                        back.last_new = Some(begun.elapsed());
                        if highest.is_some_and(|h| id.seq < h) {
                            back.out_of_order += 1;
                        }
                        highest = highest.max(Some(id.seq));
                    }
                }
                Packet::PubRel(pkid) => {
                    codec::encode_ack(&mut connection.writer.buf, Ack::PubComp, pkid);
                }
                Packet::PingResp => {}
                _ => return Err(ClientError::Unexpected("packet other than PUBLISH")),
            }
        }
        connection.writer.flush().await?;
        if back.seen.distinct() >= expected {
            break;
        }
        let read = tokio::time::timeout_at(deadline.into(), connection.reader.fill());
        match read.await {
            Ok(result) => result?,
            Err(_) => break, // drain time over
        }
    }
    connection.disconnect().await;
    Ok(())
}
