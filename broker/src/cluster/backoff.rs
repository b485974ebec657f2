//! Waiting longer after each failed attempt at a NATS call, up to a
//! ceiling: a JetStream that is electing leaders or catching up answers
//! again within seconds, and a node that retries at once only adds to its
//! load.

use std::time::Duration;

/// The pause before the next attempt: doubles after each wait, up to a
/// ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, never waits longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first.min(max),
            max,
        }
    }

    /// Sleeps for the current pause, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pause_doubles_up_to_its_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let mut pauses = Vec::new();
        for _ in 0..4 {
            let start = tokio::time::Instant::now();
            backoff.wait().await;
            pauses.push(start.elapsed().as_millis());
        }
        assert_eq!(pauses, vec![100, 200, 350, 350]);
    }
}
