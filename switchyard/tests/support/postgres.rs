//! Real PostgreSQL clusters for the postgres front end tests, from the Debian `postgresql`
//! package: initdb into a temp dir, a free port, run as the unprivileged `postgres` OS user
//! (tests run as root and PostgreSQL refuses to), stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::os_user::OsUser;
use super::{DEADLINE, free_port};

/// The password every test cluster gives the `postgres` role when password auth is on.
pub const PASSWORD: &str = "sekret-pw";

/// The directory holding `initdb`, `postgres`, `pg_ctl`... of the installed major version.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the Debian postgresql package is installed")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version under /usr/lib/postgresql")
}

/// The `postgres` OS user.
fn postgres_user() -> OsUser {
    OsUser::named("postgres", "postgresql")
}

/// A command from the PostgreSQL bin dir, run as the `postgres` user.
fn pg_command(program: &str) -> Command {
    postgres_user().command(bin_dir().join(program))
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How a cluster is set up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// `host` lines' auth method: `trust` (default), `md5`, `scram-sha-256`, `password`.
    pub auth: Option<&'static str>,
    /// `ssl = on` with this certificate and key (PEM files).
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// Only `hostssl` lines: plaintext TCP clients are refused (the managed-database case).
    pub ssl_only: bool,
    /// Extra databases to create.
    pub databases: Vec<&'static str>,
}

/// A running PostgreSQL server, fast-shutdown on drop.
pub struct PgCluster {
    /// Holds the data directory, socket and log.
    pub dir: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl PgCluster {
    /// initdb, configure and start a primary; waits until it accepts connections.
    pub fn start(options: &PgOptions) -> PgCluster {
        let dir = make_dir();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        chown(&pwfile);
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb");
        let auth = options.auth.unwrap_or("trust");
        let host = if options.ssl_only { "hostssl" } else { "host" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n{host} all all 127.0.0.1/32 {auth}\n\
                 {host} replication all 127.0.0.1/32 {auth}\n"
            ),
        )
        .expect("pg_hba.conf");
        let mut conf = String::from("fsync = off\nlisten_addresses = '127.0.0.1'\n");
        if let Some((cert, key)) = &options.ssl {
            for file in [cert, key] {
                chown(file);
                std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod");
            }
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        append(&data.join("postgresql.conf"), &conf);
        let cluster = Self::launch(dir);
        for database in &options.databases {
            cluster.psql_local(&format!("CREATE DATABASE \"{database}\""));
        }
        cluster
    }

    /// A streaming replica of this (running) cluster made with `pg_basebackup -R`.
    pub fn replica(&self) -> PgCluster {
        let dir = make_dir();
        let data = dir.path().join("data");
        let mut backup = pg_command("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "-D",
            ])
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGPASSWORD", PASSWORD);
        run(backup, "pg_basebackup");
        Self::launch(dir)
    }

    /// Writes the per-instance settings (port, socket dir) and starts `postgres`. A port
    /// found free can be taken by another test before `postgres` binds it: then it exits,
    /// and it is started again on another port. Readiness is read from this instance's own
    /// `postmaster.pid`, never from whoever answers on the port.
    fn launch(dir: tempfile::TempDir) -> PgCluster {
        let data = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        for _attempt in 0..5 {
            let port = free_port();
            // The last setting in the file wins: each attempt appends its port.
            append(
                &data.join("postgresql.conf"),
                &format!(
                    "port = {port}\nunix_socket_directories = '{}'\n",
                    dir.path().display()
                ),
            );
            let file = std::fs::File::create(&log_path).expect("log");
            let mut child = pg_command("postgres")
                .arg("-D")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log"))
                .stderr(file)
                .spawn()
                .expect("spawn postgres");
            let start = Instant::now();
            loop {
                if postmaster_ready(&data) {
                    return PgCluster {
                        dir,
                        port,
                        child: Some(child),
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    let log = log();
                    assert!(
                        log.contains("could not bind")
                            || log.contains("could not create any TCP/IP sockets"),
                        "postgres exited:\n{log}"
                    );
                    break;
                }
                if start.elapsed() > DEADLINE {
                    let _ = child.kill();
                    panic!("postgres did not start:\n{}", log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("postgres found no free port in five attempts:\n{}", log());
    }

    /// The server's TCP address.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Runs SQL over the unix socket as `postgres` (setup, bypassing the proxy); returns
    /// the unaligned output.
    pub fn psql_local(&self, sql: &str) -> String {
        let output = Command::new("psql")
            .args(["-XAtq", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `pg_ctl promote -w`: a replica becomes a primary.
    pub fn promote(&self) {
        let mut promote = pg_command("pg_ctl");
        promote
            .args(["promote", "-w", "-D"])
            .arg(self.dir.path().join("data"));
        run(promote, "pg_ctl promote");
    }

    /// Fast shutdown; waits for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the instance of `data` says it accepts connections (`ready` in its
/// `postmaster.pid`).
fn postmaster_ready(data: &Path) -> bool {
    std::fs::read_to_string(data.join("postmaster.pid")).is_ok_and(|pid| {
        pid.lines()
            .nth(7)
            .is_some_and(|status| status.trim() == "ready")
    })
}

/// A temp dir the `postgres` user owns.
fn make_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    chown(dir.path());
    dir
}

fn chown(path: &Path) {
    postgres_user().chown(path);
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open config");
    file.write_all(text.as_bytes()).expect("append config");
}

/// Runs `psql -XAtq` against `address` with libpq's environment (e.g. `PGSSLMODE`,
/// `PGPASSWORD`), connecting to `database` as `user` and running `sql`.
pub fn psql(
    address: SocketAddr,
    user: &str,
    database: &str,
    sql: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new("psql");
    command
        .args(["-XAtq", "-h"])
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .args(["-U", user, "-d", database, "-c", sql])
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run psql")
}

/// `psql` that must succeed; returns its trimmed output.
pub fn psql_ok(address: SocketAddr, user: &str, database: &str, sql: &str) -> String {
    let output = psql(address, user, database, sql, &[("PGPASSWORD", PASSWORD)]);
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// What `psql` said on stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Connects with tokio-postgres as `user` to `database` (password [`PASSWORD`], no TLS),
/// driving the connection on a task.
pub async fn connect(
    address: SocketAddr,
    user: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_with(address, user, database, PASSWORD).await
}

/// [`connect`] with another password.
pub async fn connect_with(
    address: SocketAddr,
    user: &str,
    database: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(address.ip().to_string())
        .port(address.port())
        .user(user)
        .dbname(database)
        .password(password)
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The task that drives a client's connection; it ends with how the connection ended.
pub type ConnectionTask = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// [`connect`], also returning the task that drives the connection: aborting it closes the
/// socket without a Terminate message, as a client that crashes or is killed does; joining
/// it tells how the server ended the connection.
pub async fn connect_abortable(
    address: SocketAddr,
    database: &str,
) -> Result<(tokio_postgres::Client, ConnectionTask), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(address.ip().to_string())
        .port(address.port())
        .user("postgres")
        .dbname(database)
        .password(PASSWORD)
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await?;
    Ok((client, tokio::spawn(connection)))
}

/// Runs `SELECT pg_sleep(30)` on `client`, waits until `server` runs it, cancels it with
/// the client's cancel token (sent where the client connected) and returns the query's
/// error.
pub async fn cancelled_sleep(
    client: tokio_postgres::Client,
    server: &PgCluster,
) -> tokio_postgres::Error {
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    super::wait_until("the sleep to run on the server", || async {
        server
            .psql_local("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")
            == "1"
    })
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    sleeper
        .await
        .expect("join")
        .expect_err("the query is cancelled")
}

/// Runs `pgbench ARGS... postgres` against `address` as `postgres` (password [`PASSWORD`]).
pub fn pgbench(address: SocketAddr, args: &[&str]) -> Output {
    Command::new(bin_dir().join("pgbench"))
        .args(["-h"])
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench")
}

/// Logs in as `postgres` to database `postgres` over an already connected `stream` (after
/// a PROXY header, over direct TLS...) without TLS negotiation, and runs `SELECT n`.
pub async fn select_over<S>(stream: S, n: i32) -> Result<i32, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = tokio_postgres::Config::new()
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_raw(stream, tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    let row = client.query_one(&format!("SELECT {n}"), &[]).await?;
    Ok(row.get::<_, i32>(0))
}

/// A postgres listener section with certificates and `client_tls` mode `mode`.
pub fn tls_listener(name: &str, cert: &Path, key: &Path, mode: &str) -> String {
    format!(
        r#"[[listener]]
name = "{name}"
listen = "127.0.0.1:0"
protocol = "postgres"
pool = "app"
tls = {{ certs = [{{ cert = "{}", key = "{}" }}] }}
client_tls = {{ mode = "{mode}" }}
"#,
        cert.display(),
        key.display()
    )
}

/// A protocol 3.0 StartupMessage for `user` on database `postgres`, for clients that speak
/// the protocol by hand.
pub fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}
