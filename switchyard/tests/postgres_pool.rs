//! Transaction pooling (`pool_mode = "transaction"`) against a real PostgreSQL server with
//! real clients: many clients over few server connections, prepared statements and
//! settings that follow a client across connections, pinning, clean-up after a client
//! leaves mid-transaction, and the queue timeout.

mod support;

use std::net::SocketAddr;

use support::config::Config;
use support::ops::{field, listener_addr, tx_pools, wait_access};
use support::postgres::{
    PASSWORD, PgCluster, PgOptions, cancelled_sleep, connect, connect_abortable, pgbench, psql_ok,
    startup_packet, stderr,
};
use support::{Proxy, wait_until};

/// A postgres listener over one server in transaction mode with `pool_keys` added to the
/// pool (e.g. `pool_size = 2`); clients log in to switchyard as `postgres` with
/// [`PASSWORD`] (SCRAM-SHA-256, the default).
fn pooled(server: SocketAddr, pool_keys: &str) -> Config {
    Config::new()
        .protocol("postgres")
        .pool(&format!("pool_mode = \"transaction\"\n{pool_keys}"))
        .server("pg", server, "")
        .section(&format!(
            "[[user]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n"
        ))
}

/// Server backends of client sessions (not the proxy's own health checks) on `database`.
fn backends(pg: &PgCluster, database: &str) -> u32 {
    pg.psql_local(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ))
    .parse()
    .unwrap_or(u32::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_share_a_few_server_connections() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["app"],
        ..PgOptions::default()
    });
    let (proxy, front) = pooled(pg.address(), "pool_size = 10").start().await;
    let clients = 500;
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = connect(front, "postgres", "app").await.expect("connect");
            let statement = client.prepare("SELECT $1::int * 2").await.expect("prepare");
            for j in 0..4 {
                let row = client
                    .query_one(&statement, &[&(i * 100 + j)])
                    .await
                    .expect("prepared statement on any server connection");
                assert_eq!(row.get::<_, i32>(0), (i * 100 + j) * 2);
                let rows = client
                    .simple_query("SELECT 1; SELECT 2")
                    .await
                    .expect("simple query");
                let values = rows
                    .iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)));
                assert_eq!(values.count(), 2);
            }
            let tx = client.simple_query("BEGIN; SELECT pg_backend_pid()").await;
            let pid_in = match &tx.expect("begin")[1] {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            };
            let rows = client
                .simple_query("SELECT pg_backend_pid(); COMMIT")
                .await
                .expect("commit");
            let pid_again = match &rows[0] {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            };
            assert_eq!(
                pid_in, pid_again,
                "a transaction stays on one server connection"
            );
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(
        backends(&pg, "app") <= 10,
        "{} server connections",
        backends(&pg, "app")
    );

    // What the pool did, in the admin API and the metrics.
    let pools = proxy.pools().await;
    let stats = &tx_pools(&pools[0])[0];
    assert_eq!(
        (stats.database.as_str(), stats.user.as_str()),
        ("app", "postgres")
    );
    assert!(stats.transactions >= clients as u64 * 8, "{stats:?}");
    assert!(stats.queries >= stats.transactions, "{stats:?}");
    assert_eq!(stats.servers.len(), 1);
    assert!(stats.servers[0].open <= 10, "{stats:?}");
    let metrics = proxy.metrics().await;
    for name in [
        "switchyard_pg_pool_transactions_total{pool=\"app\",database=\"app\",user=\"postgres\"}",
        "switchyard_pg_pool_server_connections{pool=\"app\",database=\"app\",user=\"postgres\",server=\"pg\",state=\"idle\"}",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_follow_their_client_and_stay_isolated() {
    let pg = PgCluster::start(&PgOptions::default());
    pg.psql_local("CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t AS SELECT 'a' AS v; CREATE TABLE b.t AS SELECT 'b' AS v");
    let (_proxy, front) = pooled(pg.address(), "pool_size = 1").start().await;
    let first = connect(front, "postgres", "postgres").await.expect("a");
    let second = connect(front, "postgres", "postgres").await.expect("b");
    first
        .batch_execute("SET search_path TO a")
        .await
        .expect("set a");
    second
        .batch_execute("SET search_path TO b")
        .await
        .expect("set b");
    for _ in 0..5 {
        // One server connection: each query must see its own client's search_path.
        let a: String = first
            .query_one("SELECT v FROM t", &[])
            .await
            .expect("a")
            .get(0);
        let b: String = second
            .query_one("SELECT v FROM t", &[])
            .await
            .expect("b")
            .get(0);
        assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
    }
    first.batch_execute("RESET ALL").await.expect("reset");
    let error = first
        .query_one("SELECT v FROM t", &[])
        .await
        .expect_err("no search_path to a or b any more");
    assert_eq!(error.code().map(|c| c.code()), Some("42P01"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_transaction_leaves_nothing_open() {
    let pg = PgCluster::start(&PgOptions::default());
    pg.psql_local("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)");
    let (_proxy, front) = pooled(pg.address(), "pool_size = 1").start().await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    client
        .batch_execute("BEGIN; UPDATE counter SET n = n + 1")
        .await
        .expect("open a transaction");
    drop(client);
    wait_until("the transaction to be rolled back", || async {
        pg.psql_local(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        ) == "0"
    })
    .await;
    // The connection is reused by the next client, clean.
    let next = connect(front, "postgres", "postgres").await.expect("next");
    let row = next
        .query_one("SELECT n FROM counter", &[])
        .await
        .expect("read");
    assert_eq!(row.get::<_, i32>(0), 0, "the update was rolled back");
    next.simple_query("SELECT 1")
        .await
        .expect("not in a failed transaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_waiting_past_the_queue_timeout_gets_53300() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pooled(
        pg.address(),
        "pool_size = 1\ntimeouts = { queue = \"300ms\" }",
    )
    .start()
    .await;
    let holder = connect(front, "postgres", "postgres")
        .await
        .expect("holder");
    holder
        .batch_execute("BEGIN")
        .await
        .expect("hold the only connection");
    let waiter = connect(front, "postgres", "postgres").await;
    let error = match waiter {
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .expect_err("no connection within the queue timeout"),
        Err(error) => error,
    };
    assert_eq!(error.code().map(|c| c.code()), Some("53300"), "{error}");
    holder.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_sessions_keep_their_connection_and_are_reset_after() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let locker = connect(front, "postgres", "postgres")
        .await
        .expect("locker");
    locker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let pid: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    for _ in 0..3 {
        let other = connect(front, "postgres", "postgres").await.expect("other");
        let theirs: i32 = other
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        assert_ne!(theirs, pid, "the locker's connection is not shared");
    }
    let again: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_eq!(again, pid);
    drop(locker);
    wait_until("the advisory lock to be released", || async {
        pg.psql_local("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_in_every_query_mode_runs_without_errors() {
    let pg = PgCluster::start(&PgOptions::default());
    // 500 clients queue for 10 server connections by design: on a loaded 2-core CI machine
    // the last of them can wait past the default 5 s queue timeout. What is checked here is
    // every query mode through the pool, not how long the queue takes, so the timeout is
    // sized for the test.
    let (_proxy, front) = pooled(
        pg.address(),
        "pool_size = 10\ntimeouts = { queue = \"60s\" }",
    )
    .start()
    .await;
    let init = pgbench(front, &["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    // 500 clients on 10 server connections. One thread per client: pgbench prepares
    // statements with a blocking call, which would stall a thread's other clients (some
    // inside a transaction, holding a server connection) until the queue timeout: a
    // pgbench artifact, as with PgBouncer.
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(front, &["-c", "500", "-j", "500", "-t", "4", "-M", mode]);
        assert!(
            run.status.success(),
            "pgbench -M {mode}: {}\n{}",
            stderr(&run),
            String::from_utf8_lossy(&run.stdout)
        );
        assert!(
            String::from_utf8_lossy(&run.stdout).contains("number of failed transactions: 0"),
            "{}",
            String::from_utf8_lossy(&run.stdout)
        );
    }
    assert!(backends(&pg, "postgres") <= 10);
    // And psql, many at once.
    let sessions: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                psql_ok(front, "postgres", "postgres", &format!("SELECT {i} + 1"))
            })
        })
        .collect();
    for (i, session) in sessions.into_iter().enumerate() {
        assert_eq!(session.join().expect("psql thread"), (i + 1).to_string());
    }
}

/// Asserts a pgbench run finished with every client and no failed transaction.
fn assert_clean_run(run: &std::process::Output, what: &str) {
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && !stderr(run).contains("aborted"),
        "{what}: {}\n{stdout}",
        stderr(run)
    );
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{what}: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_connect_per_transaction_outnumbering_the_pool_all_complete() {
    // PHP-FPM's way: a new connection per transaction. pgbench -C with fewer threads than
    // clients connects with a blocking call, so a thread's other clients (holding server
    // connections inside a transaction) stall while it connects: a login that waited for a
    // server connection deadlocked until the queue timeout. Logins must not wait.
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let init = pgbench(front, &["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    let script = proxy.dir.path().join("short.sql");
    std::fs::write(&script, "BEGIN;\nSELECT 1;\nEND;\n").expect("script");
    let script = script.to_string_lossy().into_owned();
    for clients in ["4", "8", "40"] {
        let tpcb = pgbench(front, &["-C", "-c", clients, "-j", "2", "-t", "10"]);
        assert_clean_run(&tpcb, &format!("pgbench -C TPC-B, {clients} clients"));
        let short = pgbench(
            front,
            &["-C", "-c", clients, "-j", "2", "-t", "20", "-f", &script],
        );
        assert_clean_run(
            &short,
            &format!("pgbench -C BEGIN/SELECT/END, {clients} clients"),
        );
    }
    assert!(backends(&pg, "postgres") <= 2);
    let pools = proxy.pools().await;
    assert_eq!(tx_pools(&pools[0])[0].queue_timeouts, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_vanish_without_terminate_give_their_connection_back() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pooled(pg.address(), "pool_size = 1").start().await;
    // 40 clients on one server connection, each closing its socket without Terminate:
    // after its transaction, or in the middle of one (the proxy rolls it back).
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let (client, driver) = connect_abortable(front, "postgres").await.expect("connect");
                if i % 2 == 0 {
                    client
                        .batch_execute("BEGIN; SELECT 1; COMMIT")
                        .await
                        .expect("a transaction");
                } else {
                    client
                        .batch_execute("BEGIN; SELECT 1")
                        .await
                        .expect("an open transaction");
                }
                driver.abort();
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    // The connection is back and clean: a new client runs at once, outside a transaction.
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    let rows = client
        .simple_query("SELECT now() = statement_timestamp()")
        .await
        .expect("query");
    let fresh = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        fresh.as_deref(),
        Some("t"),
        "not inside someone else's transaction"
    );
    assert!(backends(&pg, "postgres") <= 1);
    let pools = proxy.pools().await;
    assert_eq!(tx_pools(&pools[0])[0].queue_timeouts, 0);
}

/// The value of an unlabelled gauge in the metrics text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_to_databases_that_do_not_exist_leave_nothing_behind() {
    let pg = PgCluster::start(&PgOptions::default());
    let config = Config::new()
        .protocol("postgres")
        .listener("auth = \"trust\"")
        .pool("pool_mode = \"transaction\"\npool_size = 2")
        .server("pg", pg.address(), "");
    let (proxy, front) = config.start().await;
    // One real pair first, so the metrics have their transaction-pool families.
    connect(front, "postgres", "postgres")
        .await
        .expect("connect")
        .batch_execute("SELECT 1")
        .await
        .expect("query");
    let before = proxy.metrics().await;
    let lines = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let pairs = |text: &str| gauge(text, "switchyard_pg_pool_pairs").unwrap_or(-1.0);
    let tasks: Vec<_> = (0..16)
        .map(|worker| {
            tokio::spawn(async move {
                for i in (worker..3000).step_by(16) {
                    let Err(error) = connect(front, "postgres", &format!("no_such_db_{i}")).await
                    else {
                        panic!("logged in to no_such_db_{i}");
                    };
                    assert_eq!(
                        error.as_db_error().map(|e| e.code().code()),
                        Some("3D000"),
                        "{error}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    wait_until("the registry back to one pair", || async {
        pairs(&proxy.metrics().await) == 1.0
    })
    .await;
    let after = proxy.metrics().await;
    assert_eq!(lines(&after), lines(&before), "{after}");
    assert_eq!(tx_pools(&proxy.pools().await[0]).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_keeps_at_most_max_transaction_pools_pairs() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["one", "two"],
        ..PgOptions::default()
    });
    let config = Config::new()
        .protocol("postgres")
        .listener("auth = \"trust\"")
        .pool("pool_mode = \"transaction\"\nmax_transaction_pools = 1")
        .server("pg", pg.address(), "");
    let (_proxy, front) = config.start().await;
    let one = connect(front, "postgres", "one")
        .await
        .expect("the first pair");
    one.batch_execute("SELECT 1").await.expect("query");
    let Err(refused) = connect(front, "postgres", "two").await else {
        panic!("a second pair was let in");
    };
    let error = refused.as_db_error().expect("a server error");
    assert_eq!(error.code().code(), "53300");
    assert!(error.message().contains("max_transaction_pools"), "{error}");
}

/// A transaction-mode pool with the read/write split over a primary and its streaming
/// replica, `extra` pool keys added; returns the proxy and its address once both roles
/// are known.
async fn split_proxy(primary: &PgCluster, replica: &PgCluster, extra: &str) -> (Proxy, SocketAddr) {
    let config = Config::new()
        .protocol("postgres")
        .pool(&format!(
            "pool_mode = \"transaction\"\npool_size = 2\nread_write_split = true\n\
             health = {{ check = \"postgres\", interval = \"200ms\", fall = 2, rise = 1 }}\n{extra}"
        ))
        .server("a", primary.address(), "")
        .server("b", replica.address(), "")
        .section(&format!(
            "[[user]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n"
        ));
    let (proxy, front) = config.start().await;
    wait_until("roles known", || async {
        proxy.server("app", "a").await.role == "primary"
            && proxy.server("app", "b").await.role == "replica"
    })
    .await;
    (proxy, front)
}

/// Whether the statement ran on the replica: `sql` must return `pg_is_in_recovery()`.
async fn on_replica(client: &tokio_postgres::Client, sql: &str) -> bool {
    let rows = client.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "t"),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_go_to_the_replica_and_writes_and_transactions_to_the_primary() {
    let primary = PgCluster::start(&PgOptions::default());
    primary.psql_local("CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE SEQUENCE s");
    let replica = primary.replica();
    let (proxy, front) = split_proxy(&primary, &replica, "").await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");

    assert!(
        on_replica(&client, "SELECT pg_is_in_recovery()").await,
        "a read"
    );
    let extended: bool = client
        .query_one("SELECT pg_is_in_recovery() FROM t", &[])
        .await
        .expect("extended read")
        .get(0);
    assert!(extended, "a read over the extended protocol");
    for write in [
        "SELECT pg_is_in_recovery() FROM t FOR UPDATE",
        "SELECT pg_is_in_recovery() FROM (SELECT nextval('s')) AS n",
        "WITH x AS (UPDATE t SET id = id RETURNING id) SELECT pg_is_in_recovery() FROM x",
        "/* switchyard: primary */ SELECT pg_is_in_recovery()",
    ] {
        assert!(!on_replica(&client, write).await, "{write}");
    }
    assert!(
        on_replica(
            &client,
            "/* switchyard: replica */ SELECT pg_is_in_recovery()"
        )
        .await
    );

    // An explicit transaction stays on the primary from BEGIN to COMMIT, reads included.
    client.batch_execute("BEGIN").await.expect("begin");
    assert!(
        !on_replica(&client, "SELECT pg_is_in_recovery()").await,
        "read in a transaction"
    );
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("write");
    assert!(!on_replica(&client, "SELECT pg_is_in_recovery()").await);
    client.batch_execute("COMMIT").await.expect("commit");
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .expect("read-only transaction");
    assert!(
        on_replica(&client, "SELECT pg_is_in_recovery()").await,
        "BEGIN READ ONLY"
    );
    client.batch_execute("COMMIT").await.expect("commit");

    // The session override, answered by the proxy.
    client
        .batch_execute("SET switchyard.route = primary")
        .await
        .expect("override");
    assert!(!on_replica(&client, "SELECT pg_is_in_recovery()").await);
    client
        .batch_execute("SET switchyard.route = auto")
        .await
        .expect("auto");
    assert!(on_replica(&client, "SELECT pg_is_in_recovery()").await);
    let error = client
        .batch_execute("SET switchyard.route = sideways")
        .await
        .expect_err("bad value");
    assert_eq!(error.code().map(|c| c.code()), Some("22023"));

    let pools = proxy.pools().await;
    let stats = &tx_pools(&pools[0])[0];
    assert!(
        stats.routed_replica >= 4 && stats.routed_primary >= 6,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_stay_on_the_primary_after_a_write_with_sticky_after_write() {
    let primary = PgCluster::start(&PgOptions::default());
    primary.psql_local("CREATE TABLE t (id int)");
    let replica = primary.replica();
    let (_proxy, front) = split_proxy(&primary, &replica, "sticky_after_write = \"1h\"").await;
    let writer = connect(front, "postgres", "postgres")
        .await
        .expect("writer");
    let other = connect(front, "postgres", "postgres").await.expect("other");
    assert!(
        on_replica(&writer, "SELECT pg_is_in_recovery()").await,
        "no write yet"
    );
    writer
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    assert!(
        !on_replica(&writer, "SELECT pg_is_in_recovery()").await,
        "read-your-writes"
    );
    assert!(
        on_replica(&other, "SELECT pg_is_in_recovery()").await,
        "only the writer sticks"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_connection_the_client_holds() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    let error = cancelled_sleep(client, &pg).await;
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_lost_mid_query_errors_and_the_next_transaction_runs_elsewhere() {
    let pg = PgCluster::start(&PgOptions::default());
    let (_proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    let victim: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let sleeper = tokio::spawn(async move {
        let outcome = client.simple_query("SELECT pg_sleep(30)").await;
        (client, outcome)
    });
    wait_until("the sleep to run", || async {
        pg.psql_local("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")
            == "1"
    })
    .await;
    pg.psql_local(&format!("SELECT pg_terminate_backend({victim})"));
    let (client, outcome) = sleeper.await.expect("join");
    let error = outcome.expect_err("the server went away mid-query");
    // The server's own reason, as an ERROR: the client's session goes on.
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.severity()),
        ("57P01", "ERROR"),
        "{error}"
    );
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the client's next transaction runs on a healthy connection")
        .get(0);
    assert_ne!(pid, victim);
}

/// `maint` cuts the sessions on a server; a client holding one of its connections inside a
/// transaction cannot be carried on elsewhere truthfully, so it gets FATAL 08006 at once
/// (not at its next statement).
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_ends_a_transaction_that_holds_the_servers_connection() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let (client, connection) = connect_abortable(front, "postgres").await.expect("connect");
    client
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    proxy.set_state("app", "pg", "maint").await;
    // The connection task ends on the FATAL, before the client sends anything more.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), connection)
        .await
        .expect("the session is cut without waiting for the client")
        .expect("join");
    let error = ended.expect_err("cut");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.severity()),
        ("08006", "FATAL"),
        "{error}"
    );
    assert!(db.message().contains("taken out of service"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn min_idle_connections_are_kept_open() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["app"],
        ..PgOptions::default()
    });
    let (_proxy, front) = pooled(pg.address(), "pool_size = 5\nmin_idle = 3")
        .start()
        .await;
    // The pool for (app, postgres) exists once a client logged in through it.
    let client = connect(front, "postgres", "app").await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    drop(client);
    // At least `min_idle`: one more may have been opened while the client held one.
    wait_until("min_idle server connections", || async {
        backends(&pg, "app") >= 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_idle_between_transactions_past_timeouts_client_is_closed() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["app"],
        ..PgOptions::default()
    });
    let (proxy, front) = pooled(pg.address(), "pool_size = 2")
        .listener("timeouts = { client = \"1s\" }")
        .start()
        .await;
    let client = connect(front, "postgres", "app").await.expect("connect");
    // Each wait between transactions starts the session's one idle timer afresh.
    for _ in 0..3 {
        client.simple_query("SELECT 1").await.expect("query");
    }
    let line = wait_access(&proxy, "the idle client's session ended", |line| {
        field(line, "termination") == "client_timeout"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    wait_until("the client sees its connection closed", || async {
        client.is_closed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_mid_message_is_closed_at_timeouts_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = Config::new()
        .protocol("postgres")
        .listener("auth = \"trust\"\ntimeouts = { client = \"1s\" }")
        .pool("pool_mode = \"transaction\"\npool_size = 2")
        .server("pg", pg.address(), "")
        .start()
        .await;
    let mut client = tokio::net::TcpStream::connect(front)
        .await
        .expect("connect");
    client
        .write_all(&startup_packet("postgres"))
        .await
        .expect("startup");
    // Logged in at ReadyForQuery.
    loop {
        let tag = client.read_u8().await.expect("tag");
        let length = client.read_u32().await.expect("length") as usize;
        let mut body = vec![0; length - 4];
        client.read_exact(&mut body).await.expect("body");
        if tag == b'Z' {
            break;
        }
    }
    // Half a Query: a message partly read keeps the client from dozing, and the idle
    // limit still applies to it.
    client
        .write_all(b"Q\0\0\0\x20SELECT")
        .await
        .expect("half a query");
    let line = wait_access(&proxy, "the stalled client's session ended", |line| {
        field(line, "termination") == "client_timeout"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_doze_without_a_task_and_wake_with_their_session_intact() {
    let pg = PgCluster::start(&PgOptions::default());
    let (proxy, front) = pooled(pg.address(), "pool_size = 2").start().await;
    let dozing = |metrics: &str| gauge(metrics, "switchyard_idle_lot_connections");
    let mut clients = Vec::new();
    for i in 0..3 {
        let client = connect(front, "postgres", "postgres")
            .await
            .expect("connect");
        client
            .batch_execute(&format!("SET application_name = 'dozer{i}'"))
            .await
            .expect("set");
        let prepared = client.prepare("SELECT $1::int + 1").await.expect("prepare");
        clients.push((client, prepared));
    }
    wait_until("the idle clients doze", || async {
        dozing(&proxy.metrics().await) == Some(3.0)
    })
    .await;
    // Woken by their next message, each goes on where it was: its statement prepared
    // and its setting kept.
    for (i, (client, prepared)) in clients.iter().enumerate() {
        let row = client.query_one(prepared, &[&41]).await.expect("execute");
        assert_eq!(row.get::<_, i32>(0), 42);
        let rows = client
            .simple_query("SHOW application_name")
            .await
            .expect("show");
        let shown = rows.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(shown.as_deref(), Some(format!("dozer{i}").as_str()));
    }
    // A client that leaves while dozing is woken by its close: its line is logged.
    wait_until("they doze again", || async {
        dozing(&proxy.metrics().await) == Some(3.0)
    })
    .await;
    let (leaving, _) = clients.remove(0);
    drop(leaving);
    let line = wait_access(&proxy, "the dozing client's session ended", |line| {
        field(line, "termination") == "client_closed"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    wait_until("two still doze", || async {
        dozing(&proxy.metrics().await) == Some(2.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dozing_client_holds_the_shutdown_until_its_timeout_and_is_then_closed() {
    let pg = PgCluster::start(&PgOptions::default());
    let (mut proxy, front) = pooled(pg.address(), "pool_size = 2")
        .top("shutdown_timeout = \"1s\"")
        .start()
        .await;
    let client = connect(front, "postgres", "postgres")
        .await
        .expect("connect");
    client.batch_execute("SELECT 1").await.expect("query");
    wait_until("the client dozes", || async {
        gauge(&proxy.metrics().await, "switchyard_idle_lot_connections") == Some(1.0)
    })
    .await;
    proxy.signal("TERM");
    // Counted as a connection while it dozes: the proxy waits for it, then closes it.
    let line = wait_access(&proxy, "the dozing client's session ended", |line| {
        field(line, "termination") == "shutdown"
    })
    .await;
    assert_eq!(field(&line, "listener"), "front");
    let status = proxy.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.stderr()
    );
    wait_until("the client sees its connection closed", || async {
        client.is_closed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_server_connection_takes_the_message_limit_of_the_leasing_listener() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["app"],
        ..PgOptions::default()
    });
    let small = "[[listener]]\nname = \"small\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"postgres\"\npool = \"app\"\nlimits = { message = 4096 }\n";
    let (proxy, front) = pooled(pg.address(), "pool_size = 1")
        .section(small)
        .start()
        .await;
    let small = listener_addr(&proxy, "small").await;
    let long_row = "SELECT repeat('x', 10000)";
    // `front` (the default limit) opens the pool's one server connection.
    let wide = connect(front, "postgres", "app").await.expect("connect");
    wide.simple_query(long_row)
        .await
        .expect("a long row within front's limit");
    // The same connection leased for `small`: its limit holds for the server's messages.
    let narrow = connect(small, "postgres", "app").await.expect("connect");
    let error = narrow
        .simple_query(long_row)
        .await
        .expect_err("a row beyond small's limit");
    let code = error.as_db_error().map(|db| db.code().code().to_string());
    assert_eq!(code.as_deref(), Some("08006"), "{error}");
    narrow
        .simple_query("SELECT 1")
        .await
        .expect("the client stays and its next transaction runs on another connection");
    // Leased for `front` again, that connection takes front's limit back.
    wide.simple_query(long_row)
        .await
        .expect("front's limit again");
}
