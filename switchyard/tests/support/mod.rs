//! Test harness: runs the real `switchyard` binary against real sockets.
//!
//! Backends are small in-test servers (echo, identifying, HTTP health endpoints). Every wait
//! is on a condition with a generous deadline, never a bare sleep.

#![allow(dead_code)]

pub mod backends;
pub mod certs;
pub mod config;
/// HTTP backends and clients for the HTTP proxy tests.
pub mod http;
/// Real MariaDB servers (primary, GTID replica, TLS) for the MySQL tests.
pub mod mysql;
/// Operations helpers: access log, listener addresses, metrics parsing.
pub mod ops;
/// The OS users database servers run as.
pub mod os_user;
pub mod postgres;
/// A real Redis server for the resolver tests.
pub mod redis;
/// Real SMTP servers (aiosmtpd, smtp-sink) and clients (swaks, smtplib) for the SMTP tests.
pub mod smtp;
/// TLS material: a CA, certificates, TLS backends and clients.
pub mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use switchyard::admin::client::AdminClient;
use switchyard::admin::{ListenerStatus, PoolStatus, ServerStatus};

/// libpq's sslmodes, weakest first: what `upstream_tls.sslmode` takes for every protocol.
pub const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `condition` until it is true; panics with `what` after `DEADLINE`.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// The admin address every test config asks for: the proxy binds a free port itself and
/// reports it in its ready file, so no other test can take the port in between.
pub const ADMIN_LISTEN: &str = "127.0.0.1:0";

/// A running switchyard process, killed on drop.
pub struct Proxy {
    child: Option<Child>,
    /// Directory holding the config and logs.
    pub dir: tempfile::TempDir,
    /// Admin API address.
    pub admin: SocketAddr,
    /// Admin client (with the token, if the test set one).
    pub client: AdminClient,
}

impl Proxy {
    /// Starts the proxy with `config`, in which `{admin}` is replaced by [`ADMIN_LISTEN`].
    /// Waits until the proxy reports its addresses and the admin API answers.
    pub async fn start(config: &str) -> Proxy {
        Self::start_with_token(config, None).await
    }

    /// Like `start`, sending `token` on admin calls.
    pub async fn start_with_token(config: &str, token: Option<&str>) -> Proxy {
        Self::start_with_env(config, token, &[]).await
    }

    /// Like `start_with_token`, with extra environment variables for the child process
    /// (e.g. the variable an `[admin] token = "env:VAR"` names). The one place that spawns
    /// the proxy and waits for its admin API.
    pub async fn start_with_env(config: &str, token: Option<&str>, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config.replace("{admin}", ADMIN_LISTEN);
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).expect("write config");
        let ready = dir.path().join("ready.json");
        let mut command = Command::new(binary());
        command
            .args(["run", "-c"])
            .arg(&path)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "switchyard=debug,info")
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout log"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log"));
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn switchyard");
        let start = Instant::now();
        let admin: SocketAddr = loop {
            let reported = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ready| ready["admin"].as_str()?.parse().ok());
            if let Some(admin) = reported {
                break admin;
            }
            let stderr =
                || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "switchyard exited with {status} during startup:\n{}",
                    stderr()
                );
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("switchyard did not start:\n{}", stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client =
            AdminClient::new(&admin.to_string(), token.map(str::to_string)).expect("client");
        let proxy = Proxy {
            child: Some(child),
            dir,
            admin,
            client,
        };
        wait_until("the admin API to answer", || async {
            matches!(
                proxy.client.call(Method::GET, "/health", None).await,
                Ok((200, _))
            )
        })
        .await;
        proxy
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Sends a signal (e.g. "TERM", "HUP").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The exit status, if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "switchyard did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// What the process wrote to stdout so far (the access log by default).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    /// GET an admin path; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.client
            .call(Method::GET, path, None)
            .await
            .expect("admin GET")
    }

    /// POST to an admin path.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.client
            .call(Method::POST, path, Some(body.to_string()))
            .await
            .expect("admin POST")
    }

    /// `/api/v1/pools`.
    pub async fn pools(&self) -> Vec<PoolStatus> {
        let (status, body) = self.get("/api/v1/pools").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("pools JSON")
    }

    /// `/api/v1/listeners`.
    pub async fn listeners(&self) -> Vec<ListenerStatus> {
        let (status, body) = self.get("/api/v1/listeners").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("listeners JSON")
    }

    /// One server's status.
    pub async fn server(&self, pool: &str, server: &str) -> ServerStatus {
        self.pools()
            .await
            .into_iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.servers.into_iter().find(|s| s.name == server))
            .unwrap_or_else(|| panic!("no server {pool}/{server}"))
    }

    /// Waits until a server's `state` field equals `state`.
    pub async fn wait_state(&self, pool: &str, server: &str, state: &str) {
        wait_until(&format!("{pool}/{server} to be {state}"), || async {
            self.server(pool, server).await.state == state
        })
        .await;
    }

    /// Waits until a server's `health` field (the health checks' verdict) equals `health`.
    pub async fn wait_health(&self, pool: &str, server: &str, health: &str) {
        wait_until(
            &format!("{pool}/{server} health to be {health}"),
            || async { self.server(pool, server).await.health == health },
        )
        .await;
    }

    /// Waits until every server of `pool` has passed its health checks (health `up`).
    pub async fn wait_pool_checked_up(&self, pool: &str) {
        wait_until(&format!("every server of {pool} checked up"), || async {
            self.pools()
                .await
                .into_iter()
                .find(|p| p.name == pool)
                .is_some_and(|p| p.servers.iter().all(|s| s.health == "up"))
        })
        .await;
    }

    /// Sets a server's operator state (`ready`, `drain`, `maint`) through the admin API and
    /// asserts the call succeeded; for tests that use the state change, not test it.
    pub async fn set_state(&self, pool: &str, server: &str, state: &str) {
        let (status, body) = self
            .post(
                &format!("/api/v1/pools/{pool}/servers/{server}/state"),
                &format!(r#"{{"state":"{state}"}}"#),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// Runs `switchyard ctl` against this proxy and returns (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        run_ctl(&self.admin.to_string(), None, args)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `switchyard ctl --admin ADDR [--token T] ARGS...`.
pub fn run_ctl(admin: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(binary());
    command.arg("ctl").arg("--admin").arg(admin);
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    let output = command
        .args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run ctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `switchyard check -c FILE`; returns (exit code, stderr).
pub fn check(path: &Path) -> (i32, String) {
    let output = Command::new(binary())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run check");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
