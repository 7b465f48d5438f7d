//! Helpers for the crate's own tests and for fuzz targets (the `testing` feature).

pub mod pg_session;

/// A deterministic byte mutator (xorshift), for the small fuzz passes parser tests run on
/// stable Rust: the same mutations every run, so a failure reproduces.
pub struct Mutator(u64);

impl Default for Mutator {
    fn default() -> Self {
        Self::new()
    }
}

impl Mutator {
    /// A mutator with a fixed seed.
    pub fn new() -> Self {
        Self(0x9e37_79b9_7f4a_7c15)
    }

    /// The next pseudo-random number (an endless generator, not an `Iterator`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Up to three random edits: overwrite, insert or truncate at a random position.
    pub fn mutate(&mut self, input: &mut Vec<u8>) {
        for _ in 0..(self.next() % 4) {
            let position = (self.next() as usize) % (input.len() + 1);
            match self.next() % 3 {
                0 if position < input.len() => input[position] = self.next() as u8,
                1 => input.insert(position, self.next() as u8),
                _ => input.truncate(position),
            }
        }
    }
}

/// Config text with one postgres listener `pg` over one pool `pg`, for the unit tests
/// of the postgres modules: `listener` holds the listener's further keys (and any
/// `[[listener.routes]]`; its first line is line 6), `pool` the pool's keys including its
/// `servers`, `rest` further top-level tables such as `[[user]]`.
pub fn postgres_config(listener: &str, pool: &str, rest: &str) -> String {
    format!(
        "[[listener]]\nname = \"pg\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"postgres\"\n\
         pool = \"pg\"\n{listener}\n\n[[pool]]\nname = \"pg\"\n{pool}\n\n{rest}"
    )
}

/// Loads config `text` as the file `t.toml`.
pub fn load_config(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    crate::config::load_str_with(
        std::path::Path::new("t.toml"),
        text,
        &crate::runtime::RESOURCE_CHECKS,
    )
}

/// A pool of two servers `a` and `b` (127.0.0.1:1 and :2) behind a postgres listener, with
/// `pool_keys` (e.g. `max_replica_lag = "10s"`).
pub fn two_server_pool(pool_keys: &str) -> crate::upstream::Pool {
    let pool = format!(
        "{pool_keys}\nservers = [ {{ name = \"a\", address = \"127.0.0.1:1\" }}, \
         {{ name = \"b\", address = \"127.0.0.1:2\" }} ]"
    );
    let config = load_config(&postgres_config("", &pool, "")).expect("valid config");
    crate::upstream::Pool::new(&config.pools[0]).expect("pool")
}

/// A replica lag of `seconds` (no bytes).
pub fn lag(seconds: f64) -> Option<crate::upstream::ReplicaLag> {
    Some(crate::upstream::ReplicaLag { bytes: 0, seconds })
}
