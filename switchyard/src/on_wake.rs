//! A future that is polled only when it was woken itself.
//!
//! `tokio::select!` polls every branch each time its task wakes. A connection task that
//! waits on its I/O and, beside it, on rare events (shutdown, an idle deadline) thus polls
//! the rare ones on every read and write, and each such poll takes locks (a cancellation
//! token's, a `Notify`'s). Wrapped in [`OnWake`], the rare branch costs a few atomic
//! operations per wake-up of the task until something it waits on fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio_util::sync::CancellationToken;

/// Polls the inner future on the first poll, then only after a waker it was given fired.
pub struct OnWake<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    waker: Waker,
}

/// Whether the inner future was woken, and the task to wake when it is.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    /// Wraps `inner` (boxed, so that moving the wrapper stays cheap).
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake-up in between is not lost.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// What ended a connection's wait from outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// The server was taken out of service: its sessions are cut.
    Cut,
    /// The proxy's hard stop.
    Stop,
}

/// The server's `cut` or the hard `stop`, whichever fires first (the cut when both have),
/// looked at only when one fires: what a relay or a pooled transaction waits on beside
/// its sockets.
pub fn cut_or_stop<'a>(
    cut: &'a CancellationToken,
    stop: &'a CancellationToken,
) -> OnWake<impl Future<Output = Interruption> + 'a> {
    OnWake::new(async move {
        tokio::select! {
            biased;
            () = cut.cancelled() => Interruption::Cut,
            () = stop.cancelled() => Interruption::Stop,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set and it is polled.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_when_its_own_waker_fires() {
        let (polls, ready) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut quiet = OnWake::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        for _ in 0..5 {
            assert!(Pin::new(&mut quiet).poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled once, then only when woken"
        );
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(Pin::new(&mut quiet).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
