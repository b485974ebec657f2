use super::*;
use crate::config::Limits;

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

fn limits() -> QueueLimits {
    QueueLimits::from_limits(&Limits::default())
}

fn attached() -> SessionState {
    SessionState {
        attachment: Some(Attachment {
            connection_id: 1,
            client: Arc::new(ClientHandle::for_tests()),
        }),
        next_packet_id: 1,
        ..SessionState::default()
    }
}

/// Queues a delivery from another client.
fn offer(s: &mut SessionState, d: Delivery, budget: &MemoryBudget) -> Enqueued {
    let publisher = Arc::new(ClientHandle::for_tests());
    s.enqueue(d, &limits(), Some(&publisher), budget)
}

#[test]
fn a_session_stays_small() {
    // Every client has one, connected or not; 304 bytes make 320 with
    // the Arc's counts, an allocator size class (see docs/benchmarks.md,
    // memory per connection).
    let size = std::mem::size_of::<Session>();
    assert!(size <= 304, "a session is {size} bytes");
}

#[test]
fn a_client_is_never_paused_for_its_own_subscription() {
    let mut s = attached();
    let budget = MemoryBudget::new(0);
    let own = s.attachment.as_ref().unwrap().client.clone();
    let l = QueueLimits {
        high_water: 1,
        ..limits()
    };
    for _ in 0..3 {
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "m"), &l, Some(&own), &budget),
            Enqueued::Queued
        );
    }
    let other = Arc::new(ClientHandle::for_tests());
    assert_eq!(
        s.enqueue(delivery(QoS::AtLeastOnce, "m"), &l, Some(&other), &budget),
        Enqueued::QueuedPause
    );
}

#[test]
fn window_limits_inflight_and_qos0_bypasses_it() {
    let mut s = attached();
    let b = MemoryBudget::new(0);
    offer(&mut s, delivery(QoS::AtLeastOnce, "1"), &b);
    offer(&mut s, delivery(QoS::ExactlyOnce, "2"), &b);
    offer(&mut s, delivery(QoS::AtMostOnce, "3"), &b);
    let now = Instant::now();
    let mut expired = vec![];
    let (pid, _) = s.next_to_send(1, now, &b, &mut expired).unwrap();
    assert_eq!(pid, Some(1));
    assert!(s.next_to_send(1, now, &b, &mut expired).is_none());
    s.complete(1).unwrap();
    let (pid, d) = s.next_to_send(1, now, &b, &mut expired).unwrap();
    assert_eq!((pid, d.qos), (Some(2), QoS::ExactlyOnce));
    // QoS 0 goes out even with the window full.
    let (pid, d) = s.next_to_send(1, now, &b, &mut expired).unwrap();
    assert_eq!((pid, d.qos), (None, QoS::AtMostOnce));
    assert_eq!(s.release(2), Some(0));
    assert!(s.inflight.get(2).is_some_and(|i| i.released));
    assert!(s.complete(2).is_some());
    assert!(s.complete(2).is_none());
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap() {
    let mut s = attached();
    let b = MemoryBudget::new(0);
    s.next_packet_id = u16::MAX;
    for _ in 0..3 {
        offer(&mut s, delivery(QoS::AtLeastOnce, "x"), &b);
    }
    let now = Instant::now();
    let mut e = vec![];
    let ids: Vec<_> = (0..3)
        .map(|_| s.next_to_send(10, now, &b, &mut e).unwrap().0.unwrap())
        .collect();
    assert_eq!(ids, vec![u16::MAX, 1, 2]);
}

#[test]
fn expired_messages_are_skipped() {
    let mut s = attached();
    let b = MemoryBudget::new(1 << 20);
    let mut msg = Message::internal("t", "old", false);
    msg.qos = QoS::AtLeastOnce;
    msg.expires_at = Some(Instant::now());
    let d = Delivery {
        msg: Arc::new(msg),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_identifiers: vec![],
        shared_group: None,
        seq: 7,
    };
    offer(&mut s, d, &b);
    assert_eq!(b.used(), 4);
    let mut expired = vec![];
    assert!(s
        .next_to_send(
            10,
            Instant::now() + std::time::Duration::from_millis(1),
            &b,
            &mut expired
        )
        .is_none());
    assert_eq!(expired, vec![7]);
    assert_eq!(b.used(), 0, "the budget gets the bytes back");
}

#[test]
fn inbound_qos2_exchanges_are_bounded_and_recorded_for_durable_sessions() {
    let session = Session::new(Arc::from("c"), 60, true);
    assert_eq!(session.begin_inbound_qos2(1, 2), InboundQos2::New);
    assert_eq!(session.begin_inbound_qos2(1, 2), InboundQos2::Duplicate);
    assert_eq!(session.begin_inbound_qos2(2, 2), InboundQos2::New);
    assert_eq!(session.begin_inbound_qos2(3, 2), InboundQos2::OverLimit);
    assert!(matches!(
        session.inbound_qos2_record(1),
        Some(Record::InboundQos2 { packet_id: 1, .. })
    ));
    assert!(matches!(
        session.finish_inbound_qos2(1),
        Acked::Applied(Some(Record::InboundQos2Done { packet_id: 1, .. }))
    ));
    assert_eq!(session.finish_inbound_qos2(1), Acked::Unknown);
    session.abandon_inbound_qos2(2);
    assert_eq!(session.begin_inbound_qos2(3, 2), InboundQos2::New);
    let volatile = Session::new(Arc::from("v"), 0, false);
    assert_eq!(volatile.inbound_qos2_record(1), None);
}
