//! Unit tests for the PROXY protocol parser and the forwarding headers: the specification's examples, one rule
//! per test, and a property that no input panics.

use super::*;
use crate::protocol::handshake::Method;
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A v2 header: signature, version 2 with `command`, `family_transport`, the length, then `payload`.
fn v2(command: u8, family_transport: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family_transport);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The INET address block: 192.0.2.1:56324 -> 198.51.100.7:443.
const INET_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb];

// ---- v1 (section 2.1) -------------------------------------------------------------------------------------

#[test]
fn v1_tcp4_names_the_source_address_and_port() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    assert_eq!(parse_header(line), Ok(Some((47, Some(addr("192.168.0.1:56324"))))));
}

#[test]
fn v1_tcp6_names_the_source_address_and_port() {
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n";
    assert_eq!(parse_header(line), Ok(Some((line.len(), Some(addr("[2001:db8::1]:4711"))))));
}

#[test]
fn v1_unknown_keeps_the_peer_and_ignores_the_rest_of_the_line() {
    assert_eq!(parse_header(b"PROXY UNKNOWN\r\n"), Ok(Some((15, None))));
    // Section 2.1's worst case: 107 bytes, CRLF included, must be accepted.
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(worst.len(), V1_MAX_LEN);
    assert_eq!(parse_header(worst.as_bytes()), Ok(Some((V1_MAX_LEN, None))));
}

#[test]
fn v1_longest_tcp_lines_of_the_specification_parse() {
    let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(parse_header(v4), Ok(Some((v4.len(), Some(addr("255.255.255.255:65535"))))));
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let v6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(parse_header(v6.as_bytes()).map(|r| r.map(|(n, _)| n)), Ok(Some(v6.len())));
}

#[test]
fn v1_without_its_crlf_yet_needs_more_bytes() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    for cut in 0..line.len() {
        assert_eq!(parse_header(&line[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn v1_line_without_crlf_in_107_bytes_is_refused() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN, b'x');
    assert_eq!(parse_header(&long), Err(ProxyHeaderError::V1TooLong));
    long.resize(4096, b'x');
    assert_eq!(parse_header(&long), Err(ProxyHeaderError::V1TooLong));
}

#[test]
fn v1_malformed_lines_are_refused() {
    let bad: &[&[u8]] = &[
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY \xff\r\n",
    ];
    for line in bad {
        assert!(
            matches!(parse_header(line), Err(ProxyHeaderError::V1Malformed(_))),
            "{:?} gave {:?}",
            String::from_utf8_lossy(line),
            parse_header(line)
        );
    }
}

// ---- v2 (section 2.2) -------------------------------------------------------------------------------------

#[test]
fn v2_proxy_inet_names_the_source_address_and_port() {
    let mut header = v2(1, 0x11, &INET_BLOCK);
    let len = header.len();
    header.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(len, 28);
    assert_eq!(parse_header(&header), Ok(Some((28, Some(addr("192.0.2.1:56324"))))));
}

#[test]
fn v2_proxy_inet6_names_the_source_address_and_port() {
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
    block.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets());
    block.extend_from_slice(&4711u16.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    let header = v2(1, 0x21, &block);
    assert_eq!(parse_header(&header), Ok(Some((52, Some(addr("[2001:db8::1]:4711"))))));
}

#[test]
fn v2_local_keeps_the_peer_and_skips_its_address_block() {
    assert_eq!(parse_header(&v2(0, 0x00, &[])), Ok(Some((16, None))));
    assert_eq!(parse_header(&v2(0, 0x11, &INET_BLOCK)), Ok(Some((28, None))));
}

#[test]
fn v2_unspec_and_unix_families_keep_the_peer() {
    assert_eq!(parse_header(&v2(1, 0x00, &[])), Ok(Some((16, None))));
    assert_eq!(parse_header(&v2(1, 0x31, &[0u8; 216])), Ok(Some((232, None))));
}

#[test]
fn v2_tlvs_after_the_addresses_are_skipped() {
    let mut payload = INET_BLOCK.to_vec();
    payload.extend_from_slice(&[0x04, 0x00, 0x03, 0xaa, 0xbb, 0xcc]); // PP2_TYPE_NOOP, 3 bytes
    payload.extend_from_slice(&[0x05, 0x00, 0x02, 0x01, 0x02]); // PP2_TYPE_UNIQUE_ID, 2 bytes
    let mut header = v2(1, 0x11, &payload);
    let len = header.len();
    header.extend_from_slice(b"GET");
    assert_eq!(parse_header(&header), Ok(Some((len, Some(addr("192.0.2.1:56324"))))));
}

#[test]
fn v2_truncated_anywhere_needs_more_bytes() {
    let header = v2(1, 0x11, &INET_BLOCK);
    for cut in 0..header.len() {
        assert_eq!(parse_header(&header[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn v2_length_past_the_limit_is_refused_before_its_payload_arrives() {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(parse_header(&header), Err(ProxyHeaderError::V2TooLong(16 + 0xffff)));
}

#[test]
fn v2_bad_version_command_or_family_is_refused() {
    let mut header = v2(1, 0x11, &INET_BLOCK);
    header[12] = 0x11;
    assert_eq!(parse_header(&header), Err(ProxyHeaderError::V2Version(1)));
    assert_eq!(parse_header(&v2(2, 0x11, &INET_BLOCK)), Err(ProxyHeaderError::V2Command(2)));
    assert_eq!(parse_header(&v2(1, 0x41, &INET_BLOCK)), Err(ProxyHeaderError::V2Family(4)));
}

#[test]
fn v2_address_block_shorter_than_its_family_is_refused() {
    assert_eq!(parse_header(&v2(1, 0x11, &INET_BLOCK[..8])), Err(ProxyHeaderError::V2ShortAddress));
    assert_eq!(parse_header(&v2(1, 0x21, &INET_BLOCK)), Err(ProxyHeaderError::V2ShortAddress));
}

// ---- neither ----------------------------------------------------------------------------------------------

#[test]
fn a_connection_that_starts_with_anything_else_has_no_header() {
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"P", b"PROXZ", b"proxy TCP4", b"\r\n\r\nX", b"\x16\x03\x01"] {
        let want = if garbage == b"P" { Ok(None) } else { Err(ProxyHeaderError::Missing) };
        assert_eq!(parse_header(garbage), want, "{:?}", String::from_utf8_lossy(garbage));
    }
    assert_eq!(parse_header(b""), Ok(None), "nothing yet: wait");
}

proptest! {
    /// No input panics, and a header never claims more bytes than it was given.
    #[test]
    fn no_input_panics(prefix in 0usize..3, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut buf = match prefix {
            0 => Vec::new(),
            1 => V2_SIGNATURE.to_vec(),
            _ => b"PROXY ".to_vec(),
        };
        buf.extend_from_slice(&tail);
        if let Ok(Some((used, _))) = parse_header(&buf) {
            prop_assert!(used <= buf.len());
        }
    }

    /// Printable v1 lines of every shape parse or fail without panicking, within the 107-byte window.
    #[test]
    fn no_v1_line_panics(line in "PROXY [A-Z0-9:. ]{0,120}(\r\n)?") {
        if let Ok(Some((used, _))) = parse_header(line.as_bytes()) {
            prop_assert!(used <= V1_MAX_LEN);
        }
    }
}

// ---- X-Forwarded-For and Forwarded ------------------------------------------------------------------------

fn head(headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method: Method::Get,
        path: "/".into(),
        query: None,
        version: 1,
        head_len: 0,
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
    }
}

/// Trusts 10.0.0.0/8 and 127.0.0.1.
fn trusted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10 || v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(_) => false,
    }
}

fn client(headers: &[(&str, &str)]) -> Option<IpAddr> {
    forwarded_client(&head(headers), &trusted)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("test address"))
}

#[test]
fn xff_client_is_the_rightmost_untrusted_entry() {
    assert_eq!(client(&[("x-forwarded-for", "203.0.113.7")]), ip("203.0.113.7"));
    assert_eq!(client(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2, 10.1.1.1")]), ip("203.0.113.7"));
}

#[test]
fn xff_leftmost_entries_written_by_the_client_are_never_used() {
    // The client sent `X-Forwarded-For: 1.1.1.1`; its proxy appended the address it saw.
    assert_eq!(client(&[("x-forwarded-for", "1.1.1.1, 198.51.100.9")]), ip("198.51.100.9"));
    // Garbage to the left of the client's address is not read either.
    assert_eq!(client(&[("x-forwarded-for", "not an address, 198.51.100.9")]), ip("198.51.100.9"));
}

#[test]
fn xff_headers_are_joined_in_order() {
    let h = [("x-forwarded-for", "1.1.1.1"), ("host", "x"), ("x-forwarded-for", "198.51.100.9, 10.0.0.1")];
    assert_eq!(client(&h), ip("198.51.100.9"));
    let h = [("x-forwarded-for", "198.51.100.9"), ("x-forwarded-for", "10.0.0.1")];
    assert_eq!(client(&h), ip("198.51.100.9"));
}

#[test]
fn xff_all_trusted_gives_the_leftmost() {
    assert_eq!(client(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]), ip("10.0.0.5"));
}

#[test]
fn xff_malformed_entry_on_the_walk_keeps_the_peer() {
    assert_eq!(client(&[("x-forwarded-for", "unknown")]), None);
    assert_eq!(client(&[("x-forwarded-for", "198.51.100.9, 10.0.0.1, garbage")]), None);
    assert_eq!(client(&[("x-forwarded-for", "198.51.100.9, 300.1.1.1")]), None);
}

#[test]
fn xff_entries_may_carry_ports_brackets_and_mapped_addresses() {
    assert_eq!(client(&[("x-forwarded-for", "198.51.100.9:4711")]), ip("198.51.100.9"));
    assert_eq!(client(&[("x-forwarded-for", "[2001:db8::1]:4711")]), ip("2001:db8::1"));
    assert_eq!(client(&[("x-forwarded-for", "[2001:db8::1]")]), ip("2001:db8::1"));
    assert_eq!(client(&[("x-forwarded-for", "2001:db8::1,")]), ip("2001:db8::1"));
    assert_eq!(client(&[("x-forwarded-for", "::ffff:198.51.100.9")]), ip("198.51.100.9"));
    assert_eq!(client(&[("x-forwarded-for", "::ffff:10.0.0.1")]), ip("10.0.0.1"), "trusted once unmapped");
}

#[test]
fn no_forwarding_header_keeps_the_peer() {
    assert_eq!(client(&[("host", "x")]), None);
    assert_eq!(client(&[("x-forwarded-for", "")]), None);
}

#[test]
fn forwarded_for_is_read_by_the_same_rule() {
    // RFC 7239 section 4's examples.
    assert_eq!(client(&[("forwarded", "for=\"_gazonk\"")]), None, "obfuscated: keep the peer");
    assert_eq!(client(&[("forwarded", "For=\"[2001:db8:cafe::17]:4711\"")]), ip("2001:db8:cafe::17"));
    assert_eq!(client(&[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")]), ip("192.0.2.60"));
    assert_eq!(client(&[("forwarded", "for=192.0.2.43, for=198.51.100.17")]), ip("198.51.100.17"));
    assert_eq!(client(&[("forwarded", "for=192.0.2.43, for=10.0.0.3;proto=https")]), ip("192.0.2.43"));
    assert_eq!(client(&[("forwarded", "for=192.0.2.43, proto=https")]), None, "a hop without for=");
}

#[test]
fn x_forwarded_for_wins_over_forwarded() {
    let h = [("forwarded", "for=192.0.2.43"), ("x-forwarded-for", "198.51.100.9")];
    assert_eq!(client(&h), ip("198.51.100.9"));
}
