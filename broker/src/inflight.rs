//! The in-flight window of a session: QoS 1/2 deliveries sent to the client
//! and not yet acknowledged, by packet id.
//!
//! Every acknowledgement removes one entry, so removal must be O(1): an
//! ordered map that shifts its entries on removal cost a fifth of the
//! broker's time in QoS 1 fan-out. The send order is only needed to re-send
//! after a reconnect (rare), so each entry carries a sequence number and the
//! order is rebuilt by sorting then.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::session::Delivery;

/// A QoS 1/2 delivery sent to the client and not yet completed.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
}

/// Hashes 16-bit packet ids by one multiplication. The broker picks the ids
/// it sends (mostly consecutive), so they need no random keys; the odd
/// multiplier spreads consecutive ids over the high bits the table's
/// control bytes use, and keeps them distinct in the low bits it indexes by.
#[derive(Debug, Default, Clone, Copy)]
pub struct PacketIdHasher(u64);

impl Hasher for PacketIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u16 keys; a correct (if slower) fallback.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The bit of [`Slot::order`] that marks an entry restored for the
/// attached connection to send ([`InflightWindow::insert_restored`]).
const TO_SEND: u64 = 1 << 63;

#[derive(Debug)]
struct Slot {
    inflight: Inflight,
    /// Position in send order (increasing), with the [`TO_SEND`] bit.
    order: u64,
}

/// In-flight deliveries by packet id. O(1) insert, lookup and removal.
#[derive(Debug, Default)]
pub struct InflightWindow {
    slots: HashMap<u16, Slot, BuildHasherDefault<PacketIdHasher>>,
    next_order: u64,
}

impl InflightWindow {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, packet_id: u16) -> bool {
        self.slots.contains_key(&packet_id)
    }

    pub fn get(&self, packet_id: u16) -> Option<&Inflight> {
        self.slots.get(&packet_id).map(|slot| &slot.inflight)
    }

    pub fn get_mut(&mut self, packet_id: u16) -> Option<&mut Inflight> {
        self.slots
            .get_mut(&packet_id)
            .map(|slot| &mut slot.inflight)
    }

    /// Adds a delivery as the most recently sent. An entry with the same
    /// packet id is replaced (and moves to the end of the send order).
    pub fn insert(&mut self, packet_id: u16, inflight: Inflight) {
        let order = self.next_order;
        self.next_order += 1;
        self.slots.insert(packet_id, Slot { inflight, order });
    }

    /// Adds a delivery restored while a connection is attached (read late
    /// from the cluster): the most recently sent, and marked for that
    /// connection to send ([`InflightWindow::take_restored`]).
    pub fn insert_restored(&mut self, packet_id: u16, inflight: Inflight) {
        self.insert(packet_id, inflight);
        if let Some(slot) = self.slots.get_mut(&packet_id) {
            slot.order |= TO_SEND;
        }
    }

    /// The entries [`InflightWindow::insert_restored`] marked, in send
    /// order; no longer marked.
    pub fn take_restored(&mut self) -> Vec<(u16, Inflight)> {
        let mut entries: Vec<(u64, u16, Inflight)> = self
            .slots
            .iter_mut()
            .filter(|(_, slot)| slot.order & TO_SEND != 0)
            .map(|(&id, slot)| {
                slot.order &= !TO_SEND;
                (slot.order, id, slot.inflight.clone())
            })
            .collect();
        entries.sort_unstable_by_key(|&(order, _, _)| order);
        entries
            .into_iter()
            .map(|(_, id, inflight)| (id, inflight))
            .collect()
    }

    pub fn remove(&mut self, packet_id: u16) -> Option<Inflight> {
        self.slots.remove(&packet_id).map(|slot| slot.inflight)
    }

    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// The entries in the order they were sent (for re-sending after a
    /// reconnect, which must keep that order).
    pub fn in_send_order(&self) -> Vec<(u16, &Inflight)> {
        let mut entries: Vec<(u64, u16, &Inflight)> = self
            .slots
            .iter()
            .map(|(&id, slot)| (slot.order & !TO_SEND, id, &slot.inflight))
            .collect();
        entries.sort_unstable_by_key(|&(order, _, _)| order);
        entries
            .into_iter()
            .map(|(_, id, inflight)| (id, inflight))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::sync::Arc;

    use super::*;
    use crate::codec::QoS;
    use crate::message::Message;
    use crate::session::Delivery;

    fn inflight(payload: &'static str) -> Inflight {
        Inflight {
            delivery: Delivery {
                msg: Arc::new(Message::internal("t", payload, false)),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_identifiers: vec![],
                shared_group: None,
                seq: 0,
            },
            released: false,
        }
    }

    fn payloads(window: &InflightWindow) -> Vec<(u16, String)> {
        window
            .in_send_order()
            .into_iter()
            .map(|(id, i)| {
                (
                    id,
                    String::from_utf8_lossy(&i.delivery.msg.payload).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_send_order_across_removals_and_id_wrap() {
        let mut window = InflightWindow::default();
        window.insert(65534, inflight("a"));
        window.insert(65535, inflight("b"));
        window.insert(1, inflight("c"));
        window.insert(2, inflight("d"));
        assert_eq!(window.remove(65535).map(|_| ()), Some(()));
        window.insert(3, inflight("e"));
        assert_eq!(
            payloads(&window),
            vec![
                (65534, "a".into()),
                (1, "c".into()),
                (2, "d".into()),
                (3, "e".into())
            ]
        );
        assert_eq!(window.len(), 4);
        assert!(window.contains(1) && !window.contains(65535));
    }

    #[test]
    fn removal_and_lookup_by_packet_id() {
        let mut window = InflightWindow::default();
        for id in 1..=100 {
            window.insert(id, inflight("x"));
        }
        assert!(window.remove(101).is_none());
        for id in (1..=100).step_by(2) {
            assert!(window.remove(id).is_some());
        }
        assert_eq!(window.len(), 50);
        assert!(window.get(2).is_some() && window.get(3).is_none());
        window.get_mut(4).unwrap().released = true;
        assert!(window.get(4).unwrap().released);
        window.clear();
        assert!(window.is_empty());
    }

    #[test]
    fn restored_entries_are_taken_once_in_send_order_and_keep_their_place() {
        let mut window = InflightWindow::default();
        window.insert(7, inflight("sent"));
        window.insert_restored(3, inflight("restored-1"));
        window.insert(8, inflight("sent-later"));
        window.insert_restored(1, inflight("restored-2"));
        let taken: Vec<(u16, String)> = window
            .take_restored()
            .into_iter()
            .map(|(id, i)| {
                (
                    id,
                    String::from_utf8_lossy(&i.delivery.msg.payload).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            taken,
            vec![(3, "restored-1".into()), (1, "restored-2".into())]
        );
        assert!(window.take_restored().is_empty(), "taken once");
        assert_eq!(
            payloads(&window),
            vec![
                (7, "sent".into()),
                (3, "restored-1".into()),
                (8, "sent-later".into()),
                (1, "restored-2".into())
            ],
            "still in flight, in send order"
        );
    }

    #[test]
    fn a_replaced_id_moves_to_the_end() {
        let mut window = InflightWindow::default();
        window.insert(1, inflight("a"));
        window.insert(2, inflight("b"));
        window.insert(1, inflight("c"));
        assert_eq!(payloads(&window), vec![(2, "b".into()), (1, "c".into())]);
    }

    #[test]
    fn consecutive_ids_hash_apart() {
        // hashbrown indexes by the low bits and tags by the top 7 bits:
        // consecutive ids must differ in both.
        let build = BuildHasherDefault::<PacketIdHasher>::default();
        let low: std::collections::HashSet<u64> =
            (0u16..128).map(|id| build.hash_one(id) & 127).collect();
        assert_eq!(low.len(), 128);
        let top: std::collections::HashSet<u64> =
            (0u16..128).map(|id| build.hash_one(id) >> 57).collect();
        assert!(top.len() > 64, "top bits too uniform: {}", top.len());
    }
}
