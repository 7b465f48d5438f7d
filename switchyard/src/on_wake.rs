//! Futures and polls that run only when they were woken themselves.
//!
//! `tokio::select!` polls every branch each time its task wakes. A connection task that
//! waits on its I/O and, beside it, on rare events (shutdown, an idle deadline) thus polls
//! the rare ones on every read and write, and each such poll takes locks (a cancellation
//! token's, a `Notify`'s). Wrapped in [`OnWake`], the rare branch costs a few atomic
//! operations per wake-up of the task until something it waits on fires. The same goes
//! for a task that waits on two sockets at once (a pooled transaction, on its client and
//! its server): through a [`Gate`] each, a wake-up polls only the socket that woke it.

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
    gate: Gate,
}

/// Lets a poll through only when what it waits on may have changed: the first time, right
/// after a poll that was ready (a read that filled a buffer may have left more behind),
/// and after the waker it registered fired. A task that waits on several things at once
/// (`tokio::select!` style) polls, at each wake-up, only the ones that woke it.
pub struct Gate {
    signal: Arc<Signal>,
    waker: Waker,
}

/// Whether the gated poll was woken, and the task to wake when it is.
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

impl Default for Gate {
    fn default() -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl Gate {
    /// Whether a poll would run now: the first time, after a ready poll, or after the
    /// gate's waker fired. A load, not a poll: it registers nothing, so a task that goes
    /// to sleep on the gate must still poll it.
    pub fn is_open(&self) -> bool {
        self.signal.woken.load(Ordering::Acquire)
    }

    /// Runs `poll` with the gate's own waker if it may be ready; `Pending` without running
    /// it otherwise. The task in `cx` is woken when the gate's waker is.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the flag is read, so a wake-up in between is not lost.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            self.signal.woken.store(true, Ordering::Release);
        }
        polled
    }
}

impl<F: Future> OnWake<F> {
    /// Wraps `inner` (boxed, so that moving the wrapper stays cheap).
    pub fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
            gate: Gate::default(),
        }
    }

    /// Whether a poll would look at the inner future now (see [`Gate::is_open`]).
    pub fn is_woken(&self) -> bool {
        self.gate.is_open()
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.gate.poll(cx, |cx| this.inner.as_mut().poll(cx))
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

    /// A gated poll runs first, again after it was ready (more may be left), and then
    /// only when the waker it was given fires; the task is woken with it.
    #[test]
    fn a_gate_lets_a_poll_through_after_a_ready_one_or_its_own_wake_up() {
        let task_woken = Arc::new(AtomicUsize::new(0));
        struct CountWakes(Arc<AtomicUsize>);
        impl Wake for CountWakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let task = Waker::from(Arc::new(CountWakes(task_woken.clone())));
        let mut cx = Context::from_waker(&task);
        let gate = Gate::default();
        let runs = AtomicUsize::new(0);
        let registered = std::sync::Mutex::new(None::<Waker>);
        let poll = |ready: bool, cx: &mut Context<'_>| {
            gate.poll(cx, |inner| {
                runs.fetch_add(1, Ordering::SeqCst);
                *registered.lock().unwrap() = Some(inner.waker().clone());
                if ready {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        };
        assert!(poll(true, &mut cx).is_ready());
        assert!(
            poll(false, &mut cx).is_pending(),
            "polled again after a ready poll"
        );
        for _ in 0..3 {
            assert!(poll(true, &mut cx).is_pending(), "not woken: not polled");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!gate.is_open());
        registered.lock().unwrap().take().unwrap().wake();
        assert_eq!(task_woken.load(Ordering::SeqCst), 1);
        assert!(gate.is_open());
        assert!(poll(true, &mut cx).is_ready());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
