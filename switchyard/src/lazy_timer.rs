//! A timer for deadlines that mostly move later.
//!
//! A keep-alive deadline moves with every request, and a response timeout starts with
//! every request. Resetting a tokio timer for each takes it out of the timer wheel and puts
//! it back, under the wheel's lock. [`LazyTimer`] is moved only when a deadline comes
//! earlier than where it is armed; armed early, it fires early once, and is then armed at
//! the deadline that applies by then.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// A reusable timer armed at or before the deadline it is polled for; see the module
/// documentation.
#[derive(Debug)]
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Default for LazyTimer {
    fn default() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: false,
        }
    }
}

impl LazyTimer {
    /// Ready, with the time, once `deadline` has passed; until then it wakes the task at
    /// `deadline` or earlier (when armed earlier and not moved).
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<Instant> {
        loop {
            if !self.armed || deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(deadline);
                self.armed = true;
            }
            ready!(self.sleep.as_mut().poll(cx));
            self.armed = false;
            let now = Instant::now();
            if now >= deadline {
                return Poll::Ready(now);
            }
        }
    }

    /// Completes once `deadline` has passed.
    pub async fn until(&mut self, deadline: Instant) -> Instant {
        std::future::poll_fn(|cx| self.poll_until(cx, deadline)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_waits_for_itself_and_an_earlier_one_moves_the_timer() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        // Armed at +10s, then asked for +30s: it fires at +10s, re-arms, and ends at +30s.
        let early = tokio::time::timeout(
            Duration::from_secs(5),
            timer.until(start + Duration::from_secs(10)),
        )
        .await;
        assert!(early.is_err(), "ended before its deadline");
        let at = timer.until(start + Duration::from_secs(30)).await;
        assert!(at >= start + Duration::from_secs(30));
        // Armed at +90s (a later deadline), then asked for an earlier one: moved earlier.
        let late = tokio::time::timeout(
            Duration::from_secs(1),
            timer.until(at + Duration::from_secs(60)),
        )
        .await;
        assert!(late.is_err());
        let now = Instant::now();
        let at = timer.until(now + Duration::from_secs(2)).await;
        assert!(at >= now + Duration::from_secs(2) && at < now + Duration::from_secs(3));
    }
}
