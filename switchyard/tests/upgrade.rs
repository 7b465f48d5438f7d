//! Binary upgrade: `run --upgrade` takes the listening sockets over from the running process
//! (the real binary, twice), under load, with no refused or reset connection.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::backends::Backend;
use support::config::Config;
use support::http::{HttpBackend, HttpLoad};
use support::ops::round_trip;
use support::{DEADLINE, Proxy, binary, run_ctl, wait_until};

/// Pool `app` with one echo server, health-checked (so the new process has a first check
/// round to wait for) and a long drain so keep-alive sessions stay on the old process.
fn config(echo: SocketAddr) -> Config {
    Config::new()
        .top(r#"shutdown_timeout = "30s""#)
        .pool(r#"health = { check = "tcp", interval = "200ms", fall = 2, rise = 2 }"#)
        .server("echo", echo, "")
}

/// `config` plus an `http` listener `web` over pool `web` with the HTTP server `http`.
fn config_with_web(echo: SocketAddr, http: SocketAddr) -> Config {
    config(echo).section(&support::config::http_section("web", &[("h1", http, "")]))
}

/// Starts `switchyard run -c <the proxy's config> --upgrade`, logging to `upgrade-N.log`.
fn spawn_upgrade(proxy: &Proxy, generation: usize) -> Child {
    let log = proxy.dir.path().join(format!("upgrade-{generation}.log"));
    Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(proxy.config_path())
        .env("RUST_LOG", "switchyard=debug,info")
        .stdout(
            std::fs::File::create(proxy.dir.path().join(format!("stdout-{generation}.log")))
                .expect("stdout"),
        )
        .stderr(std::fs::File::create(log).expect("upgrade log"))
        .spawn()
        .expect("spawn switchyard --upgrade")
}

/// Waits (with the test deadline) for `child` to exit.
async fn wait_child(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes started by a test, killed when it ends (the proxy's own child is killed by it).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a load task saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// New connections, one echo round trip each, until `stop`; every failure is counted.
async fn connection_load(front: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let message = format!("conn {n}\n");
        let outcome = async {
            let mut stream = TcpStream::connect(front).await?;
            stream.write_all(message.as_bytes()).await?;
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back == message.as_bytes())
        };
        match tokio::time::timeout(DEADLINE, outcome).await {
            Ok(Ok(true)) => tally.ok.fetch_add(1, Ordering::Relaxed),
            _ => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A connection to `front` that a process has accepted and serves (one round trip done):
/// until then it may wait in the listening socket's queue, which the next process takes.
async fn served_connection(front: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(front).await.expect("keep-alive connect");
    assert_eq!(round_trip(&mut stream, b"open\n").await, b"open\n");
    stream
}

/// One keep-alive connection doing round trips until `stop`, counting them in `done`.
/// Any error fails the test.
async fn keep_alive(mut stream: TcpStream, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let message = format!("keep-alive {n}\n");
        assert_eq!(
            round_trip(&mut stream, message.as_bytes()).await,
            message.as_bytes()
        );
        n += 1;
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the process logging to `log` has handed over to its successor.
async fn wait_handed_over(log: impl Fn() -> String) {
    wait_until("the old process hands over", || {
        let text = log();
        async move { text.contains("the new process is ready; stopping") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_upgrades_under_load_lose_no_connection() {
    let echo = Backend::echo().await;
    let http = HttpBackend::describe().await;
    // Every generation appends to one access log file.
    let (mut proxy, front) = config_with_web(echo.addr, http.addr)
        .top("[log]\naccess = \"access.log\"")
        .start()
        .await;
    let web = support::ops::listener_addr(&proxy, "web").await;
    proxy.wait_pool_checked_up("app").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load: Vec<_> = (0..2)
        .map(|_| tokio::spawn(connection_load(front, stop.clone(), tally.clone())))
        .collect();
    // HTTP load on `web` through every upgrade: new connections, and a keep-alive client.
    let (http_load, http_tasks) = HttpLoad::spawn(web, &stop);
    let mut children = Children(Vec::new());
    for generation in 1..=5 {
        // Keep-alive sessions on the current process, running through the handover.
        let session_stop = Arc::new(AtomicBool::new(false));
        let session_trips = Arc::new(AtomicUsize::new(0));
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let stream = served_connection(front).await;
            let (stop, trips) = (session_stop.clone(), session_trips.clone());
            sessions.push(tokio::spawn(keep_alive(stream, stop, trips)));
        }
        let before = tally.ok.load(Ordering::Relaxed);
        let http_before = http_load.ok.load(Ordering::Relaxed);
        children.0.push(spawn_upgrade(&proxy, generation));
        let old_log = |generation: usize| {
            let name = if generation == 1 {
                "stderr.log".to_string()
            } else {
                format!("upgrade-{}.log", generation - 1)
            };
            std::fs::read_to_string(proxy.dir.path().join(name)).unwrap_or_default()
        };
        wait_handed_over(|| old_log(generation)).await;
        // The old process drains: its keep-alive sessions still work, then end.
        let trips = session_trips.load(Ordering::Relaxed);
        wait_until("keep-alive round trips after the handover", || {
            let now = session_trips.load(Ordering::Relaxed);
            async move { now > trips + 20 }
        })
        .await;
        let old_running = if generation == 1 {
            proxy.try_wait().is_none()
        } else {
            children.0[generation - 2]
                .try_wait()
                .ok()
                .flatten()
                .is_none()
        };
        assert!(old_running, "the old process drains while sessions last");
        session_stop.store(true, Ordering::Relaxed);
        for session in sessions {
            session.await.expect("keep-alive task");
        }
        let status = if generation == 1 {
            proxy.wait_exit().await
        } else {
            wait_child(&mut children.0[generation - 2]).await
        };
        assert!(status.success(), "old process exited with {status}");
        // The load kept going through the new process.
        wait_until("new connections after the upgrade", || {
            let ok = tally.ok.load(Ordering::Relaxed);
            let http_ok = http_load.ok.load(Ordering::Relaxed);
            async move { ok > before + 20 && http_ok > http_before + 20 }
        })
        .await;
        assert_eq!(
            http_load.failures(),
            Vec::<String>::new(),
            "failed HTTP requests"
        );
        assert_eq!(
            tally.failed.load(Ordering::Relaxed),
            0,
            "failed connections"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load.into_iter().chain(http_tasks) {
        task.await.expect("load task");
    }
    assert_eq!(
        http_load.failures(),
        Vec::<String>::new(),
        "failed HTTP requests"
    );
    assert!(http_load.ok.load(Ordering::Relaxed) > 100);
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed connections"
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 100);
    // The last process serves the admin API taken over from the first.
    let (ok, out, err) = run_ctl(&proxy.admin.to_string(), None, &["status"]);
    assert!(ok, "ctl status after upgrades: {err}");
    assert!(out.contains("echo"), "{out}");
    let last = children.0.last_mut().expect("a last process");
    assert!(
        last.try_wait().expect("try_wait").is_none(),
        "last process runs"
    );
    // No generation lost a line: each wrote out its batches before it exited.
    let stopped = Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = wait_child(last).await;
    assert!(status.success(), "last process exited with {status}");
    let log = std::fs::read_to_string(proxy.dir.path().join("access.log")).expect("access log");
    let listeners: Vec<String> = log
        .lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            support::ops::field(&line, "listener").to_string()
        })
        .collect();
    let count = |name: &str| listeners.iter().filter(|l| *l == name).count();
    // Two keep-alive sessions per generation, and each new connection.
    assert_eq!(count("front"), tally.ok.load(Ordering::Relaxed) + 10);
    assert_eq!(count("web"), http_load.ok.load(Ordering::Relaxed));
    assert_eq!(listeners.len(), count("front") + count("web"));
}

/// Starts a proxy, writes `new_config` over its config file and runs an upgrade that must
/// fail; then checks the old process still serves, new connections included.
async fn failed_upgrade_keeps_old(new_config: impl Fn(&Proxy) -> String, reason: &str) {
    let echo = Backend::echo().await;
    let (mut proxy, front) = config(echo.addr).start().await;
    std::fs::write(proxy.config_path(), new_config(&proxy)).expect("rewrite config");
    let mut child = spawn_upgrade(&proxy, 1);
    let status = wait_child(&mut child).await;
    assert!(!status.success(), "upgrade with {reason} must fail");
    let log = std::fs::read_to_string(proxy.dir.path().join("upgrade-1.log")).unwrap_or_default();
    assert!(proxy.try_wait().is_none(), "old process still runs");
    for n in 0..20 {
        let mut stream = TcpStream::connect(front).await.expect("old still accepts");
        let message = format!("after failed upgrade {n}\n");
        assert_eq!(
            round_trip(&mut stream, message.as_bytes()).await,
            message.as_bytes()
        );
    }
    assert!(proxy.try_wait().is_none(), "old process still runs:\n{log}");
    assert_eq!(proxy.pools().await.len(), 1, "old admin API answers");
}

#[tokio::test]
async fn upgrade_with_invalid_config_leaves_old_serving() {
    failed_upgrade_keeps_old(
        |_| "this is not = [valid toml".to_string(),
        "an invalid config",
    )
    .await;
}

#[tokio::test]
async fn upgrade_that_cannot_bind_leaves_old_serving() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_addr = taken.local_addr().expect("address");
    failed_upgrade_keeps_old(
        |proxy| {
            let text = std::fs::read_to_string(proxy.config_path()).expect("config");
            format!(
                "{text}\n[[listener]]\nname = \"extra\"\nlisten = \"{taken_addr}\"\nprotocol = \"tcp\"\npool = \"app\"\n"
            )
        },
        "a taken port",
    )
    .await;
    drop(taken);
}

#[tokio::test]
async fn ctl_works_against_the_new_process() {
    let echo = Backend::echo().await;
    let (mut proxy, front) = config(echo.addr).start().await;
    let mut children = Children(vec![spawn_upgrade(&proxy, 1)]);
    let status = proxy.wait_exit().await;
    assert!(status.success(), "old process exited with {status}");
    let (ok, out, err) = run_ctl(&proxy.admin.to_string(), None, &["status"]);
    assert!(ok, "ctl status: {err}");
    assert!(out.contains("front") && out.contains("echo"), "{out}");
    let mut stream = TcpStream::connect(front)
        .await
        .expect("new process accepts");
    assert_eq!(round_trip(&mut stream, b"hello\n").await, b"hello\n");
    let new = &mut children.0[0];
    assert!(
        new.try_wait().expect("try_wait").is_none(),
        "new process runs"
    );
}

#[tokio::test]
async fn operator_state_health_and_counters_carry_over() {
    let echo = Backend::echo().await;
    let spare = Backend::echo().await;
    let (mut proxy, front) = config(echo.addr)
        .server("spare", spare.addr, "")
        .start()
        .await;
    proxy.wait_pool_checked_up("app").await;
    proxy.set_state("app", "spare", "drain").await;
    for _ in 0..3 {
        let mut stream = TcpStream::connect(front).await.expect("connect");
        assert_eq!(round_trip(&mut stream, b"hi\n").await, b"hi\n");
    }
    wait_until("three connections counted", || async {
        proxy.listeners().await[0].total == 3 && proxy.listeners().await[0].active == 0
    })
    .await;
    let before = proxy.server("app", "echo").await;
    let _children = Children(vec![spawn_upgrade(&proxy, 1)]);
    let status = proxy.wait_exit().await;
    assert!(status.success(), "old process exited with {status}");

    let spare_now = proxy.server("app", "spare").await;
    assert_eq!(spare_now.admin_state, "drain", "drain survives the upgrade");
    let echo_now = proxy.server("app", "echo").await;
    assert_eq!(echo_now.health, "up");
    assert!(echo_now.total >= before.total && echo_now.bytes_in >= before.bytes_in);
    assert!(proxy.listeners().await[0].total >= 3);
    // The drained server still takes nothing new.
    let mut stream = TcpStream::connect(front).await.expect("connect");
    assert_eq!(round_trip(&mut stream, b"again\n").await, b"again\n");
    assert_eq!(proxy.server("app", "spare").await.total, 0);
}

/// A process started by the proxy rather than the test, sent SIGTERM when the test ends.
struct StopPid(u32);

impl Drop for StopPid {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// Reads `MAINPID=` from the next systemd notification on `socket`.
fn notified_pid(socket: &std::os::unix::net::UnixDatagram) -> u32 {
    let mut buffer = [0u8; 256];
    let len = socket.recv(&mut buffer).expect("a notification");
    let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
    assert!(text.contains("READY=1"), "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix("MAINPID="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {text}"))
}

#[tokio::test]
async fn sigusr2_upgrades_and_notifies_systemd() {
    let echo = Backend::echo().await;
    let notify_dir = tempfile::tempdir().expect("temp dir");
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let notify_env = notify_path.to_string_lossy().into_owned();
    let mut proxy = Proxy::start_with_env(
        &config(echo.addr).build(),
        None,
        &[("NOTIFY_SOCKET", notify_env.as_str())],
    )
    .await;
    let front = support::ops::listener_addr(&proxy, "front").await;
    assert_eq!(notified_pid(&notify), proxy.pid());
    proxy.signal("USR2");
    // The successor is no child of this test: it is stopped by its pid.
    let successor = StopPid(notified_pid(&notify));
    assert_ne!(successor.0, proxy.pid());
    let status = proxy.wait_exit().await;
    assert!(status.success(), "old process exited with {status}");
    let mut stream = TcpStream::connect(front).await.expect("successor accepts");
    assert_eq!(round_trip(&mut stream, b"hello\n").await, b"hello\n");
    let (ok, out, err) = run_ctl(&proxy.admin.to_string(), None, &["status"]);
    assert!(ok && out.contains("echo"), "ctl status: {err}");
}

/// Usage counted through a binary upgrade reaches the sink exactly: what the old process
/// counted is delivered when it ends, what the new one counted when it flushes, nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_delivered_exactly_once_across_an_upgrade() {
    use redis::AsyncCommands;
    let redis = support::redis::RedisServer::start().await;
    let backend = HttpBackend::start(|request: hyper::Request<hyper::body::Incoming>| async {
        use http_body_util::BodyExt;
        let _ = request.into_body().collect().await;
        hyper::Response::new(support::http::full(vec![b'y'; 1000]))
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.json");
    let answer = format!(
        r#"{{"load.example.com": {{"servers": [{{"address": "{}"}}], "tenant": "t"}}}}"#,
        backend.addr
    );
    std::fs::write(&routes, answer).expect("write the map");
    let accounting = format!(
        "[accounting]\nflush_interval = \"200ms\"\nsink = {{ kind = \"redis\", address = \"{}\", prefix = \"use:\" }}",
        redis.url()
    );
    let config = support::config::map_resolved("http", "", "{host}", &routes, &accounting);
    let mut proxy = Proxy::start(&config).await;
    let web = support::ops::listener_addr(&proxy, "front").await;
    // Clients POST 300 bytes and get 1000 back, on new and on kept-alive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = HttpLoad::spawn_posting(web, &stop, 300);
    let ok = || load.ok.load(Ordering::Relaxed);
    wait_until("traffic through the old process", || async { ok() > 50 }).await;
    let mut children = Children(vec![spawn_upgrade(&proxy, 1)]);
    wait_handed_over(|| proxy.stderr()).await;
    let status = proxy.wait_exit().await;
    assert!(status.success(), "old process exited with {status}");
    let after = ok();
    wait_until("traffic through the new process", || async {
        ok() > after + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
    assert_eq!(
        load.failures(),
        Vec::<String>::new(),
        "failed HTTP requests"
    );
    let new = &mut children.0[0];
    let stopped = Command::new("kill")
        .arg(new.id().to_string())
        .status()
        .expect("kill");
    assert!(stopped.success());
    let status = wait_child(new).await;
    assert!(status.success(), "new process exited with {status}");
    let requests = ok() as u64;
    let mut conn = redis.connection().await;
    let usage: std::collections::HashMap<String, u64> =
        conn.hgetall("use:t").await.expect("usage hash");
    let field = |name: &str| usage.get(name).copied().unwrap_or_default();
    assert_eq!(
        [field("requests"), field("bytes_in"), field("bytes_out")],
        [requests, requests * 300, requests * 1000],
        "{usage:?}"
    );
}

/// A database server's role is carried over: a listener that needs the primary serves at
/// once after the upgrade, instead of refusing logins (57P03) until the new process's
/// first database check of the server, up to an interval later. The second server's first
/// check comes an eighth of the 40 s interval after start (first checks are spread), so
/// without the role carried over the new process would not know it for 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn database_roles_carry_over() {
    let pg = support::postgres::PgCluster::start(&support::postgres::PgOptions::default());
    let (mut proxy, _front) = Config::new()
        .top(r#"shutdown_timeout = "30s""#)
        .protocol("postgres")
        .listener("role = \"primary\"")
        .pool(r#"health = { check = "postgres", interval = "40s" }"#)
        .server("a", pg.address(), "")
        .server("b", pg.address(), "")
        .start()
        .await;
    wait_until("both servers found primary", || async {
        proxy.server("app", "b").await.role == "primary"
    })
    .await;
    let _children = Children(vec![spawn_upgrade(&proxy, 1)]);
    let status = proxy.wait_exit().await;
    assert!(status.success(), "old process exited with {status}");
    let b = proxy.server("app", "b").await;
    assert_eq!(b.role, "primary", "the role survives the upgrade");
}
