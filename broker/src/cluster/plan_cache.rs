//! The plans of recent topics, so that a publish on a topic seen before
//! costs one hash lookup instead of a walk through the interest tables.
//!
//! Devices publish on the same few topics over and over, and a walk of
//! the tables (every level split, hashed and compared) was a quarter of
//! what a node spends routing a message to another node. A plan depends
//! only on the tables, except for shared subscriptions, whose member is
//! chosen anew each time (and among the nodes alive): plans that involved
//! a shared group are never kept. Any change of the tables empties the
//! cache, and a plan made while one happened is not kept (see
//! [`PlanCache::insert`]).

use std::collections::HashMap;

use ahash::RandomState;
use parking_lot::RwLock;

use super::interest::Plan;

/// Topics whose plans are kept, at most; past it the cache starts over
/// (a fleet publishing on more distinct topics than this gains little
/// from it, and loses only the copy of each topic).
const MAX_TOPICS: usize = 16 * 1024;

#[derive(Default)]
pub struct PlanCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Changes of the tables so far.
    generation: u64,
    plans: HashMap<Box<str>, Plan, RandomState>,
}

impl PlanCache {
    /// The kept plan of `topic`; on a miss, the generation to pass to
    /// [`PlanCache::insert`] with the plan made now.
    pub fn get(&self, topic: &str) -> Result<Plan, u64> {
        let inner = self.inner.read();
        match inner.plans.get(topic) {
            Some(plan) => Ok(plan.clone()),
            None => Err(inner.generation),
        }
    }

    /// Keeps `plan` for `topic`, unless the tables changed since
    /// [`PlanCache::get`] gave `generation` (the plan may have been made
    /// from the tables half-way through the change).
    pub fn insert(&self, topic: &str, generation: u64, plan: &Plan) {
        let mut inner = self.inner.write();
        if inner.generation != generation {
            return;
        }
        if inner.plans.len() >= MAX_TOPICS {
            inner.plans.clear();
        }
        inner.plans.insert(topic.into(), plan.clone());
    }

    /// The tables changed: every kept plan goes. Call it after the
    /// change.
    pub fn invalidate(&self) {
        let mut inner = self.inner.write();
        inner.generation += 1;
        inner.plans.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn to(node: &str) -> Plan {
        Plan {
            remote: vec![(Arc::from(node), Vec::new())],
            ..Plan::default()
        }
    }

    #[test]
    fn a_kept_plan_is_given_back_until_the_tables_change() {
        let cache = PlanCache::default();
        let generation = cache.get("t/1").unwrap_err();
        cache.insert("t/1", generation, &to("b"));
        assert_eq!(cache.get("t/1"), Ok(to("b")));
        assert!(cache.get("t/2").is_err());
        cache.invalidate();
        assert!(cache.get("t/1").is_err());
    }

    #[test]
    fn a_plan_made_while_the_tables_changed_is_not_kept() {
        let cache = PlanCache::default();
        let generation = cache.get("t/1").unwrap_err();
        cache.invalidate();
        cache.insert("t/1", generation, &to("b"));
        assert!(cache.get("t/1").is_err());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = PlanCache::default();
        for i in 0..MAX_TOPICS {
            let topic = format!("t/{i}");
            let generation = cache.get(&topic).unwrap_err();
            cache.insert(&topic, generation, &to("b"));
        }
        assert!(cache.get("t/0").is_ok());
        let generation = cache.get("one/more").unwrap_err();
        cache.insert("one/more", generation, &to("c"));
        assert!(cache.get("t/0").is_err());
        assert_eq!(cache.get("one/more"), Ok(to("c")));
    }
}
