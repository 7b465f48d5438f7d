//! A throwaway PostgreSQL server for the `postgres` and `pgpool` scenarios: initdb into a
//! temp dir, run as the `postgres` OS user (PostgreSQL refuses root), tuned for
//! benchmarking only (`fsync = off`), initialised with `pgbench -i`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use crate::targets::free_port;

/// A running server.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    address: SocketAddr,
}

/// The `postgres` OS user's uid and gid.
pub fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let output = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("id postgres")?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("no `postgres` OS user (install the Debian postgresql package)")
    };
    Ok((id("-u")?, id("-g")?))
}

/// Makes `path` the `postgres` user's.
pub fn give_to_postgres(path: &Path) -> Result<()> {
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

impl Cluster {
    /// initdb, start (waiting until it accepts) and `pgbench -i -s scale`; the server
    /// accepts `max_connections` sessions (direct runs need one per pgbench client).
    pub async fn start(scale: u32, max_connections: usize) -> Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql (install the Debian postgresql package)")?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .max()
            .context("no PostgreSQL version under /usr/lib/postgresql")?;
        let dir = tempfile::Builder::new().prefix("bench-pg-").tempdir()?;
        give_to_postgres(dir.path())?;
        let address = free_port()?;
        let cluster = Cluster { dir, bin, address };
        let data = cluster.dir.path().join("data");
        cluster
            .run_as_postgres("initdb", |c| {
                c.arg("-D")
                    .arg(&data)
                    .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
            })
            .await?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={max_connections}",
            address.port(),
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("postgres.log");
        cluster
            .run_as_postgres("pg_ctl", |c| {
                c.args(["start", "-w", "-D"])
                    .arg(&data)
                    .arg("-o")
                    .arg(&options)
                    .arg("-l")
                    .arg(&log);
            })
            .await?;
        cluster
            .run_as_postgres("pgbench", |c| {
                c.args(["-i", "-q", "-s"])
                    .arg(scale.to_string())
                    .args(["-h", "127.0.0.1", "-p"]);
                c.arg(address.port().to_string())
                    .args(["-U", "postgres", "postgres"]);
            })
            .await?;
        Ok(cluster)
    }

    /// Where the server listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A program of the server's version.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    async fn run_as_postgres(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<()> {
        let (uid, gid) = postgres_ids()?;
        let mut command = Command::new(self.bin(program));
        command
            .uid(uid)
            .gid(gid)
            .current_dir("/tmp")
            .stdin(Stdio::null());
        args(&mut command);
        let output = command
            .output()
            .await
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Fast shutdown.
    pub async fn stop(self) {
        let data = self.dir.path().join("data");
        let stopped = self
            .run_as_postgres("pg_ctl", |c| {
                c.args(["stop", "-m", "fast", "-w", "-D"]).arg(&data);
            })
            .await;
        if let Err(error) = stopped {
            eprintln!("  stopping PostgreSQL: {error:#}");
        }
    }
}
