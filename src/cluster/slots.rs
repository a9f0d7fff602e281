//! Redis Cluster's slots (sharded mode): which master owns a channel, from `CLUSTER SLOTS`.
//!
//! A channel's slot is CRC16 (XMODEM) of its name modulo 16384 (herald's channel names hold no `{`, so no hash
//! tag applies). The topology is read with a short blocking exchange from the bridge thread, at start and
//! whenever Redis says it moved (a MOVED reply, an unrequested SUNSUBSCRIBE, a lost master).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::resp::{self, Value};
use super::RedisUrl;

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster computes key slots.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of a channel name (no hash tags: herald's names cannot hold `{`).
pub fn slot_of(channel: &[u8]) -> u16 {
    crc16(channel) % SLOTS as u16
}

/// The masters and which of them owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The masters, in a stable order (by address).
    pub masters: Vec<RedisUrl>,
    /// The owner (index into `masters`) of each slot; `u16::MAX` for a slot nobody serves.
    pub owner: Vec<u16>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Redis answered with an error (e.g. cluster support disabled).
    #[error("Redis refused CLUSTER SLOTS: {0}")]
    Refused(String),
    /// The TLS handshake failed (certificate, name, or not a TLS port).
    #[error("{0}")]
    Tls(String),
    /// The answer is not the documented shape.
    #[error("unexpected CLUSTER SLOTS reply")]
    Shape,
}

impl Topology {
    /// Reads a `CLUSTER SLOTS` reply.
    pub fn from_reply(reply: &Value) -> Result<Topology, TopologyError> {
        let Value::Array(ranges) = reply else {
            return match reply {
                Value::Error(e) => Err(TopologyError::Refused(String::from_utf8_lossy(e).into_owned())),
                _ => Err(TopologyError::Shape),
            };
        };
        let mut spans = Vec::new();
        for r in ranges {
            let Value::Array(parts) = r else { return Err(TopologyError::Shape) };
            let (Some(Value::Integer(start)), Some(Value::Integer(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(TopologyError::Shape);
            };
            let host = master.first().and_then(Value::as_bytes).ok_or(TopologyError::Shape)?;
            let Some(Value::Integer(port)) = master.get(1) else { return Err(TopologyError::Shape) };
            let url = RedisUrl {
                host: String::from_utf8_lossy(host).into_owned(),
                port: u16::try_from(*port).map_err(|_| TopologyError::Shape)?,
                tls: false,
            };
            let (start, end) = (usize::try_from(*start), usize::try_from(*end));
            let (Ok(start), Ok(end)) = (start, end) else { return Err(TopologyError::Shape) };
            if start > end || end >= SLOTS {
                return Err(TopologyError::Shape);
            }
            spans.push((start, end, url));
        }
        let mut masters: Vec<RedisUrl> = spans.iter().map(|s| s.2.clone()).collect();
        masters.sort_by(|a, b| (a.host.as_str(), a.port).cmp(&(b.host.as_str(), b.port)));
        masters.dedup();
        let mut owner = vec![u16::MAX; SLOTS];
        for (start, end, url) in spans {
            let idx = masters.iter().position(|m| *m == url).unwrap_or(0) as u16;
            owner[start..=end].iter_mut().for_each(|o| *o = idx);
        }
        Ok(Topology { masters, owner })
    }

    /// The master owning `channel`'s slot, if any.
    pub fn master_of(&self, channel: &[u8]) -> Option<usize> {
        let o = self.owner[slot_of(channel) as usize];
        (o != u16::MAX).then_some(o as usize)
    }

    /// Asks `node` for the topology (blocking, each step bounded by `timeout`), over TLS with `tls` (the
    /// masters it lists are plain: the caller marks them).
    pub fn fetch(
        node: &RedisUrl,
        auth: Option<(&str, &str)>,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Topology, TopologyError> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(node.host.as_str(), node.port))?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        match tls {
            Some(config) => {
                let name = super::tls::server_name(&node.host).map_err(|e| TopologyError::Tls(e.to_string()))?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| TopologyError::Tls(super::tls::describe(&e)))?;
                Self::exchange(rustls::StreamOwned::new(conn, s), auth)
            }
            None => Self::exchange(s, auth),
        }
    }

    fn exchange(mut s: impl Read + Write, auth: Option<(&str, &str)>) -> Result<Topology, TopologyError> {
        let mut out = BytesMut::new();
        let mut replies = 1;
        if let Some((user, pw)) = auth {
            if user.is_empty() {
                resp::command_args(&mut out, &[b"AUTH", pw.as_bytes()]);
            } else {
                resp::command_args(&mut out, &[b"AUTH", user.as_bytes(), pw.as_bytes()]);
            }
            replies += 1;
        }
        resp::command_args(&mut out, &[b"CLUSTER", b"SLOTS"]);
        s.write_all(&out)?;
        let mut inbuf = BytesMut::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match resp::decode(&mut inbuf, 1 << 20).map_err(|_| TopologyError::Shape)? {
                Some(v) if replies > 1 => {
                    if let Value::Error(e) = v {
                        return Err(TopologyError::Refused(String::from_utf8_lossy(&e).into_owned()));
                    }
                    replies -= 1;
                }
                Some(v) => return Topology::from_reply(&v),
                None => {
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    inbuf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn slots_are_the_ones_redis_cluster_computes() {
        assert_eq!(crc16(b"123456789"), 0x31C3, "the XMODEM check value");
        assert_eq!(slot_of(b"foo"), 12182, "CLUSTER KEYSLOT foo");
        assert_eq!(slot_of(b"bar"), 5061, "CLUSTER KEYSLOT bar");
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![Value::Bulk(Bytes::copy_from_slice(host.as_bytes())), Value::Integer(port)])
    }

    #[test]
    fn a_cluster_slots_reply_maps_every_slot_to_its_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Integer(5461), Value::Integer(16383), node("10.0.0.2", 7000)]),
            Value::Array(vec![Value::Integer(0), Value::Integer(5460), node("10.0.0.1", 7000), node("10.0.0.9", 1)]),
        ]);
        let t = Topology::from_reply(&reply).expect("valid");
        assert_eq!(t.masters.iter().map(|m| m.to_string()).collect::<Vec<_>>(), ["10.0.0.1:7000", "10.0.0.2:7000"]);
        assert_eq!((t.owner[0], t.owner[5460], t.owner[5461], t.owner[16383]), (0, 0, 1, 1));
        assert_eq!(t.master_of(b"foo"), Some(1));
        assert!(Topology::from_reply(&Value::Error(Bytes::from_static(b"ERR cluster support disabled"))).is_err());
        assert!(Topology::from_reply(&Value::Array(vec![Value::Integer(1)])).is_err());
    }
}
