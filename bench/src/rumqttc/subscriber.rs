//! A rumqttc subscriber: subscribes, then counts every PUBLISH its event
//! loop reports (rumqttc acknowledges QoS 1/2 deliveries itself) until the
//! run stops it.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ::rumqttc::{AsyncClient, Event, EventLoop, Packet, SubscribeReasonCode};

use super::{connect, disconnect, qos};
use crate::payload;
use crate::run::SubscriberJob;
use crate::seen::Seen;

/// Latencies recorded under one lock.
const LATENCY_BATCH: usize = 64;

/// Runs one subscriber of the run.
pub async fn run(mut job: SubscriberJob, capacity: usize) {
    let Some((client, mut eventloop)) = connect(&job.common, capacity).await else {
        return;
    };
    let (shared, who) = (job.common.shared.clone(), job.common.who.clone());
    let filter = job.filter();
    let mut subscribed = false;
    let mut seen = Seen::new(job.common.workload.publishers);
    let result = receive(
        &mut job,
        &client,
        &mut eventloop,
        &filter,
        &mut subscribed,
        &mut seen,
    )
    .await;
    if !subscribed {
        shared.settle();
    }
    shared.deposit(seen);
    match result {
        Ok(()) => disconnect(&client, &mut eventloop).await,
        Err(e) => shared.errors.record(format!("{who}: {e}")),
    }
}

/// Subscribes, then counts PUBLISHes until told to stop or the deadline.
/// Sets `subscribed` (and counts the client as settled) on a good SUBACK.
async fn receive(
    job: &mut SubscriberJob,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filter: &str,
    subscribed: &mut bool,
    seen: &mut Seen,
) -> Result<(), String> {
    let (shared, settings) = (&job.common.shared, &job.common.settings);
    client
        .subscribe(filter, qos(job.common.workload.sub_qos))
        .await
        .map_err(|e| format!("cannot queue SUBSCRIBE: {e}"))?;
    let suback_deadline = Instant::now() + settings.client.timeout;
    let mut wake = pin!(tokio::time::sleep_until(
        suback_deadline.min(job.deadline).into()
    ));
    let mut latencies = Vec::with_capacity(LATENCY_BATCH);
    let result = loop {
        let event = tokio::select! {
            biased;
            _ = job.stop.changed() => break Ok(()),
            event = eventloop.poll() => event,
            _ = &mut wake => {
                break if *subscribed || Instant::now() >= job.deadline {
                    Ok(())
                } else {
                    Err("timed out waiting for SUBACK".to_string())
                };
            }
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                match payload::latency_us(&publish.payload, payload::now_ns()) {
                    Some(us) => latencies.push(us),
                    None => {
                        shared.unstamped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(id) = payload::message_id(&publish.payload) {
                    seen.record(id);
                }
                if latencies.len() >= LATENCY_BATCH {
                    shared.latencies.record_us(&latencies);
                    latencies.clear();
                }
                shared.counters.add_delivered(1);
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) if !*subscribed => {
                if suback.return_codes.first() == Some(&SubscribeReasonCode::Failure) {
                    break Err("SUBACK refusing the filter".to_string());
                }
                *subscribed = true;
                shared.settle();
                wake.as_mut().reset(job.deadline.into());
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_))) => {
                break Err("acknowledgement to a subscriber that never published".to_string());
            }
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    shared.latencies.record_us(&latencies);
    result
}
