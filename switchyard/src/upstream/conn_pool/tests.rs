//! The pool's promises, checked with simulated clients instead of sockets: many clients
//! on two worker threads arriving, leasing, giving back, discarding and vanishing at
//! random points, for many seeds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::upstream::{AdminState, Pool, ServerRole};

/// A connection of the simulation: counted alive until dropped.
#[derive(Debug)]
struct TestConn {
    server: Arc<Server>,
    worker: Option<usize>,
    _place: Place<TestConn>,
    _alive: Alive,
}

impl PooledConn for TestConn {
    fn server(&self) -> &Arc<Server> {
        &self.server
    }

    fn worker(&self) -> Option<usize> {
        self.worker
    }
}

/// Counts a connection object as alive while it exists.
#[derive(Debug)]
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn servers(count: usize) -> Arc<Pool> {
    let servers: Vec<String> = (0..count)
        .map(|i| format!("{{ name = \"s{i}\", address = \"127.0.0.1:{}\" }}", i + 1))
        .collect();
    let pool = format!("servers = [ {} ]", servers.join(", "));
    let text = crate::testing::postgres_config("", &pool, "");
    let config = crate::testing::load_config(&text).expect("valid config");
    Arc::new(Pool::new(&config.pools[0]).expect("pool"))
}

thread_local! {
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// A two-worker runtime whose threads know their index, like switchyard's workers.
fn two_workers() -> tokio::runtime::Runtime {
    let next = Arc::new(AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .on_thread_start(move || {
            let index = next.fetch_add(1, Ordering::SeqCst);
            WORKER.with(|w| w.set(Some(index % 2)));
        })
        .build()
        .expect("runtime")
}

fn here() -> Option<usize> {
    WORKER.with(std::cell::Cell::get)
}

/// The filters the simulated clients draw from: any server, primaries, replicas (those
/// that admit some server of `pool`).
fn filters(pool: &Pool) -> Vec<RoleFilter> {
    [None, Some(ServerRole::Primary), Some(ServerRole::Replica)]
        .into_iter()
        .map(|role| RoleFilter::new(pool, role))
        .filter(|filter| pool.servers.iter().any(|s| filter.admits(s)))
        .collect()
}

struct Simulation {
    pool: Arc<Pool>,
    conns: Arc<ConnPool<TestConn>>,
    alive: Arc<AtomicUsize>,
    size: usize,
    /// Whether the invariant is checked after every step (not while servers change state:
    /// a waiter learns of a server coming back only when it wakes).
    check_each_step: bool,
    failures: Mutex<Vec<String>>,
}

impl Simulation {
    fn new(servers: usize, size: usize) -> Arc<Self> {
        let pool = self::servers(servers);
        // Half primaries, half replicas, so role filters split the clients.
        for (i, server) in pool.servers.iter().enumerate() {
            let role = if i % 2 == 0 {
                ServerRole::Primary
            } else {
                ServerRole::Replica
            };
            server.record_role(role, None);
        }
        Arc::new(Self {
            pool,
            conns: Arc::default(),
            alive: Arc::default(),
            size,
            check_each_step: true,
            failures: Mutex::default(),
        })
    }

    fn check(&self) {
        if self.check_each_step {
            self.conns.assert_nobody_waits_needlessly(self.size);
        }
    }

    /// One client: `rounds` leases with random waits, holds, give-backs, discards,
    /// failed opens and vanishing mid-wait.
    async fn client(self: Arc<Self>, seed: u64, rounds: usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let filters = filters(&self.pool);
        for _ in 0..rounds {
            let filter = filters[rng.usize(..filters.len())];
            let usable = |_: &TestConn| true;
            let choose = |room: &[Arc<Server>]| fastrand::usize(..room.len());
            // Most clients wait long enough; some give up almost at once.
            let patience = if rng.u8(..10) == 0 {
                Duration::from_micros(rng.u64(..200))
            } else {
                Duration::from_secs(30)
            };
            let ask = Ask {
                servers: &self.pool.servers,
                filter,
                size: self.size,
                worker: here(),
                deadline: Instant::now() + patience,
                usable: &usable,
                choose: &choose,
                changed: self.pool.changes(),
            };
            let fail_open = rng.u8(..20) == 0;
            let open_yields = rng.usize(..3);
            let alive = self.alive.clone();
            let open = |place: Place<TestConn>| {
                let alive = alive.clone();
                async move {
                    for _ in 0..open_yields {
                        tokio::task::yield_now().await;
                    }
                    if fail_open {
                        return Err("refused");
                    }
                    Ok(TestConn {
                        server: place.server().clone(),
                        worker: here(),
                        _place: place,
                        _alive: Alive::new(&alive),
                    })
                }
            };
            // Some clients vanish while waiting: the lease future is dropped.
            let vanish_after = (rng.u8(..10) == 0).then(|| rng.usize(..5));
            let leased = match vanish_after {
                Some(yields) => tokio::select! {
                    leased = self.conns.lease(&ask, open) => Some(leased),
                    () = async { for _ in 0..yields { tokio::task::yield_now().await } } => None,
                },
                None => Some(self.conns.lease(&ask, open).await),
            };
            self.check();
            let conn = match leased {
                Some(Ok(conn)) => conn,
                Some(Err(LeaseFailure::QueueTimeout | LeaseFailure::Open(_))) | None => continue,
                Some(Err(LeaseFailure::NoServer)) => {
                    if self.check_each_step {
                        self.fail(format!("no server for {filter:?}"));
                    }
                    continue;
                }
            };
            if !filter.admits(conn.server()) {
                self.fail(format!("{filter:?} got {}", conn.server().name));
            }
            for _ in 0..rng.usize(..4) {
                tokio::task::yield_now().await;
            }
            if rng.u8(..5) == 0 {
                drop(conn);
            } else if conn.server().is_available() {
                self.conns.give_back(conn);
            } else {
                drop(conn);
            }
            self.check();
        }
    }

    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    /// After every client is done: nobody waits, every connection is idle, and the
    /// places counted are exactly the connections alive (none lost, none leaked).
    fn assert_settled(&self) {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(self.conns.waiting(), 0, "clients left in the queue");
        let counts = self.conns.counts();
        let idle: usize = counts.iter().map(|(_, _, idle)| idle).sum();
        let alive = self.alive.load(Ordering::SeqCst);
        assert_eq!(
            self.conns.open(),
            alive,
            "places counted vs connections alive"
        );
        assert_eq!(idle, alive, "every connection alive is back idle");
        for (server, open, _) in counts {
            assert!(
                open <= self.size,
                "{} has {open} > {}",
                server.name,
                self.size
            );
        }
    }
}

fn run(simulation: &Arc<Simulation>, seed: u64, clients: u64, rounds: usize) {
    let runtime = two_workers();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| tokio::spawn(simulation.clone().client(seed * 1000 + c, rounds)))
            .collect();
        for task in tasks {
            task.await.expect("client task");
        }
    });
}

#[test]
fn many_clients_on_two_workers_never_wait_while_a_connection_is_free() {
    for seed in 0..40 {
        let simulation = Simulation::new(2, 3);
        run(&simulation, seed, 24, 40);
        simulation.assert_settled();
    }
}

#[test]
fn one_server_one_connection_is_shared_by_everyone() {
    for seed in 0..20 {
        let simulation = Simulation::new(1, 1);
        run(&simulation, seed, 16, 30);
        simulation.assert_settled();
    }
}

#[test]
fn servers_going_away_and_coming_back_lose_nothing() {
    for seed in 0..20 {
        let mut simulation = Simulation::new(2, 2);
        Arc::get_mut(&mut simulation)
            .expect("not shared yet")
            .check_each_step = false;
        let toggler = {
            let pool = simulation.pool.clone();
            move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                for _ in 0..200 {
                    let server = &pool.servers[rng.usize(..pool.servers.len())];
                    let state = if rng.bool() {
                        AdminState::Drain
                    } else {
                        AdminState::Ready
                    };
                    server.set_admin_state(state);
                    pool.wake_queue();
                    std::thread::yield_now();
                }
                for server in &pool.servers {
                    server.set_admin_state(AdminState::Ready);
                }
                pool.wake_queue();
            }
        };
        let toggling = std::thread::spawn(toggler);
        run(&simulation, seed, 16, 30);
        toggling.join().expect("toggler");
        simulation.assert_settled();
    }
}

/// A lease of one connection of `pool`'s first server for a client on `worker` that
/// waits as long as it takes.
fn patient_ask(pool: &Pool, worker: usize) -> Ask<'_, TestConn> {
    fn usable(_: &TestConn) -> bool {
        true
    }
    fn first(_: &[Arc<Server>]) -> usize {
        0
    }
    Ask {
        servers: &pool.servers,
        filter: RoleFilter::new(pool, None),
        size: 1,
        worker: Some(worker),
        deadline: Instant::now() + Duration::from_secs(30),
        usable: &usable,
        choose: &first,
        changed: pool.changes(),
    }
}

/// A small pool scenario: `size` places on one server, all leased.
fn full_pool(size: usize) -> (Arc<Pool>, Arc<ConnPool<TestConn>>, Vec<TestConn>) {
    let pool = servers(1);
    let conns: Arc<ConnPool<TestConn>> = Arc::default();
    let alive = Arc::new(AtomicUsize::new(0));
    let leased = (0..size)
        .map(|_| {
            let place = conns.reserve(&pool.servers[0], size).expect("room");
            TestConn {
                server: place.server().clone(),
                worker: Some(0),
                _place: place,
                _alive: Alive::new(&alive),
            }
        })
        .collect();
    (pool, conns, leased)
}

/// Starts a lease that must wait, on a current-thread runtime, as worker `worker`.
fn waiter(
    pool: &Arc<Pool>,
    conns: &Arc<ConnPool<TestConn>>,
    worker: usize,
    order: &Arc<Mutex<Vec<usize>>>,
    id: usize,
) -> tokio::task::JoinHandle<()> {
    holding_waiter(pool, conns, worker, order, id, Duration::ZERO)
}

/// [`waiter`] that holds the connection for `hold` of the paused clock before giving it
/// back.
fn holding_waiter(
    pool: &Arc<Pool>,
    conns: &Arc<ConnPool<TestConn>>,
    worker: usize,
    order: &Arc<Mutex<Vec<usize>>>,
    id: usize,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    let (pool, conns, order) = (pool.clone(), conns.clone(), order.clone());
    tokio::spawn(async move {
        let ask = patient_ask(&pool, worker);
        let open = |_: Place<TestConn>| async { Err::<TestConn, _>("no new connections") };
        let conn = conns.lease(&ask, open).await.expect("a connection");
        order.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        if !hold.is_zero() {
            // Exactly `hold` later (a sleep would end on the timer's next millisecond).
            tokio::time::advance(hold).await;
        }
        conns.give_back(conn);
    })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_connection_given_back_goes_to_the_longest_waiting_client() {
    let (pool, conns, mut leased) = full_pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..4 {
        tasks.push(waiter(&pool, &conns, 1, &order, id));
        settle().await;
    }
    assert_eq!(conns.waiting(), 4);
    conns.give_back(leased.remove(0));
    for task in tasks {
        task.await.expect("waiter");
    }
    assert_eq!(
        *order.lock().unwrap_or_else(|e| e.into_inner()),
        [0, 1, 2, 3]
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_of_the_connections_worker_goes_first_but_an_older_one_only_for_a_while() {
    // Each client holds the connection for `hold`: the paused clock moves a quarter of
    // the bound per client served.
    let hold = PASS_OVER_FOR / 4;
    let (pool, conns, mut leased) = full_pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Client 0 runs on worker 1; the rest on worker 0, where the connection lives.
    tasks.push(holding_waiter(&pool, &conns, 1, &order, 0, hold));
    settle().await;
    for id in 1..8 {
        tasks.push(holding_waiter(&pool, &conns, 0, &order, id, hold));
        settle().await;
    }
    conns.give_back(leased.remove(0));
    for task in tasks {
        task.await.expect("waiter");
    }
    // Passed over when client 1 was served, at 0; clients 2, 3 and 4 were served at a
    // quarter, half and three quarters of the bound; at the bound, client 0.
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, [1, 2, 3, 4, 0, 5, 6, 7]);
}

#[tokio::test(start_paused = true)]
async fn while_the_clock_stands_an_older_client_of_another_worker_waits_for_the_local_ones() {
    let (pool, conns, mut leased) = full_pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![waiter(&pool, &conns, 1, &order, 0)];
    settle().await;
    for id in 1..6 {
        tasks.push(waiter(&pool, &conns, 0, &order, id));
        settle().await;
    }
    conns.give_back(leased.remove(0));
    for task in tasks {
        task.await.expect("waiter");
    }
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, [1, 2, 3, 4, 5, 0]);
}

#[tokio::test]
async fn a_closed_connection_frees_its_place_for_a_waiting_client() {
    let (pool, conns, mut leased) = full_pool(1);
    let pool2 = pool.clone();
    let conns2 = conns.clone();
    let opened = tokio::spawn(async move {
        let ask = patient_ask(&pool2, 0);
        let alive = Arc::new(AtomicUsize::new(0));
        let open = |place: Place<TestConn>| {
            let alive = alive.clone();
            async move {
                Ok::<_, ()>(TestConn {
                    server: place.server().clone(),
                    worker: Some(0),
                    _place: place,
                    _alive: Alive::new(&alive),
                })
            }
        };
        conns2.lease(&ask, open).await.is_ok()
    });
    settle().await;
    assert_eq!(conns.waiting(), 1);
    drop(leased.remove(0));
    assert!(
        opened.await.expect("waiter"),
        "the waiter opened a new connection"
    );
    assert_eq!(
        conns.open(),
        0,
        "the new connection was dropped with its task"
    );
}

#[tokio::test]
async fn a_client_that_gives_up_passes_on_what_it_was_handed() {
    let (pool, conns, mut leased) = full_pool(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    let ask = patient_ask(&pool, 0);
    let open = |_: Place<TestConn>| async { Err::<TestConn, _>(()) };
    // The first client queues, is handed the connection, and vanishes before it looks.
    let mut first = Box::pin(conns.lease(&ask, open));
    assert!(
        poll_once(first.as_mut()).await.is_none(),
        "the first client waits"
    );
    let second = waiter(&pool, &conns, 0, &order, 1);
    settle().await;
    assert_eq!(conns.waiting(), 2);
    conns.give_back(leased.remove(0));
    assert_eq!(conns.waiting(), 1, "handed to the first client");
    drop(first);
    second.await.expect("second waiter");
    assert_eq!(*order.lock().unwrap_or_else(|e| e.into_inner()), [1]);
    assert_eq!(conns.waiting(), 0);
}

/// Polls `future` once.
async fn poll_once<F: Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
