//! The in-memory mirror of the durable state: built by replaying records,
//! turned back into records for a snapshot and into [`Recovered`] for the
//! broker.
//!
//! Messages are stored once and reference-counted: every retained entry and
//! every queue entry holds one reference, and a message goes away with its
//! last reference.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::records::{
    QueuedEntry, Record, Recovered, StoredMessage, StoredSession, StoredSubscription,
};

#[derive(Debug)]
struct MessageEntry {
    msg: StoredMessage,
    refs: usize,
}

#[derive(Debug, Default)]
struct Session {
    expiry_interval: u32,
    disconnected_at_ms: Option<u64>,
    subscriptions: BTreeMap<String, StoredSubscription>,
    queue: BTreeMap<u64, QueueSlot>,
    inbound_qos2: BTreeSet<u16>,
}

#[derive(Debug)]
struct QueueSlot {
    msg_id: u64,
    qos: u8,
    packet_id: Option<u16>,
    released: bool,
}

/// Everything the store holds.
#[derive(Debug, Default)]
pub(super) struct State {
    messages: HashMap<u64, MessageEntry>,
    /// Messages stored since the last [`State::end_batch`].
    fresh: Vec<u64>,
    /// Topic -> message id.
    retained: BTreeMap<String, u64>,
    sessions: BTreeMap<String, Session>,
    /// The highest message id ever stored, to continue numbering after it.
    max_message_id: Option<u64>,
}

/// Takes a reference to message `id`; false if it is not stored.
fn add_ref(messages: &mut HashMap<u64, MessageEntry>, id: u64) -> bool {
    match messages.get_mut(&id) {
        Some(entry) => {
            entry.refs += 1;
            true
        }
        None => false,
    }
}

/// Drops a reference to message `id`, and the message with its last one.
fn release(messages: &mut HashMap<u64, MessageEntry>, id: u64) {
    if let Some(entry) = messages.get_mut(&id) {
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            messages.remove(&id);
        }
    }
}

impl State {
    /// Applies one record. Records about unknown sessions, queue entries or
    /// messages are ignored.
    pub(super) fn apply(&mut self, record: Record) {
        let messages = &mut self.messages;
        match record {
            Record::Message { id, msg } => {
                self.max_message_id = self.max_message_id.max(Some(id));
                messages.entry(id).or_insert_with(|| {
                    self.fresh.push(id);
                    MessageEntry { msg, refs: 0 }
                });
            }
            Record::RetainSet { topic, msg_id } => {
                if add_ref(messages, msg_id) {
                    if let Some(old) = self.retained.insert(topic, msg_id) {
                        release(messages, old);
                    }
                }
            }
            Record::RetainClear { topic } => {
                if let Some(old) = self.retained.remove(&topic) {
                    release(messages, old);
                }
            }
            Record::SessionOpen {
                client_id,
                expiry_interval,
            } => {
                let new = Session {
                    expiry_interval,
                    ..Session::default()
                };
                if let Some(old) = self.sessions.insert(client_id, new) {
                    for slot in old.queue.values() {
                        release(messages, slot.msg_id);
                    }
                }
            }
            Record::SessionResume {
                client_id,
                expiry_interval,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.expiry_interval = expiry_interval;
                    session.disconnected_at_ms = None;
                }
            }
            Record::SessionDisconnected {
                client_id,
                expiry_interval,
                at_ms,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.expiry_interval = expiry_interval;
                    session.disconnected_at_ms = Some(at_ms);
                }
            }
            Record::SessionDelete { client_id } => {
                if let Some(old) = self.sessions.remove(&client_id) {
                    for slot in old.queue.values() {
                        release(messages, slot.msg_id);
                    }
                }
            }
            Record::Subscribe { client_id, sub } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.subscriptions.insert(sub.filter.clone(), sub);
                }
            }
            Record::Unsubscribe { client_id, filter } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.subscriptions.remove(&filter);
                }
            }
            Record::Enqueue {
                client_id,
                seq,
                msg_id,
                qos,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    if !session.queue.contains_key(&seq) && add_ref(messages, msg_id) {
                        let slot = QueueSlot {
                            msg_id,
                            qos,
                            packet_id: None,
                            released: false,
                        };
                        session.queue.insert(seq, slot);
                    }
                }
            }
            Record::Inflight {
                client_id,
                seq,
                packet_id,
            } => {
                if let Some(slot) = self.slot(&client_id, seq) {
                    slot.packet_id = Some(packet_id);
                }
            }
            Record::Released { client_id, seq } => {
                if let Some(slot) = self.slot(&client_id, seq) {
                    slot.released = true;
                }
            }
            Record::Dequeue { client_id, seq } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    if let Some(slot) = session.queue.remove(&seq) {
                        release(messages, slot.msg_id);
                    }
                }
            }
            Record::InboundQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.inbound_qos2.insert(packet_id);
                }
            }
            Record::InboundQos2Done {
                client_id,
                packet_id,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.inbound_qos2.remove(&packet_id);
                }
            }
        }
    }

    fn slot(&mut self, client_id: &str, seq: u64) -> Option<&mut QueueSlot> {
        self.sessions.get_mut(client_id)?.queue.get_mut(&seq)
    }

    /// Ends a batch of records: messages stored in it that nothing
    /// references are dropped (see [`Record::Message`]).
    pub(super) fn end_batch(&mut self) {
        for id in self.fresh.drain(..) {
            if self.messages.get(&id).is_some_and(|entry| entry.refs == 0) {
                self.messages.remove(&id);
            }
        }
    }

    /// The lowest message id that was never used.
    pub(super) fn unused_message_id(&self) -> u64 {
        self.max_message_id.map_or(0, |id| id.saturating_add(1))
    }

    /// The state as handed to the broker.
    pub(super) fn recovered(&self, next_message_id: u64) -> Recovered {
        let message = |id: &u64| self.messages.get(id).map(|entry| entry.msg.clone());
        let retained = self
            .retained
            .iter()
            .filter_map(|(topic, id)| Some((topic.clone(), message(id)?)))
            .collect();
        let sessions = self
            .sessions
            .iter()
            .map(|(client_id, s)| StoredSession {
                client_id: client_id.clone(),
                expiry_interval: s.expiry_interval,
                disconnected_at_ms: s.disconnected_at_ms,
                subscriptions: s.subscriptions.values().cloned().collect(),
                queue: s
                    .queue
                    .iter()
                    .filter_map(|(&seq, slot)| {
                        Some(QueuedEntry {
                            seq,
                            qos: slot.qos,
                            msg: message(&slot.msg_id)?,
                            packet_id: slot.packet_id,
                            released: slot.released,
                        })
                    })
                    .collect(),
                inbound_qos2: s.inbound_qos2.iter().copied().collect(),
            })
            .collect();
        Recovered {
            retained,
            sessions,
            next_message_id,
        }
    }

    /// Calls `f` with records that rebuild this state from nothing, stopping
    /// at the first error. Messages come first, so that every later
    /// reference finds its message.
    pub(super) fn for_each_record<E>(
        &self,
        mut f: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut ids: Vec<u64> = self.messages.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(entry) = self.messages.get(&id) {
                f(Record::Message {
                    id,
                    msg: entry.msg.clone(),
                })?;
            }
        }
        for (topic, &msg_id) in &self.retained {
            f(Record::RetainSet {
                topic: topic.clone(),
                msg_id,
            })?;
        }
        for (client_id, session) in &self.sessions {
            let client_id = || client_id.clone();
            f(Record::SessionOpen {
                client_id: client_id(),
                expiry_interval: session.expiry_interval,
            })?;
            if let Some(at_ms) = session.disconnected_at_ms {
                f(Record::SessionDisconnected {
                    client_id: client_id(),
                    expiry_interval: session.expiry_interval,
                    at_ms,
                })?;
            }
            for sub in session.subscriptions.values() {
                f(Record::Subscribe {
                    client_id: client_id(),
                    sub: sub.clone(),
                })?;
            }
            for (&seq, slot) in &session.queue {
                f(Record::Enqueue {
                    client_id: client_id(),
                    seq,
                    msg_id: slot.msg_id,
                    qos: slot.qos,
                })?;
                if let Some(packet_id) = slot.packet_id {
                    f(Record::Inflight {
                        client_id: client_id(),
                        seq,
                        packet_id,
                    })?;
                }
                if slot.released {
                    f(Record::Released {
                        client_id: client_id(),
                        seq,
                    })?;
                }
            }
            for &packet_id in &session.inbound_qos2 {
                f(Record::InboundQos2 {
                    client_id: client_id(),
                    packet_id,
                })?;
            }
        }
        Ok(())
    }

    /// How many messages are stored.
    #[cfg(test)]
    pub(super) fn message_count(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{enqueue, message, open};

    fn apply_all(state: &mut State, records: Vec<Record>) {
        for r in records {
            state.apply(r);
        }
        state.end_batch();
    }

    #[test]
    fn message_lives_while_referenced() {
        let mut state = State::default();
        apply_all(
            &mut state,
            vec![
                message(1, "a/b", "x"),
                open("c1"),
                open("c2"),
                enqueue("c1", 1, 1),
                enqueue("c2", 1, 1),
                Record::RetainSet {
                    topic: "a/b".into(),
                    msg_id: 1,
                },
            ],
        );
        assert_eq!(state.message_count(), 1);
        apply_all(
            &mut state,
            vec![Record::Dequeue {
                client_id: "c1".into(),
                seq: 1,
            }],
        );
        assert_eq!(state.message_count(), 1);
        // Deleting the session releases its queue.
        apply_all(
            &mut state,
            vec![Record::SessionDelete {
                client_id: "c2".into(),
            }],
        );
        assert_eq!(state.message_count(), 1);
        apply_all(
            &mut state,
            vec![Record::RetainClear {
                topic: "a/b".into(),
            }],
        );
        assert_eq!(state.message_count(), 0);
    }

    #[test]
    fn clean_session_open_and_retain_replace_release_messages() {
        let mut state = State::default();
        apply_all(
            &mut state,
            vec![
                message(1, "t", "one"),
                message(2, "t", "two"),
                open("c1"),
                enqueue("c1", 1, 1),
                Record::RetainSet {
                    topic: "t".into(),
                    msg_id: 2,
                },
            ],
        );
        assert_eq!(state.message_count(), 2);
        apply_all(&mut state, vec![open("c1")]);
        assert_eq!(state.message_count(), 1);
        apply_all(
            &mut state,
            vec![
                message(3, "t", "three"),
                Record::RetainSet {
                    topic: "t".into(),
                    msg_id: 3,
                },
            ],
        );
        assert_eq!(state.message_count(), 1);
        assert_eq!(state.recovered(0).retained[0].1.payload, "three");
    }

    #[test]
    fn unreferenced_message_is_dropped_at_end_of_batch() {
        let mut state = State::default();
        apply_all(&mut state, vec![message(5, "t", "nobody")]);
        assert_eq!(state.message_count(), 0);
        assert_eq!(state.unused_message_id(), 6);
    }

    #[test]
    fn records_for_unknown_things_are_ignored() {
        let mut state = State::default();
        apply_all(
            &mut state,
            vec![
                message(1, "t", "x"),
                enqueue("ghost", 1, 1),
                open("c1"),
                enqueue("c1", 1, 99),
                Record::Inflight {
                    client_id: "c1".into(),
                    seq: 7,
                    packet_id: 1,
                },
                Record::RetainSet {
                    topic: "t".into(),
                    msg_id: 42,
                },
            ],
        );
        let recovered = state.recovered(0);
        assert!(recovered.retained.is_empty());
        assert_eq!(recovered.sessions.len(), 1);
        assert!(recovered.sessions[0].queue.is_empty());
        assert_eq!(state.message_count(), 0);
    }

    #[test]
    fn for_each_record_rebuilds_the_same_state() {
        let mut state = State::default();
        apply_all(&mut state, crate::store::tests::every_kind_of_record());
        let mut rebuilt = State::default();
        state
            .for_each_record(|r| {
                rebuilt.apply(r);
                Ok::<(), ()>(())
            })
            .unwrap();
        rebuilt.end_batch();
        assert_eq!(rebuilt.recovered(9), state.recovered(9));
        assert_eq!(rebuilt.message_count(), state.message_count());
    }
}
