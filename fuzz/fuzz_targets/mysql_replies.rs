//! Fuzzes the MySQL reply parsers: OK (under the capabilities in the first 4 bytes, with
//! its session state changes, also as the transaction pooler records them), ERR, EOF,
//! AuthSwitchRequest and AuthMoreData (`switchyard::protocol::mysql::{ok, err, eof,
//! auth_switch, session_state}`), and the reply tracker (`reply::Reply`) over the rest
//! split into packets at each 0xFF byte, for a command byte taken from the capabilities'
//! low byte. Any bytes must parse or fail without panicking; what parses must survive a
//! re-encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::protocol::mysql::auth_switch::{AuthSwitch, parse_more_data};
use switchyard::protocol::mysql::eof::EofPacket;
use switchyard::protocol::mysql::err::ErrPacket;
use switchyard::protocol::mysql::ok::{OK, OkPacket, session_changes};
use switchyard::protocol::mysql::reply::{Reply, Shape};
use switchyard::protocol::mysql::session_state::{Baseline, SessionState};

fuzz_target!(|data: &[u8]| {
    let Some((caps, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let caps = u32::from_le_bytes(*caps);
    if let Ok(ok) = OkPacket::parse(payload, caps) {
        let _ = session_changes(&ok.session_state);
        let mut state = SessionState::default();
        if state.note(&ok.session_state).is_ok() {
            let _ = SessionState::default().replay_from(&state, &Baseline::new());
        }
        let once = OkPacket::parse(&ok.encode(OK, caps), caps).expect("an encoded OK parses");
        assert_eq!(
            (once.affected_rows, once.last_insert_id),
            (ok.affected_rows, ok.last_insert_id)
        );
        let twice = OkPacket::parse(&once.encode(OK, caps), caps).expect("parses again");
        assert_eq!(twice, once);
    }
    if let Ok(err) = ErrPacket::parse(payload) {
        let again = ErrPacket::parse(&err.encode()).expect("an encoded ERR parses");
        assert_eq!((again.code, &again.message), (err.code, &err.message));
    }
    if let Ok(eof) = EofPacket::parse(payload) {
        assert_eq!(EofPacket::parse(&eof.encode()).ok(), Some(eof));
    }
    if let Ok(switch) = AuthSwitch::parse(payload) {
        assert_eq!(AuthSwitch::parse(&switch.encode()).ok(), Some(switch));
    }
    let _ = parse_more_data(payload);
    let mut reply = Reply::new(Shape::of(caps as u8), caps);
    for packet in payload.split(|&b| b == 0xFF) {
        if reply.done() || reply.feed(packet).is_err() {
            break;
        }
    }
});
