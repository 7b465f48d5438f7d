//! Tasks waiting for something another task frees (a server slot, a pooled server
//! connection), counted so that freeing it costs a `Notify` lock only when someone waits:
//! on a busy proxy almost every release happens with nobody waiting.

use std::sync::atomic::{AtomicUsize, Ordering, fence};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// A wait queue that knows whether anyone is in it.
#[derive(Debug, Default)]
pub struct WaitQueue {
    notify: Notify,
    waiting: AtomicUsize,
}

/// A task counted in a [`WaitQueue`] until dropped.
#[derive(Debug)]
pub struct Waiting<'a>(&'a WaitQueue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WaitQueue {
    /// Counts the caller in. Join before looking for what is waited for, and register
    /// (`notified` then `enable`) before each look: a release between the look and the wait
    /// is then never missed.
    pub fn join(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `has_waiters`: either the releaser sees this count, or
        // this task's next look sees what was released.
        fence(Ordering::SeqCst);
        Waiting(self)
    }

    /// The next wake-up, to register before looking.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Whether anyone is counted in; call after releasing.
    pub fn has_waiters(&self) -> bool {
        fence(Ordering::SeqCst);
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Wakes one waiting task, if any is counted in; whether one was.
    pub fn wake_one(&self) -> bool {
        let waiting = self.has_waiters();
        if waiting {
            self.notify.notify_one();
        }
        waiting
    }

    /// Wakes every registered task, if any is counted in.
    pub fn wake_all(&self) {
        if self.has_waiters() {
            self.notify.notify_waiters();
        }
    }

    /// Wakes every registered task whether counted in or not: they must look again because
    /// something else changed (a server came back, a pool was retired).
    pub fn wake_all_now(&self) {
        self.notify.notify_waiters();
    }
}
