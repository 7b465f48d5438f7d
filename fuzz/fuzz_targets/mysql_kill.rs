//! Fuzzes the `KILL` watch on MySQL client bytes (`switchyard::protocol::mysql::kill`):
//! the statement parser on any bytes, and the packet-by-packet rewrite on any stream cut
//! into chunks at the sizes the first byte gives. Nothing may panic; a stream with no
//! COM_QUERY `KILL` must come out byte for byte as it went in.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::kill::{KillRewrite, KillTable, kill_id};
use switchyard::relay::Rewrite;

fuzz_target!(|data: &[u8]| {
    let _ = kill_id(data);
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let Some(server) = server() else {
        return;
    };
    let table = Arc::new(KillTable::default());
    let _registration = table.register(5, &server, 1234);
    let mut rewrite = KillRewrite::new(&table, &server);
    let out: Vec<u8> = stream
        .chunks(usize::from(size).max(1))
        .flat_map(|chunk| rewrite.rewrite(chunk).into_owned())
        .collect();
    let lower = stream.to_ascii_lowercase();
    if !lower.windows(4).any(|w| w == b"kill") {
        assert!(stream.starts_with(&out), "only a held tail may be missing");
    }
});

/// One server, for the table's entries.
fn server() -> Option<Arc<switchyard::upstream::Server>> {
    let config = switchyard::config::load_str(
        std::path::Path::new("fuzz.toml"),
        "[[pool]]\nname = \"p\"\nservers = [ { address = \"127.0.0.1:3306\" } ]\n",
    )
    .ok()?;
    let pool = switchyard::upstream::Pool::new(&config.pools[0]).ok()?;
    pool.servers.first().cloned()
}
