//! mysql listeners in session mode against real MariaDB servers, with the clients people
//! use (the `mariadb` CLI, PyMySQL, mysql-connector-python in a venv): every listener
//! `client_tls` mode, every upstream `sslmode` (a plaintext client reaching a server that
//! requires secure transport), routing with rewrites, the server's authentication relayed
//! (native and ed25519, a wrong password), proxy-side authentication with `[[user]]`, the
//! proxy's own errors, malformed packets, roles and failover, `KILL QUERY` by the proxy's
//! connection ids, and many short connections.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::SSLMODES;
use support::certs::TestCa;
use support::config::Config;
use support::mysql::{
    ED25519_USER, MariaDb, MyOptions, NATIVE_USER, connector_python, mariadb_cli, python_against,
};
use support::ops::{access_lines, listener_addr};
use support::wait_until;

/// A primary with the test users allowed everything in databases `app` and `shop`.
fn server(options: &MyOptions) -> MariaDb {
    let server = MariaDb::start(options);
    server.sql(
        "CREATE DATABASE shop; GRANT ALL ON app.* TO native_user, ed_user; \
         GRANT ALL ON shop.* TO native_user, ed_user;",
    );
    server
}

/// A mysql listener `name` over pool `pool`, with `extra` keys.
fn listener(name: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"mysql\"\npool = \"{pool}\"\n{extra}\n"
    )
}

/// The listener keys of TLS with `cert`/`key` in client_tls `mode`.
fn tls_keys(cert: &Path, key: &Path, mode: &str) -> String {
    format!(
        "tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}] }}\nclient_tls = {{ mode = \"{mode}\" }}",
        cert.display(),
        key.display()
    )
}

/// PyMySQL (Debian's, under /usr/bin/python3) running `sql` as `user`; `ssl_ca` asks for
/// TLS verified against that CA. Returns the first column of the first row, or the
/// error as `ERR <code> <message>`.
fn pymysql(
    address: SocketAddr,
    user: (&str, &str),
    database: Option<&str>,
    ssl_ca: Option<&Path>,
    sql: &str,
) -> String {
    let script = r#"
import sys, pymysql
host, port, user, password, database, ca, sql = sys.argv[1:8]
ssl = {"ca": ca} if ca else None
try:
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database=database or None, ssl=ssl, connect_timeout=20)
    with conn.cursor() as cur:
        cur.execute(sql)
        print(cur.fetchone()[0])
    conn.close()
except pymysql.err.MySQLError as e:
    print("ERR", e.args[0], e.args[1] if len(e.args) > 1 else "")
"#;
    let ca = ssl_ca.map(|p| p.display().to_string()).unwrap_or_default();
    let output = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args([
            &address.ip().to_string(),
            &address.port().to_string(),
            user.0,
            user.1,
            database.unwrap_or_default(),
            &ca,
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("python3 with PyMySQL (Debian python3-pymysql)");
    assert!(
        output.status.success(),
        "python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A PyMySQL session (the native user, in `database` unless empty) logged in and held
/// open until [`HeldSession::finish`].
struct HeldSession {
    child: std::process::Child,
    said: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldSession {
    /// Returns once the session has logged in through `front`.
    fn open(front: SocketAddr, database: &str) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                r#"
import sys, pymysql
conn = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user=sys.argv[3],
                       password=sys.argv[4], database=sys.argv[5] or None)
print("ready", flush=True)
sys.stdin.readline()
try:
    conn.cursor().execute("SELECT 1")
    print("still answered")
except pymysql.err.MySQLError as e:
    print("lost", e.args[0])
"#,
            ])
            .args([
                &front.ip().to_string(),
                &front.port().to_string(),
                NATIVE_USER.0,
                NATIVE_USER.1,
                database,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with PyMySQL (Debian python3-pymysql)");
        let mut said = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut said, &mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Self { child, said }
    }

    /// Runs `SELECT 1` on the session and ends it: "still answered", or "lost <code>".
    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.said, &mut line).expect("answer");
        let _ = self.child.wait();
        line.trim().to_string()
    }
}

/// The CLI's `status` line about TLS between it and whoever it reached.
fn cli_tls(address: SocketAddr, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = mariadb_cli(address, NATIVE_USER, args, "status");
    let line = out
        .lines()
        .find(|l| l.starts_with("SSL:"))
        .unwrap_or_default()
        .to_string();
    (ok, if ok { line } else { err })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_modes_and_upstream_sslmodes_with_the_cli_and_pymysql() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("mysql proxy test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (proxy_cert, proxy_key) = ca.issue(&["127.0.0.1"], "proxy", dir.path(), "proxy");
    let (cert, key) = ca.issue(&["127.0.0.1"], "mariadb", dir.path(), "server");
    let server = server(&MyOptions {
        tls: Some((cert, key, ca_file.clone())),
    });
    // The managed-database case: the server takes TLS only.
    server.sql("SET GLOBAL require_secure_transport = ON");

    let mut config = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "")
        .pool(&format!(
            "upstream_tls = {{ sslmode = \"require\", root_cert = \"{}\" }}",
            ca_file.display()
        ))
        .listener(&format!(
            "tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            proxy_cert.display(),
            proxy_key.display()
        ));
    for mode in ["disabled", "optional", "required"] {
        config = config.section(&listener(
            mode,
            "app",
            &tls_keys(&proxy_cert, &proxy_key, mode),
        ));
    }
    for mode in SSLMODES {
        config = config
            .listener(&format!(
                "  [[listener.routes]]\n  database = \"{mode}\"\n  pool = \"{mode}\"\n  rewrite_database = \"app\"\n"
            ))
            .section(&format!(
                "[[pool]]\nname = \"{mode}\"\nupstream_tls = {{ sslmode = \"{mode}\", root_cert = \"{}\" }}\nservers = [ {{ address = \"{}\" }} ]\n",
                ca_file.display(),
                server.address()
            ));
    }
    let (proxy, front) = config.start().await;

    // Client side: plaintext and TLS against each listener mode.
    let ca_arg = format!("--ssl-ca={}", ca_file.display());
    let tls_args = ["--ssl", ca_arg.as_str(), "--ssl-verify-server-cert"];
    for (mode, plain_works, tls_works) in [
        ("disabled", true, false),
        ("optional", true, true),
        ("required", false, true),
    ] {
        let address = listener_addr(&proxy, mode).await;
        let (ok, said) = cli_tls(address, &["--skip-ssl"]);
        assert_eq!(ok, plain_works, "plaintext on {mode}: {said}");
        if ok {
            assert!(said.contains("Not in use"), "{mode}: {said}");
        } else {
            assert!(said.contains("3159"), "{mode}: {said}");
        }
        let (ok, said) = cli_tls(address, &tls_args);
        assert_eq!(ok, tls_works, "TLS on {mode}: {said}");
        if ok {
            assert!(said.contains("Cipher in use"), "{mode}: {said}");
        }
        let plain = pymysql(address, NATIVE_USER, None, None, "SELECT 1");
        assert_eq!(
            plain == "1",
            plain_works,
            "PyMySQL plaintext on {mode}: {plain}"
        );
        if !plain_works {
            assert!(plain.starts_with("ERR 3159"), "{plain}");
        }
        if tls_works {
            let over_tls = pymysql(address, NATIVE_USER, None, Some(&ca_file), "SELECT 1");
            assert_eq!(over_tls, "1", "PyMySQL TLS on {mode}");
        }
    }

    // Server side: a plaintext client reaches the TLS-only server through every sslmode
    // that asks for TLS. `disable` and `allow` log in in plaintext, which the server
    // refuses (its 1045 relayed: the client's answer is bound to that connection's
    // scramble, so `allow` cannot retry a relayed login).
    for mode in SSLMODES {
        let cipher = pymysql(
            front,
            NATIVE_USER,
            Some(mode),
            None,
            "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
        );
        if matches!(mode, "disable" | "allow") {
            assert!(cipher.starts_with("ERR 1045"), "{mode}: {cipher}");
        } else {
            assert!(
                cipher.starts_with("TLS") || cipher.contains("AES") || cipher.contains("CHACHA"),
                "{mode}: {cipher}"
            );
        }
        let (ok, db, err) = mariadb_cli(
            front,
            ED25519_USER,
            &["--skip-ssl", "-D", mode],
            "SELECT DATABASE()",
        );
        assert_eq!(ok, !matches!(mode, "disable" | "allow"), "{mode}: {err}");
        if ok {
            assert_eq!(db, "app", "rewritten");
        }
    }
    let lines = access_lines(&proxy);
    assert!(
        lines.iter().any(|l| l["termination"] == "tls_required"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rewrites_errors_and_malformed_packets() {
    let server = server(&MyOptions::default());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_address = dead.local_addr().expect("address");
    drop(dead);
    let config = Config::new()
        .protocol("mysql")
        .routes_only()
        .server("db", server.address(), "")
        .listener(
            "  [[listener.routes]]\n  database = \"storefront\"\n  pool = \"app\"\n  rewrite_database = \"shop\"\n\
             \n  [[listener.routes]]\n  user = \"alias\"\n  pool = \"app\"\n  rewrite_user = \"native_user\"\n\
             \n  [[listener.routes]]\n  database = \"gone\"\n  pool = \"gone\"\n\
             \n  [[listener.routes]]\n  database = \"drained\"\n  pool = \"drained\"\n\
             \n  [[listener.routes]]\n  database = \"busy\"\n  pool = \"busy\"\n  rewrite_database = \"app\"\n\
             \n  [[listener.routes]]\n  database = \"app\"\n  pool = \"app\"\n\
             \n  [[listener.routes]]\n  user = \"ed_user\"\n  pool = \"app\"\n\
             \n  [[listener.routes]]\n  attributes = { program_name = \"report*\" }\n  pool = \"app\"\n  rewrite_database = \"shop\"\n",
        )
        .section(&format!(
            "[[pool]]\nname = \"gone\"\nservers = [ {{ address = \"{dead_address}\" }} ]\n\n\
             [[pool]]\nname = \"drained\"\nservers = [ {{ name = \"only\", address = \"{0}\" }} ]\n\n\
             [[pool]]\nname = \"busy\"\ntimeouts = {{ queue = \"300ms\" }}\n\
             servers = [ {{ address = \"{0}\", max_connections = 1 }} ]\n",
            server.address()
        ));
    let (proxy, front) = config.start().await;

    let (ok, out, err) = mariadb_cli(
        front,
        NATIVE_USER,
        &["-D", "storefront"],
        "SELECT DATABASE(), CURRENT_USER()",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "shop\tnative_user@%");
    let (ok, out, err) = mariadb_cli(
        front,
        ("alias", NATIVE_USER.1),
        &[],
        "SELECT CURRENT_USER()",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "native_user@%", "user rewritten");
    let (ok, out, err) = mariadb_cli(front, ED25519_USER, &[], "SELECT CURRENT_USER()");
    assert!(ok, "ed25519 relayed: {err}");
    assert_eq!(out, "ed_user@%");
    assert_eq!(
        pymysql(
            front,
            NATIVE_USER,
            Some("app"),
            None,
            "SELECT COUNT(*) FROM t"
        ),
        "0"
    );

    // A connection attribute as the key: PyMySQL's `program_name`.
    let output = python_against(
        Path::new("/usr/bin/python3"),
        r#"
import sys, pymysql
host, port, user, password = sys.argv[1:5]
def database(**extra):
    try:
        conn = pymysql.connect(host=host, port=int(port), user=user, password=password, **extra)
    except pymysql.err.MySQLError as e:
        return "ERR %d" % e.args[0]
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        return cur.fetchone()[0]
print(database(program_name="reporting"), database(program_name="billing"), database())
"#,
        front,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "shop ERR 1049 ERR 1049",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Errors: the server's own wrong-password refusal, and the proxy's.
    let wrong = pymysql(
        front,
        (NATIVE_USER.0, "wrong"),
        Some("app"),
        None,
        "SELECT 1",
    );
    assert!(
        wrong.starts_with("ERR 1045 Access denied for user 'native_user'@'127.0.0.1'"),
        "{wrong}"
    );
    let (ok, _, err) = mariadb_cli(front, ("nobody", "x"), &["-D", "elsewhere"], "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains("1049") && err.contains("42000") && err.contains("elsewhere"),
        "{err}"
    );
    // No server reachable: MySQL's 2003 "Can't connect" naming the server that failed,
    // 08S01; the `mariadb` CLI (libmariadb, which takes no client-range number from a
    // server) gets the same under 1105.
    let cant = format!("Can't connect to MySQL server on '{dead_address}' (");
    let (ok, _, err) = mariadb_cli(front, NATIVE_USER, &["-D", "gone"], "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains(&format!("ERROR 1105 (08S01): {cant}")),
        "{err}"
    );
    let py = pymysql(front, NATIVE_USER, Some("gone"), None, "SELECT 1");
    assert!(py.starts_with(&format!("ERR 2003 {cant}")), "{py}");
    // No server available at all (the pool's only one drained): the pool is named.
    proxy.set_state("drained", "only", "drain").await;
    let py = pymysql(front, NATIVE_USER, Some("drained"), None, "SELECT 1");
    assert_eq!(
        py,
        "ERR 2003 Can't connect to MySQL server on 'drained' (no server available)"
    );
    let (ok, _, err) = mariadb_cli(front, NATIVE_USER, &["-D", "drained"], "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains("ERROR 1105 (08S01): Can't connect to MySQL server on 'drained'"),
        "{err}"
    );
    // The pool's one slot held by a session: the next client waits `timeouts.queue`, then
    // gets 1040 (08004) "Too many connections".
    let held = HeldSession::open(front, "busy");
    let (ok, _, err) = mariadb_cli(front, NATIVE_USER, &["-D", "busy"], "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains("ERROR 1040 (08004): Too many connections"),
        "{err}"
    );
    assert_eq!(
        pymysql(front, NATIVE_USER, Some("busy"), None, "SELECT 1"),
        "ERR 1040 Too many connections"
    );
    assert_eq!(held.finish(), "still answered");

    // Malformed: a login packet cut short gets ERR 1156; others are served meanwhile.
    let mut raw = TcpStream::connect(front).await.expect("connect");
    let mut greeting = [0u8; 4];
    raw.read_exact(&mut greeting)
        .await
        .expect("greeting header");
    let length = usize::from(greeting[0]) | usize::from(greeting[1]) << 8;
    let mut body = vec![0u8; length];
    raw.read_exact(&mut body).await.expect("greeting");
    assert_eq!(body[0], 10, "HandshakeV10");
    raw.write_all(&[5, 0, 0, 1, 0x85, 0xa2, 0x0a, 0x00, 0x01])
        .await
        .expect("write");
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.expect("read");
    assert_eq!(answer[4], 0xff, "ERR packet");
    assert_eq!(u16::from_le_bytes([answer[5], answer[6]]), 1156);
    assert_eq!(&answer[7..13], b"#08S01");
    let (ok, _, err) = mariadb_cli(front, NATIVE_USER, &["-D", "app"], "SELECT 1");
    assert!(ok, "still serving: {err}");

    wait_until("access log lines", || {
        let lines = access_lines(&proxy);
        async move {
            [
                "no_route",
                "connect_failed",
                "no_server",
                "queue_timeout",
                "bad_startup",
                "server_refused",
            ]
            .iter()
            .all(|t| lines.iter().any(|l| l["termination"] == *t))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_short_connections() {
    let server = server(&MyOptions::default());
    let (_proxy, front) = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "max_connections = 100")
        .pool("timeouts = { queue = \"60s\" }")
        .start()
        .await;
    let script = r#"
import sys, threading, pymysql
host, port, user, password = sys.argv[1:5]
results = []
start = threading.Barrier(1000)
def one():
    try:
        start.wait()
        conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                               database="app", connect_timeout=60)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            results.append(cur.fetchone()[0] == 1)
        conn.close()
    except Exception as e:
        results.append(repr(e))
threads = [threading.Thread(target=one) for _ in range(1000)]
for t in threads: t.start()
for t in threads: t.join()
failures = [r for r in results if r is not True]
print(len(results), len(failures), failures[:3])
"#;
    let output = python_against(Path::new("/usr/bin/python3"), script, front).await;
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        said.trim(),
        "1000 0 []",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `SELECT @@server_id` through `address` as the native user (1: the primary, 2: the
/// replica the harness starts).
fn server_id(address: SocketAddr) -> String {
    let (ok, out, err) = mariadb_cli(address, NATIVE_USER, &[], "SELECT @@server_id");
    assert!(ok, "{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_listeners_follow_roles_and_failover() {
    let mut primary = server(&MyOptions::default());
    let replica = primary.replica();
    let config = Config::new()
        .protocol("mysql")
        .servers(&[("a", primary.address(), ""), ("b", replica.address(), "")])
        .listener("role = \"primary\"")
        .pool(&format!(
            "health = {{ check = \"mysql\", user = \"{}\", password = \"{}\", interval = \"200ms\", fall = 2, rise = 1 }}",
            support::mysql::MONITOR_USER.0,
            support::mysql::MONITOR_USER.1
        ))
        .section(&listener("ro", "app", "role = \"replica\""));
    let (proxy, rw) = config.start().await;
    let ro = listener_addr(&proxy, "ro").await;
    wait_until("roles known", || async {
        proxy.server("app", "a").await.role == "primary"
            && proxy.server("app", "b").await.role == "replica"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(server_id(rw), "1");
        assert_eq!(server_id(ro), "2");
    }
    let (ok, status, said) = proxy.ctl(&["status"]);
    assert!(ok, "{said}");
    assert!(status.contains("ro"), "{status}");

    // A session on the primary when it dies: its next query fails at once (2013, the
    // connection lost), not after a timeout.
    let held = HeldSession::open(rw, "");

    // Failover: the primary stops, the replica is promoted; the primary listener follows.
    primary.stop();
    let answer = held.finish();
    assert!(answer.starts_with("lost "), "{answer}");
    replica.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0;");
    wait_until("rw to follow the promoted replica", || async {
        proxy.server("app", "b").await.role == "primary"
            && proxy.server("app", "a").await.health == "down"
    })
    .await;
    assert_eq!(server_id(rw), "2");
    let (ok, _, err) = mariadb_cli(
        rw,
        NATIVE_USER,
        &["-D", "app"],
        "INSERT INTO t (v) VALUES (1)",
    );
    assert!(ok, "writes reach the promoted server: {err}");
    // No replica left: the replica listener falls back to the primary.
    assert_eq!(server_id(ro), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_by_the_proxys_connection_id_reaches_the_right_thread() {
    let server = server(&MyOptions::default());
    // Server thread ids move past the proxy's first ids, so a mix-up would show.
    for _ in 0..5 {
        server.sql("SELECT 1");
    }
    let (_proxy, front) = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "")
        .start()
        .await;
    // Two sessions sleep; a third kills the first one's query by the id its greeting
    // gave it (MariaDB ends a killed SLEEP with 1317 "Query execution was interrupted").
    // The second sleeps on until killed in turn; an unknown id kills nothing.
    let script = r#"
import sys, threading, time, pymysql
host, port, user, password = sys.argv[1:5]
def connect():
    return pymysql.connect(host=host, port=int(port), user=user, password=password)
a, b, c = connect(), connect(), connect()
ids = [x.thread_id() for x in (a, b)]
server_ids = []
for x in (a, b):
    with x.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        server_ids.append(cur.fetchone()[0])
assert ids != server_ids, (ids, server_ids)
results = {}
def sleep(name, conn):
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(30)")
            results[name] = cur.fetchone()[0]
    except pymysql.err.MySQLError as e:
        results[name] = e.args[0]
threads = [threading.Thread(target=sleep, args=(n, x)) for n, x in (("a", a), ("b", b))]
for t in threads: t.start()
def sleeping():
    with c.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'")
        return sorted(r[0] for r in cur.fetchall())
while sleeping() != sorted(server_ids):
    time.sleep(0.05)
with c.cursor() as cur:
    try:
        cur.execute("KILL QUERY 999999")
        print("unknown id: no error")
    except pymysql.err.MySQLError as e:
        print("unknown id:", e.args[0])
    cur.execute("KILL QUERY %d" % ids[0])
threads[0].join()
# The killed thread may still list its statement for a moment after its client got the
# error; what matters is that b's is still running.
print("a:", results["a"], "b sleeping:", server_ids[1] in sleeping())
with c.cursor() as cur:
    cur.execute("KILL QUERY %d" % ids[1])
threads[1].join()
print("b:", results["b"])
"#;
    let output = python_against(Path::new("/usr/bin/python3"), script, front).await;
    let said = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        ["unknown id: 1094", "a: 1317 b sleeping: True", "b: 1317"],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_side_authentication_with_users() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("mysql proxy auth CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(&["127.0.0.1"], "mariadb", dir.path(), "server");
    let server = server(&MyOptions {
        tls: Some((cert, key, ca_file.clone())),
    });
    server.sql("SET GLOBAL require_secure_transport = ON");
    let (proxy_cert, proxy_key) = ca.issue(&["127.0.0.1"], "proxy", dir.path(), "proxy");
    // `allow`: switchyard's own plaintext login is refused, and it retries over TLS.
    let config = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "")
        .pool(&format!(
            "upstream_tls = {{ sslmode = \"allow\", root_cert = \"{}\" }}",
            ca_file.display()
        ))
        .listener("auth = \"mysql_native_password\"")
        .listener("  [[listener.routes]]\n  user = \"alias\"\n  pool = \"app\"\n  rewrite_user = \"native_user\"\n")
        .section(&listener(
            "sha2",
            "app",
            &format!(
                "auth = \"caching_sha2_password\"\n{}",
                tls_keys(&proxy_cert, &proxy_key, "optional")
            ),
        ))
        .section(&format!(
            "[[user]]\nname = \"{}\"\npassword = \"{}\"\n\n[[user]]\nname = \"{}\"\npassword = \"{}\"\n\n\
             [[user]]\nname = \"alias\"\npassword = \"alias-pw\"\nserver_password = \"{}\"\n",
            NATIVE_USER.0, NATIVE_USER.1, ED25519_USER.0, ED25519_USER.1, NATIVE_USER.1
        ));
    let (proxy, front) = config.start().await;
    let sha2 = listener_addr(&proxy, "sha2").await;

    let (ok, out, err) = mariadb_cli(front, NATIVE_USER, &["-D", "app"], "SELECT CURRENT_USER()");
    assert!(ok, "{err}");
    assert_eq!(out, "native_user@%");
    assert_eq!(
        pymysql(
            front,
            ED25519_USER,
            Some("app"),
            None,
            "SELECT CURRENT_USER()"
        ),
        "ed_user@%",
        "switchyard answers the server's ed25519"
    );
    assert_eq!(
        pymysql(
            front,
            ("alias", "alias-pw"),
            None,
            None,
            "SELECT CURRENT_USER()"
        ),
        "native_user@%",
        "server_password with the rewritten user"
    );
    assert_eq!(
        pymysql(sha2, NATIVE_USER, None, None, "SELECT 7"),
        "7",
        "caching_sha2_password's fast path"
    );
    let (ok, out, err) = mariadb_cli(sha2, ED25519_USER, &[], "SELECT CURRENT_USER()");
    assert!(ok, "the CLI's caching_sha2_password: {err}");
    assert_eq!(out, "ed_user@%");
    let (ok, out, err) = mariadb_cli(
        sha2,
        NATIVE_USER,
        &["--ssl"],
        "SHOW STATUS LIKE 'Ssl_cipher'",
    );
    assert!(ok, "the fast path over TLS: {err}");
    assert!(out.starts_with("Ssl_cipher\t"), "{out}");
    let denied = "Access denied for user 'native_user'@'127.0.0.1' (using password: YES)";
    for address in [front, sha2] {
        let wrong = pymysql(address, (NATIVE_USER.0, "wrong"), None, None, "SELECT 1");
        assert_eq!(wrong, format!("ERR 1045 {denied}"));
        let unknown = pymysql(address, ("nobody", "x"), None, None, "SELECT 1");
        assert!(unknown.starts_with("ERR 1045"), "{unknown}");
    }
    // caching_sha2_password: a fast-path answer that fails leads to full authentication,
    // as on a MySQL server that has not cached the user: over plaintext the clients ask
    // for switchyard's RSA public key and send the password encrypted under it (PyMySQL
    // above, the CLI here), over TLS in clear. The password decrypts, and is wrong.
    for tls in ["--skip-ssl", "--ssl"] {
        let (ok, _, err) = mariadb_cli(sha2, (NATIVE_USER.0, "wrong"), &[tls], "SELECT 1");
        assert!(!ok);
        assert!(
            err.contains(&format!("ERROR 1045 (28000): {denied}")),
            "{err}"
        );
    }
    wait_until("the refusals' reasons in the log", || async {
        let log = proxy.stderr();
        log.matches("wrong password in full authentication with RSA")
            .count()
            == 2
            && log.contains("wrong password in full authentication over TLS")
            && log.contains("wrong password: Access denied")
    })
    .await;
    let lines = access_lines(&proxy);
    assert!(
        lines.iter().any(|l| l["termination"] == "auth_failed"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connector_python_in_plaintext_and_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let python = connector_python(dir.path());
    let ca = TestCa::new("connector CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(&["127.0.0.1"], "proxy", dir.path(), "proxy");
    let server = server(&MyOptions::default());
    let (_proxy, front) = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "")
        .listener(&tls_keys(&cert, &key, "optional"))
        // The backends' version: with a MySQL 8 one the connector asks for MySQL 8's
        // default collation (utf8mb4_0900_ai_ci), which MariaDB 10.11 refuses (1273).
        .listener("server_version = \"5.5.5-10.11.6-MariaDB\"")
        .start()
        .await;
    let script = r#"
import sys, mysql.connector
host, port, user, password, ca = sys.argv[1:6]
for tls in (False, True):
    options = dict(host=host, port=int(port), user=user, password=password, database="app")
    if tls:
        options.update(ssl_ca=ca, ssl_verify_cert=True)
    else:
        options.update(ssl_disabled=True)
    conn = mysql.connector.connect(**options)
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM t")
    count = cur.fetchone()[0]
    cur.execute("SHOW STATUS LIKE 'Ssl_version'")
    print(tls, count, conn.connection_id is not None)
    conn.close()
try:
    mysql.connector.connect(host=host, port=int(port), user=user, password="wrong", ssl_disabled=True)
except mysql.connector.Error as e:
    print("wrong:", e.errno, e.sqlstate)
"#;
    let output = Command::new(&python)
        .args(["-c", script])
        .args([
            &front.ip().to_string(),
            &front.port().to_string(),
            NATIVE_USER.0,
            NATIVE_USER.1,
        ])
        .arg(&ca_file)
        .output()
        .expect("connector python");
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["False 0 True", "True 0 True", "wrong: 1045 28000"],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_have_a_deadline_and_each_address_a_cap_on_logins_in_flight() {
    let server = server(&MyOptions::default());
    let (proxy, front) = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "")
        .listener("timeouts = { login = \"1s\" }\nmax_logins_per_address = 2")
        .start()
        .await;
    // Two clients read the proxy's greeting and never answer it.
    let mut silent = Vec::new();
    for _ in 0..2 {
        let mut client = TcpStream::connect(front).await.expect("connect");
        let mut head = [0u8; 5];
        client.read_exact(&mut head).await.expect("greeting");
        assert_eq!(head[4], 10, "a HandshakeV10 greeting");
        silent.push(client);
    }
    // A third from the same address gets the ERR a busy server sends instead of a greeting.
    let mut third = TcpStream::connect(front).await.expect("connect");
    let refused = support::ops::read_until_closed(&mut third).await;
    assert_eq!(refused.get(4), Some(&0xff), "an ERR packet: {refused:?}");
    assert_eq!(
        refused.get(5..7),
        Some(&1040u16.to_le_bytes()[..]),
        "ERR 1040"
    );
    // The silent two are cut at the login deadline (10 minutes of `timeouts.client` before).
    for client in &mut silent {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            client.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "closed by the proxy");
    }
    // The slots came back: a real client logs in.
    assert_eq!(
        pymysql(front, NATIVE_USER, Some("app"), None, "SELECT 1"),
        "1"
    );
    support::ops::wait_terminations(&proxy, &[("login_timeout", 2), ("too_many_logins", 1)]).await;
}
