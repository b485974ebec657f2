//! While a session loaded on this node still picks up what other nodes
//! wrote to its queue before they learnt it is here
//! (`broker/late_writes.rs`), a message can reach it twice: routed here,
//! and through its queue. [`Given`] notes the cluster ids of the messages
//! given to such sessions, so that the queue's copy is left out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// One session's hand-over: its number, and the ids of what it was given.
type Handover = (u64, HashSet<u64>);

/// The cluster ids of the messages given to each session in its hand-over.
#[derive(Debug, Default)]
pub struct Given {
    by_client: Mutex<HashMap<Arc<str>, Handover>>,
    /// The number of the next hand-over.
    next: AtomicU64,
    /// How many sessions are in their hand-over: publishing looks no
    /// further when none is.
    sessions: AtomicUsize,
}

impl Given {
    /// Whether some session is in its hand-over (one atomic load: the
    /// publish path asks for every message).
    pub fn any(&self) -> bool {
        self.sessions.load(Ordering::Relaxed) > 0
    }

    /// `client_id`'s hand-over starts: what it is given is noted. Returns
    /// its number, for [`Given::end`].
    pub fn start(&self, client_id: &Arc<str>) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let mut by_client = self.by_client.lock();
        if by_client
            .insert(client_id.clone(), (number, HashSet::new()))
            .is_none()
        {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        }
        number
    }

    /// Hand-over `number` of `client_id` is over (nothing when a later one
    /// of the same client id has started since).
    pub fn end(&self, client_id: &str, number: u64) {
        let mut by_client = self.by_client.lock();
        if by_client.get(client_id).is_some_and(|(n, _)| *n == number) {
            by_client.remove(client_id);
            self.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether `client_id` is in its hand-over.
    pub fn has(&self, client_id: &str) -> bool {
        self.any() && self.by_client.lock().contains_key(client_id)
    }

    /// Notes that message `id` is given to `client_id`. False when it was
    /// given to it already during its hand-over (it is then left out);
    /// true otherwise, and always for a session not in its hand-over.
    pub fn note(&self, client_id: &str, id: u64) -> bool {
        match self.by_client.lock().get_mut(client_id) {
            Some((_, ids)) => ids.insert(id),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_in_its_handover_is_given_each_message_once() {
        let given = Given::default();
        assert!(!given.any());
        let number = given.start(&Arc::from("c1"));
        assert!(given.any());
        assert!(given.note("c1", 7), "first time");
        assert!(!given.note("c1", 7), "second time: left out");
        assert!(given.note("c1", 8));
        assert!(given.note("c2", 7), "not in its hand-over");
        assert!(given.note("c2", 7), "not in its hand-over");
        given.end("c1", number);
        assert!(!given.any());
        assert!(given.note("c1", 7), "the hand-over is over");
    }

    #[test]
    fn an_earlier_handover_ending_leaves_a_later_one_of_the_same_client() {
        let given = Given::default();
        let first = given.start(&Arc::from("c1"));
        let second = given.start(&Arc::from("c1"));
        assert!(given.note("c1", 7));
        given.end("c1", first);
        assert!(!given.note("c1", 7), "the later hand-over goes on");
        given.end("c1", second);
        assert!(!given.any());
    }
}
