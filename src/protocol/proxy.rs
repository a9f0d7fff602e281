//! The client's address when herald sits behind a proxy: the PROXY protocol header (v1 text, v2 binary) a
//! load balancer puts before the first request, and the `X-Forwarded-For` / `Forwarded` headers an HTTP proxy
//! adds to each request.
//!
//! Both are read only for connections whose TCP peer the server trusts; that decision, the per-address
//! accounting and the refusal are the server's. This module owns the byte and header parsing, sans-IO: bytes in,
//! `Ok(None)` while a header is incomplete, the number of bytes it took and the address it names. The address
//! types are `core::net`'s plain values; nothing here opens a socket.
//!
//! Invariants: no input panics; the parser never looks past [`V1_MAX_LEN`] bytes for a v1 line nor accepts a
//! v2 header longer than [`V2_MAX_LEN`], so a peer cannot make it buffer or re-scan without bound.
//!
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::handshake::RequestHead;

/// Longest v1 line, `PROXY` to the CRLF included (section 2.1: "107 characters").
pub const V1_MAX_LEN: usize = 107;
/// The 12 bytes that open a v2 header (section 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v2 header accepted: the 16 fixed bytes, the addresses (at most 216, for UNIX sockets) and room for
/// the TLVs a load balancer adds (which are skipped). Longer is refused, so a peer cannot make us hold 64 KiB.
pub const V2_MAX_LEN: usize = 16 + 2048;

/// The bytes at the start of a connection are not a valid PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The connection does not start with `PROXY ` nor with the v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// No CRLF within the first 107 bytes of a v1 line.
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    /// A v1 line that does not follow the grammar (the string says where).
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A v2 header whose version nibble is not 2.
    #[error("unsupported PROXY v2 version {0}")]
    V2Version(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1).
    #[error("unsupported PROXY v2 command {0}")]
    V2Command(u8),
    /// A v2 address family other than UNSPEC, INET, INET6 or UNIX.
    #[error("unsupported PROXY v2 address family {0}")]
    V2Family(u8),
    /// A v2 header whose length field would take it past [`V2_MAX_LEN`].
    #[error("PROXY v2 header of {0} bytes is over the limit")]
    V2TooLong(usize),
    /// A v2 address block shorter than its family's addresses.
    #[error("PROXY v2 address block too short for its family")]
    V2ShortAddress,
}

/// Parses the PROXY protocol header at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, else the header's length in bytes (the request starts after
/// it) and the client's address: `None` for v1 `UNKNOWN`, v2 `LOCAL` (a health check by the proxy itself) and
/// the families that carry no IP address (UNSPEC, UNIX), where the TCP peer stays the client.
pub fn parse_header(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < V2_SIGNATURE.len() { Ok(None) } else { parse_v2(buf) };
    }
    const V1_PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if buf.len() < V1_PREFIX.len() { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyHeaderError::Missing)
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `PROXY TCP6 ...` or `PROXY UNKNOWN[ anything]\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    use ProxyHeaderError::{V1Malformed, V1TooLong};
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.contains(&b'\n') {
            return Err(V1Malformed("line feed without carriage return"));
        }
        return if buf.len() >= V1_MAX_LEN { Err(V1TooLong) } else { Ok(None) };
    };
    let used = end + 2;
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| V1Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let v6 = match fields.next() {
        // Section 2.1: "the receiver must ignore anything presented before the CRLF is found".
        Some("UNKNOWN") => return Ok(Some((used, None))),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let src = address(fields.next(), v6)?;
    let _dst = address(fields.next(), v6)?;
    let sport = port(fields.next())?;
    let _dport = port(fields.next())?;
    if fields.next().is_some() {
        return Err(V1Malformed("extra fields"));
    }
    Ok(Some((used, Some(SocketAddr::new(src, sport)))))
}

/// A v1 address of the line's family (section 2.1: both addresses are of the announced protocol).
fn address(field: Option<&str>, v6: bool) -> Result<IpAddr, ProxyHeaderError> {
    let field = field.ok_or(ProxyHeaderError::V1Malformed("missing address"))?;
    let ip = if v6 { field.parse::<Ipv6Addr>().map(IpAddr::V6) } else { field.parse::<Ipv4Addr>().map(IpAddr::V4) };
    ip.map_err(|_| ProxyHeaderError::V1Malformed(if v6 { "bad TCP6 address" } else { "bad TCP4 address" }))
}

/// A v1 port: 1 to 5 decimal digits, at most 65535.
fn port(field: Option<&str>) -> Result<u16, ProxyHeaderError> {
    let bad = ProxyHeaderError::V1Malformed("bad port");
    let field = field.ok_or(bad.clone())?;
    if field.is_empty() || field.len() > 5 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    field.parse().map_err(|_| bad)
}

/// The 16-byte v2 header (signature, version and command, family and transport, length) and its payload.
fn parse_v2(buf: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    use ProxyHeaderError::{V2Command, V2Family, V2ShortAddress, V2TooLong, V2Version};
    let Some(fixed) = buf.get(..16) else { return Ok(None) };
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(V2Version(version));
    }
    let command = fixed[12] & 0x0f;
    if command > 1 {
        return Err(V2Command(command));
    }
    let family = fixed[13] >> 4;
    if family > 3 {
        return Err(V2Family(family));
    }
    let total = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if total > V2_MAX_LEN {
        return Err(V2TooLong(total));
    }
    let Some(payload) = buf.get(16..total) else { return Ok(None) };
    if command == 0 {
        // LOCAL: the proxy speaking for itself (a health check); the address block, if any, is ignored.
        return Ok(Some((total, None)));
    }
    // The TLVs after the addresses are skipped: `total` already covers them.
    let client = match family {
        0x1 => {
            let a = payload.get(..12).ok_or(V2ShortAddress)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
        }
        0x2 => {
            let a = payload.get(..36).ok_or(V2ShortAddress)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
        }
        // UNSPEC (the proxy does not know) and UNIX: no IP address, the TCP peer stays the client.
        _ => None,
    };
    Ok(Some((total, client)))
}

/// The client address a trusted HTTP proxy names for this request, by the rightmost-untrusted rule.
///
/// Every `X-Forwarded-For` header is read, in order, as one comma-separated list (each proxy appends the
/// address it received the request from). Walking from the right, the first address for which `trusted` is
/// false is the client: entries further left were written by that client and may be forged, so they are never
/// read. If every entry is trusted, the leftmost is the client. Without `X-Forwarded-For`, the `for=`
/// parameters of `Forwarded` (RFC 7239) are read the same way.
///
/// `None` (keep the TCP peer) when there is no such header, or when an entry met on the walk is not an address
/// (`unknown`, an obfuscated `_name`, garbage). Entries may carry a port (`192.0.2.1:80`, `[2001:db8::1]:80`).
/// IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn forwarded_client(head: &RequestHead, trusted: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let named = |name: &'static str| head.headers.iter().rev().filter(move |(n, _)| n == name).map(|(_, v)| v);
    if named("x-forwarded-for").next().is_some() {
        let entries = named("x-forwarded-for").flat_map(|v| v.rsplit(',')).map(str::trim);
        return rightmost_untrusted(entries, trusted);
    }
    if named("forwarded").next().is_some() {
        // RFC 7239 section 4: `Forwarded: for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https`.
        let entries = named("forwarded").flat_map(|v| v.rsplit(',')).map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map_or("", |(_, value)| value.trim().trim_matches('"'))
        });
        return rightmost_untrusted(entries.map(|e| if e.is_empty() { "-" } else { e }), trusted);
    }
    None
}

/// The walk from the right: the first untrusted address, or the leftmost if all are trusted; `None` at the
/// first entry that is not an address. Empty entries (`a,,b`) carry nothing and are passed over.
fn rightmost_untrusted<'a>(entries: impl Iterator<Item = &'a str>, trusted: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let mut leftmost = None;
    for entry in entries.filter(|e| !e.is_empty()) {
        let ip = node_address(entry)?.to_canonical();
        if !trusted(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`.
fn node_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests;
