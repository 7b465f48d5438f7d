//! Transaction pooling with hostile clients: no session state may cross from one client to
//! the next (docs/architecture.md, "The pooling invariant"). One real PostgreSQL, a pool of
//! one server connection, two clients in turn: the first runs something that changes the
//! session, however it is spelled or hidden; the second must then see exactly what a fresh
//! connection sees (search path, current and session user, time zone, temporary tables,
//! LISTEN channels, advisory locks, SQL-prepared statements, cursors, custom settings).
//!
//! Every case runs in the simple protocol (psql, one query message per statement) and in
//! the extended protocol (tokio-postgres: named statements, prepared in one transaction and
//! executed in the next, and the unnamed statement in one round trip), each on its own
//! database, so each protocol has its own pool.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::config::Config;
use support::postgres::{PASSWORD, PgCluster, PgOptions, connect, psql};
use support::{Proxy, wait_until};

/// How the first client sends its statements; the second uses the same client, so that
/// both start with the same settings (as many clients of one application do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// psql: simple query messages.
    Simple,
    /// tokio-postgres `execute`: Parse and Describe, then Bind and Execute of a named
    /// statement, in two transactions.
    Named,
    /// tokio-postgres `query_typed`: the unnamed statement, in one round trip.
    Unnamed,
}

impl Mode {
    /// The database this mode's clients use (each its own pool).
    fn database(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Named => "named",
            Mode::Unnamed => "unnamed",
        }
    }
}

/// What the first client runs; `extended: false` for what only a simple query message can
/// carry (several statements in one message) or what tokio-postgres cannot speak (SJIS).
struct Case {
    name: &'static str,
    statements: &'static [&'static str],
    extended: bool,
}

const fn case(name: &'static str, statements: &'static [&'static str]) -> Case {
    Case {
        name,
        statements,
        extended: true,
    }
}

const fn simple_only(name: &'static str, statements: &'static [&'static str]) -> Case {
    Case {
        name,
        statements,
        extended: false,
    }
}

const CASES: &[Case] = &[
    // The three leaks of issue 16.
    case("a ; in a comment", &["/* ; */ SET search_path TO evil1"]),
    case(
        "a nested comment",
        &["/* /* */ */ SET search_path TO evil2"],
    ),
    case(
        "set_config",
        &["SELECT set_config('search_path', 'evil6', false)"],
    ),
    // Comments and quotes in every position.
    case("a ; in a line comment", &["SET search_path TO evil3 -- ;"]),
    case("a comment inside SET", &["set/**/search_path to evil4"]),
    simple_only("SET after SELECT", &["SELECT 1; SET search_path TO evil5"]),
    simple_only(
        "dollar quotes holding ; and SET",
        &[
            "SELECT $$; SET search_path TO quoted$$",
            "SELECT $a$ $$ ; $a$; SET search_path TO evil7",
        ],
    ),
    simple_only(
        "an E string holding a quote",
        &["SELECT E'\\'; SET search_path TO quoted'; SET search_path TO evil8"],
    ),
    case(
        "a quoted set_config",
        &["SELECT \"set_config\"('search_path', 'evil9', false)"],
    ),
    case(
        "a U& set_config",
        &["SELECT U&\"\\0073et_config\"('search_path', 'evil10', false)"],
    ),
    case(
        "pg_catalog.set_config",
        &["SELECT pg_catalog.set_config('search_path', 'evil11', false)"],
    ),
    case(
        "set_config among rows",
        &["SELECT set_config('search_path', 'evil12', false) FROM generate_series(1, 1)"],
    ),
    case(
        "set_config of a computed value",
        &["SELECT set_config('search_path', current_setting('search_path') || ', evil13', false)"],
    ),
    case(
        "set_config of a custom setting",
        &["SELECT set_config('app.x', 'secret', false)"],
    ),
    // Identity.
    case("SET ROLE", &["SET ROLE evil"]),
    case(
        "SET SESSION AUTHORIZATION",
        &["SET SESSION AUTHORIZATION evil"],
    ),
    case("SET ROLE then RESET ALL", &["SET ROLE evil", "RESET ALL"]),
    // Code the text does not show.
    case("SET inside a function", &["SELECT set_path()"]),
    case(
        "a temporary table made by a function",
        &["SELECT make_temp()"],
    ),
    case(
        "a DO block with set_config",
        &["DO $$BEGIN PERFORM set_config('search_path', 'evil_do', false); END$$"],
    ),
    case(
        "a DO block setting a timeout",
        &["DO $$BEGIN PERFORM set_config('statement_timeout', '4321', false); END$$"],
    ),
    case(
        "a trigger setting a reported parameter",
        &["INSERT INTO zoned VALUES (1)"],
    ),
    // State that lives in the server connection.
    case(
        "SQL PREPARE and EXECUTE",
        &["PREPARE evil_p AS SELECT 1", "EXECUTE evil_p"],
    ),
    case("LISTEN", &["LISTEN evil_channel"]),
    case("a temporary table", &["CREATE TEMP TABLE evil_t (x int)"]),
    case("SELECT INTO TEMP", &["SELECT 1 AS x INTO TEMP evil_t2"]),
    case("an advisory lock", &["SELECT pg_advisory_lock(42)"]),
    simple_only(
        "a cursor WITH HOLD",
        &["BEGIN; DECLARE evil_c CURSOR WITH HOLD FOR SELECT 1; COMMIT"],
    ),
    simple_only(
        "SET inside a transaction",
        &["BEGIN; SET search_path TO evil_tx; COMMIT"],
    ),
    // Settings after which text reads differently on the server; each put back after
    // the hidden SET, so that the client's recorded settings end as they began.
    case(
        "standard_conforming_strings off, then a hidden SET",
        &[
            "SET standard_conforming_strings = off",
            "SELECT '\\'; SELECT ' ; SET search_path TO evil_scs; --'",
            "RESET standard_conforming_strings",
        ],
    ),
    simple_only(
        "SET LOCAL standard_conforming_strings off, then a hidden SET",
        &[
            "BEGIN",
            "SET LOCAL standard_conforming_strings = off",
            "SELECT '\\'; SELECT ' ; SET search_path TO evil_local; --'",
            "COMMIT",
        ],
    ),
    // In SJIS, the bytes of "Ã" and a backslash are two characters: the string ends
    // before the SET on the server, not on a UTF-8 reading. The last SET is the one the
    // proxy makes of psql's startup parameter (PGCLIENTENCODING=UTF8), to the letter.
    simple_only(
        "client_encoding SJIS, then a hidden SET",
        &[
            "SET client_encoding TO 'SJIS'",
            "SELECT E'Ã\\'; SET search_path TO evil_sjis; --'",
            "SET \"client_encoding\" TO 'UTF8'",
        ],
    ),
];

/// What a client sees of its session, as one line.
const PROBE: &str = "SELECT concat_ws(' | ', \
    'search_path=' || current_setting('search_path'), \
    'current_user=' || current_user, \
    'session_user=' || session_user, \
    'TimeZone=' || current_setting('TimeZone'), \
    'statement_timeout=' || current_setting('statement_timeout'), \
    'standard_conforming_strings=' || current_setting('standard_conforming_strings'), \
    'app.x=' || coalesce(nullif(current_setting('app.x', true), ''), '-'), \
    'temp=' || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
    'listen=' || (SELECT count(*) FROM pg_listening_channels()), \
    'advisory=' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    'sql_prepared=' || (SELECT count(*) FROM pg_prepared_statements WHERE from_sql), \
    'cursors=' || (SELECT count(*) FROM pg_cursors))";

/// What each database holds for the cases: a function that sets the search path, one that
/// makes a temporary table, and a table whose trigger sets the time zone.
const SETUP: &str = "\
    CREATE FUNCTION set_path() RETURNS void LANGUAGE plpgsql \
        AS $$BEGIN SET search_path TO evil_function; END$$; \
    CREATE FUNCTION make_temp() RETURNS void LANGUAGE plpgsql \
        AS $$BEGIN CREATE TEMP TABLE made_by_function (x int); END$$; \
    CREATE FUNCTION set_zone() RETURNS trigger LANGUAGE plpgsql \
        AS $$BEGIN PERFORM set_config('TimeZone', 'Asia/Tokyo', false); RETURN NEW; END$$; \
    CREATE TABLE zoned (x int); \
    CREATE TRIGGER zoned BEFORE INSERT ON zoned FOR EACH ROW EXECUTE FUNCTION set_zone();";

/// Runs psql with one `-c` per statement (each its own query message, one session),
/// through `address`; returns stdout. Errors of the statements are the case's business.
fn psql_session(address: SocketAddr, database: &str, statements: &[&str]) -> String {
    let mut command = Command::new("psql");
    command
        .args(["-XAtq", "-h"])
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .args(["-U", "postgres", "-d", database])
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSWORD", PASSWORD)
        .env("PGCLIENTENCODING", "UTF8")
        .stdin(Stdio::null());
    for statement in statements {
        command.arg("-c").arg(statement);
    }
    let output = command.output().expect("run psql");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// What a new client of `mode` sees at `address`.
async fn probe(address: SocketAddr, mode: Mode) -> String {
    let database = mode.database();
    if mode == Mode::Simple {
        return tokio::task::spawn_blocking(move || psql_session(address, database, &[PROBE]))
            .await
            .expect("psql task");
    }
    let client = connect(address, "postgres", database)
        .await
        .expect("connect");
    let rows = client.simple_query(PROBE).await.expect("probe");
    rows.iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

/// The first client of a case: runs the statements, then leaves.
async fn first_client(front: SocketAddr, mode: Mode, statements: &'static [&'static str]) {
    let database = mode.database();
    if mode == Mode::Simple {
        tokio::task::spawn_blocking(move || psql_session(front, database, statements))
            .await
            .expect("psql task");
        return;
    }
    let client = connect(front, "postgres", database).await.expect("connect");
    for statement in statements {
        // Failures (a string of several statements in a Parse) are part of the case.
        let _ = match mode {
            Mode::Named => client.execute(*statement, &[]).await.map(drop),
            _ => client.query_typed(statement, &[]).await.map(drop),
        };
    }
}

/// Every case in `mode`; returns the cases whose second client saw something a fresh
/// connection does not.
async fn leaks(front: SocketAddr, server: SocketAddr, mode: Mode) -> Vec<String> {
    let fresh = probe(server, mode).await;
    assert!(fresh.contains("search_path="), "probe: {fresh:?}");
    let mut leaks = Vec::new();
    for case in CASES
        .iter()
        .filter(|case| mode == Mode::Simple || case.extended)
    {
        first_client(front, mode, case.statements).await;
        let seen = probe(front, mode).await;
        if seen != fresh {
            leaks.push(format!(
                "{mode:?}, {}: the next client saw\n    {seen}\n  instead of\n    {fresh}",
                case.name
            ));
            // Keep the next case's result its own.
            first_client(front, mode, &["DISCARD ALL"]).await;
        }
    }
    leaks
}

#[tokio::test(flavor = "multi_thread")]
async fn no_session_state_reaches_the_next_client() {
    let pg = PgCluster::start(&PgOptions {
        databases: vec!["simple", "named", "unnamed"],
        ..PgOptions::default()
    });
    pg.psql_local("CREATE ROLE evil");
    for mode in [Mode::Simple, Mode::Named, Mode::Unnamed] {
        let output = psql(pg.address(), "postgres", mode.database(), SETUP, &[]);
        assert!(output.status.success(), "setup: {output:?}");
    }
    let (proxy, front) = Config::new()
        .protocol("postgres")
        .pool("pool_mode = \"transaction\"\npool_size = 1\ntimeouts = { queue = \"30s\" }")
        .server("pg", pg.address(), "")
        .section(&format!(
            "[[user]]\nname = \"postgres\"\npassword = \"{PASSWORD}\"\n"
        ))
        .start()
        .await;
    let server = pg.address();
    let (simple, named, unnamed) = tokio::join!(
        leaks(front, server, Mode::Simple),
        leaks(front, server, Mode::Named),
        leaks(front, server, Mode::Unnamed),
    );
    let all: Vec<String> = [simple, named, unnamed].concat();
    assert!(all.is_empty(), "{} leaks:\n{}", all.len(), all.join("\n"));
    what_the_proxy_can_carry_follows_its_client(front).await;
    a_connection_that_cannot_be_reset_is_closed(&proxy, front, &pg).await;
}

/// The backend of a connection marked for a reset dies before its next use: the reset
/// fails, so the connection is closed instead of used; the next client's transaction ends
/// as on a lost connection (08006) and its next one runs on a fresh connection.
async fn a_connection_that_cannot_be_reset_is_closed(
    proxy: &Proxy,
    front: SocketAddr,
    pg: &PgCluster,
) {
    let database = Mode::Unnamed.database();
    let first = connect(front, "postgres", database).await.expect("first");
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    first
        .batch_execute("SELECT set_path()")
        .await
        .expect("unseen effect");
    drop(first);
    pg.psql_local(&format!("SELECT pg_terminate_backend({pid})"));
    wait_until("the backend to end", || async {
        pg.psql_local(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )) == "0"
    })
    .await;
    let next = connect(front, "postgres", database).await.expect("next");
    let error = next
        .simple_query("SELECT 1")
        .await
        .expect_err("the connection could not be reset");
    assert_eq!(error.code().map(|c| c.code()), Some("08006"), "{error}");
    assert!(
        proxy
            .stderr()
            .contains("resetting a server connection failed; closing it"),
        "{}",
        proxy.stderr()
    );
    let again: i32 = next
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("a fresh connection")
        .get(0);
    assert_ne!(again, pid);
    assert_eq!(search_path(&next).await, "\"$user\", public");
}

/// The client's search path, read in a transaction of its own.
async fn search_path(client: &tokio_postgres::Client) -> String {
    let row = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .expect("search_path");
    row.get(0)
}

/// The other half of the invariant: a setting made with `set_config` follows its client
/// across the connection's other users, and a reset for something the proxy could not see
/// keeps the client's own recorded settings.
async fn what_the_proxy_can_carry_follows_its_client(front: SocketAddr) {
    let database = Mode::Named.database();
    let mine = connect(front, "postgres", database).await.expect("mine");
    let theirs = connect(front, "postgres", database).await.expect("theirs");
    mine.batch_execute("SELECT set_config('search_path', 'mine', false)")
        .await
        .expect("set_config");
    theirs
        .batch_execute("SET search_path TO theirs")
        .await
        .expect("set");
    for _ in 0..3 {
        assert_eq!(search_path(&mine).await, "mine");
        assert_eq!(search_path(&theirs).await, "theirs");
    }
    // Unseen, so reset before the next use; the recorded setting is replayed.
    mine.batch_execute("SELECT public.set_path()")
        .await
        .expect("function");
    assert_eq!(search_path(&mine).await, "mine");
    assert_eq!(search_path(&theirs).await, "theirs");
}
