//! A bounded map for the HTTP hook's answers: two generations, the older
//! dropped whole when the newer fills half the capacity. O(1), never more
//! than `capacity` entries, and what is used stays (a hit in the older
//! generation moves to the newer).

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;

pub(crate) struct BoundedCache<K, V> {
    generations: Mutex<Generations<K, V>>,
    /// Entries per generation.
    half: usize,
}

struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> BoundedCache<K, V> {
        BoundedCache {
            generations: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
            }),
            half: (capacity / 2).max(1),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut g = self.generations.lock();
        if let Some(value) = g.current.get(key) {
            return Some(value.clone());
        }
        let value = g.previous.remove(key)?;
        Self::put(&mut g, self.half, key.clone(), value.clone());
        Some(value)
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let mut g = self.generations.lock();
        Self::put(&mut g, self.half, key, value);
    }

    fn put(g: &mut Generations<K, V>, half: usize, key: K, value: V) {
        g.current.insert(key, value);
        if g.current.len() >= half {
            g.previous = std::mem::take(&mut g.current);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let g = self.generations.lock();
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_and_keeps_what_is_used() {
        let cache = BoundedCache::new(100);
        for i in 0..1000 {
            cache.insert(i, i * 2);
            assert!(cache.len() <= 100);
            // A hot key survives the churn.
            cache.insert(-1, 7);
            assert_eq!(cache.get(&-1), Some(7));
        }
        assert_eq!(cache.get(&999), Some(1998));
        assert_eq!(cache.get(&0), None, "evicted");
    }
}
