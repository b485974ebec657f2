//! Which messages a subscriber received, to tell duplicates from first
//! deliveries.
//!
//! Each subscriber keeps a [`Seen`] of its own (no lock on the delivery
//! path): one bit per message of each publisher of the run, set on the
//! first delivery. The members of a shared-subscription group are merged
//! at the end, so that a message delivered to two members counts as a
//! duplicate too.

use crate::payload::MessageId;

/// Sequence numbers at or above this are not tracked (a payload that is
/// not one of this run's): 32 MiB of bits per publisher at most.
const MAX_TRACKED_SEQ: u32 = 1 << 28;

/// The messages one subscriber (or, merged, one shared group) received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// One bit per sequence number, per publisher index.
    bits: Vec<Vec<u64>>,
    /// Distinct messages received.
    distinct: u64,
    /// Deliveries of a message already received.
    duplicates: u64,
}

impl Seen {
    /// Nothing seen yet, from a run of `publishers` publishers.
    pub fn new(publishers: usize) -> Seen {
        Seen {
            bits: vec![Vec::new(); publishers],
            distinct: 0,
            duplicates: 0,
        }
    }

    /// Counts a delivery of `id`. Ids that are not this run's (publisher
    /// index out of range, sequence number past [`MAX_TRACKED_SEQ`]) are
    /// ignored.
    pub fn record(&mut self, id: MessageId) {
        let Some(words) = self.bits.get_mut(id.publisher as usize) else {
            return;
        };
        if id.seq >= MAX_TRACKED_SEQ {
            return;
        }
        let (word, bit) = ((id.seq / 64) as usize, 1u64 << (id.seq % 64));
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        if words[word] & bit == 0 {
            words[word] |= bit;
            self.distinct += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Adds what another member of the same shared group received: a
    /// message both received is a duplicate.
    pub fn merge(&mut self, other: &Seen) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), Vec::new());
        }
        let mut overlap = 0u64;
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, &b) in mine.iter_mut().zip(theirs) {
                overlap += u64::from((*a & b).count_ones());
                *a |= b;
            }
        }
        self.distinct += other.distinct - overlap;
        self.duplicates += other.duplicates + overlap;
    }

    /// Distinct messages received.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Deliveries of a message already received.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// Duplicates over a run's subscribers: within each subscriber, and also
/// across them when they form one shared-subscription group.
pub fn duplicates(subscribers: &[Seen], shared_group: bool) -> u64 {
    if shared_group {
        let mut group = Seen::default();
        for seen in subscribers {
            group.merge(seen);
        }
        group.duplicates()
    } else {
        subscribers.iter().map(Seen::duplicates).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(publisher: u32, seq: u32) -> MessageId {
        MessageId { publisher, seq }
    }

    fn seen(publishers: usize, ids: &[(u32, u32)]) -> Seen {
        let mut seen = Seen::new(publishers);
        for &(p, s) in ids {
            seen.record(id(p, s));
        }
        seen
    }

    #[test]
    fn a_second_delivery_of_the_same_message_is_a_duplicate() {
        let s = seen(
            2,
            &[(0, 0), (0, 1), (1, 0), (0, 1), (0, 200), (0, 200), (0, 200)],
        );
        assert_eq!(s.distinct(), 4);
        assert_eq!(s.duplicates(), 3);
    }

    #[test]
    fn ids_from_outside_the_run_are_ignored() {
        let s = seen(1, &[(1, 0), (7, 7), (0, MAX_TRACKED_SEQ), (0, u32::MAX)]);
        assert_eq!(s, Seen::new(1));
    }

    #[test]
    fn merging_counts_messages_both_members_received_as_duplicates() {
        let mut a = seen(2, &[(0, 0), (0, 1), (1, 5), (1, 5)]);
        let b = seen(2, &[(0, 1), (0, 2), (1, 500), (1, 5)]);
        a.merge(&b);
        // Distinct: (0,0) (0,1) (0,2) (1,5) (1,500); duplicates: (1,5) twice
        // within a, then (0,1) and (1,5) across.
        assert_eq!(a.distinct(), 5);
        assert_eq!(a.duplicates(), 3);
    }

    #[test]
    fn duplicates_are_counted_per_subscriber_unless_they_share_a_group() {
        // Fan-out: every subscriber receives the same message once.
        let fanout = [seen(1, &[(0, 0), (0, 1)]), seen(1, &[(0, 0), (0, 1)])];
        assert_eq!(duplicates(&fanout, false), 0);
        // The same deliveries in one shared group: each message twice.
        assert_eq!(duplicates(&fanout, true), 2);
        assert_eq!(duplicates(&[], true), 0);
    }
}
