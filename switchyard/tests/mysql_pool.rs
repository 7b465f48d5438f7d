//! mysql listeners over a `pool_mode = "transaction"` pool, against a real MariaDB, with
//! the clients people use (the `mariadb` CLI, PyMySQL, mysql-connector-python's prepared
//! cursor): many clients on one server connection, transactions kept whole, and no
//! session state crossing clients — variables, the default database, character sets,
//! `LAST_INSERT_ID()`, and the pinning cases (user variables, temporary tables, named
//! locks) reset before the next client; prepared statements shared per server
//! connection under the cap.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use support::config::Config;
use support::mysql::{
    MariaDb, MyOptions, NATIVE_USER, connector_python, mariadb_cli, python_against,
};
use support::ops::{parse_metrics, tx_pools};
use support::wait_until;

/// A primary with the native user allowed everything in `app` and `shop`, and a table
/// with an auto-increment key.
fn server() -> MariaDb {
    let server = MariaDb::start(&MyOptions::default());
    server.sql(
        "CREATE DATABASE shop; GRANT ALL ON app.* TO native_user; \
         GRANT ALL ON shop.* TO native_user; \
         CREATE TABLE app.items (id INT AUTO_INCREMENT PRIMARY KEY, name TEXT); \
         CREATE TABLE app.ledger (n INT);",
    );
    server
}

/// A proxy with one mysql listener (proxy-side auth) over a transaction pool of
/// `pool_keys` on `server`.
async fn start(server: &MariaDb, pool_keys: &str) -> (support::Proxy, SocketAddr) {
    let servers = Config::new()
        .protocol("mysql")
        .server("db", server.address(), "");
    pooled(servers, pool_keys).start().await
}

/// `config` (a mysql config with its servers) with its pool in transaction mode with
/// `pool_keys`, and the listener authenticating the native user itself.
fn pooled(config: Config, pool_keys: &str) -> Config {
    config
        .pool(&format!("pool_mode = \"transaction\"\n{pool_keys}"))
        .listener("auth = \"mysql_native_password\"")
        .listener("server_version = \"5.5.5-10.11.6-MariaDB\"")
        .section(&format!(
            "[[user]]\nname = \"{}\"\npassword = \"{}\"\n",
            NATIVE_USER.0, NATIVE_USER.1
        ))
}

/// What every PyMySQL script of these tests starts with: the native user's login from the
/// arguments, `connect()` to database `app`, and `one(conn, sql)`, the first column of the
/// first row (or `None`).
const PYMYSQL: &str = r#"
import sys, threading, time, pymysql
host, port, user, password = sys.argv[1:5]
def connect(autocommit=True):
    return pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database="app", autocommit=autocommit)
def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        return None if row is None else row[0]
"#;

/// Runs a PyMySQL `script` (Debian's python3) after [`PYMYSQL`]; its output lines.
async fn run_pymysql(script: &str, front: SocketAddr) -> Vec<String> {
    run_python(
        Path::new("/usr/bin/python3"),
        format!("{PYMYSQL}{script}"),
        front,
    )
    .await
}

/// Runs a Python `script` with `python` against `front` as the native user; its output
/// lines (a failing script fails the test with what it printed).
async fn run_python(python: &Path, script: impl Into<String>, front: SocketAddr) -> Vec<String> {
    let output = python_against(python, script, front).await;
    assert!(
        output.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Connections of the native user the server has now.
fn server_connections(server: &MariaDb) -> usize {
    server
        .sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'native_user'")
        .trim()
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_one_connection_and_no_state_crosses_them() {
    let server = server();
    let (proxy, front) = start(&server, "pool_size = 1").await;

    let (ok, out, err) = mariadb_cli(
        front,
        NATIVE_USER,
        &["-D", "app"],
        "SELECT DATABASE(), 1 + 1",
    );
    assert!(ok, "{err}\n{}", proxy.stderr());
    assert_eq!(out, "app\t2");

    // Two clients in turn on one server connection (pool_size 1): what one sets, the
    // other never sees; its own state follows it.
    let script = r#"
a, b = connect(), connect()
print("thread", one(a, "SELECT CONNECTION_ID()") == one(b, "SELECT CONNECTION_ID()"))
one(a, "SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
print("mode", one(a, "SELECT @@sql_mode"), "|", one(b, "SELECT @@sql_mode") == "STRICT_ALL_TABLES")
one(a, "/* odd */ sEt   @@session.wait_timeout = 77")
print("wait", one(a, "SELECT @@wait_timeout"), one(b, "SELECT @@wait_timeout") == 77)
one(a, "USE shop")
print("db", one(a, "SELECT DATABASE()"), one(b, "SELECT DATABASE()"))
one(a, "SET NAMES latin1")
print("names", one(a, "SELECT @@character_set_client"), one(b, "SELECT @@character_set_client"))
one(a, "USE app")
one(a, "INSERT INTO items (name) VALUES ('a')")
one(b, "INSERT INTO items (name) VALUES ('b')")
one(b, "INSERT INTO items (name) VALUES ('b2')")
print("id", one(a, "SELECT LAST_INSERT_ID()"), one(b, "SELECT LAST_INSERT_ID()"))
# A transaction holds the connection until it ends: b waits, then sees the commit.
one(a, "BEGIN")
one(a, "INSERT INTO ledger VALUES (1)")
one(a, "COMMIT")
print("ledger", one(b, "SELECT COUNT(*) FROM ledger"))
# Pinning state: gone once its client leaves.
one(a, "SET @secret = 'a-only'")
one(a, "CREATE TEMPORARY TABLE scratch (x INT)")
one(a, "SELECT GET_LOCK('held', 0)")
print("pinned", one(a, "SELECT @secret"), one(a, "SELECT COUNT(*) FROM scratch"))
a.close()
print("after", one(b, "SELECT @secret"), one(b, "SELECT IS_FREE_LOCK('held')"))
try:
    one(b, "SELECT * FROM scratch")
    print("scratch visible")
except pymysql.err.ProgrammingError as e:
    print("scratch", e.args[0])
# An error inside a transaction keeps it; ROLLBACK ends it.
c = connect(autocommit=False)
one(c, "INSERT INTO ledger VALUES (2)")
try:
    one(c, "SELECT * FROM nowhere")
except pymysql.err.ProgrammingError:
    pass
c.rollback()
print("rolled back", one(b, "SELECT COUNT(*) FROM ledger"))
b.close(); c.close()
"#;
    let lines = run_pymysql(script, front).await;
    assert_eq!(
        lines,
        [
            "thread True",
            "mode STRICT_ALL_TABLES | False",
            "wait 77 False",
            "db shop app",
            "names latin1 utf8mb4",
            "id 1 3",
            "ledger 1",
            "pinned a-only 0",
            "after None 1",
            "scratch 1146",
            "rolled back 1",
        ]
    );
    // One for PyMySQL's clients, one for the CLI's: clients whose capabilities or
    // character set differ never share a connection.
    wait_until("a server connection per client shape", || async {
        server_connections(&server) <= 2
    })
    .await;
    let labels = [
        ("pool", "app"),
        ("database", "app"),
        ("user", "native_user"),
    ];
    // One series per client shape (the CLI's, PyMySQL's).
    let text = proxy.metrics().await;
    let samples = parse_metrics(&text).expect("valid metrics text");
    let series: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == "switchyard_mysql_pool_transactions_total"
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    assert!(series.iter().sum::<f64>() >= 20.0, "{text}");
    let pools = proxy.pools().await;
    let app = pools.iter().find(|p| p.name == "app").expect("pool app");
    let tx_pools = tx_pools(app);
    assert!(
        tx_pools
            .iter()
            .all(|t| t.database == "app" && t.user == "native_user")
    );
    assert_eq!(tx_pools.len(), 2, "one per client shape: {tx_pools:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_shared_per_server_connection_under_the_cap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let python = connector_python(dir.path());
    let server = server();
    let (_proxy, front) = start(&server, "pool_size = 2\nmax_prepared_statements = 3").await;
    // 500 clients open at once, each preparing the same statement (and some others)
    // with the connector's prepared cursor, executing it with its own parameters.
    let script = r#"
import sys, mysql.connector
host, port, user, password = sys.argv[1:5]
conns = []
for i in range(500):
    conn = mysql.connector.connect(host=host, port=int(port), user=user, password=password,
                                   database="app", ssl_disabled=True, autocommit=True)
    conns.append(conn)
total = 0
for i, conn in enumerate(conns):
    cur = conn.cursor(prepared=True)
    cur.execute("SELECT ? + 1, ?", (i, "x" * (i % 3)))
    row = cur.fetchone()
    assert row[0] == i + 1 and row[1] == "x" * (i % 3), row
    total += 1
    if i % 50 == 0:
        other = conn.cursor(prepared=True)
        other.execute(f"SELECT {i} + ?", (1,))
        assert other.fetchone()[0] == i + 1
        other.close()
    if i % 100 == 0:
        # A statement without parameters or columns (as sysbench prepares BEGIN).
        bare = conn.cursor(prepared=True)
        bare.execute("DO 1")
        bare.close()
    # Executed again: the connector sends no types the second time.
    cur.execute("SELECT ? + 1, ?", (i * 2, "y"))
    assert cur.fetchone()[0] == i * 2 + 1
    cur.close()
print("ran", total)
for conn in conns:
    conn.close()
"#;
    let lines = run_python(&python, script, front).await;
    assert_eq!(lines, ["ran 500"]);
    let count = server.sql("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'");
    let count: usize = count
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count <= 2 * 3, "{count} statements prepared on the server");
    wait_until("two server connections", || async {
        server_connections(&server) <= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_reaches_the_connection_a_pooled_session_holds() {
    let server = server();
    let (_proxy, front) = start(&server, "pool_size = 2").await;
    // A sleeps on one server connection; B kills it by the proxy's connection id of A
    // (what A's driver knows), from the other connection.
    let script = r#"
a, b = connect(), connect()
outcome = {}
def sleep():
    with a.cursor() as cur:
        started = time.monotonic()
        try:
            cur.execute("SELECT SLEEP(60)")
            outcome["slept"] = cur.fetchone()[0]
        except pymysql.err.OperationalError as e:
            outcome["slept"] = e.args[0]
        outcome["soon"] = time.monotonic() - started < 30
worker = threading.Thread(target=sleep)
worker.start()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    with b.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'")
        if cur.fetchone()[0] == 1:
            break
    time.sleep(0.05)
with b.cursor() as cur:
    cur.execute(f"KILL QUERY {a.thread_id()}")
worker.join()
print("killed", outcome["slept"], outcome["soon"])
with b.cursor() as cur:
    try:
        cur.execute("KILL QUERY 999999")
    except pymysql.err.OperationalError as e:
        print("unknown", e.args[0])
with a.cursor() as cur:
    cur.execute("SELECT 1")
    print("a goes on", cur.fetchone()[0])
"#;
    let lines = run_pymysql(script, front).await;
    // MariaDB answers an interrupted SLEEP with ERR 1317 (MySQL returns 1).
    assert_eq!(lines, ["killed 1317 True", "unknown 1094", "a goes on 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sessions_leave_nothing_behind() {
    let server = server();
    let (_proxy, front) = start(&server, "pool_size = 1").await;
    // Each case: client A does something to its session and leaves; client B, next on
    // the same server connection, must see what a fresh connection sees.
    let script = r#"
fresh = connect()
baseline = {
    "lock": one(fresh, "SELECT IS_FREE_LOCK('l')"),
    "var": one(fresh, "SELECT @x"),
    "mode": one(fresh, "SELECT @@sql_mode"),
}
fresh.close()
cases = [
    ("GET_LOCK alone", ["sElEcT Get_Lock('l', 0)"], "SELECT IS_FREE_LOCK('l')", baseline["lock"]),
    ("user variable in a SELECT", ["SELECT @x := 5"], "SELECT @x", baseline["var"]),
    ("user variable mixed with a system one", ["SET @x = 6, sql_mode = 'ANSI'"], "SELECT @x", baseline["var"]),
    ("executable comment", ["/*!40101 SET @x = 7 */"], "SELECT @x", baseline["var"]),
    ("SET in a comment", ["/* SET sql_mode = 'ANSI' */ SELECT 1"], "SELECT @@sql_mode", baseline["mode"]),
    ("ANSI_QUOTES", ["SET sql_mode = 'ANSI_QUOTES'"], "SELECT @@sql_mode", baseline["mode"]),
    ("LOCK TABLES", ["LOCK TABLES items READ"], "SELECT COUNT(*) FROM ledger", 0),
    ("USE inside a transaction", ["BEGIN", "USE shop", "COMMIT"], "SELECT DATABASE()", "app"),
    ("SQL PREPARE", ["PREPARE s FROM 'SELECT 1'"], "SELECT 1", 1),
]
for name, setup, probe, expected in cases:
    a = connect()
    for sql in setup:
        one(a, sql)
    a.close()
    b = connect()
    try:
        got = one(b, probe)
    except pymysql.err.MySQLError as e:
        got = f"ERR {e.args[0]}"
    b.close()
    print(name, "ok" if got == expected else f"LEAK: {got!r} != {expected!r}")
# FOUND_ROWS() after SQL_CALC_FOUND_ROWS (which pins); ROW_COUNT() and FOUND_ROWS()
# answer the client's own statements while another client ran in between.
a = connect()
one(a, "SELECT SQL_CALC_FOUND_ROWS id FROM items LIMIT 1")
print("calc found rows", one(a, "SELECT FOUND_ROWS()"))
a.close()
b, c = connect(), connect()
one(b, "UPDATE items SET name = CONCAT(name, '!')")
one(c, "DELETE FROM ledger WHERE n = -1")
print("row count", one(b, "SELECT ROW_COUNT()"), one(c, "select row_count() AS n"))
with b.cursor() as cur:
    cur.execute("SELECT id FROM items")
one(c, "SELECT 1")
print("found rows", one(b, "SELECT FOUND_ROWS()"), one(c, "SELECT FOUND_ROWS()"))
b.close(); c.close()
"#;
    server.sql("INSERT INTO app.items (name) VALUES ('x'), ('y'), ('z')");
    let lines = run_pymysql(script, front).await;
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains("LEAK")).collect();
    assert!(leaks.is_empty(), "{lines:#?}");
    assert_eq!(
        lines[lines.len() - 3..],
        ["calc found rows 3", "row count 3 0", "found rows 3 1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_split_sends_reads_to_the_replica() {
    let primary = server();
    let replica = primary.replica();
    let servers = Config::new()
        .protocol("mysql")
        .servers(&[("a", primary.address(), ""), ("b", replica.address(), "")]);
    let split = format!(
        "read_write_split = true\nsticky_after_write = \"1s\"\n\
         health = {{ check = \"mysql\", user = \"{}\", password = \"{}\", interval = \"200ms\", fall = 2, rise = 1 }}",
        support::mysql::MONITOR_USER.0,
        support::mysql::MONITOR_USER.1
    );
    let (proxy, front) = pooled(servers, &split).start().await;
    wait_until("roles known", || async {
        proxy.server("app", "a").await.role == "primary"
            && proxy.server("app", "b").await.role == "replica"
    })
    .await;
    // @@server_id says where each statement ran: 1 the primary, 2 the replica.
    let script = r#"
conn = connect()
print("read", one(conn, "SELECT @@server_id"))
one(conn, "INSERT INTO items (name) VALUES ('w')")
print("read after write", one(conn, "SELECT @@server_id"))
time.sleep(1.2)
print("read later", one(conn, "SELECT @@server_id"))
print("hint", one(conn, "/* switchyard: primary */ SELECT @@server_id"))
one(conn, "BEGIN")
print("in a transaction", one(conn, "SELECT @@server_id"))
one(conn, "COMMIT")
one(conn, "START TRANSACTION READ ONLY")
print("read-only transaction", one(conn, "SELECT @@server_id"))
one(conn, "COMMIT")
one(conn, "SET switchyard.route = primary")
print("route primary", one(conn, "SELECT @@server_id"))
one(conn, "SET switchyard.route = auto")
print("route auto", one(conn, "SELECT @@server_id"))
try:
    one(conn, "SET switchyard.route = nowhere")
except pymysql.err.MySQLError as e:
    print("bad route", e.args[0])
print("locking read", one(conn, "SELECT @@server_id FROM items LIMIT 1 FOR UPDATE"))
"#;
    let lines = run_pymysql(script, front).await;
    assert_eq!(
        lines,
        [
            "read 2",
            "read after write 1",
            "read later 2",
            "hint 1",
            "in a transaction 1",
            "read-only transaction 2",
            "route primary 1",
            "route auto 2",
            "bad route 1231",
            "locking read 1",
        ]
    );
    // The same through prepared statements (mysql-connector-python's prepared cursor): a
    // prepared write counts for sticky_after_write, and prepared reads go to the replica.
    let dir = tempfile::tempdir().expect("temp dir");
    let connector = connector_python(dir.path());
    let prepared = r#"
import sys, time, mysql.connector
host, port, user, password = sys.argv[1:5]
conn = mysql.connector.connect(host=host, port=int(port), user=user, password=password,
                               database="app", ssl_disabled=True, autocommit=True)
def where(cur, sql, args=()):
    cur.execute(sql, args)
    return cur.fetchone()[0]
cur = conn.cursor(prepared=True)
time.sleep(1.2)
print("prepared read", where(cur, "SELECT @@server_id + ?", (0,)))
cur.execute("INSERT INTO items (name) VALUES (?)", ("p",))
print("after a prepared write", where(conn.cursor(), "SELECT @@server_id"))
time.sleep(1.2)
print("prepared read later", where(cur, "SELECT @@server_id + ?", (0,)))
"#;
    let lines = run_python(&connector, prepared, front).await;
    assert_eq!(
        lines,
        [
            "prepared read 2",
            "after a prepared write 1",
            "prepared read later 2"
        ]
    );
    let pools = proxy.pools().await;
    let routed = tx_pools(&pools[0]);
    assert!(
        routed
            .iter()
            .any(|t| t.routed_replica > 0 && t.routed_primary > 0),
        "{routed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_through_a_pool_of_two() {
    let server = server();
    let (_proxy, front) = start(&server, "pool_size = 2").await;
    let connection = |address: SocketAddr| {
        vec![
            "--db-driver=mysql".to_string(),
            format!("--mysql-host={}", address.ip()),
            format!("--mysql-port={}", address.port()),
            format!("--mysql-user={}", NATIVE_USER.0),
            format!("--mysql-password={}", NATIVE_USER.1),
            "--mysql-db=app".to_string(),
            "--tables=1".to_string(),
            "--table-size=1000".to_string(),
        ]
    };
    let sysbench = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new("sysbench")
                .args(args)
                .output()
                .expect("sysbench (Debian sysbench)")
        })
    };
    let mut prepare = connection(server.address());
    prepare.extend(["oltp_read_write".to_string(), "prepare".to_string()]);
    let prepared = sysbench(prepare).await.expect("joined");
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    // 16 sessions on 2 server connections, prepared statements, reads and writes in
    // transactions, for a few seconds: every transaction completes or is retried after a
    // deadlock, and no session is lost.
    let mut run = connection(front);
    run.extend(
        [
            "--threads=16",
            "--time=3",
            "--db-ps-mode=auto",
            "oltp_read_write",
            "run",
        ]
        .map(String::from),
    );
    let ran = sysbench(run).await.expect("joined");
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let line = |name: &str| {
        said.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    // sysbench retries a transaction the server rolled back for a deadlock (1213, and
    // 1020/1205), which 16 writers on 1,000 rows meet now and then, directly as through a
    // pool; any other error fails the run, as the exit status above would show.
    assert!(line("reconnects:").contains(" 0 "), "{said}");
    assert!(!line("transactions:").contains(" 0 "), "{said}");
}
