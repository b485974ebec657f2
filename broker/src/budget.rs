//! The broker-wide budget for queued messages: the payload bytes held in
//! every session's queue together, so that many sessions, each within its
//! own limits, cannot take the process past its memory limit.
//!
//! Three levels: below 90 % of the budget nothing happens; from 90 %
//! ([`Level::Pressed`]) messages for offline sessions are dropped and
//! connected subscribers' queues pause their publishers at an eighth of
//! their usual mark ([`crate::queue`]); at 100 % ([`Level::Full`]) every
//! new message is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How full the budget is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Under 90 %.
    Normal,
    /// From 90 %: offline queues drop, publishers wait sooner.
    Pressed,
    /// At 100 %: everything drops.
    Full,
}

/// Queued bytes against a limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; 0 for none.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// The budget in bytes (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn level(&self) -> Level {
        if self.limit == 0 {
            return Level::Normal;
        }
        let used = self.used();
        if used >= self.limit {
            Level::Full
        } else if used >= self.limit / 10 * 9 {
            Level::Pressed
        } else {
            Level::Normal
        }
    }

    /// `bytes` more are queued.
    pub fn add(&self, bytes: usize) {
        if self.limit != 0 {
            self.used.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `bytes` fewer are queued.
    pub fn remove(&self, bytes: usize) {
        if self.limit != 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// The budget to use when the configuration leaves it at 0: half the
/// memory limit of the process's cgroup, or half the machine's memory.
pub fn default_limit() -> (usize, &'static str) {
    if let Some(limit) = cgroup_memory_limit() {
        return (limit / 2, "half the container's memory limit");
    }
    match machine_memory() {
        Some(total) => (total / 2, "half the machine's memory"),
        None => (0, "no memory limit could be read: no budget"),
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), when one is set.
fn cgroup_memory_limit() -> Option<usize> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let parse = |text: String| text.trim().parse::<u64>().ok();
    let limit = read("/sys/fs/cgroup/memory.max")
        .and_then(parse)
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes").and_then(parse))?;
    // cgroup v1 reports "no limit" as a huge number.
    (limit < 1 << 60).then(|| usize::try_from(limit).unwrap_or(usize::MAX))
}

fn machine_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_marks() {
        let budget = MemoryBudget::new(1000);
        budget.add(899);
        assert_eq!(budget.level(), Level::Normal);
        budget.add(1);
        assert_eq!(budget.level(), Level::Pressed);
        budget.add(100);
        assert_eq!(budget.level(), Level::Full);
        budget.remove(1);
        assert_eq!(budget.level(), Level::Pressed);
        budget.remove(100);
        assert_eq!(budget.level(), Level::Normal);
        assert_eq!(budget.used(), 899);
    }

    #[test]
    fn no_budget_is_never_pressed() {
        let budget = MemoryBudget::new(0);
        budget.add(usize::MAX / 2);
        assert_eq!(budget.level(), Level::Normal);
        assert_eq!(budget.used(), 0);
    }
}
