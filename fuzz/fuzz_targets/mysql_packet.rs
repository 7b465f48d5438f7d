//! Fuzzes MySQL packet framing (`switchyard::protocol::mysql::packet`): any bytes, fed in
//! two chunks as from a socket, must frame without panicking under a size limit, and every
//! payload read must frame again (split into pieces when long) and read back identical.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::PacketReader;
use switchyard::protocol::mysql::packet::packet;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut reader = PacketReader::new(1 << 16);
    reader.feed(&data[..split]);
    let mut payloads = Vec::new();
    while let Ok(Some(read)) = reader.next_packet() {
        payloads.push(read);
    }
    reader.feed(&data[split..]);
    while let Ok(Some(read)) = reader.next_packet() {
        payloads.push(read);
    }
    for read in payloads {
        assert!(read.payload.len() <= 1 << 16);
        let mut again = PacketReader::new(1 << 16);
        again.feed(&packet(read.sequence, &read.payload));
        let back = again.next_packet().ok().flatten().expect("re-framed payload reads back");
        assert_eq!(back.payload, read.payload);
        assert!(!again.has_partial());
    }
});
