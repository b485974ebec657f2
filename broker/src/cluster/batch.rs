//! QoS 0 messages to other nodes, several to one NATS message.
//!
//! Each NATS message costs this node's NATS client, nats-server and the
//! receiving node about the same whatever it holds, and under load that
//! cost is most of what routing a QoS 0 message costs. So one task sends
//! them: it takes whatever has queued up (it never waits for more: at low
//! rates a batch holds one message and nothing is delayed), and sends one
//! NATS message per node with that node's messages, in the order they were
//! routed. A batch of one is sent as it is; a batch of more carries the
//! [`BATCH_HEADER`] and each envelope behind its length.

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Header of a NATS message holding several envelopes, each behind its
/// length (4 bytes, big-endian).
pub const BATCH_HEADER: &str = "Kmq-Batch";

/// Routed QoS 0 messages waiting for the batching task, at most (a
/// publisher beyond it waits: back-pressure, not loss).
pub const QUEUED: usize = 16 * 1024;

/// Bytes of envelopes in one NATS message, at most (nats-server's default
/// `max_payload` is 1 MiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Envelopes for one node, gathered for one NATS message.
struct Gathered {
    node: Arc<str>,
    envelopes: Vec<Bytes>,
}

/// Takes the envelopes routed to other nodes from `queued` and sends them
/// in batches, until every sender is gone.
pub async fn send_batches(
    client: async_nats::Client,
    subject: impl Fn(&str) -> String,
    mut queued: mpsc::Receiver<(Arc<str>, Bytes)>,
    on_error: impl Fn(async_nats::PublishError),
) {
    let mut gathered: Vec<Gathered> = Vec::new();
    while let Some(first) = queued.recv().await {
        let mut bytes = first.1.len();
        add(&mut gathered, first);
        while bytes < MAX_BATCH_BYTES {
            match queued.try_recv() {
                Ok(next) => {
                    bytes += next.1.len();
                    add(&mut gathered, next);
                }
                Err(_) => break,
            }
        }
        for batch in gathered.drain(..) {
            let subject = subject(&batch.node);
            let sent = match <[Bytes; 1]>::try_from(batch.envelopes) {
                Ok([one]) => client.publish(subject, one).await,
                Err(envelopes) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(BATCH_HEADER, envelopes.len().to_string().as_str());
                    client
                        .publish_with_headers(subject, headers, encode(&envelopes))
                        .await
                }
            };
            if let Err(e) = sent {
                on_error(e);
            }
        }
    }
}

fn add(gathered: &mut Vec<Gathered>, (node, envelope): (Arc<str>, Bytes)) {
    match gathered.iter_mut().find(|g| g.node == node) {
        Some(batch) => batch.envelopes.push(envelope),
        None => gathered.push(Gathered {
            node,
            envelopes: vec![envelope],
        }),
    }
}

/// The payload of a batch: each envelope behind its length.
pub fn encode(envelopes: &[Bytes]) -> Bytes {
    let len = envelopes.iter().map(|e| 4 + e.len()).sum();
    let mut out = BytesMut::with_capacity(len);
    for envelope in envelopes {
        // An envelope is smaller than a NATS message (at most 64 MiB).
        out.put_u32(envelope.len() as u32);
        out.put_slice(envelope);
    }
    out.freeze()
}

/// The envelopes of a batch's payload; `Err` at the first one cut short
/// (those before it are returned in the `Ok` part of the iterator).
pub fn decode(mut payload: Bytes) -> impl Iterator<Item = Result<Bytes, &'static str>> {
    std::iter::from_fn(move || {
        if payload.is_empty() {
            return None;
        }
        if payload.len() < 4 {
            payload.clear();
            return Some(Err("a batch ends inside a length"));
        }
        let len = payload.get_u32() as usize;
        if payload.len() < len {
            payload.clear();
            return Some(Err("a batch ends inside an envelope"));
        }
        Some(Ok(payload.split_to(len)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_its_envelopes_in_order() {
        let envelopes = vec![
            Bytes::from_static(b"first"),
            Bytes::new(),
            Bytes::from(vec![7u8; 70_000]),
        ];
        let decoded: Result<Vec<Bytes>, _> = decode(encode(&envelopes)).collect();
        assert_eq!(decoded.unwrap(), envelopes);
    }

    #[test]
    fn a_cut_batch_is_an_error_after_the_whole_envelopes() {
        let payload = encode(&[Bytes::from_static(b"whole"), Bytes::from_static(b"cut")]);
        let cut = payload.slice(..payload.len() - 1);
        let decoded: Vec<_> = decode(cut).collect();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0], Ok(Bytes::from_static(b"whole")));
        assert!(decoded[1].is_err());
        let decoded: Vec<_> = decode(Bytes::from_static(&[0, 0])).collect();
        assert_eq!(decoded, vec![Err("a batch ends inside a length")]);
    }

    #[test]
    fn envelopes_are_gathered_per_node_in_order() {
        let mut gathered = Vec::new();
        for (node, body) in [("b", "1"), ("c", "2"), ("b", "3")] {
            add(&mut gathered, (Arc::from(node), Bytes::from(body)));
        }
        let view: Vec<(&str, Vec<&[u8]>)> = gathered
            .iter()
            .map(|g| (&*g.node, g.envelopes.iter().map(|e| &e[..]).collect()))
            .collect();
        assert_eq!(
            view,
            vec![("b", vec![&b"1"[..], b"3"]), ("c", vec![&b"2"[..]])]
        );
    }
}
