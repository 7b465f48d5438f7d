//! The switchyard under soak: its configuration (one listener per traffic kind, pools of
//! two servers each with health checks), its processes across binary upgrades, its admin
//! API (reload, drain/ready, pools), and the sampling of its memory and descriptors.
//!
//! Every process is started by the bench itself (`run --ready-file`, then `run --upgrade`
//! for each upgrade), so each is a child it can reap and measure: the sampler sums over the
//! processes still alive, the old one draining included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::process::{Child, Command};

use crate::sys::free_port;

/// Seconds a process waits for its connections to finish after an upgrade; the soak's
/// sessions are shorter, so an upgrade should cut none.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// Addresses of the servers behind the proxy, two per pool.
#[derive(Clone, Debug)]
pub struct Servers {
    /// Echo backends (pool `echo`, servers `e1`, `e2`).
    pub echo: [SocketAddr; 2],
    /// HTTP echo backends (pool `web`, servers `w1`, `w2`).
    pub web: [SocketAddr; 2],
    /// PostgreSQL servers (pools `pg` and `pgtx`, servers `p1`, `p2`): one primary, one
    /// replica, which swap roles at each promotion.
    pub pg: [SocketAddr; 2],
}

/// Where the proxy's listeners are: fixed ports, kept across upgrades.
#[derive(Clone, Copy, Debug)]
pub struct Listeners {
    /// `tcp` listener over pool `echo`.
    pub tcp: SocketAddr,
    /// `http` listener over pool `web` (HTTP/1.1, h2c, WebSocket).
    pub web: SocketAddr,
    /// `postgres` listener, session mode, `role = "primary"`.
    pub pg: SocketAddr,
    /// `postgres` listener over the transaction pool, `role = "primary"`.
    pub pgtx: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

/// One sample of the proxy's resources.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: f64,
    /// switchyard processes alive (2 while an old one drains after an upgrade).
    pub processes: usize,
    /// Their resident memory, summed.
    pub rss: u64,
    /// Their open descriptors, summed.
    pub fds: usize,
}

/// The running proxy: every generation's process and the files they share.
pub struct Proxy {
    bin: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Listener addresses.
    pub listeners: Listeners,
    servers: Servers,
    workers: usize,
    /// Processes not yet reaped, oldest first, with their generation.
    children: Mutex<Vec<(usize, Child)>>,
    generations: Mutex<usize>,
    /// Serialises reloads, upgrades and state changes: each must reach one process, and a
    /// config written for a reload must not be read half-way by an upgrade.
    pub ops: tokio::sync::Mutex<()>,
}

impl Proxy {
    /// Writes the config (reload generation 0) and starts the first process; returns once
    /// it has written its ready file and its health checks have judged every server.
    pub async fn start(bin: &Path, servers: Servers, workers: usize) -> Result<Self> {
        if !bin.exists() {
            bail!("switchyard binary not found at {}", bin.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("bench-soak-")
            .tempdir()
            .context("creating temp dir")?;
        let config = dir.path().join("switchyard.toml");
        let listeners = Listeners {
            tcp: free_port()?,
            web: free_port()?,
            pg: free_port()?,
            pgtx: free_port()?,
            admin: free_port()?,
        };
        let proxy = Proxy {
            bin: bin.to_path_buf(),
            dir,
            config,
            listeners,
            servers,
            workers,
            children: Mutex::default(),
            generations: Mutex::new(0),
            ops: tokio::sync::Mutex::new(()),
        };
        proxy.write_config(0)?;
        proxy.spawn(0, false).await?;
        Ok(proxy)
    }

    /// The config of reload generation `generation`: odd generations weigh `w1` 2 and `e2`
    /// 2, add a response header and change a timeout; even ones are the base.
    fn config_text(&self, generation: u64) -> String {
        let Listeners {
            tcp,
            web,
            pg,
            pgtx,
            admin,
        } = self.listeners;
        let Servers {
            echo: [e1, e2],
            web: [w1, w2],
            pg: [p1, p2],
        } = &self.servers;
        let odd = generation % 2 == 1;
        let weight = if odd { 2 } else { 1 };
        let keep_alive = if odd { "61s" } else { "60s" };
        let pg_health = r#"health = { check = "postgres", user = "postgres", interval = "500ms", fall = 2, rise = 1, timeout = "1s" }"#;
        format!(
            r#"# generated by bench soak, reload generation {generation}
workers = {workers}
shutdown_timeout = "{SHUTDOWN_TIMEOUT_SECS}s"
[admin]
listen = "{admin}"
[log]
level = "info"
access = "off"

[[listener]]
name = "tcp"
listen = "{tcp}"
protocol = "tcp"
pool = "echo"

[[listener]]
name = "web"
listen = "{web}"
protocol = "http"
pool = "web"
timeouts = {{ keep_alive = "{keep_alive}", http_request = "5s" }}
  [[listener.routes]]
  path_prefix = "/"
  pool = "web"
  response_headers = {{ set = {{ "x-soak-generation" = "{generation}" }} }}

[[listener]]
name = "pg"
listen = "{pg}"
protocol = "postgres"
pool = "pg"
role = "primary"

[[listener]]
name = "pgtx"
listen = "{pgtx}"
protocol = "postgres"
pool = "pgtx"
role = "primary"
auth = "trust"

[[pool]]
name = "echo"
retries = 1
health = {{ check = "tcp", interval = "500ms", fall = 2, rise = 2 }}
servers = [ {{ name = "e1", address = "{e1}" }}, {{ name = "e2", address = "{e2}", weight = {weight} }} ]

[[pool]]
name = "web"
retries = 1
health = {{ check = "http", path = "/health", interval = "500ms", fall = 2, rise = 2 }}
keep_alive = {{ idle_timeout = "5s" }}
servers = [ {{ name = "w1", address = "{w1}", weight = {weight} }}, {{ name = "w2", address = "{w2}" }} ]

[[pool]]
name = "pg"
{pg_health}
servers = [ {{ name = "p1", address = "{p1}" }}, {{ name = "p2", address = "{p2}" }} ]

[[pool]]
name = "pgtx"
pool_mode = "transaction"
pool_size = 8
server_idle_timeout = "5s"
{pg_health}
servers = [ {{ name = "p1", address = "{p1}" }}, {{ name = "p2", address = "{p2}" }} ]
"#,
            workers = self.workers,
        )
    }

    /// Writes generation `generation`'s config in one rename, so a process never reads
    /// half a file.
    fn write_config(&self, generation: u64) -> Result<()> {
        let partial = self.dir.path().join("switchyard.toml.new");
        std::fs::write(&partial, self.config_text(generation))
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &self.config)
            .with_context(|| format!("renaming to {}", self.config.display()))
    }

    /// Starts process `generation` (`--upgrade` after the first) and waits for its ready
    /// file: it accepts, and (after an upgrade) the old process has handed over.
    async fn spawn(&self, generation: usize, upgrade: bool) -> Result<()> {
        let ready = self.dir.path().join(format!("ready-{generation}.json"));
        let log_path = self.dir.path().join(format!("stderr-{generation}.log"));
        let log = std::fs::File::create(&log_path).context("creating proxy log")?;
        let mut command = Command::new(&self.bin);
        command.arg("run");
        if upgrade {
            command.arg("--upgrade");
        }
        let mut child = command
            .arg("-c")
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(status) = child.try_wait().context("checking switchyard")? {
                bail!(
                    "switchyard generation {generation} exited with {status}: {}",
                    tail(&log_path)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "switchyard generation {generation} not ready in 60 s: {}",
                    tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.lock_children().push((generation, child));
        Ok(())
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Child)>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A binary upgrade: a new process takes the sockets over; the old one drains and
    /// exits on its own (reaped by [`Proxy::sample`]).
    pub async fn upgrade(&self) -> Result<()> {
        let _ops = self.ops.lock().await;
        let generation = {
            let mut generations = self
                .generations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *generations += 1;
            *generations
        };
        self.spawn(generation, true).await
    }

    /// Writes reload generation `generation`'s config and applies it with
    /// `POST /api/v1/reload`; fails unless the proxy reports a change.
    pub async fn reload(&self, generation: u64) -> Result<()> {
        let _ops = self.ops.lock().await;
        self.write_config(generation)?;
        let (status, body) = self.admin("POST", "/api/v1/reload", "{}").await?;
        let changed = serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|summary| summary["changed"] == true);
        if status != 200 || !changed {
            bail!("reload answered {status}: {body}");
        }
        Ok(())
    }

    /// Sets a server's operator state (`ready`, `drain`, `maint`).
    pub async fn set_state(&self, pool: &str, server: &str, state: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let path = format!("/api/v1/pools/{pool}/servers/{server}/state");
        let (status, body) = self
            .admin("POST", &path, &format!(r#"{{"state":"{state}"}}"#))
            .await?;
        if status != 200 {
            bail!("{path} {state} answered {status}: {body}");
        }
        Ok(())
    }

    /// `GET /api/v1/pools`, parsed.
    pub async fn pools(&self) -> Result<serde_json::Value> {
        let (status, body) = self.admin("GET", "/api/v1/pools", "").await?;
        if status != 200 {
            bail!("/api/v1/pools answered {status}: {body}");
        }
        serde_json::from_str(&body).context("parsing /api/v1/pools")
    }

    /// Whether the proxy sees server `server` of `pool` up (healthy and ready) with
    /// `role` (any role when `None`).
    pub async fn server_is(&self, pool: &str, server: &str, role: Option<&str>) -> bool {
        let Ok(pools) = self.pools().await else {
            return false;
        };
        let list = pools.get("pools").unwrap_or(&pools);
        let Some(pool) = list
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        else {
            return false;
        };
        let Some(server) = pool["servers"]
            .as_array()
            .and_then(|servers| servers.iter().find(|s| s["name"] == server))
        else {
            return false;
        };
        server["state"] == "up" && role.is_none_or(|role| server["role"] == role)
    }

    /// Waits (up to `timeout`) until [`Proxy::server_is`] holds.
    pub async fn wait_server(
        &self,
        pool: &str,
        server: &str,
        role: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.server_is(pool, server, role).await {
            if Instant::now() > deadline {
                bail!("{pool}/{server} not up as {role:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// One admin API call on a fresh connection: (status, body).
    async fn admin(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let admin = self.listeners.admin;
        let call = async {
            let stream = tokio::net::TcpStream::connect(admin).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", admin.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .with_context(|| format!("admin {method} {path} timed out"))?
            .with_context(|| format!("admin {method} {path}"))
    }

    /// Reaps exited processes (reporting any that failed) and measures the live ones.
    pub fn sample(&self, start: Instant) -> (Sample, Vec<String>) {
        let mut problems = Vec::new();
        let mut children = self.lock_children();
        children.retain_mut(|(generation, child)| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !status.success() {
                    problems.push(format!(
                        "switchyard generation {generation} exited with {status}: {}",
                        tail(&self.dir.path().join(format!("stderr-{generation}.log")))
                    ));
                }
                false
            }
            Err(error) => {
                problems.push(format!("waiting for generation {generation}: {error}"));
                false
            }
        });
        let pids: Vec<u32> = children.iter().filter_map(|(_, c)| c.id()).collect();
        drop(children);
        let rss = pids
            .iter()
            .map(|&pid| crate::sys::tree_rss_bytes(pid).unwrap_or(0))
            .sum();
        let fds = pids.iter().map(|&pid| open_fds(pid)).sum();
        (
            Sample {
                at: start.elapsed().as_secs_f64(),
                processes: pids.len(),
                rss,
                fds,
            },
            problems,
        )
    }

    /// The last lines of every generation's log (info level and above), for the report.
    pub fn log_tail(&self) -> String {
        let generation = *self
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (0..=generation)
            .map(|g| {
                let path = self.dir.path().join(format!("stderr-{g}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let count = lines.len();
                let shown = lines[count.saturating_sub(5)..].join("\n    ");
                format!("  generation {g}: {count} log lines, last: \n    {shown}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to every live process, then waits for each (SIGKILL after the shutdown
    /// timeout). With `keep_logs`, every generation's log and config stay on disk, and
    /// where is printed.
    pub async fn stop(self, keep_logs: bool) {
        let children = std::mem::take(&mut *self.lock_children());
        for (_, mut child) in children {
            if let Some(pid) = child.id() {
                // SAFETY: plain syscall on our own child, not yet reaped.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            let limit = Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 5);
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        if keep_logs {
            let dir = self.dir.keep();
            println!("proxy logs and configs kept in {}", dir.display());
        }
    }
}

/// Open descriptors of `pid` (0 once it is gone).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The last 400 bytes of a log file, on one line.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    let start = (text.len().saturating_sub(400)..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}
