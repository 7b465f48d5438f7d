//! Real MariaDB servers for the MySQL tests, from the Debian `mariadb-server` package:
//! `mariadb-install-db` into a temp dir, a free port, run as the unprivileged `mysql` OS
//! user (tests run as root), optional TLS with a test CA, a GTID replica, stopped on drop.
//!
//! MariaDB 10.11 (Debian bookworm) has `mysql_native_password` and, with the
//! `auth_ed25519` plugin the package ships, `ed25519`; it has no `caching_sha2_password`
//! server plugin, so that method is tested against a scripted server in the unit tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::os_user::OsUser;
use super::{DEADLINE, free_port};

/// `mysql_native_password` user and password.
pub const NATIVE_USER: (&str, &str) = ("native_user", "native-pw");
/// `ed25519` user and password.
pub const ED25519_USER: (&str, &str) = ("ed_user", "ed-pw");
/// The health check's user (may read replication status) and password.
pub const MONITOR_USER: (&str, &str) = ("monitor", "monitor-pw");
/// The replication user replicas connect as.
const REPLICATION_USER: (&str, &str) = ("repl", "repl-pw");

/// The `mysql` OS user.
fn mysql_user() -> OsUser {
    OsUser::named("mysql", "mariadb-server")
}

/// A command run as the `mysql` user.
fn as_mysql(program: &str) -> Command {
    mysql_user().command(program)
}

fn chown(path: &Path) {
    mysql_user().chown(path);
}

/// How a server is set up.
#[derive(Debug, Clone, Default)]
pub struct MyOptions {
    /// TLS with this certificate, key and CA (PEM files, copied into the server's dir).
    /// (`require_secure_transport` is dynamic: tests turn it on with `SET GLOBAL` on a
    /// running TLS server instead of starting another.)
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// A running MariaDB server, shut down on drop.
pub struct MariaDb {
    /// Holds the data directory, socket and logs.
    pub dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl MariaDb {
    /// A primary (binary log on, GTIDs) with the test users.
    pub fn start(options: &MyOptions) -> MariaDb {
        let dir = install();
        let mut args = vec!["--server-id=1".to_string(), "--log-bin=binlog".to_string()];
        if let Some((cert, key, ca)) = &options.tls {
            for (file, name) in [(cert, "server.pem"), (key, "server.key"), (ca, "ca.pem")] {
                let copy = dir.path().join(name);
                std::fs::copy(file, &copy).expect("copy TLS file");
                chown(&copy);
                args.push(format!(
                    "--ssl-{}={}",
                    match name {
                        "server.pem" => "cert",
                        "server.key" => "key",
                        _ => "ca",
                    },
                    copy.display()
                ));
            }
        }
        let server = Self::launch(dir, &args);
        let [native, ed, monitor, repl] =
            [NATIVE_USER, ED25519_USER, MONITOR_USER, REPLICATION_USER];
        server.sql(&format!(
            "CREATE USER '{}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{}');
             CREATE USER '{}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{}');
             CREATE USER '{}'@'%' IDENTIFIED BY '{}';
             GRANT REPLICA MONITOR ON *.* TO '{}'@'%';
             CREATE USER '{}'@'%' IDENTIFIED BY '{}';
             GRANT REPLICATION SLAVE ON *.* TO '{}'@'%';
             CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT);",
            native.0, native.1, ed.0, ed.1, monitor.0, monitor.1, monitor.0, repl.0, repl.1, repl.0
        ));
        server
    }

    /// A read-only GTID replica of this primary (`MASTER_USE_GTID = slave_pos`), started
    /// and caught up with everything the primary has written so far.
    pub fn replica(&self) -> MariaDb {
        let dir = install();
        let replica = Self::launch(dir, &["--server-id=2".into(), "--read-only=ON".into()]);
        replica.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
             MASTER_USER = '{}', MASTER_PASSWORD = '{}', MASTER_USE_GTID = slave_pos; START SLAVE;",
            self.port, REPLICATION_USER.0, REPLICATION_USER.1
        ));
        replica.wait_caught_up(self);
        replica
    }

    /// Waits until this replica has applied everything `primary` has written.
    pub fn wait_caught_up(&self, primary: &MariaDb) {
        let position = primary.sql("SELECT @@gtid_binlog_pos");
        let start = Instant::now();
        while self.sql("SELECT @@gtid_slave_pos") != position {
            assert!(
                start.elapsed() < DEADLINE,
                "the replica did not catch up with {position}:\n{}",
                self.sql("SHOW SLAVE STATUS\\G")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `mariadbd` on a free port. A port found free can be taken by another test
    /// before the server binds it: then it exits, and it is started again on another
    /// port. Readiness is read from this instance's own error log, never from whoever
    /// answers on the port.
    fn launch(dir: tempfile::TempDir, args: &[String]) -> MariaDb {
        for attempt in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("error-{attempt}.log"));
            let mut child = as_mysql("mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.path().join("data").display()))
                .arg(format!("--socket={}", dir.path().join("sock").display()))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mariadbd.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
                .arg(format!("--port={port}"))
                .args([
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-flush-log-at-trx-commit=2",
                    INNODB_LOG_FILE_SIZE,
                    "--plugin-load-add=auth_ed25519",
                ])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mariadbd");
            let start = Instant::now();
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("ready for connections") && text.contains(&format!("port: {port}"))
                {
                    return MariaDb {
                        dir,
                        port,
                        child: Some(child),
                        log,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    assert!(
                        text.contains("Bind on TCP/IP port"),
                        "mariadbd exited:\n{text}"
                    );
                    break;
                }
                if start.elapsed() > DEADLINE {
                    let _ = child.kill();
                    panic!("mariadbd did not start:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("mariadbd found no free port in five attempts");
    }

    /// The server's TCP address.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs SQL as root over the unix socket with the `mariadb` CLI (setup, bypassing
    /// what is tested); returns the tab-separated output without column names.
    pub fn sql(&self, sql: &str) -> String {
        let output = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("mariadb CLI");
        assert!(
            output.status.success(),
            "mariadb -e {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Shuts down (SIGTERM: a clean shutdown) and waits for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The redo log's size for test servers: the default (96 MiB, preallocated) times the
/// dozens of servers a parallel test run starts filled a CI machine's disk; the tests
/// write kilobytes.
const INNODB_LOG_FILE_SIZE: &str = "--innodb-log-file-size=4M";

/// A temp dir the `mysql` user owns, with a fresh data directory from
/// `mariadb-install-db` (root may log in over the socket without a password) and a
/// `tmp` dir of the server's own: servers sharing `/tmp` remove each other's temporary
/// tables there when they start, which makes concurrent installs fail.
fn install() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    chown(dir.path());
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp dir");
    chown(&tmp);
    let output = as_mysql("mariadb-install-db")
        .env("TMPDIR", &tmp)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.path().join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(INNODB_LOG_FILE_SIZE)
        .stdin(Stdio::null())
        .output()
        .expect("mariadb-install-db (Debian mariadb-server package)");
    assert!(
        output.status.success(),
        "mariadb-install-db failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

/// Runs the `mariadb` CLI against `address` over TCP as `user` with `args` (e.g.
/// `--ssl`), running `sql`; returns (success, stdout, stderr).
pub fn mariadb_cli(
    address: SocketAddr,
    user: (&str, &str),
    args: &[&str],
    sql: &str,
) -> (bool, String, String) {
    let output = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--host={}", address.ip()))
        .arg(format!("--port={}", address.port()))
        .arg(format!("--user={}", user.0))
        .arg(format!("--password={}", user.1))
        .args(["-N", "-B"])
        .args(args)
        .args(["-e", sql])
        .stdin(Stdio::null())
        .output()
        .expect("mariadb CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A venv with mysql-connector-python from PyPI (the Debian archive has no package of
/// it), made in `dir`; its python.
pub fn connector_python(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(made.success(), "python3 -m venv");
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "mysql-connector-python"])
        .output()
        .expect("pip");
    assert!(
        installed.status.success(),
        "pip install mysql-connector-python: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    venv.join("bin/python")
}

/// Runs a Python `script` with `python` (Debian's python3, which has PyMySQL, or a venv's)
/// and the host, port, user and password of the native user at `front` as arguments.
pub async fn python_against(
    python: &Path,
    script: impl Into<String>,
    front: SocketAddr,
) -> std::process::Output {
    let python = python.to_path_buf();
    let script = script.into();
    tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args(["-c", &script])
            .args([
                &front.ip().to_string(),
                &front.port().to_string(),
                NATIVE_USER.0,
                NATIVE_USER.1,
            ])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", python.display()))
    })
    .await
    .expect("join")
}
