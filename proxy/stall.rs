//! A limit on how long something may go without progress (an upload, a response body,
//! a tunnel), that costs nothing while it never has to wait: the clock is read and a
//! timer made only from the first wait on, and the timer is re-armed only when it
//! fires early (progress moved the deadline), not at every step.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// No progress for `limit` (counted from the first wait) runs it out.
pub struct Stall {
    /// The limit.
    limit: Duration,
    /// The last progress, once there was a wait (None before).
    last: Option<Instant>,
    /// Made at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// A limit of `limit`.
    pub fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            last: None,
            timer: None,
        }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Progress: the limit counts again from now (a clock read, once there was a wait).
    pub fn moved(&mut self) {
        if self.last.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Waiting: Pending (the task is woken when the limit may have run out), or Ready
    /// once `limit` has passed without progress.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let last = *self.last.get_or_insert_with(Instant::now);
        let due = last + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(s: &mut Stall) -> Poll<()> {
        s.poll_expired(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn runs_out_only_after_the_limit_without_progress() {
        let mut s = Stall::new(Duration::from_secs(2));
        // Progress before any wait costs nothing and changes nothing.
        s.moved();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            poll(&mut s).is_pending(),
            "the limit counts from the first wait"
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(poll(&mut s).is_pending());
        s.moved();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(poll(&mut s).is_pending(), "progress moved the deadline");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(poll(&mut s).is_ready(), "2 s without progress");
        assert_eq!(s.limit(), Duration::from_secs(2));
    }
}
