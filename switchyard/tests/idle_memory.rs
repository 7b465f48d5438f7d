//! Heap an idle connection keeps, counted by the allocator, so that idle memory cannot creep
//! back unnoticed (the `bench idle` RSS figures are the measurement; this is the guard).
//!
//! The proxy runs in this test's process with a counting global allocator; clients are
//! blocking std sockets (which allocate nothing) or a separate `pgbench` or PyMySQL process,
//! and the backends that hold one connection per client (Redis, PostgreSQL, MariaDB) are
//! separate processes. For each
//! protocol: connections are opened and closed once (so that lazily built state is in the
//! baseline), the live heap is read, N clients connect, do one exchange and go idle (a
//! condition the proxy reports, never a sleep), and the live heap is read again. The bounds
//! are the figures measured when they were set plus about a quarter.
//!
//! With `IDLE_MEMORY_CENSUS=1` it also prints which allocations (by size) each idle client
//! added: the breakdown docs/benchmarks.md records ("Idle memory").
//!
//! Everything runs in one test function: the count is process-wide, so two tests at once
//! would count each other's connections.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use support::http::HttpBackend;
use support::mysql::{MariaDb, MyOptions, NATIVE_USER};
use support::postgres::{PgCluster, PgOptions, bin_dir};
use support::redis::RedisServer;
use support::wait_until;

/// Heap bytes live in the process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Allocations live per exact size (the last slot: every larger size), for the census
/// `IDLE_MEMORY_CENSUS=1` prints: which allocations each idle client keeps.
static LIVE_BY_SIZE: [AtomicIsize; CENSUS_SIZES] = [const { AtomicIsize::new(0) }; CENSUS_SIZES];
const CENSUS_SIZES: usize = 32 * 1024 + 1;

/// Counts `bytes` more (or fewer, if negative) live and one allocation of `size` more (or
/// fewer).
fn count(bytes: isize, size: usize, allocations: isize) {
    LIVE.fetch_add(bytes, Ordering::Relaxed);
    LIVE_BY_SIZE[size.min(CENSUS_SIZES - 1)].fetch_add(allocations, Ordering::Relaxed);
}

/// The system allocator, counting the bytes it has handed out and not had back.
struct Counting;

// SAFETY: every call is passed to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System::alloc`'s.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize, layout.size(), 1);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(layout.size() as isize, layout.size(), 1);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(pointer, layout) };
        count(-(layout.size() as isize), layout.size(), -1);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            count(
                new_size as isize - layout.size() as isize,
                layout.size(),
                -1,
            );
            count(0, new_size, 1);
        }
        moved
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// Idle clients per protocol.
const CLIENTS: usize = 300;
/// Clients opened (all at once) and closed before the baseline: as many as are measured,
/// so that what the proxy keeps for reuse after a burst (a worker's spare relay buffers,
/// a server's idle connections) is in the baseline, not counted per client.
const WARMUP: usize = CLIENTS;

/// Heap bytes per idle client, at most (measured when set: see the module doc).
const TCP_BOUND: isize = 2_700;
const HTTP_BOUND: isize = 1_100;
const POSTGRES_BOUND: isize = 1_350;
const MYSQL_BOUND: isize = 2_800;

/// The proxy's listeners and admin API, from its ready file.
struct InProcess {
    admin: SocketAddr,
    listeners: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts the proxy on threads of this process, as `switchyard run` does, and waits for
    /// its ready file. It runs until the test process exits.
    async fn start(config: &str) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).expect("write config");
        let ready = dir.path().join("ready.json");
        let ready_file = ready.clone();
        std::thread::spawn(move || run_proxy(path, ready_file));
        let mut report = None;
        wait_until("the in-process proxy to be ready", || {
            report = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
            std::future::ready(report.is_some())
        })
        .await;
        let report = report.expect("ready file");
        InProcess {
            admin: report["admin"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("admin address"),
            listeners: report["listeners"].clone(),
            _dir: dir,
        }
    }

    fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listener address")
    }

    /// `GET path` on the admin API over a plain socket (HTTP/1.0: closed after), so that
    /// asking keeps nothing allocated.
    fn admin_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.admin).expect("admin API");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )
        .expect("admin request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("admin response");
        text
    }

    /// A listener's active connections.
    fn active(&self, listener: &str) -> u64 {
        let text = self.admin_get("/api/v1/listeners");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let listeners: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        listeners
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == listener)
            .and_then(|l| l["active"].as_u64())
            .unwrap_or(u64::MAX)
    }

    /// The sum of a metric family's samples.
    fn metric(&self, family: &str) -> f64 {
        self.admin_get("/metrics")
            .lines()
            .filter(|line| {
                line.strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn wait_active(&self, listener: &str, count: u64) {
        wait_until(&format!("{count} connections on {listener}"), || {
            std::future::ready(self.active(listener) == count)
        })
        .await;
    }

    /// Heap per idle client of a transaction pool: `spawn(n)` starts a process holding `n`
    /// clients on `listener`, each after one transaction (counted by
    /// `switchyard_<metric>_pool_transactions_total`). A warm-up group comes and goes
    /// first, then the baseline is read and `CLIENTS` clients are held while the heap is
    /// read again (once they doze in the idle lot, for a protocol whose clients do).
    async fn pooled_clients_heap(
        &self,
        listener: &str,
        (protocol, dozes): (&str, bool),
        metric: &str,
        spawn: impl Fn(usize) -> Child,
    ) -> isize {
        let family = format!("switchyard_{metric}_pool_transactions_total");
        let transactions = || self.metric(&family);
        let mut warmup = spawn(WARMUP);
        wait_until("the warm-up clients' transactions", || {
            std::future::ready(transactions() >= WARMUP as f64)
        })
        .await;
        warmup.kill().ok();
        warmup.wait().ok();
        self.wait_active(listener, 0).await;
        let baseline = HeapReading::now();
        let before = transactions();
        let mut idle = spawn(CLIENTS);
        wait_until("every client's transaction", || {
            std::future::ready(transactions() >= before + CLIENTS as f64)
        })
        .await;
        self.wait_active(listener, CLIENTS as u64).await;
        if dozes {
            wait_until("every client dozing", || {
                let dozing = self.metric("switchyard_idle_lot_connections");
                std::future::ready(dozing >= CLIENTS as f64)
            })
            .await;
        }
        let bytes = baseline.per_client(protocol, CLIENTS);
        idle.kill().ok();
        idle.wait().ok();
        bytes
    }
}

fn run_proxy(path: PathBuf, ready: PathBuf) {
    let config = switchyard::runtime::load_file(&path).expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut inherited = switchyard::runtime::Inherited::default();
        let shared = switchyard::runtime::build(&config, path, &mut inherited).expect("build");
        switchyard::runtime::run(
            config,
            shared,
            inherited,
            Some(ready),
            switchyard::admin::service,
        )
        .await
        .expect("run");
    });
}

/// The live heap: bytes, and allocations per size.
struct HeapReading {
    bytes: isize,
    by_size: Vec<isize>,
}

impl HeapReading {
    /// The reading now; the reading's own allocation is made before the count is read.
    fn now() -> Self {
        let by_size = census();
        HeapReading {
            bytes: LIVE.load(Ordering::Relaxed),
            by_size,
        }
    }

    /// Live heap bytes per client added by `clients` idle ones since this reading; with
    /// `IDLE_MEMORY_CENSUS` set, also prints the sizes of the allocations they added (those
    /// with at least one per two clients).
    fn per_client(&self, protocol: &str, clients: usize) -> isize {
        // Read before the census allocates.
        let bytes = LIVE.load(Ordering::Relaxed) - self.bytes;
        if std::env::var_os("IDLE_MEMORY_CENSUS").is_some() {
            let by_size = census();
            let added = by_size.iter().zip(&self.by_size).map(|(a, b)| a - b);
            let mut listed = 0;
            for (size, n) in added.enumerate() {
                if n * 2 >= clients as isize {
                    let per = n as f64 / clients as f64;
                    eprintln!("{protocol}: {per:.2} x {size} B per client");
                    listed += n * size as isize;
                } else if n != 0 && (n * size as isize).abs() > 4096 {
                    eprintln!("{protocol}:   ({n} x {size} B in all)");
                }
            }
            let rest = (bytes - listed) / clients as isize;
            eprintln!("{protocol}: {rest} B per client in fewer or larger allocations");
        }
        bytes / clients as isize
    }
}

/// Allocations live now per size.
fn census() -> Vec<isize> {
    LIVE_BY_SIZE
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect()
}

/// A client that sent `request` and read `reply_len` bytes back, then stays connected.
fn exchange(front: SocketAddr, request: &[u8], reply_len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(front).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    stream.write_all(request).expect("send");
    let mut reply = vec![0u8; reply_len];
    stream.read_exact(&mut reply).expect("reply");
    stream
}

/// One keep-alive GET whose whole response is read, the connection kept.
fn http_get(front: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(front).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .expect("send");
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("response");
        assert!(n > 0, "the proxy closed a keep-alive connection");
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")?
                    .parse()
                    .ok()
            })
            .expect("content-length");
        if body.len() >= length {
            return stream;
        }
    }
}

/// PyMySQL holding `clients` connections to database `app`, each after one `SELECT 1`,
/// until killed.
fn idle_pymysql(front: SocketAddr, clients: usize) -> Child {
    let script = r#"
import sys, pymysql
port, clients, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
held = []
for _ in range(clients):
    conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                           database="app", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    held.append(conn)
sys.stdin.read()
"#;
    Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args([&front.port().to_string(), &clients.to_string()])
        .args([NATIVE_USER.0, NATIVE_USER.1])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

/// `pgbench` holding `clients` connections, each after one `SELECT 1`, until killed.
fn idle_pgbench(front: SocketAddr, clients: usize, script: &std::path::Path) -> Child {
    Command::new(bin_dir().join("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-j",
            "1",
            "-t",
            "1",
        ])
        .args(["-p", &front.port().to_string(), "-c", &clients.to_string()])
        .arg("-f")
        .arg(script)
        .arg("postgres")
        .env("PGPASSWORD", support::postgres::PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_keeps_little_heap() {
    let redis = RedisServer::start().await;
    let http = HttpBackend::describe().await;
    let pg = PgCluster::start(&PgOptions::default());
    let mariadb = MariaDb::start(&MyOptions::default());
    mariadb.sql(&format!("GRANT ALL ON app.* TO {}", NATIVE_USER.0));
    let proxy = InProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[log]
access = "off"

[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "redis"

[[listener]]
name = "http"
listen = "127.0.0.1:0"
protocol = "http"
pool = "web"

[[listener]]
name = "pg"
listen = "127.0.0.1:0"
protocol = "postgres"
pool = "pg"

[[pool]]
name = "redis"
servers = [{{ name = "r", address = "127.0.0.1:{redis}" }}]

[[pool]]
name = "web"
servers = [{{ name = "w", address = "{http}" }}]

[[listener]]
name = "mysql"
listen = "127.0.0.1:0"
protocol = "mysql"
pool = "mysql"
auth = "mysql_native_password"

[[pool]]
name = "pg"
pool_mode = "transaction"
pool_size = 4
servers = [{{ name = "p", address = "{pg}" }}]

[[pool]]
name = "mysql"
pool_mode = "transaction"
pool_size = 4
servers = [{{ name = "m", address = "{mariadb}" }}]

[[user]]
name = "postgres"
password = "{password}"

[[user]]
name = "{my_user}"
password = "{my_password}"
"#,
        redis = redis.port,
        http = http.addr,
        pg = pg.address(),
        password = support::postgres::PASSWORD,
        mariadb = mariadb.address(),
        my_user = NATIVE_USER.0,
        my_password = NATIVE_USER.1,
    ))
    .await;
    let mut report = Vec::new();

    // TCP: one PING each through to Redis.
    let tcp = proxy.listener("tcp");
    let ping = |_| exchange(tcp, b"PING\r\n", b"+PONG\r\n".len());
    drop((0..WARMUP).map(ping).collect::<Vec<_>>());
    proxy.wait_active("tcp", 0).await;
    let baseline = HeapReading::now();
    let clients: Vec<_> = (0..CLIENTS).map(ping).collect();
    proxy.wait_active("tcp", CLIENTS as u64).await;
    report.push(("tcp", baseline.per_client("tcp", CLIENTS), TCP_BOUND));
    drop(clients);

    // HTTP/1.1: one keep-alive GET each; idle once parked.
    let front = proxy.listener("http");
    let parked = || proxy.metric("switchyard_http_parked_connections");
    drop((0..WARMUP).map(|_| http_get(front)).collect::<Vec<_>>());
    proxy.wait_active("http", 0).await;
    let baseline = HeapReading::now();
    let clients: Vec<_> = (0..CLIENTS).map(|_| http_get(front)).collect();
    wait_until("every HTTP client parked", || {
        std::future::ready(parked() == CLIENTS as f64)
    })
    .await;
    report.push(("http", baseline.per_client("http", CLIENTS), HTTP_BOUND));
    drop(clients);

    // PostgreSQL, transaction pool: pgbench clients after one SELECT 1 each.
    let front = proxy.listener("pg");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("idle.sql");
    std::fs::write(&script, "SELECT 1;\n\\sleep 600 s\n").expect("script");
    let bytes = proxy
        .pooled_clients_heap("pg", ("postgres", true), "pg", |n| {
            idle_pgbench(front, n, &script)
        })
        .await;
    report.push(("postgres", bytes, POSTGRES_BOUND));

    // MySQL, transaction pool: PyMySQL clients after one SELECT 1 each.
    let front = proxy.listener("mysql");
    let bytes = proxy
        .pooled_clients_heap("mysql", ("mysql", false), "mysql", |n| {
            idle_pymysql(front, n)
        })
        .await;
    report.push(("mysql", bytes, MYSQL_BOUND));

    for (protocol, bytes, bound) in &report {
        eprintln!("{protocol}: {bytes} heap bytes per idle client (bound {bound})");
    }
    for (protocol, bytes, bound) in report {
        assert!(
            bytes <= bound,
            "{protocol}: an idle client keeps {bytes} heap bytes, more than {bound}"
        );
    }
}
