//! Tests of the queue, its back-pressure and the memory budget.

use super::*;
use crate::message::Message;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};

fn delivery(qos: QoS, payload: &'static str) -> Delivery {
    let mut msg = Message::internal("t", payload, false);
    msg.qos = qos;
    Delivery {
        msg: Arc::new(msg),
        qos,
        retain: false,
        subscription_identifiers: vec![],
        shared_group: None,
        seq: 0,
    }
}

fn limits(max: u32, high_water: u32, policy: QueueFullPolicy) -> QueueLimits {
    QueueLimits {
        max_messages: max,
        high_water,
        max_bytes: 0,
        high_water_bytes: u32::MAX,
        stall_timeout_ms: 1000,
        policy,
        stall_action: SlowSubscriberAction::Disconnect,
    }
}

fn no_budget() -> MemoryBudget {
    MemoryBudget::new(0)
}

/// A publisher whose connection task counts its wake-ups.
struct Publisher {
    handle: Arc<ClientHandle>,
    wakes: Arc<WakeCount>,
}

#[derive(Default)]
struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Publisher {
    fn new() -> Publisher {
        let publisher = Publisher {
            handle: Arc::new(ClientHandle::for_tests()),
            wakes: Arc::new(WakeCount::default()),
        };
        // The connection waits on its mailbox.
        let waker = Waker::from(publisher.wakes.clone());
        assert!(publisher
            .handle
            .mailbox
            .poll_recv(&mut Context::from_waker(&waker))
            .is_pending());
        publisher
    }

    fn wakes(&self) -> usize {
        self.wakes.0.load(Ordering::SeqCst)
    }
}

#[test]
fn qos0_is_dropped_for_offline_client_but_qos1_queued() {
    let mut q = DeliveryQueue::default();
    let l = limits(10, 5, QueueFullPolicy::DropNew);
    assert_eq!(
        q.offer(
            delivery(QoS::AtMostOnce, "a"),
            &l,
            false,
            None,
            &no_budget()
        ),
        Enqueued::Dropped(DropReason::Offline)
    );
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "b"),
            &l,
            false,
            None,
            &no_budget()
        ),
        Enqueued::Queued
    );
    assert_eq!(q.len(), 1);
}

#[test]
fn an_offline_queue_drops_new_or_oldest_when_full() {
    let mut q = DeliveryQueue::default();
    let budget = no_budget();
    let l = limits(2, 100, QueueFullPolicy::DropNew);
    q.offer(delivery(QoS::AtLeastOnce, "1"), &l, false, None, &budget);
    q.offer(delivery(QoS::AtLeastOnce, "2"), &l, false, None, &budget);
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "3"), &l, false, None, &budget),
        Enqueued::Dropped(DropReason::QueueFull)
    );
    let l = limits(2, 100, QueueFullPolicy::DropOldest);
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "4"), &l, false, None, &budget),
        Enqueued::QueuedDroppedOldest(0)
    );
    let payloads: Vec<_> = q.iter().map(|d| d.msg.payload.clone()).collect();
    assert_eq!(payloads, vec!["2", "4"]);
}

#[test]
fn the_byte_limit_applies_offline() {
    let mut q = DeliveryQueue::default();
    let l = QueueLimits {
        max_bytes: 8,
        ..limits(100, 100, QueueFullPolicy::DropNew)
    };
    let b = no_budget();
    // "abc" and the one-byte topic: 4 bytes each.
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "abc"), &l, false, None, &b),
        Enqueued::Queued
    );
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "abc"), &l, false, None, &b),
        Enqueued::Queued
    );
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "abc"), &l, false, None, &b),
        Enqueued::Dropped(DropReason::QueueFull)
    );
}

#[test]
fn a_connected_subscriber_above_its_mark_pauses_publishers_instead_of_dropping() {
    let mut q = DeliveryQueue::default();
    let budget = no_budget();
    // A queue limit below the mark: it does not apply while connected.
    let l = limits(3, 4, QueueFullPolicy::DropNew);
    let a = Publisher::new();
    let b = Publisher::new();
    for _ in 0..4 {
        assert_eq!(
            q.offer(
                delivery(QoS::AtLeastOnce, "m"),
                &l,
                true,
                Some(&a.handle),
                &budget
            ),
            Enqueued::Queued
        );
    }
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::QueuedPause
    );
    // A second offer from the same publisher, and one from another.
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::QueuedPause
    );
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&b.handle),
            &budget
        ),
        Enqueued::QueuedPause
    );
    assert_eq!(q.len(), 7, "nothing was dropped");
    assert_eq!(q.status(), FlowStatus::Congested);
    let now = Instant::now();
    // Down to 3: above the low-water mark (2), nobody is woken.
    for _ in 0..4 {
        q.pop(now, &budget).unwrap();
    }
    assert_eq!((a.wakes(), b.wakes()), (0, 0));
    q.pop(now, &budget).unwrap();
    assert_eq!((a.wakes(), b.wakes()), (1, 1), "each woken exactly once");
    assert_eq!(q.status(), FlowStatus::Flowing);
    q.pop(now, &budget).unwrap();
    assert_eq!((a.wakes(), b.wakes()), (1, 1));
    assert_eq!(q.hold(&a.handle, now), Congestion::Released);
}

#[test]
fn a_stopped_subscriber_is_declared_stalled_once_and_then_drops() {
    let mut q = DeliveryQueue::default();
    let budget = no_budget();
    let l = QueueLimits {
        stall_action: SlowSubscriberAction::Drop,
        ..limits(100, 2, QueueFullPolicy::DropNew)
    };
    let a = Publisher::new();
    let b = Publisher::new();
    for _ in 0..2 {
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget,
        );
    }
    let started = Instant::now();
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::QueuedPause
    );
    let Congestion::Holding { stall_deadline } = q.hold(&b.handle, started) else {
        panic!("b should wait too");
    };
    assert!(stall_deadline >= started + Duration::from_millis(1000));
    // Past the deadline without progress: the first to look declares it.
    let later = stall_deadline + Duration::from_millis(1);
    let Congestion::Stalled(stall) = q.hold(&a.handle, later) else {
        panic!("the subscriber took nothing for its timeout");
    };
    assert_eq!(stall.action, SlowSubscriberAction::Drop);
    assert_eq!(stall.queued, 3);
    assert_eq!((a.wakes(), b.wakes()), (1, 1), "waiting publishers let go");
    assert_eq!(q.hold(&b.handle, later), Congestion::Released);
    assert_eq!(q.status(), FlowStatus::Stalled);
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::Dropped(DropReason::SlowSubscriber)
    );
    // It catches up: back under the low-water mark, flowing again.
    for _ in 0..3 {
        q.pop(later, &budget).unwrap();
    }
    assert_eq!(q.status(), FlowStatus::Flowing);
    assert_eq!(
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::Queued
    );
}

#[test]
fn progress_pushes_the_stall_deadline_back() {
    let mut q = DeliveryQueue::default();
    let budget = no_budget();
    let l = limits(100, 2, QueueFullPolicy::DropNew);
    let a = Publisher::new();
    for _ in 0..6 {
        q.offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget,
        );
    }
    let start = Instant::now();
    let Congestion::Holding {
        stall_deadline: first,
    } = q.hold(&a.handle, start)
    else {
        panic!("congested");
    };
    let later = start + Duration::from_millis(900);
    q.pop(later, &budget).unwrap();
    let Congestion::Holding {
        stall_deadline: second,
    } = q.hold(&a.handle, start + Duration::from_millis(1500))
    else {
        panic!("still congested, and it made progress");
    };
    assert!(second > first);
}

#[test]
fn messages_nobody_can_pause_for_keep_the_queue_limits() {
    let mut q = DeliveryQueue::default();
    let budget = no_budget();
    let l = limits(2, 1, QueueFullPolicy::DropNew);
    for _ in 0..2 {
        assert_eq!(
            q.offer(delivery(QoS::AtLeastOnce, "m"), &l, true, None, &budget),
            Enqueued::Queued
        );
    }
    assert_eq!(
        q.offer(delivery(QoS::AtLeastOnce, "m"), &l, true, None, &budget),
        Enqueued::Dropped(DropReason::QueueFull)
    );
}

#[test]
fn the_budget_drops_offline_first_then_pauses_sooner_then_drops_everything() {
    let budget = MemoryBudget::new(100);
    let l = limits(1000, 16, QueueFullPolicy::DropNew);
    let a = Publisher::new();
    // 90 bytes queued (2-byte messages: topic and payload) in queues
    // that stay under their mark.
    let mut queues: Vec<DeliveryQueue> = (0..9).map(|_| DeliveryQueue::default()).collect();
    for q in &mut queues {
        for _ in 0..5 {
            let m = delivery(QoS::AtLeastOnce, "m");
            assert_eq!(
                q.offer(m, &l, true, Some(&a.handle), &budget),
                Enqueued::Queued
            );
        }
    }
    assert_eq!(budget.level(), Level::Pressed);
    let mut offline = DeliveryQueue::default();
    assert_eq!(
        offline.offer(delivery(QoS::AtLeastOnce, "m"), &l, false, None, &budget),
        Enqueued::Dropped(DropReason::MemoryBudget)
    );
    // Connected: queued, but 5 is above an eighth of the mark (2).
    assert_eq!(
        queues[0].offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::QueuedPause
    );
    for _ in 0..4 {
        queues[1].offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget,
        );
    }
    assert_eq!(budget.level(), Level::Full);
    assert_eq!(
        queues[2].offer(
            delivery(QoS::AtLeastOnce, "m"),
            &l,
            true,
            Some(&a.handle),
            &budget
        ),
        Enqueued::Dropped(DropReason::MemoryBudget)
    );
    for q in &mut queues {
        q.clear(&budget);
    }
    assert_eq!(budget.used(), 0);
    assert_eq!(budget.level(), Level::Normal);
}

#[test]
fn drops_are_logged_once_per_interval() {
    let mut q = DeliveryQueue::default();
    let l = limits(1, 1, QueueFullPolicy::DropNew);
    let now = Instant::now();
    assert_eq!(q.note_drop(now, &l), Some(1));
    assert_eq!(q.note_drop(now + Duration::from_secs(1), &l), None);
    assert_eq!(q.note_drop(now + DROP_LOG_INTERVAL, &l), Some(3));
    assert_eq!(q.dropped(), 3);
}

#[test]
fn offering_all_at_once_queues_them_all_or_gives_them_all_back() {
    let budget = MemoryBudget::new(100);
    let three = |payload| -> VecDeque<Delivery> {
        (0..3)
            .map(|_| delivery(QoS::AtLeastOnce, payload))
            .collect()
    };
    let mut q = DeliveryQueue::default();
    q.offer(
        delivery(QoS::AtLeastOnce, "a"),
        &limits(4, 4, QueueFullPolicy::DropNew),
        false,
        None,
        &budget,
    );
    // Four fit a limit of four, after what was queued: in order, counted.
    let ok = q.offer_all(
        three("b"),
        6,
        &limits(4, 4, QueueFullPolicy::DropNew),
        &budget,
    );
    assert!(ok.is_ok());
    assert_eq!((q.len(), q.bytes(), budget.used()), (4, 8, 8));
    let order: Vec<_> = q.items.iter().map(|d| d.msg.payload.clone()).collect();
    assert_eq!(order, ["a", "b", "b", "b"]);
    // Beyond the message limit, or the byte limit: none queued.
    let back = q.offer_all(
        three("c"),
        6,
        &limits(6, 6, QueueFullPolicy::DropOldest),
        &budget,
    );
    assert_eq!(back.map_err(|d| d.len()), Err(3));
    let bytes_limit = QueueLimits {
        max_bytes: 13,
        ..limits(100, 100, QueueFullPolicy::DropNew)
    };
    assert_eq!(
        q.offer_all(three("c"), 6, &bytes_limit, &budget)
            .map_err(|d| d.len()),
        Err(3)
    );
    assert_eq!((q.len(), budget.used()), (4, 8));
    // Under memory pressure: none queued either (one at a time decides).
    budget.add(82);
    assert_eq!(budget.level(), Level::Pressed);
    let back = q.offer_all(
        three("c"),
        6,
        &limits(100, 100, QueueFullPolicy::DropNew),
        &budget,
    );
    assert_eq!(back.map_err(|d| d.len()), Err(3));
}
