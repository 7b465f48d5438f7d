//! A throwaway MariaDB server for the `mysql` scenario: `mariadb-install-db` into a temp
//! dir, `mariadbd` run as the `mysql` OS user (it refuses root) on a free port, tuned for
//! benchmarking only (no binary log, relaxed flushing), with the `sbtest` database and
//! user sysbench uses and its tables prepared.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

use crate::sys::free_port;

/// sysbench's user and password.
pub const SBTEST: (&str, &str) = ("sbtest", "sbtest-pw");

/// A running server, shut down by [`MariaDb::stop`].
pub struct MariaDb {
    dir: tempfile::TempDir,
    address: SocketAddr,
    child: Child,
}

/// The `mysql` OS user's uid and gid.
fn mysql_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let output = std::process::Command::new("id")
            .args([flag, "mysql"])
            .output()
            .context("id mysql")?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("no `mysql` OS user (install the Debian mariadb-server package)")
    };
    Ok((id("-u")?, id("-g")?))
}

fn as_mysql(program: &str) -> Result<Command> {
    let (uid, gid) = mysql_ids()?;
    let mut command = Command::new(program);
    command
        .uid(uid)
        .gid(gid)
        .current_dir("/tmp")
        .stdin(Stdio::null());
    Ok(command)
}

fn chown(path: &Path) -> Result<()> {
    let (uid, gid) = mysql_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

impl MariaDb {
    /// Installs, starts (waiting until its own log says it is ready), creates the sysbench
    /// user and runs `sysbench <script> prepare` with one table of `rows` rows; the server
    /// accepts `max_connections` sessions.
    pub async fn start(rows: usize, max_connections: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-mariadb-")
            .tempdir()?;
        chown(dir.path())?;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp)?;
        chown(&tmp)?;
        let data = dir.path().join("data");
        let output = as_mysql("mariadb-install-db")?
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .await
            .context("mariadb-install-db (Debian mariadb-server package)")?;
        if !output.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let address = free_port()?;
        let log = dir.path().join("error.log");
        let child = as_mysql("mariadbd")?
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={}", address.port()))
            .arg(format!("--max-connections={max_connections}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning mariadbd")?;
        let server = MariaDb {
            dir,
            address,
            child,
        };
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready for connections") {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("mariadbd did not start:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
            .sql(&format!(
                "CREATE DATABASE sbtest; CREATE USER '{0}'@'%' IDENTIFIED BY '{1}'; \
                 GRANT ALL ON sbtest.* TO '{0}'@'%';",
                SBTEST.0, SBTEST.1
            ))
            .await?;
        let output = Command::new("sysbench")
            .arg("oltp_read_only")
            .args(sysbench_connection(address))
            .args(["--tables=1", &format!("--table-size={rows}"), "prepare"])
            .output()
            .await
            .context("sysbench (Debian sysbench package)")?;
        if !output.status.success() {
            bail!(
                "sysbench prepare failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(server)
    }

    /// Where the server listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Runs `sql` as root over the unix socket.
    async fn sql(&self, sql: &str) -> Result<()> {
        self.query(sql).await.map(drop)
    }

    /// Runs `sql` as root over the unix socket; what it printed, without column names or
    /// table borders.
    async fn query(&self, sql: &str) -> Result<String> {
        let output = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql])
            .output()
            .await
            .context("mariadb CLI")?;
        if !output.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Sessions the server has open now for `user` (from every client host): a proxy's
    /// server connections, or a direct client's own.
    pub async fn sessions_of(&self, user: &str) -> Result<usize> {
        let count = self
            .query(&format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
            ))
            .await?;
        count
            .trim()
            .parse()
            .with_context(|| format!("a session count, not {count:?}"))
    }

    /// Shuts the server down (SIGTERM, a clean shutdown) and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = self.child.wait().await;
    }
}

/// sysbench's options to reach `address` as the sysbench user, in plaintext.
pub fn sysbench_connection(address: SocketAddr) -> Vec<String> {
    vec![
        "--db-driver=mysql".into(),
        format!("--mysql-host={}", address.ip()),
        format!("--mysql-port={}", address.port()),
        format!("--mysql-user={}", SBTEST.0),
        format!("--mysql-password={}", SBTEST.1),
        "--mysql-db=sbtest".into(),
        "--mysql-ssl=off".into(),
    ]
}
