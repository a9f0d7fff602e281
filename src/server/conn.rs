//! One client connection on a worker: its socket, its phase (HTTP, WebSocket, closing), its read buffer and
//! its outbox.
//!
//! Memory per idle connection is kept small: the read buffer is taken from the worker's pool only while bytes
//! are being read or a message is half-received, and the outbox holds no allocation while empty.

use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::outbox::Outbox;
use super::timers::Tick;
use super::transport::Transport;
use crate::broker::index::SubId;
use crate::broker::rate::Gcra;
use crate::protocol::auth::ConnAuth;
use crate::protocol::conn::{ConnSettings, Connection};

/// What a WebSocket connection is for (from its path).
#[derive(Debug)]
pub enum Endpoint {
    /// `/echo`: every message comes back.
    Echo,
    /// `/sub/{topic}`: receives the topic's messages.
    Sub(SubId),
    /// `/sub/{topic}` in auth message mode: subscribed once the auth message allows it.
    SubPending(Arc<str>),
    /// `/pub/{topic}`: every message is published to the topic.
    Pub(Arc<str>),
    /// `/ws`: the JSON control protocol.
    Json(JsonSubs),
}

/// A `/ws` connection's subscriptions, and its allowance for topics new to the worker.
#[derive(Debug)]
pub struct JsonSubs {
    /// Its subscriptions (at most `max_subscriptions`, one per topic).
    pub subs: Vec<SubId>,
    /// Paces the topics it adds to the worker (`max_new_topics_per_second`, `new_topics_burst`).
    pub new_topics: Gcra,
}

impl JsonSubs {
    /// No subscriptions, and a full new-topic allowance at `now`.
    pub fn new(now: Instant) -> Self {
        JsonSubs { subs: Vec::new(), new_topics: Gcra::new(now) }
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading an HTTP request (head and body) that must be complete by `deadline`.
    Http {
        /// `handshake_timeout` after accept, or after the previous keep-alive response.
        deadline: Instant,
    },
    /// Upgraded.
    WebSocket {
        /// The protocol core.
        core: Box<Connection>,
        /// The endpoint.
        endpoint: Endpoint,
    },
    /// A final HTTP response is queued: flush it, shut down writing, and drop at EOF or `deadline`.
    Closing {
        /// When to give up on a lingering peer.
        deadline: Instant,
    },
}

/// Flag: the connection is in the worker's flush list for this turn.
pub const DIRTY: u16 = 1;
/// Flag: registered for WRITABLE because the last write would have blocked.
pub const WRITE_WAIT: u16 = 2;
/// Flag: in the worker's list of connections to read again (stopped before `WouldBlock`, or paused).
pub const READ_AGAIN: u16 = 4;
/// Flag: our write side is shut down (lingering close).
pub const SHUT_WR: u16 = 8;
/// Flag: the peer has closed its write side (EOF seen).
pub const PEER_EOF: u16 = 16;
/// Flag: the poller reported the peer's hang-up (FIN or reset): read to the end, whatever the read sizes.
pub const PEER_HUP: u16 = 32;
/// Flag: not read because its queued output is over `max_backpressure`; resumed when it drains.
pub const READ_PAUSED: u16 = 64;
/// Flag: the peer is a trusted proxy whose word on the client's address is still to be taken: the PROXY header
/// it must send first (`proxy_protocol`; cleared once read), or the `X-Forwarded-For` of each request.
pub const VIA_PROXY: u16 = 128;
/// Flag: a send is in flight (io_uring): its bytes belong to the kernel until the completion, and nothing more
/// is written to the socket before it.
pub const SENDING: u16 = 256;
/// Flag: in the worker's list of connections whose outbox the next timer tick looks at (its memory given back
/// once empty, its bytes counted while not).
pub const SWEEP: u16 = 512;

/// A connection owned by one worker.
#[derive(Debug)]
pub struct Conn {
    /// The socket (non-blocking). The worker's driver reads and writes it; the state only shuts it down.
    pub stream: TcpStream,
    /// In the clear or through TLS (the only difference between the two).
    pub transport: Transport,
    /// The phase.
    pub phase: Phase,
    /// Bytes read and not yet consumed; empty (no allocation) while idle.
    pub rbuf: BytesMut,
    /// Frames to write.
    pub outbox: Outbox,
    /// The client's address (for the per-IP limit and the logs): the TCP peer's, or the one a trusted proxy
    /// named. Its per-address count is kept under this address.
    pub ip: IpAddr,
    /// Its auth state (`Off` when auth is not in force).
    pub auth: ConnAuth,
    /// `DIRTY`, `WRITE_WAIT`, `READ_AGAIN`, `SHUT_WR`, `PEER_EOF`, `PEER_HUP`, `READ_PAUSED`, `VIA_PROXY`,
    /// `SENDING`, `SWEEP`.
    pub flags: u16,
    /// Receive memory (read buffer plus message reassembly) counted against the worker's budget.
    pub held: u32,
    /// The tick of its live entry in the worker's timers (0: none).
    pub timer_at: Tick,
}

impl Conn {
    /// A connection just accepted.
    pub fn new(stream: TcpStream, ip: IpAddr, deadline: Instant) -> Self {
        Conn {
            stream,
            transport: Transport::Plain,
            phase: Phase::Http { deadline },
            rbuf: BytesMut::new(),
            outbox: Outbox::default(),
            ip,
            auth: ConnAuth::Off,
            flags: 0,
            held: 0,
            timer_at: 0,
        }
    }

    /// When the worker's timer must next look at it (given the clocks `now` and `unix` read together): its
    /// HTTP or closing deadline, or its WebSocket core's (idle, ping, close) and its auth state's, whichever
    /// comes first. `None`: nothing of it can time out.
    pub fn next_deadline(&self, settings: &ConnSettings, now: Instant, unix: u64) -> Option<Instant> {
        match &self.phase {
            Phase::Http { deadline } | Phase::Closing { deadline } => Some(*deadline),
            Phase::WebSocket { core, .. } => match (core.poll_timeout(settings), self.auth.deadline(now, unix)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Whether data frames may still be queued to it.
    pub fn can_send(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket { core, .. } if core.can_send())
    }

    /// The WebSocket core, if upgraded.
    pub fn core(&self) -> Option<&Connection> {
        match &self.phase {
            Phase::WebSocket { core, .. } => Some(core),
            _ => None,
        }
    }

    /// Receive memory it holds now: its read buffer, the message its core is reassembling and, over TLS, the
    /// unfinished record the session holds.
    pub fn receive_memory(&self) -> usize {
        let record = self.transport.tls().map_or(0, |t| t.session.input_held());
        self.rbuf.capacity() + self.core().map_or(0, Connection::buffered) + record
    }

    /// Whether everything is said and written: the socket can be shut down for writing.
    pub fn is_finished(&self) -> bool {
        self.says_nothing_more() && self.outbox.is_empty()
    }

    /// Whether what is in the outbox is the last this connection will send (the WebSocket core is done, or
    /// the HTTP answer is the last word); `is_finished` once it is written.
    pub fn says_nothing_more(&self) -> bool {
        match &self.phase {
            Phase::Http { .. } => false,
            Phase::WebSocket { core, .. } => core.is_done(),
            Phase::Closing { .. } => true,
        }
    }

    /// Whether nothing waits to be written: no queued frames, no ciphertext, no send in flight.
    pub fn output_empty(&self) -> bool {
        self.outbox.is_empty() && !self.transport.wants_write() && self.flags & SENDING == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // The budget for user-space memory per idle connection is 512 bytes: this struct plus the slab's
        // bookkeeping plus the boxed core (which only WebSocket connections have).
        let core = std::mem::size_of::<Connection>();
        let conn = std::mem::size_of::<Conn>();
        assert!(conn + core + 16 <= 512, "Conn {conn} B + core {core} B is over budget");
    }
}
