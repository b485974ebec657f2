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

    /// Messages seen here and not in `other`: for the messages a publisher
    /// had acknowledged, those its subscriber never received.
    pub fn count_not_in(&self, other: &Seen) -> u64 {
        let empty = Vec::new();
        let mut count = 0u64;
        for (index, mine) in self.bits.iter().enumerate() {
            let theirs = other.bits.get(index).unwrap_or(&empty);
            for (word, &bits) in mine.iter().enumerate() {
                let other_bits = theirs.get(word).copied().unwrap_or(0);
                count += u64::from((bits & !other_bits).count_ones());
            }
        }
        count
    }

    /// The first `limit` messages seen here and not in `other` (see
    /// [`Seen::count_not_in`]), by publisher then sequence number.
    pub fn first_not_in(&self, other: &Seen, limit: usize) -> Vec<MessageId> {
        let empty = Vec::new();
        let mut found = Vec::new();
        for (index, mine) in self.bits.iter().enumerate() {
            let theirs = other.bits.get(index).unwrap_or(&empty);
            for (word, &bits) in mine.iter().enumerate() {
                let mut only_here = bits & !theirs.get(word).copied().unwrap_or(0);
                while only_here != 0 && found.len() < limit {
                    let bit = only_here.trailing_zeros();
                    only_here &= only_here - 1;
                    found.push(MessageId {
                        publisher: index as u32,
                        seq: word as u32 * 64 + bit,
                    });
                }
            }
        }
        found
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
    fn count_not_in_finds_what_the_other_lacks() {
        let acked = seen(2, &[(0, 0), (0, 1), (0, 70), (1, 3), (1, 3)]);
        let received = seen(2, &[(0, 1), (0, 2), (1, 3)]);
        // (0,0) and (0,70) were never received; (0,2) was never acked.
        assert_eq!(acked.count_not_in(&received), 2);
        assert_eq!(received.count_not_in(&acked), 1);
        assert_eq!(acked.count_not_in(&acked), 0);
        // Against nothing received, every message counts, whatever the
        // other's number of publishers.
        assert_eq!(acked.count_not_in(&Seen::new(1)), 4);
        assert_eq!(Seen::new(3).count_not_in(&acked), 0);
        assert_eq!(acked.first_not_in(&received, 10), [id(0, 0), id(0, 70)]);
        assert_eq!(acked.first_not_in(&received, 1), [id(0, 0)]);
        assert_eq!(received.first_not_in(&acked, 10), [id(0, 2)]);
        assert!(acked.first_not_in(&acked, 10).is_empty());
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
