use super::*;

fn all_alive(_: &Arc<str>) -> bool {
    true
}

#[test]
fn the_bucket_is_written_on_the_first_and_last_subscriber_only() {
    let (interest, mut changes) = Interest::new(Arc::from("a"));
    interest.add_local("t/+");
    interest.add_local("t/+");
    interest.remove_local("t/+");
    interest.remove_local("t/+");
    interest.remove_local("t/+");
    assert_eq!(changes.try_recv(), Ok(Change::Added("t/+".into())));
    assert_eq!(changes.try_recv(), Ok(Change::Removed("t/+".into())));
    assert!(changes.try_recv().is_err());
}

#[test]
fn a_held_filter_is_written_when_released_or_wanted_by_another_session() {
    let (interest, mut changes) = Interest::new(Arc::from("a"));
    interest.add_local_held("t/1");
    interest.add_local_held("t/2");
    interest.add_local("t/2");
    // Another session's subscription is not held up by the loading one.
    assert_eq!(changes.try_recv(), Ok(Change::Added("t/2".into())));
    assert!(changes.try_recv().is_err(), "t/1 waits");
    interest.release_held(&["t/1".into(), "t/2".into()]);
    assert_eq!(changes.try_recv(), Ok(Change::Added("t/1".into())));
    assert!(changes.try_recv().is_err(), "each written once");
    interest.remove_local("t/1");
    assert_eq!(changes.try_recv(), Ok(Change::Removed("t/1".into())));
}

#[test]
fn a_held_filter_whose_subscriber_leaves_first_is_never_written() {
    let (interest, mut changes) = Interest::new(Arc::from("a"));
    interest.add_local("t/1");
    interest.add_local_held("t/1");
    interest.add_local_held("t/2");
    interest.remove_local("t/2");
    interest.release_held(&["t/1".into(), "t/2".into()]);
    assert_eq!(changes.try_recv(), Ok(Change::Added("t/1".into())));
    assert!(
        changes.try_recv().is_err(),
        "t/1 was written already, t/2 never"
    );
    // The filter is this node's all the same while held.
    interest.add_local_held("t/3");
    let mut filters = interest.local_filters();
    filters.sort();
    assert_eq!(filters, vec!["t/1".to_string(), "t/3".to_string()]);
}

#[tokio::test]
async fn written_waits_for_the_changes_made_before_it() {
    let (interest, _changes) = Interest::new(Arc::from("a"));
    let interest = Arc::new(interest);
    interest.add_local("t/1");
    interest.add_local("t/2");
    let waiter = tokio::spawn({
        let interest = interest.clone();
        async move { interest.written().await }
    });
    interest.change_done();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "one of two changes is still unwritten"
    );
    // Changes after the call are not waited for.
    interest.add_local("t/3");
    interest.change_done();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("written once both are")
        .unwrap();
}

#[test]
fn a_message_goes_once_to_each_interested_node() {
    let (interest, _changes) = Interest::new(Arc::from("a"));
    interest.remote_added("b", "t/#");
    interest.remote_added("b", "t/+");
    interest.remote_added("c", "other");
    // This node's own ordinary filters are not routed through the table.
    interest.remote_added("a", "t/1");
    let plan = interest.plan("t/1", &all_alive);
    assert_eq!(plan.remote, vec![(Arc::from("b"), vec![])]);
    assert!(plan.local_groups.is_empty());
    assert_eq!(interest.plan("nothing", &all_alive), Plan::default());
}

#[test]
fn a_topic_planned_before_follows_every_change_of_the_tables() {
    let (interest, _changes) = Interest::new(Arc::from("a"));
    interest.remote_added("b", "t/#");
    let to_b = vec![(Arc::from("b"), vec![])];
    assert_eq!(interest.plan("t/1", &all_alive).remote, to_b);
    assert_eq!(interest.plan("t/1", &all_alive).remote, to_b, "kept");
    interest.remote_added("c", "t/1");
    assert_eq!(interest.plan("t/1", &all_alive).remote.len(), 2);
    interest.offline_added("dev-1", "t/+");
    let plan = interest.plan("t/1", &all_alive);
    assert_eq!(plan.offline, vec![Arc::<str>::from("dev-1")]);
    interest.remote_removed("c", "t/1");
    interest.offline_removed("dev-1", "t/+");
    assert_eq!(interest.plan("t/1", &all_alive).remote, to_b);
    assert!(interest.plan("t/1", &all_alive).offline.is_empty());
    interest.remote_removed("b", "t/#");
    assert_eq!(interest.plan("t/1", &all_alive), Plan::default());
    // A shared group appearing on a topic planned before takes part.
    assert_eq!(interest.plan("t/1", &all_alive), Plan::default());
    interest.add_local("$share/g/t/1");
    assert_eq!(interest.plan("t/1", &all_alive).local_groups, vec!["g"]);
}

#[test]
fn a_shared_subscription_is_served_by_one_node_per_message_in_turn() {
    let (interest, _changes) = Interest::new(Arc::from("a"));
    interest.add_local("$share/g/t/#");
    interest.remote_added("b", "$share/g/t/#");
    let mut local = 0;
    let mut remote = 0;
    for _ in 0..10 {
        let plan = interest.plan("t/x", &all_alive);
        match (plan.local_groups.len(), plan.remote.len()) {
            (1, 0) => local += 1,
            (0, 1) => {
                assert_eq!(plan.remote[0], (Arc::from("b"), vec!["g".to_string()]));
                remote += 1;
            }
            other => panic!("one node per message, got {other:?}"),
        }
    }
    assert_eq!((local, remote), (5, 5));
    // A node that is not alive is not chosen.
    let only_a = |n: &Arc<str>| &**n == "a";
    for _ in 0..4 {
        assert_eq!(interest.plan("t/x", &only_a).local_groups, vec!["g"]);
    }
}
