use super::*;
use crate::topic::{self, strategies};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

type Table = SubscriptionTable<&'static str>;

fn sub(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    }
}

fn with_id(qos: QoS, id: u32) -> Subscription {
    Subscription {
        identifier: Some(id),
        ..sub(qos)
    }
}

fn no_local(qos: QoS) -> Subscription {
    let mut s = sub(qos);
    s.options.no_local = true;
    s
}

fn routes(table: &Table, topic: &str, publisher: Option<&'static str>) -> Vec<Route<&'static str>> {
    let mut out = Vec::new();
    table.route(topic, publisher.as_ref(), &|_| true, &mut out);
    out.sort_by(|a, b| (a.subscriber, &a.shared_group).cmp(&(b.subscriber, &b.shared_group)));
    out
}

fn receivers(table: &Table, topic: &str) -> Vec<&'static str> {
    routes(table, topic, None)
        .into_iter()
        .map(|r| r.subscriber)
        .collect()
}

/// Whether every shard root is empty, i.e. no trie node is left over.
fn fully_pruned(table: &Table) -> bool {
    table.shards.iter().all(|s| s.read().is_empty()) && table.wildcard.read().is_empty()
}

#[test]
fn exact_filter() {
    let table = Table::new();
    assert!(table.subscribe("c1", "a/b", sub(QoS::AtLeastOnce)));
    assert_eq!(receivers(&table, "a/b"), ["c1"]);
    assert!(receivers(&table, "a/c").is_empty());
    assert!(receivers(&table, "a").is_empty());
    assert!(receivers(&table, "a/b/c").is_empty());
    assert!(receivers(&table, "/a/b").is_empty());
    let route = &routes(&table, "a/b", None)[0];
    assert_eq!(route.qos, QoS::AtLeastOnce);
    assert_eq!(route.shared_group, None);
    assert!(route.subscription_identifiers.is_empty());
}

#[test]
fn single_level_wildcard() {
    let table = Table::new();
    table.subscribe("c1", "a/+/c", sub(QoS::AtMostOnce));
    table.subscribe("c2", "+", sub(QoS::AtMostOnce));
    assert_eq!(receivers(&table, "a/b/c"), ["c1"]);
    assert_eq!(receivers(&table, "a//c"), ["c1"]);
    assert!(receivers(&table, "a/b").is_empty());
    assert!(receivers(&table, "a/b/c/d").is_empty());
    assert_eq!(receivers(&table, "x"), ["c2"]);
    assert!(receivers(&table, "x/y").is_empty());
}

#[test]
fn multi_level_wildcard_matches_parent() {
    let table = Table::new();
    table.subscribe("c1", "a/#", sub(QoS::AtMostOnce));
    table.subscribe("c2", "#", sub(QoS::AtMostOnce));
    assert_eq!(receivers(&table, "a"), ["c1", "c2"]);
    assert_eq!(receivers(&table, "a/b/c"), ["c1", "c2"]);
    assert_eq!(receivers(&table, "ab"), ["c2"]);
    assert_eq!(receivers(&table, "b/a"), ["c2"]);
}

#[test]
fn dollar_topics_skip_leading_wildcards() {
    let table = Table::new();
    table.subscribe("all", "#", sub(QoS::AtMostOnce));
    table.subscribe("plus", "+/broker/uptime", sub(QoS::AtMostOnce));
    table.subscribe("sys", "$SYS/#", sub(QoS::AtMostOnce));
    table.subscribe("sys_plus", "$SYS/+/uptime", sub(QoS::AtMostOnce));
    assert_eq!(receivers(&table, "$SYS/broker/uptime"), ["sys", "sys_plus"]);
    assert_eq!(receivers(&table, "x/broker/uptime"), ["all", "plus"]);
}

#[test]
fn overlapping_subscriptions_give_one_route() {
    let table = Table::new();
    table.subscribe("c1", "a/+", with_id(QoS::AtMostOnce, 1));
    let mut exact = with_id(QoS::ExactlyOnce, 2);
    exact.options.retain_as_published = true;
    table.subscribe("c1", "a/b", exact);
    table.subscribe("c1", "#", sub(QoS::AtLeastOnce));
    table.subscribe("c2", "a/b", sub(QoS::AtMostOnce));

    let out = routes(&table, "a/b", None);
    assert_eq!(out.len(), 2);
    let c1 = &out[0];
    assert_eq!(c1.subscriber, "c1");
    assert_eq!(c1.qos, QoS::ExactlyOnce);
    assert!(c1.retain_as_published);
    let mut ids = c1.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert_eq!(out[1].subscriber, "c2");
    assert!(!out[1].retain_as_published);

    // Only "a/+" and "#" match here.
    let c1 = &routes(&table, "a/c", None)[0];
    assert_eq!(c1.qos, QoS::AtLeastOnce);
    assert!(!c1.retain_as_published);
    assert_eq!(c1.subscription_identifiers, [1]);
}

#[test]
fn merging_finds_routes_of_the_first_node_past_its_shared_ones() {
    // The first matching node adds ordinary and shared routes; the
    // second and third nodes must merge into the right ordinary ones.
    let table = Table::new();
    for client in ["c1", "c2", "c3"] {
        table.subscribe(client, "a/b", sub(QoS::AtMostOnce));
    }
    table.subscribe("g1", "$share/g/a/b", sub(QoS::AtMostOnce));
    table.subscribe("c2", "a/+", with_id(QoS::AtLeastOnce, 5));
    table.subscribe("c3", "#", with_id(QoS::ExactlyOnce, 9));
    table.subscribe("c4", "#", sub(QoS::AtMostOnce));

    let out = routes(&table, "a/b", None);
    let summary: Vec<_> = out
        .iter()
        .map(|r| {
            (
                r.subscriber,
                r.qos,
                r.subscription_identifiers.clone(),
                r.shared_group.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("c1", QoS::AtMostOnce, vec![], false),
            ("c2", QoS::AtLeastOnce, vec![5], false),
            ("c3", QoS::ExactlyOnce, vec![9], false),
            ("c4", QoS::AtMostOnce, vec![], false),
            ("g1", QoS::AtMostOnce, vec![], true),
        ]
    );
}

#[test]
fn no_local_skips_own_messages() {
    let table = Table::new();
    table.subscribe("c1", "a", no_local(QoS::ExactlyOnce));
    table.subscribe("c2", "a", no_local(QoS::AtMostOnce));
    assert_eq!(
        routes(&table, "a", Some("c1"))
            .iter()
            .map(|r| r.subscriber)
            .collect::<Vec<_>>(),
        ["c2"]
    );
    assert_eq!(receivers(&table, "a"), ["c1", "c2"]);

    // An overlapping subscription without No Local still delivers, with
    // its own options only.
    table.subscribe("c1", "+", with_id(QoS::AtMostOnce, 7));
    let out = routes(&table, "a", Some("c1"));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].subscriber, "c1");
    assert_eq!(out[0].qos, QoS::AtMostOnce);
    assert_eq!(out[0].subscription_identifiers, [7]);
}

#[test]
fn shared_round_robin_is_fair() {
    let table = Table::new();
    for member in ["m1", "m2", "m3"] {
        assert!(table.subscribe(member, "$share/g/jobs/+", sub(QoS::AtLeastOnce)));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut previous = None;
    for _ in 0..300 {
        let out = routes(&table, "jobs/1", None);
        assert_eq!(out.len(), 1);
        let route = &out[0];
        assert_eq!(route.shared_group.as_deref(), Some("g"));
        assert_eq!(route.qos, QoS::AtLeastOnce);
        assert_ne!(previous, Some(route.subscriber));
        previous = Some(route.subscriber);
        *counts.entry(route.subscriber).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("m1", 100), ("m2", 100), ("m3", 100)])
    );
}

#[test]
fn shared_prefers_eligible_members() {
    let table = Table::new();
    for member in ["m1", "m2", "m3"] {
        table.subscribe(member, "$share/g/t", sub(QoS::AtMostOnce));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..100 {
        let mut out = Vec::new();
        table.route("t", None, &|m| *m != "m2", &mut out);
        assert_eq!(out.len(), 1);
        *counts.entry(out[0].subscriber).or_default() += 1;
    }
    assert_eq!(counts, BTreeMap::from([("m1", 50), ("m3", 50)]));

    // Nobody eligible: still one delivery per message, in turn.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..90 {
        let mut out = Vec::new();
        table.route("t", None, &|_| false, &mut out);
        assert_eq!(out.len(), 1);
        *counts.entry(out[0].subscriber).or_default() += 1;
    }
    assert_eq!(counts, BTreeMap::from([("m1", 30), ("m2", 30), ("m3", 30)]));
}

#[test]
fn shared_groups_are_independent() {
    let table = Table::new();
    table.subscribe("m1", "$share/g1/t", sub(QoS::AtMostOnce));
    table.subscribe("m1", "$share/g2/t", sub(QoS::AtMostOnce));
    table.subscribe("m1", "$share/g1/+", with_id(QoS::AtMostOnce, 3));
    // No Local does not apply to shared subscriptions.
    table.subscribe("m1", "$share/g1/#", no_local(QoS::AtMostOnce));
    table.subscribe("m1", "t", sub(QoS::ExactlyOnce));
    let out = routes(&table, "t", Some("m1"));
    // g1 on "t", "+" and "#", g2 on "t", plus the ordinary subscription.
    assert_eq!(out.len(), 5);
    assert_eq!(out.iter().filter(|r| r.shared_group.is_none()).count(), 1);
    assert_eq!(
        out.iter()
            .filter(|r| r.shared_group.as_deref() == Some("g1"))
            .count(),
        3
    );
    assert!(out
        .iter()
        .any(|r| r.shared_group.as_deref() == Some("g1") && r.subscription_identifiers == [3]));
    assert_eq!(table.len(), 5);
}

#[test]
fn removing_a_shared_member_keeps_the_turn() {
    let table = Table::new();
    for member in ["m1", "m2", "m3"] {
        table.subscribe(member, "$share/g/t", sub(QoS::AtMostOnce));
    }
    assert_eq!(receivers(&table, "t"), ["m1"]);
    assert!(table.unsubscribe(&"m1", "$share/g/t"));
    assert_eq!(receivers(&table, "t"), ["m2"]);
    assert_eq!(receivers(&table, "t"), ["m3"]);
    assert_eq!(receivers(&table, "t"), ["m2"]);
    assert!(!table.unsubscribe(&"m1", "$share/g/t"));
    assert!(!table.unsubscribe(&"m2", "$share/other/t"));
    assert!(!table.unsubscribe(&"m2", "t"));
}

#[test]
fn unsubscribe_prunes_empty_nodes() {
    let table = Table::new();
    let filters = [
        "a/b/c",
        "a/b",
        "a/+/c",
        "#",
        "+/x",
        "$SYS/#",
        "$share/g/a/b",
        "/",
    ];
    for filter in filters {
        assert!(table.subscribe("c1", filter, sub(QoS::AtMostOnce)));
        assert!(table.subscribe("c2", filter, sub(QoS::AtMostOnce)));
    }
    assert_eq!(table.len(), 2 * filters.len());

    assert!(!table.unsubscribe(&"c1", "a"));
    assert!(!table.unsubscribe(&"c3", "a/b"));
    assert!(!table.unsubscribe(&"c1", "a/b/c/d"));
    assert_eq!(table.len(), 2 * filters.len());

    for filter in filters {
        assert!(table.unsubscribe(&"c1", filter));
    }
    assert_eq!(receivers(&table, "a/b/c"), ["c2"]);
    for filter in filters {
        assert!(table.unsubscribe(&"c2", filter));
        assert!(!table.unsubscribe(&"c2", filter));
    }
    assert!(table.is_empty());
    assert!(fully_pruned(&table));
    assert!(receivers(&table, "a/b/c").is_empty());
}

#[test]
fn subscribe_replaces_options() {
    let table = Table::new();
    assert!(table.subscribe("c1", "a", with_id(QoS::AtMostOnce, 1)));
    assert!(!table.subscribe("c1", "a", with_id(QoS::ExactlyOnce, 2)));
    assert!(table.subscribe("m1", "$share/g/a", sub(QoS::AtMostOnce)));
    assert!(!table.subscribe("m1", "$share/g/a", sub(QoS::AtLeastOnce)));
    assert_eq!(table.len(), 2);
    let out = routes(&table, "a", None);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].subscriber, "c1");
    assert_eq!(out[0].qos, QoS::ExactlyOnce);
    assert_eq!(out[0].subscription_identifiers, [2]);
    assert_eq!(out[1].subscriber, "m1");
    assert_eq!(out[1].qos, QoS::AtLeastOnce);
}

#[test]
fn concurrent_subscribe_and_route() {
    let table = SubscriptionTable::<u32>::new();
    std::thread::scope(|scope| {
        for worker in 0..4u32 {
            let table = &table;
            scope.spawn(move || {
                for i in 0..500u32 {
                    let filter = format!("t{}/{worker}/{i}/+", i % 7);
                    table.subscribe(worker, &filter, sub(QoS::AtMostOnce));
                    let mut out = Vec::new();
                    let topic = format!("t{}/{worker}/{i}/x", i % 7);
                    table.route(&topic, None, &|_| true, &mut out);
                    assert!(out.iter().any(|r| r.subscriber == worker));
                    if i % 2 == 0 {
                        table.unsubscribe(&worker, &filter);
                    }
                }
            });
        }
    });
    // Each worker keeps the filters of odd i.
    assert_eq!(table.len(), 4 * 250);
}

/// A random subscription for the brute-force comparison: subscriber,
/// full filter (shared in group "g" or not), and options. No Local is only
/// set on ordinary subscriptions, as the connection layer guarantees.
fn random_subscription() -> impl Strategy<Value = (u32, String, Subscription)> {
    let qos = prop::sample::select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]);
    let shape = (any::<bool>(), any::<bool>(), any::<Option<u32>>());
    (0u32..4, strategies::topic_filter(), qos, shape).prop_map(
        |(subscriber, filter, qos, (shared, local, identifier))| {
            let mut sub = sub(qos);
            sub.identifier = identifier;
            sub.options.no_local = local && !shared;
            let filter = if shared {
                format!("$share/g/{filter}")
            } else {
                filter
            };
            (subscriber, filter, sub)
        },
    )
}

/// Subscribes everything in `subs`, then checks the routes of each topic
/// against [`topic::matches`] applied to every subscription.
fn check_against_brute_force(
    subs: Vec<(u32, String, Subscription)>,
    topics: &[String],
    publisher: Option<u32>,
) -> Result<(), TestCaseError> {
    let table = SubscriptionTable::<u32>::new();
    // (subscriber, full filter) -> subscription; the last write wins.
    let mut model: BTreeMap<(u32, String), Subscription> = BTreeMap::new();
    for (subscriber, filter, sub) in subs {
        let new = table.subscribe(subscriber, &filter, sub);
        prop_assert_eq!(new, model.insert((subscriber, filter), sub).is_none());
    }
    prop_assert_eq!(table.len(), model.len());

    for topic in topics {
        let mut out = Vec::new();
        table.route(topic, publisher.as_ref(), &|_| true, &mut out);

        // Ordinary subscriber -> (max QoS, identifiers).
        let mut expected: BTreeMap<u32, (QoS, Vec<u32>)> = BTreeMap::new();
        // Matching shared filters, and the members of those groups.
        let mut expected_shared: BTreeSet<&str> = BTreeSet::new();
        let mut shared_members: BTreeSet<u32> = BTreeSet::new();
        for ((subscriber, full), sub) in &model {
            match full.strip_prefix("$share/g/") {
                Some(filter) if topic::matches(filter, topic) => {
                    expected_shared.insert(filter);
                    shared_members.insert(*subscriber);
                }
                None if topic::matches(full, topic)
                    && !(sub.options.no_local && publisher == Some(*subscriber)) =>
                {
                    let entry = expected.entry(*subscriber).or_default();
                    entry.0 = entry.0.max(sub.options.qos);
                    entry.1.extend(sub.identifier);
                }
                _ => {}
            }
        }

        let mut actual: BTreeMap<u32, (QoS, Vec<u32>)> = BTreeMap::new();
        let mut shared_routes = 0;
        for route in out {
            if route.shared_group.is_some() {
                prop_assert_eq!(route.shared_group.as_deref(), Some("g"));
                prop_assert!(shared_members.contains(&route.subscriber));
                shared_routes += 1;
                continue;
            }
            let mut ids = route.subscription_identifiers;
            ids.sort_unstable();
            let previous = actual.insert(route.subscriber, (route.qos, ids));
            prop_assert!(previous.is_none(), "two routes for one subscriber");
        }
        for ids in expected.values_mut() {
            ids.1.sort_unstable();
        }
        prop_assert_eq!(actual, expected, "topic {}", topic);
        prop_assert_eq!(shared_routes, expected_shared.len(), "topic {}", topic);
    }
    Ok(())
}

proptest! {
    #[test]
    fn route_agrees_with_brute_force(
        subs in prop::collection::vec(random_subscription(), 0..24),
        topics in prop::collection::vec(strategies::topic_name(), 1..8),
        publisher in prop::option::of(0u32..4),
    ) {
        check_against_brute_force(subs, &topics, publisher)?;
    }
}
