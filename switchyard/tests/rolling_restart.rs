//! The recipes of docs/operations.md, run for real: `scripts/rolling-restart.sh` restarting
//! every backend of a pool under a constant load of new connections without one failing,
//! and the atomic-deploy flip between two release replicas with drain/ready.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use support::backends::{Backend, first_line, hold, read_line};
use support::config::start_pool;
use support::ops::round_trip;
use support::{DEADLINE, binary};

/// The names of the servers the rolling restart goes over.
const SERVERS: [&str; 3] = ["app1", "app2", "app3"];

/// How long a "restarted" backend stays away: longer than the health checks need to see it
/// down (interval 100ms, fall 1), so the script really waits for it to come back up.
const DOWN_TIME: Duration = Duration::from_millis(400);

/// How long each load request holds its connection, so that sessions are in flight when a
/// server is restarted: a restart without the drain cuts some and the test sees it.
const REQUEST_TIME: Duration = Duration::from_millis(20);

/// A backend a restart command can restart: the command (a shell script the test writes)
/// creates `DIR/NAME.restart` and waits until it is gone; the watcher task kills the
/// backend (listening socket and sessions), keeps it away for `DOWN_TIME`, starts it again
/// on the same port, counts the restart and removes the file.
struct Restartable {
    name: &'static str,
    addr: SocketAddr,
    /// The backend and the token that cuts its sessions; `None` while it is "killed".
    running: Mutex<Option<(Backend, CancellationToken)>>,
    restarts: AtomicUsize,
}

impl Restartable {
    async fn start(name: &'static str) -> Arc<Self> {
        let cut = CancellationToken::new();
        let backend =
            Backend::named_until("127.0.0.1:0".parse().expect("addr"), name, cut.clone()).await;
        Arc::new(Self {
            name,
            addr: backend.addr,
            running: Mutex::new(Some((backend, cut))),
            restarts: AtomicUsize::new(0),
        })
    }

    fn request_file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.restart", self.name))
    }

    async fn restart(&self) {
        let killed = self.running.lock().expect("backend lock").take();
        if let Some((backend, cut)) = killed {
            cut.cancel();
            drop(backend);
        }
        tokio::time::sleep(DOWN_TIME).await;
        let cut = CancellationToken::new();
        let backend = Backend::named_until(self.addr, self.name, cut.clone()).await;
        *self.running.lock().expect("backend lock") = Some((backend, cut));
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Writes the restart command's script into `dir`; returns the template to give
/// `rolling-restart.sh` (`{server}` is the script's placeholder).
fn restart_template(dir: &Path) -> String {
    let script = dir.join("restart.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# Asks the test to restart server $1 and waits (up to 20s) until it has.
request="{dir}/$1.restart"
touch "$request"
tries=0
while [ -e "$request" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 400 ] || exit 1
    sleep 0.05
done
"#,
            dir = dir.display()
        ),
    )
    .expect("write restart script");
    format!("sh {} {{server}}", script.display())
}

/// Restarts each backend whose request file appears, until `stop`.
fn watch_restarts(
    dir: PathBuf,
    backends: Vec<Arc<Restartable>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            for backend in &backends {
                let request = backend.request_file(&dir);
                if request.exists() {
                    backend.restart().await;
                    std::fs::remove_file(&request).expect("remove restart request");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// What a load client saw.
#[derive(Debug, Default)]
struct LoadResult {
    ok: usize,
    failures: Vec<String>,
}

/// One request: a new connection through the proxy that must reach a named backend and
/// get its echo back.
async fn one_request(front: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(front)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = read_line(&mut stream).await;
        if !SERVERS.contains(&name.as_str()) {
            return Err(format!("greeting {name:?} instead of a server name"));
        }
        tokio::time::sleep(REQUEST_TIME).await;
        // Not `round_trip`, which panics: a cut session is a counted failure here.
        stream
            .write_all(b"ping\n")
            .await
            .map_err(|e| format!("{name}: write: {e}"))?;
        let mut echoed = [0u8; 5];
        stream
            .read_exact(&mut echoed)
            .await
            .map_err(|e| format!("{name}: read: {e}"))?;
        if &echoed != b"ping\n" {
            return Err(format!("{name} echoed {echoed:?}"));
        }
        Ok(())
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .map_err(|_| "no answer within the deadline".to_string())?
}

/// New connections one after another until `stop` (or a bound, so a stuck test ends).
fn constant_load(front: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<LoadResult> {
    tokio::spawn(async move {
        let mut result = LoadResult::default();
        for _ in 0..100_000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match one_request(front).await {
                Ok(()) => result.ok += 1,
                Err(why) => result.failures.push(why),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        result
    })
}

/// `scripts/rolling-restart.sh` in this repository.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rolling-restart.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_script_restarts_every_server_without_a_failed_connection() {
    let mut backends = Vec::new();
    for name in SERVERS {
        backends.push(Restartable::start(name).await);
    }
    let servers: Vec<_> = backends.iter().map(|b| (b.name, b.addr, "")).collect();
    let (proxy, front) = start_pool(
        // No redispatch: a connection sent to a server being restarted fails visibly.
        r#"health = { check = "tcp", interval = "100ms", fall = 1, rise = 2 }
retries = 0
slow_start = "1s""#,
        &servers,
    )
    .await;
    proxy.wait_pool_checked_up("app").await;

    let dir = tempfile::tempdir().expect("temp dir");
    let template = restart_template(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_restarts(dir.path().to_path_buf(), backends.clone(), stop.clone());
    let loads: Vec<_> = (0..2).map(|_| constant_load(front, stop.clone())).collect();

    let output = tokio::process::Command::new("bash")
        .arg(script())
        .args(["--admin", &proxy.admin.to_string(), "--timeout", "20"])
        .arg("app")
        .arg(&template)
        .args(SERVERS)
        .env("SWITCHYARD", binary())
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .await
        .expect("run rolling-restart.sh");
    stop.store(true, Ordering::SeqCst);
    let mut load = LoadResult::default();
    for task in loads {
        let result = task.await.expect("load task");
        load.ok += result.ok;
        load.failures.extend(result.failures);
    }
    watcher.await.expect("restart watcher");

    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "script failed:\n{log}");
    assert!(
        load.failures.is_empty(),
        "{} of {} requests failed: {:?}\nscript:\n{log}",
        load.failures.len(),
        load.ok + load.failures.len(),
        load.failures
    );
    assert!(load.ok >= 50, "only {} requests ran: no load", load.ok);
    let restarts: BTreeMap<&str, usize> = backends
        .iter()
        .map(|b| (b.name, b.restarts.load(Ordering::SeqCst)))
        .collect();
    assert!(restarts.values().all(|&n| n == 1), "{restarts:?}");
    for name in SERVERS {
        let server = proxy.server("app", name).await;
        assert_eq!(
            (server.state.as_str(), server.health.as_str()),
            ("up", "up"),
            "{name} after the restart:\n{log}"
        );
        assert_eq!(server.admin_state, "ready", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_script_stops_and_leaves_a_server_drained_when_its_restart_fails() {
    let app1 = Backend::named("app1").await;
    let app2 = Backend::named("app2").await;
    let servers = [("app1", app1.addr, ""), ("app2", app2.addr, "")];
    let (proxy, _front) = start_pool("", &servers).await;

    let output = tokio::process::Command::new("bash")
        .arg(script())
        .args(["--admin", &proxy.admin.to_string(), "--timeout", "5"])
        .args(["app", "exit 3", "app1", "app2"])
        .env("SWITCHYARD", binary())
        .output()
        .await
        .expect("run rolling-restart.sh");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("app/app1: restart command failed"), "{log}");
    assert_eq!(proxy.server("app", "app1").await.state, "drain");
    assert_eq!(
        proxy.server("app", "app2").await.state,
        "up",
        "stopped at the first failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_deploy_flip_sends_new_connections_to_the_new_release_only() {
    let release_a = Backend::named("release-a").await;
    let release_b = Backend::named("release-b").await;
    let servers = [
        ("release-a", release_a.addr, ""),
        ("release-b", release_b.addr, ""),
    ];
    let (proxy, front) = start_pool("", &servers).await;
    // Release A is live; B is deployed but takes no traffic yet.
    let (ok, _, stderr) = proxy.ctl(&["drain", "app", "release-b"]);
    assert!(ok, "{stderr}");
    let (mut session, name) = hold(front).await;
    assert_eq!(name, "release-a");

    // The flip: B first, then A out, so there is always a server to go to.
    for args in [["ready", "app", "release-b"], ["drain", "app", "release-a"]] {
        let (ok, _, stderr) = proxy.ctl(&args);
        assert!(ok, "{args:?}: {stderr}");
    }
    for _ in 0..10 {
        assert_eq!(first_line(front).await, "release-b");
    }
    assert_eq!(
        round_trip(&mut session, b"still A\n").await,
        b"still A\n",
        "the session on release A runs to its end on A"
    );
    drop(session);
    let (ok, stdout, stderr) =
        proxy.ctl(&["drain", "app", "release-a", "--wait", "--timeout", "5s"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("app/release-a: idle"), "{stdout}");
}
