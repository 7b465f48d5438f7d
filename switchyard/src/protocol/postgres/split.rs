//! The read/write split settings of PostgreSQL routes and pools, and PostgreSQL's
//! classification in the terms of the shared split decision (`protocol::split`, whose rules
//! are unit-tested here with PostgreSQL's own classifier).

use std::sync::Arc;
use std::time::Duration;

use super::classify::{
    Access, Classification, Classifier, RouteHint, RouteOverride, Rules, SessionChange, TxnCommand,
};
use crate::config::{DatabasePool, PostgresRoute};
pub use crate::protocol::split::{SplitState, Statement, Target};

impl Statement for Classification {
    fn access(&self) -> Access {
        self.access
    }

    fn transaction(&self) -> Option<TxnCommand> {
        self.transaction
    }

    fn pins(&self) -> bool {
        self.pins.is_some()
    }

    fn hint(&self) -> Option<RouteHint> {
        self.hint
    }

    fn route(&self) -> Option<RouteOverride> {
        self.session.iter().rev().find_map(|change| match change {
            SessionChange::Route(route) => Some(*route),
            SessionChange::ResetAll | SessionChange::DiscardAll => Some(RouteOverride::Auto),
            _ => None,
        })
    }
}

/// The split settings in force for a route: the route's keys, else its pool's. Resolve it
/// once per route when the config loads and share it: its classifier caches results.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    /// `read_write_split`.
    pub enabled: bool,
    /// `sticky_after_write`.
    pub sticky_after_write: Option<Duration>,
    /// Classification with the built-in write functions plus `write_functions`.
    pub classifier: Arc<Classifier>,
}

impl SplitConfig {
    /// A pool's settings.
    pub fn for_pool(pool: &DatabasePool) -> Self {
        Self {
            enabled: pool.read_write_split,
            sticky_after_write: pool.sticky_after_write,
            classifier: Arc::new(Classifier::new(Rules::new(&pool.write_functions))),
        }
    }

    /// These settings with a route's own keys over them; the classifier (and its cache)
    /// is shared unless the route names its own write functions.
    pub fn with_route(&self, route: &PostgresRoute) -> Self {
        Self {
            enabled: route.read_write_split.unwrap_or(self.enabled),
            sticky_after_write: route.sticky_after_write.or(self.sticky_after_write),
            classifier: match &route.write_functions {
                Some(names) => Arc::new(Classifier::new(Rules::new(names))),
                None => self.classifier.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::protocol::postgres::classify::classify;

    const STICKY: Option<Duration> = Some(Duration::from_secs(2));

    /// Runs `sql` through a session as the pooler would: the target, then the ReadyForQuery
    /// status the server would answer with.
    fn run(state: &mut SplitState, sql: &str, status: u8, now: Instant) -> Target {
        let c = classify(sql, &Rules::default());
        let target = state.target(&c, now, STICKY);
        state.after(&c, status != b'I', now);
        target
    }

    use Target::{Primary, Replica};

    /// Runs a fresh session through `steps` — (seconds since the start, SQL, the status
    /// byte the server answers with, the target expected) — checking every target.
    fn script(steps: &[(u64, &str, u8, Target)]) {
        let start = Instant::now();
        let mut state = SplitState::new();
        for (i, &(at, sql, status, expected)) in steps.iter().enumerate() {
            let now = start + Duration::from_secs(at);
            assert_eq!(
                run(&mut state, sql, status, now),
                expected,
                "step {i}: {sql}"
            );
        }
    }

    #[test]
    fn reads_to_replicas_writes_to_the_primary() {
        script(&[
            (
                0,
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
                b'I',
                Replica,
            ),
            (0, "SHOW search_path", b'I', Replica),
            (0, "SET search_path TO a", b'I', Replica),
            (10, "SELECT * FROM t FOR UPDATE", b'I', Primary),
            (20, "SELECT nextval('s')", b'I', Primary),
            (30, "garbage", b'I', Primary),
            (40, "UPDATE t SET x = 1", b'I', Primary),
            (41, "SELECT 1", b'I', Primary), // sticky
            (42, "SELECT 1", b'I', Replica),
        ]);
    }

    #[test]
    fn transactions_stay_where_they_began() {
        script(&[
            (0, "BEGIN", b'T', Primary),
            (0, "SELECT 1", b'T', Primary),
            (0, "/* switchyard: replica */ SELECT 1", b'T', Primary),
            (0, "SELECT 1 / 0", b'E', Primary),
            (0, "ROLLBACK", b'I', Primary),
            // A transaction that only read wrote nothing: no stickiness after it.
            (0, "SELECT 1", b'I', Replica),
        ]);
        // Read then write stays on the primary; the write counts from the commit.
        script(&[
            (0, "START TRANSACTION READ WRITE", b'T', Primary),
            (0, "SELECT balance FROM a", b'T', Primary),
            (0, "UPDATE a SET balance = 1", b'T', Primary),
            (10, "COMMIT", b'I', Primary),
            (11, "SELECT 1", b'I', Primary),
            (12, "SELECT 1", b'I', Replica),
        ]);
        // BEGIN READ ONLY may run on a replica, the whole transaction there; not serializable.
        script(&[
            (0, "BEGIN READ ONLY", b'T', Replica),
            (0, "SELECT 1", b'T', Replica),
            (0, "UPDATE t SET x = 1", b'E', Replica),
            (0, "COMMIT", b'I', Replica),
            (
                0,
                "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
                b'T',
                Primary,
            ),
            (0, "COMMIT AND CHAIN", b'T', Primary),
            (0, "SELECT 1", b'T', Primary),
            (0, "END", b'I', Primary),
        ]);
        // A string that opens a transaction and writes in it; the status byte, not the SQL,
        // ends a transaction (an implicit one here). A failed write still counts for
        // stickiness: the proxy cannot tell.
        script(&[
            (0, "BEGIN READ ONLY; UPDATE t SET x = 1", b'E', Primary),
            (0, "ROLLBACK", b'I', Primary),
            (2, "BEGIN; SELECT 1; COMMIT", b'I', Primary),
            (2, "SELECT 1", b'I', Replica),
        ]);
    }

    #[test]
    fn hints_override_reads_never_writes() {
        script(&[
            (0, "/* switchyard: primary */ SELECT 1", b'I', Primary),
            (0, "SELECT 1", b'I', Replica), // a hint lasts one statement
            (
                0,
                "/* switchyard: replica */ UPDATE t SET x = 1",
                b'I',
                Primary,
            ),
            (0, "SELECT 1", b'I', Primary), // sticky after that write
            (0, "/* switchyard: replica */ SELECT 1", b'I', Replica), // hint over sticky
            (0, "SET switchyard.route = primary", b'I', Primary),
            (0, "-- switchyard: replica\nSELECT 1", b'I', Replica), // hint over the session
        ]);
    }

    #[test]
    fn session_override() {
        script(&[
            (0, "SET switchyard.route = primary", b'I', Replica),
            (60, "SELECT 1", b'I', Primary),
            (60, "SET switchyard.route = 'replica'", b'I', Primary),
            (60, "SELECT 1", b'I', Replica),
            (60, "DELETE FROM t", b'I', Primary), // writes stay on the primary
            (60, "SELECT 1", b'I', Replica),      // the override beats sticky
            (60, "RESET switchyard.route", b'I', Replica),
            (60, "SELECT 1", b'I', Primary), // sticky again
            (70, "SET switchyard.route = primary", b'I', Replica),
            (70, "RESET ALL", b'I', Primary),
            (70, "SELECT 1", b'I', Replica),
            (70, "SET switchyard.route = primary", b'I', Replica),
            (70, "DISCARD ALL", b'I', Primary),
            (70, "SELECT 1", b'I', Replica),
            (70, "SET switchyard.route = primary", b'I', Replica),
            (70, "SET switchyard.route = auto", b'I', Primary),
            (70, "SELECT 1", b'I', Replica),
            (70, "SET switchyard.route = sideways", b'I', Replica), // a bad value changes nothing
            (70, "SELECT 1", b'I', Replica),
        ]);
    }

    #[test]
    fn sticky_after_write() {
        let start = Instant::now();
        let mut state = SplitState::new();
        run(&mut state, "INSERT INTO t VALUES (1)", b'I', start);
        let c = classify("SELECT 1", &Rules::default());
        assert_eq!(
            state.target(&c, start + Duration::from_millis(1999), STICKY),
            Primary
        );
        assert_eq!(
            state.target(&c, start + Duration::from_secs(2), STICKY),
            Replica
        );
        assert_eq!(
            state.target(&c, start, None),
            Replica,
            "off without the option"
        );
        assert_eq!(state.target(&c, start, Some(Duration::ZERO)), Replica);
        // Each write restarts the window.
        run(
            &mut state,
            "UPDATE t SET x = 1",
            b'I',
            start + Duration::from_secs(5),
        );
        assert_eq!(
            state.target(&c, start + Duration::from_secs(6), STICKY),
            Primary
        );
    }

    #[test]
    fn pins_hold_the_session_where_they_were_taken() {
        let now = Instant::now();
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "LISTEN jobs",
            "CREATE TEMP TABLE t (x int)",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            let mut state = SplitState::new();
            assert_eq!(run(&mut state, sql, b'I', now), Primary, "{sql}");
            assert_eq!(state.pinned(), Some(Primary));
            let later = now + Duration::from_secs(3600);
            assert_eq!(
                run(
                    &mut state,
                    "/* switchyard: replica */ SELECT 1",
                    b'I',
                    later
                ),
                Primary
            );
            run(&mut state, "SET switchyard.route = replica", b'I', later);
            assert_eq!(run(&mut state, "SELECT 1", b'I', later), Primary, "{sql}");
        }
        // Pinned inside a read-only transaction on a replica: the pin is on the replica.
        let mut state = SplitState::new();
        assert_eq!(run(&mut state, "BEGIN READ ONLY", b'T', now), Replica);
        assert_eq!(
            run(
                &mut state,
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                b'T',
                now
            ),
            Replica
        );
        run(&mut state, "COMMIT", b'I', now);
        assert_eq!(state.pinned(), Some(Replica));
        assert_eq!(run(&mut state, "SELECT 1", b'I', now), Replica);
        // Without target(), after() assumes the primary.
        let mut state = SplitState::new();
        state.after(&classify("LISTEN a", &Rules::default()), false, now);
        assert_eq!(state.pinned(), Some(Primary));
    }

    fn load(extra_pool: &str, route: &str) -> Result<crate::config::Config, String> {
        let text = crate::testing::postgres_config(
            &format!("  [[listener.routes]]\n  database = \"app\"\n  pool = \"pg\"\n  {route}"),
            &format!(
                "pool_mode = \"transaction\"\nhealth = {{ check = \"postgres\" }}\n\
                 servers = [{{ address = \"127.0.0.1:5432\" }}]\n{extra_pool}"
            ),
            "[[user]]\nname = \"app\"\npassword = \"pw\"",
        );
        crate::testing::load_config(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn config_route_wins_over_pool() {
        let config = load(
            "read_write_split = true\nsticky_after_write = \"2s\"\nwrite_functions = [\"audit\"]",
            "read_write_split = false\nwrite_functions = [\"my_writer\"]",
        )
        .expect("valid");
        let pool = &config.pools[0].database;
        let crate::config::ListenerOptions::Postgres(listener) = &config.listeners[0].options
        else {
            panic!("a postgres listener");
        };
        let route = &listener.routes[0];
        let on_pool = SplitConfig::for_pool(pool);
        assert!(on_pool.enabled);
        assert_eq!(on_pool.sticky_after_write, Some(Duration::from_secs(2)));
        let writes =
            |split: &SplitConfig, sql: &str| split.classifier.classify(sql).access == Access::Write;
        assert!(writes(&on_pool, "SELECT audit()"));
        assert!(!writes(&on_pool, "SELECT my_writer()"));
        let on_route = on_pool.with_route(route);
        assert!(!on_route.enabled);
        assert_eq!(on_route.sticky_after_write, Some(Duration::from_secs(2)));
        assert!(writes(&on_route, "SELECT my_writer()"));
        assert!(!writes(&on_route, "SELECT audit()"));
        assert!(writes(&on_route, "SELECT nextval('s')"));

        let defaults = load("", "").expect("valid");
        let crate::config::ListenerOptions::Postgres(listener) = &defaults.listeners[0].options
        else {
            panic!("a postgres listener");
        };
        let split =
            SplitConfig::for_pool(&defaults.pools[0].database).with_route(&listener.routes[0]);
        assert!(!split.enabled);
        assert_eq!(split.sticky_after_write, None);
        assert!(!writes(&split, "SELECT my_writer(), audit()"));
    }

    #[test]
    fn config_errors() {
        let cases = [
            ("read_write_split = 1", "", "read_write_split"),
            ("sticky_after_write = \"soon\"", "", "sticky_after_write"),
            ("", "write_function = [\"x\"]", "unknown field"),
            ("write_functions = [\"public.f\"]", "", "without schema"),
            ("", "write_functions = [\"\"]", "not a function name"),
            ("", "write_functions = [\"f(int)\", \"g h\"]", "g h"),
        ];
        for (pool, route, expected) in cases {
            let error = load(pool, route).expect_err(expected);
            assert!(error.contains(expected), "{error}");
        }
        let text = r#"
[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
protocol = "http"
  [[listener.routes]]
  pool = "db"
  read_write_split = true
  sticky_after_write = "1s"

[[pool]]
name = "db"
read_write_split = true
servers = [{ address = "127.0.0.1:5432" }]
"#;
        let error = crate::testing::load_config(text)
            .expect_err("invalid")
            .to_string();
        assert!(
            error.contains("listener[0].routes[0].read_write_split: unknown field"),
            "{error}"
        );
        assert!(
            error.contains("pool[0].read_write_split: the split chooses a server per transaction"),
            "{error}"
        );
    }
}
