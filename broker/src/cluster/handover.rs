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

    /// Notes that the messages `ids` are given to `client_id` at once (as
    /// [`Given::note`] each). Returns those given to it already during its
    /// hand-over (to be left out); none for a session not in its hand-over.
    pub fn note_all(&self, client_id: &str, ids: &HashSet<u64>) -> HashSet<u64> {
        let mut by_client = self.by_client.lock();
        let Some((_, given)) = by_client.get_mut(client_id) else {
            return HashSet::new();
        };
        let (smaller, larger) = if given.len() <= ids.len() {
            (&*given, ids)
        } else {
            (ids, &*given)
        };
        let had: HashSet<u64> = smaller
            .iter()
            .filter(|id| larger.contains(id))
            .copied()
            .collect();
        if given.len() < ids.len() {
            // The hand-over's first and largest batch: taken whole.
            let earlier = std::mem::replace(given, ids.clone());
            given.extend(earlier);
        } else {
            given.extend(ids.iter().copied());
        }
        had
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
    fn noting_many_at_once_leaves_out_what_was_given_before() {
        let given = Given::default();
        let c1: Arc<str> = Arc::from("c1");
        assert!(
            given.note_all("c1", &HashSet::from([1, 2])).is_empty(),
            "not in its hand-over"
        );
        let number = given.start(&c1);
        assert!(given.note("c1", 2), "routed during the hand-over");
        let had = given.note_all("c1", &HashSet::from([1, 2, 3]));
        assert_eq!(had, HashSet::from([2]));
        assert!(!given.note("c1", 1) && !given.note("c1", 3), "noted");
        assert!(given.note("c1", 4));
        let had = given.note_all("c1", &HashSet::from([4, 5]));
        assert_eq!(had, HashSet::from([4]), "a later, smaller batch");
        assert!(!given.note("c1", 5));
        given.end("c1", number);
        assert!(given.note_all("c1", &HashSet::from([1])).is_empty());
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
