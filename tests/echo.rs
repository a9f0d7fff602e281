//! `/echo` answers every message with the same opcode and bytes, including large and fragmented ones.
mod support;

use support::{connect, next_data, RawWs, Server};
use tungstenite::Message;

#[test]
fn echoes_text_and_binary_with_their_opcodes() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/echo"));
    ws.send(Message::text("héllo")).expect("send");
    assert_eq!(next_data(&mut ws), Message::text("héllo"));
    ws.send(Message::binary(vec![0u8, 255, 7])).expect("send");
    assert_eq!(next_data(&mut ws), Message::binary(vec![0u8, 255, 7]));
}

#[test]
fn echoes_a_message_near_the_default_limit() {
    let server = Server::start(&[]);
    let mut ws = connect(&server.url("/echo"));
    let big: Vec<u8> = (0..1024 * 1024 - 16).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).expect("send");
    assert_eq!(next_data(&mut ws), Message::binary(big));
}

/// RFC 6455 5.4: control frames may be injected in the middle of a fragmented message; the pong comes back
/// first, then the reassembled message.
#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    let server = Server::start(&["--workers", "1"]);
    let mut raw = RawWs::connect(server.addr, "/echo");
    raw.send_frame(0x01, b"frag", true); // text, FIN clear
    raw.send_frame(0x89, b"ping!", true); // ping
    raw.send_frame(0x00, b"men", true); // continuation, FIN clear
    raw.send_frame(0x80, b"ted", true); // continuation, FIN set
    assert_eq!(raw.read_frame(), (0x8A, b"ping!".to_vec()), "pong first");
    assert_eq!(raw.read_frame(), (0x81, b"fragmented".to_vec()));
}
