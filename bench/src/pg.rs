//! A throwaway PostgreSQL server for the `postgres` and `pgpool` scenarios: initdb into a
//! temp dir, run as the `postgres` OS user (PostgreSQL refuses root), tuned for
//! benchmarking only (`fsync = off`), initialised with `pgbench -i`; and, for the `soak`
//! scenario, an empty one with a streaming replica that can be promoted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use tokio::process::Command;

use crate::sys::free_port;

/// A running server.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    address: SocketAddr,
}

/// The newest PostgreSQL version's program directory under `/usr/lib/postgresql`.
fn bin_dir() -> Result<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (install the Debian postgresql package)")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .max()
        .context("no PostgreSQL version under /usr/lib/postgresql")
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
        let cluster = Self::init(max_connections).await?;
        cluster.load_tables(scale).await?;
        Ok(cluster)
    }

    /// `pgbench -i -s scale` (the tables dropped and loaded afresh), then a checkpoint:
    /// a run that updates starts from the same tables as every other, with no dead rows
    /// of earlier runs to skip and no checkpoint of their writes due.
    pub async fn load_tables(&self, scale: u32) -> Result<()> {
        let port = self.address.port().to_string();
        self.run_as_postgres("pgbench", |c| {
            c.args(["-i", "-q", "-s"])
                .arg(scale.to_string())
                .args(["-h", "127.0.0.1", "-p", &port])
                .args(["-U", "postgres", "postgres"]);
        })
        .await?;
        self.run_as_postgres("psql", |c| {
            c.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .args(["-Xq", "-c", "CHECKPOINT", "postgres"]);
        })
        .await
    }

    /// initdb and start an empty server (waiting until it accepts) that trusts every
    /// local login, replication included (initdb's `--auth=trust` lines).
    pub async fn init(max_connections: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-pg-").tempdir()?;
        give_to_postgres(dir.path())?;
        let cluster = Cluster {
            dir,
            bin: bin_dir()?,
            address: free_port()?,
        };
        let data = cluster.data();
        cluster
            .run_as_postgres("initdb", |c| {
                c.arg("-D")
                    .arg(&data)
                    .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
            })
            .await?;
        cluster.launch(max_connections).await?;
        Ok(cluster)
    }

    /// A streaming replica of this running server (`pg_basebackup -R`), started on
    /// `address` (a free port when `None`: the soak scenario puts a new replica where a
    /// crashed primary was, so that the proxy's pool finds it under the same server).
    pub async fn replica(
        &self,
        address: Option<SocketAddr>,
        max_connections: usize,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("bench-pg-").tempdir()?;
        give_to_postgres(dir.path())?;
        let address = match address {
            Some(address) => address,
            None => free_port()?,
        };
        let replica = Cluster {
            dir,
            bin: self.bin.clone(),
            address,
        };
        let data = replica.data();
        let source = self.address;
        replica
            .run_as_postgres("pg_basebackup", |c| {
                // A fast checkpoint: the default spreads the backup's checkpoint over up to
                // 4.5 minutes (`checkpoint_timeout` × its completion target), and the soak's
                // failover waited that long for its new replica.
                c.args(["-h", "127.0.0.1", "-U", "postgres", "-X", "stream", "-R"])
                    .arg("--checkpoint=fast")
                    .arg("-p")
                    .arg(source.port().to_string())
                    .arg("-D")
                    .arg(&data);
            })
            .await?;
        replica.launch(max_connections).await?;
        Ok(replica)
    }

    /// `pg_ctl promote -w`: this replica becomes a primary.
    pub async fn promote(&self) -> Result<()> {
        let data = self.data();
        self.run_as_postgres("pg_ctl", |c| {
            c.args(["promote", "-w", "-D"]).arg(&data);
        })
        .await
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): the server stops as if it had
    /// crashed, without a checkpoint and without telling its clients.
    pub async fn crash(self) -> Result<()> {
        let data = self.data();
        self.run_as_postgres("pg_ctl", |c| {
            c.args(["stop", "-m", "immediate", "-w", "-D"]).arg(&data);
        })
        .await
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server of this directory on its address and waits until it accepts.
    async fn launch(&self, max_connections: usize) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={max_connections}",
            self.address.port(),
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let data = self.data();
        self.run_as_postgres("pg_ctl", |c| {
            c.args(["start", "-w", "-D"])
                .arg(&data)
                .arg("-o")
                .arg(&options)
                .arg("-l")
                .arg(&log);
        })
        .await
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
        let data = self.data();
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
