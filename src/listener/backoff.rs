//! The pause of accepting after the process ran out of descriptors or kernel memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tracing::debug;

/// First pause of accepting after the process ran out of descriptors or kernel memory; each
/// further failure doubles it, up to [`ACCEPT_BACKOFF_MAX`]. A successful accept resets it.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Such failures less than this apart belong to one episode, which `accept` reports once.
const EPISODE_GAP: Duration = Duration::from_secs(10);

/// The pause of accepting after the process ran out of descriptors or kernel memory.
#[derive(Debug)]
pub(super) struct Backoff {
    /// Set while accepting is paused.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The next pause.
    delay: Duration,
    last_failure: Option<Instant>,
    /// Failures in the current episode.
    failures_in_episode: u64,
    /// Failures since the last successful accept.
    failures_in_a_row: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            sleep: None,
            delay: ACCEPT_BACKOFF_MIN,
            last_failure: None,
            failures_in_episode: 0,
            failures_in_a_row: 0,
        }
    }
}

impl Backoff {
    /// Pauses after a failed accept; returns the pause.
    pub(super) fn failed(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_none_or(|last| now.duration_since(last) >= EPISODE_GAP)
        {
            self.failures_in_episode = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
        self.last_failure = Some(now);
        self.failures_in_episode += 1;
        self.failures_in_a_row += 1;
        let delay = self.delay;
        self.delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
        self.sleep = Some(Box::pin(tokio::time::sleep_until(now + delay)));
        delay
    }

    /// Whether the last failure was the first of its episode, to be reported.
    pub(super) fn first_in_episode(&self) -> bool {
        self.failures_in_episode == 1
    }

    /// Accepting on `what` failed for want of descriptors or memory (`e`): pauses, and
    /// returns the error to report if it is the first of its episode (later ones are only
    /// logged; the caller then waits the pause out with [`poll_wait`](Backoff::poll_wait)).
    pub(super) fn paused(&mut self, what: &str, e: std::io::Error) -> Option<crate::Error> {
        let delay = self.failed();
        if self.first_in_episode() {
            return Some(crate::Error::io(
                &format!("accepting on {what} (paused; the listener retries on its own)"),
                e,
            ));
        }
        debug!(on = what, error = %e, ?delay, "accepting paused");
        None
    }

    /// Ends the pauses' doubling after a successful accept (not the episode).
    pub(super) fn succeeded(&mut self) {
        if self.failures_in_a_row > 0 {
            debug!(
                failures = self.failures_in_a_row,
                "accepting again after running out of resources"
            );
            self.failures_in_a_row = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
    }

    /// Ready when accepting is not paused; registers the timer's waker otherwise.
    pub(super) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = &mut self.sleep {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_pauses_double_up_to_a_second_and_reset_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // One episode: reported once.
        assert_eq!(backoff.failures_in_episode, 9);
        backoff.succeeded();
        assert_eq!(backoff.failed(), ACCEPT_BACKOFF_MIN);
        assert_eq!(
            backoff.failures_in_episode, 10,
            "a success does not end the episode"
        );
    }
}
