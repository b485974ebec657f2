use super::*;
use crate::access::Access;
use crate::cluster::ready;
use crate::cluster::sessions::QueueEntry;
use crate::config::{AuthConfig, Config, LogConfig};
use crate::log::Logger;
use crate::message::Message;

/// A broker without a cluster, and a session of it holding `count`
/// queued messages, as a load from the cluster leaves it.
fn loaded_session(count: u64) -> (Arc<Broker>, Arc<Session>) {
    let (logger, _) = Logger::capture(&LogConfig::default());
    let access = Access::load(&AuthConfig::default()).expect("no auth files");
    let broker = Arc::new(Broker::new(Config::local_default(), logger, None, access));
    let session = Arc::new(Session::new(Arc::from("mover"), 60, true));
    let matcher = ready::matcher_of("m/#", 1);
    let entries = (0..count)
        .map(|id| {
            let mut message = Message::internal("m/x", "x", false).to_stored();
            message.qos = 1;
            QueueEntry {
                id,
                message,
                sent: None,
            }
        })
        .collect();
    let limits = QueueLimits::from_limits(&crate::config::Limits::default());
    broker.restore_entries(&session, &matcher, entries, &limits);
    (broker, session)
}

#[tokio::test(start_paused = true)]
async fn the_follow_up_waits_until_the_client_has_taken_the_backlog() {
    let (broker, session) = loaded_session(2);
    let waiting = tokio::spawn({
        let session = session.clone();
        async move { Broker::loaded_backlog_taken(&session).await }
    });
    tokio::time::sleep(BACKLOG_WAIT / 4).await;
    assert!(!waiting.is_finished(), "two messages still queued");
    {
        let mut state = session.state.lock();
        while state
            .queue
            .pop(std::time::Instant::now(), &broker.budget)
            .is_some()
        {}
    }
    tokio::time::sleep(BACKLOG_LOOK_EVERY * 2).await;
    assert!(waiting.is_finished(), "taken: the follow-up goes on");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_takes_nothing_holds_the_follow_up_up_for_a_second_at_most() {
    let (_broker, session) = loaded_session(1);
    let begun = tokio::time::Instant::now();
    Broker::loaded_backlog_taken(&session).await;
    assert_eq!(begun.elapsed(), BACKLOG_WAIT);
    let (_broker, empty) = loaded_session(0);
    let begun = tokio::time::Instant::now();
    Broker::loaded_backlog_taken(&empty).await;
    assert_eq!(begun.elapsed(), Duration::ZERO, "nothing loaded: no wait");
}
