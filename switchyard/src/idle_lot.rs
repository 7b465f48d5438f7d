//! Where a connection that has been idle a while waits for its client without a task of
//! its own.
//!
//! Once an idle connection has given its buffers back, most of what it still costs is its
//! tokio task, the future the task runs and a timer of its own: for a pooled PostgreSQL
//! client, 256 + 512 + 128 bytes beside its session. Parked here, it keeps only its state
//! (a [`Sleeper`]) and a small waker. Each worker has one lot: one task, one timer for the
//! deadlines of all its sleepers, and a slot for each. A sleeper's socket wakes it through a
//! waker of its own that names it, so a wake-up costs a look at one slot, not at every
//! sleeper. Woken, because its client stirred, its deadline passed or at the hard stop,
//! the sleeper is given a task again, on the lot's worker.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Idle time before a connection (an HTTP one to a client or a server, a pooled database
/// client between transactions) is parked: far longer than the gap between the requests of
/// a busy client or pool, which never pays for parking; short enough that idle connections
/// soon cost little.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What runs when a sleeper wakes: the connection's next phase.
pub type Waking = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection parked in a lot.
pub trait Sleeper: Send + 'static {
    /// Ready once the client has sent something or closed its side; until then the waker
    /// in `cx` is woken when it does (the socket's readiness, which a read that found
    /// nothing cleared: a socket never read reads as ready, and its sleeper is woken at once).
    fn poll_stirred(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The connection's next phase, run on a task of its own.
    fn wake(self: Box<Self>, why: Woken) -> Waking;
}

/// Why a sleeper wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Its client sent something or closed.
    Stirred,
    /// Its deadline passed first.
    Deadline,
    /// The hard stop.
    Stop,
}

/// Parks `sleeper` in this worker's lot until its client stirs, `deadline` passes (none:
/// no limit) or `stop` fires. The lot is made on the worker's first park and watches the
/// `stop` of that park: every park of a worker must pass the same token (the worker's
/// hard stop).
pub fn park(sleeper: Box<dyn Sleeper>, deadline: Option<Instant>, stop: &CancellationToken) {
    let shared = HERE.with(|here| {
        let mut here = here.borrow_mut();
        match &*here {
            Some((shared, task)) if !task.is_finished() => shared.clone(),
            // The lot lasts as long as its worker: it is made in the lasting heap (see
            // `memory`), not among the allocations of the burst of clients that first dozes.
            _ => crate::memory::lasting(|| {
                let shared = Arc::new(Shared::default());
                let task = tokio::spawn(run(shared.clone(), stop.clone()));
                *here = Some((shared.clone(), task));
                shared
            }),
        }
    });
    shared.inbox().arrivals.push((sleeper, deadline));
    shared.notify.notify_one();
}

/// Sleepers in every lot of the process.
static SLEEPING: AtomicUsize = AtomicUsize::new(0);

/// How many connections wait in the process's lots now (a metric).
pub fn sleeping() -> usize {
    SLEEPING.load(Ordering::Relaxed)
}

thread_local! {
    /// This worker's lot: what wakers and parks reach, and the task that runs it (a lot
    /// whose runtime has ended is replaced).
    static HERE: RefCell<Option<(Arc<Shared>, JoinHandle<()>)>> = const { RefCell::new(None) };
}

/// What parks and wakers hand the lot's task.
#[derive(Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    notify: Notify,
}

#[derive(Default)]
struct Inbox {
    /// Sleepers parked since the lot last looked, with their deadlines.
    arrivals: Vec<(Box<dyn Sleeper>, Option<Instant>)>,
    /// Keys of sleepers whose clients stirred.
    stirred: Vec<usize>,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The waker a sleeper's socket keeps: it names the sleeper to its lot.
struct Alarm {
    lot: Arc<Shared>,
    key: usize,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.lot.inbox().stirred.push(self.key);
        self.lot.notify.notify_one();
    }
}

/// The lot's own state, kept by its task.
struct Lot {
    shared: Arc<Shared>,
    /// Sleepers by key, a slot each (32 B), reused once free. A waker left by a slot's
    /// earlier sleeper can at most wake its next one early, which then waits again.
    sleeping: Vec<Option<Asleep>>,
    /// Free slots.
    free: Vec<usize>,
    /// Deadlines, soonest on top, in one block (a tree's nodes, taken one by one as a
    /// burst of clients dozes, would pin pages of the burst's freed memory). A sleeper
    /// woken early leaves its entry behind; it is dropped when it comes up, or when such
    /// entries outnumber the others ([`Lot::forget_deadline`]).
    deadlines: BinaryHeap<Reverse<Due>>,
    /// Entries in `deadlines` whose sleeper has left.
    stale: usize,
    /// The ticket of the next sleeper admitted.
    next_ticket: u64,
    stopped: bool,
}

struct Asleep {
    sleeper: Box<dyn Sleeper>,
    /// Names this stay in the slot: an entry in `deadlines` is this sleeper's only if its
    /// ticket is this one.
    ticket: u64,
    /// Whether it has an entry in `deadlines`.
    timed: bool,
}

/// When a sleeper's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    key: usize,
    ticket: u64,
}

/// The lot's task: takes in arrivals, wakes the stirred and the expired, and at `stop`
/// everyone (and from then on every arrival at once).
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut lot = Lot::new(shared);
    let mut timer = crate::memory::lasting(|| Box::pin(tokio::time::sleep_until(Instant::now())));
    loop {
        lot.take_inbox();
        lot.wake_expired(Instant::now());
        let next = lot.deadlines.peek().map(|Reverse(due)| due.at);
        if let Some(at) = next {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            () = stop.cancelled(), if !lot.stopped => lot.stop(),
            () = lot.shared.notify.notified() => {}
            () = timer.as_mut(), if next.is_some() => {}
        }
    }
}

impl Lot {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            sleeping: Vec::new(),
            free: Vec::new(),
            deadlines: BinaryHeap::new(),
            stale: 0,
            next_ticket: 0,
            stopped: false,
        }
    }

    fn take_inbox(&mut self) {
        let Inbox { arrivals, stirred } = std::mem::take(&mut *self.shared.inbox());
        for (sleeper, deadline) in arrivals {
            self.admit(sleeper, deadline);
        }
        for key in stirred {
            // A key no longer here: woken already (a socket may wake its waker twice).
            if let Some(asleep) = self.take(key) {
                resume(asleep.sleeper, Woken::Stirred);
            }
        }
    }

    /// Takes `sleeper` in, unless it is stirred already or the lot has stopped.
    fn admit(&mut self, mut sleeper: Box<dyn Sleeper>, deadline: Option<Instant>) {
        if self.stopped {
            resume(sleeper, Woken::Stop);
            return;
        }
        let key = self.free.pop().unwrap_or_else(|| {
            self.sleeping.push(None);
            self.sleeping.len() - 1
        });
        // The socket keeps the waker for as long as the sleeper waits (see `memory`).
        let waker = crate::memory::lasting(|| {
            Waker::from(Arc::new(Alarm {
                lot: self.shared.clone(),
                key,
            }))
        });
        if sleeper
            .poll_stirred(&mut Context::from_waker(&waker))
            .is_ready()
        {
            self.free.push(key);
            resume(sleeper, Woken::Stirred);
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let Some(at) = deadline {
            self.deadlines.push(Reverse(Due { at, key, ticket }));
        }
        self.sleeping[key] = Some(Asleep {
            sleeper,
            ticket,
            timed: deadline.is_some(),
        });
        SLEEPING.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a sleeper out, leaving its deadline.
    fn unpark(&mut self, key: usize) -> Option<Asleep> {
        let asleep = self.sleeping.get_mut(key)?.take()?;
        self.free.push(key);
        SLEEPING.fetch_sub(1, Ordering::Relaxed);
        Some(asleep)
    }

    /// Takes a sleeper out before its deadline.
    fn take(&mut self, key: usize) -> Option<Asleep> {
        let asleep = self.unpark(key)?;
        if asleep.timed {
            self.forget_deadline();
        }
        Some(asleep)
    }

    /// Counts a deadline entry whose sleeper left early, and drops all such entries once
    /// they outnumber the others, so that clients that doze and stir again and again
    /// under a long `timeouts.client` do not grow the heap.
    fn forget_deadline(&mut self) {
        self.stale += 1;
        if self.stale <= self.deadlines.len() / 2 + 64 {
            return;
        }
        let sleeping = &self.sleeping;
        self.deadlines
            .retain(|Reverse(due)| is_current(sleeping, due));
        self.stale = 0;
        if self.deadlines.len() < self.deadlines.capacity() / 4 {
            self.deadlines.shrink_to_fit();
        }
    }

    fn wake_expired(&mut self, now: Instant) {
        while let Some(&Reverse(due)) = self.deadlines.peek()
            && due.at <= now
        {
            self.deadlines.pop();
            if !is_current(&self.sleeping, &due) {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            if let Some(asleep) = self.unpark(due.key) {
                resume(asleep.sleeper, Woken::Deadline);
            }
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.deadlines.clear();
        self.stale = 0;
        self.free.clear();
        for asleep in self.sleeping.drain(..).flatten() {
            SLEEPING.fetch_sub(1, Ordering::Relaxed);
            resume(asleep.sleeper, Woken::Stop);
        }
    }
}

/// Whether `due` is the deadline of the sleeper now in its slot (not of one that left).
fn is_current(sleeping: &[Option<Asleep>], due: &Due) -> bool {
    matches!(sleeping.get(due.key), Some(Some(asleep)) if asleep.ticket == due.ticket)
}

/// Gives a woken sleeper its task again. The task and its future come from the main heap,
/// not the lasting one (see `memory`): they end when the connection dozes again, and freed
/// there they would leave the lasting heap's pages half empty (`Handler::lasting_tasks`).
fn resume(sleeper: Box<dyn Sleeper>, why: Woken) {
    tokio::spawn(sleeper.wake(why));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A socket parked with a channel that reports why and when it woke.
    struct Socket {
        stream: TcpStream,
        woke: mpsc::UnboundedSender<(Woken, Vec<u8>)>,
    }

    impl Sleeper for Socket {
        fn poll_stirred(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            self.stream.poll_read_ready(cx).map(|_| ())
        }

        fn wake(self: Box<Self>, why: Woken) -> Waking {
            let Socket { mut stream, woke } = *self;
            Box::pin(async move {
                let mut read = vec![0; 16];
                let n = match why {
                    Woken::Stirred => stream.read(&mut read).await.unwrap_or(0),
                    _ => 0,
                };
                read.truncate(n);
                let _ = woke.send((why, read));
            })
        }
    }

    /// A connected client and the server's side, read until it had nothing (as a
    /// connection waiting for its client has been).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let server = accepted.expect("accept").0;
        let nothing = server.try_read(&mut [0; 1]);
        assert!(matches!(&nothing, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        (client.expect("connect"), server)
    }

    /// Parks the server's side of a pair, reporting to `woke` when it wakes.
    fn park_socket(
        server: TcpStream,
        woke: &mpsc::UnboundedSender<(Woken, Vec<u8>)>,
        deadline: Option<Instant>,
        stop: &CancellationToken,
    ) {
        let sleeper = Socket {
            stream: server,
            woke: woke.clone(),
        };
        park(Box::new(sleeper), deadline, stop);
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_its_client_sends_and_goes_on_with_the_bytes() {
        let stop = CancellationToken::new();
        let (woke, mut woken) = mpsc::unbounded_channel();
        let (mut client, server) = pair().await;
        let (other_client, other) = pair().await;
        park_socket(other, &woke, None, &stop);
        park_socket(server, &woke, None, &stop);
        client.write_all(b"hello").await.expect("write");
        let (why, bytes) = woken.recv().await.expect("woken");
        assert_eq!((why, bytes.as_slice()), (Woken::Stirred, &b"hello"[..]));
        // The other sleeper, whose client said nothing, still sleeps.
        assert!(woken.try_recv().is_err());
        drop(other_client);
        let (why, bytes) = woken.recv().await.expect("woken by the close");
        assert_eq!((why, bytes.len()), (Woken::Stirred, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_deadline_wakes_first_and_a_stirred_sleeper_leaves_its_deadline() {
        let stop = CancellationToken::new();
        let (woke, mut woken) = mpsc::unbounded_channel();
        let start = Instant::now();
        // Connected first: while the runtime waits for a connection, paused time would
        // run on to the first deadline.
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair().await;
            clients.push(client);
            servers.push(server);
        }
        for (server, seconds) in servers.into_iter().zip([30, 10, 20]) {
            let deadline = start + Duration::from_secs(seconds);
            park_socket(server, &woke, Some(deadline), &stop);
        }
        // The one due at 30 s stirs first; the others wake at their deadlines, in order.
        clients[0].write_all(b"x").await.expect("write");
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Stirred));
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Deadline));
        assert!(Instant::now() >= start + Duration::from_secs(10));
        assert!(Instant::now() < start + Duration::from_secs(20));
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Deadline));
        assert!(Instant::now() >= start + Duration::from_secs(20));
        assert!(woken.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reused_after_a_stir_is_not_woken_by_its_earlier_sleepers_deadline() {
        let stop = CancellationToken::new();
        let (woke, mut woken) = mpsc::unbounded_channel();
        let start = Instant::now();
        let (mut first_client, first) = pair().await;
        let (_second_client, second) = pair().await;
        park_socket(first, &woke, Some(start + Duration::from_secs(10)), &stop);
        first_client.write_all(b"x").await.expect("write");
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Stirred));
        // The second sleeper takes the slot the first one left, with a later deadline.
        park_socket(second, &woke, Some(start + Duration::from_secs(30)), &stop);
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Deadline));
        assert!(Instant::now() >= start + Duration::from_secs(30));
    }

    /// A sleeper whose client never stirs.
    struct Quiet;

    impl Sleeper for Quiet {
        fn poll_stirred(&mut self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }

        fn wake(self: Box<Self>, _: Woken) -> Waking {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn deadlines_left_by_sleepers_that_stirred_do_not_pile_up() {
        let mut lot = Lot::new(Arc::default());
        let deadline = Instant::now() + Duration::from_secs(3600);
        for _ in 0..100 {
            lot.admit(Box::new(Quiet), Some(deadline));
        }
        for round in 0..10_000 {
            let key = round % 100;
            assert!(lot.take(key).is_some());
            lot.admit(Box::new(Quiet), Some(deadline));
        }
        assert!(
            lot.deadlines.len() <= 2 * 100 + 130,
            "{}",
            lot.deadlines.len()
        );
        // Each sleeper still has its own deadline.
        lot.wake_expired(deadline);
        assert!(lot.sleeping.iter().all(Option::is_none));
        assert_eq!(lot.deadlines.len(), 0);
    }

    #[tokio::test]
    async fn the_stop_wakes_every_sleeper_and_later_arrivals_at_once() {
        let stop = CancellationToken::new();
        let (woke, mut woken) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair().await;
            clients.push(client);
            park_socket(server, &woke, None, &stop);
        }
        stop.cancel();
        for _ in 0..3 {
            assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Stop));
        }
        let (client, server) = pair().await;
        clients.push(client);
        park_socket(server, &woke, None, &stop);
        assert_eq!(woken.recv().await.map(|w| w.0), Some(Woken::Stop));
    }
}
