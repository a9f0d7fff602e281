//! The per-connection state machine after the upgrade: ping/pong, the close handshake and the timers.
//!
//! `Connection` is driven, never driving: the I/O layer feeds it input bytes and the current time and drains
//! what it hands back. Data frames *to* the peer (echoes, broadcasts) do not pass through it: the I/O layer
//! queues them itself while [`Connection::can_send`] is true. Method groups, in quinn's order:
//!
//! - inputs: [`Connection::poll_message`] (bytes in, the next data message out; control frames are handled
//!   inside), [`Connection::handle_timeout`], [`Connection::close`];
//! - outputs: [`Connection::poll_control`] (pong, ping and close frames to send), [`Connection::poll_timeout`];
//! - state: [`Connection::can_send`], [`Connection::is_done`], [`Connection::ending`].
//!
//! States: `Open` -> (we start a close) `CloseSent` -> (the peer's close, or `close_timeout`) `Done`; or `Open`
//! -> (the peer's close, or a protocol error) `Done` once our answering close is handed out. In `Done` the
//! I/O layer flushes what is queued, shuts down its write side and drops the socket at EOF or at the deadline
//! from [`Connection::poll_timeout`] (a lingering close, so the peer reads our close frame before any RST).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::close::{CloseCode, CloseFrame};
use super::codec::{DecodeLimits, Decoder, Incoming};
use super::deflate::{Agreement, InflateError, Inflater};
use super::error::ProtocolError;
use super::frame::{self, OpCode};
use super::Role;

/// Settings shared by every connection of a worker (passed in, not stored per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSettings {
    /// Which end we are.
    pub role: Role,
    /// Frame and message size limits.
    pub limits: DecodeLimits,
    /// Send a ping after this long without input (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Close with 1001 "idle timeout" after this long without input, pongs included (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the peer's close after ours, and how long to linger after the handshake is done.
    pub close_timeout: Duration,
}

/// What [`Connection::poll_message`] hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// A control frame to send is ready (a pong): drain [`Connection::poll_control`] before asking for the next
    /// event, so that replies keep the order of the frames that caused them.
    Control,
}

/// A complete data message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Text, already checked to be UTF-8.
    Text(Bytes),
    /// Binary.
    Binary(Bytes),
}

impl Message {
    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        match self {
            Message::Text(b) | Message::Binary(b) => b,
        }
    }

    /// The opcode a frame carrying this message uses.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Our close frame is queued or sent; waiting for the peer's.
    CloseSent {
        deadline: Instant,
    },
    /// The close handshake is over (or the connection failed); our last close goes out, then the socket.
    Done {
        deadline: Instant,
    },
}

/// Why the connection ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The peer started the close handshake with this code (`None`: no code).
    PeerClosed(Option<CloseCode>),
    /// We started it with this code.
    WeClosed(CloseCode),
    /// The peer broke the protocol; we closed with the error's code.
    Failed(ProtocolError),
}

/// One WebSocket connection's protocol state. About 100 bytes when idle; no buffer is held between messages.
#[derive(Debug)]
pub struct Connection {
    decoder: Decoder,
    state: State,
    /// Payload of the latest ping not yet answered (RFC 6455 5.5.3: answering only the latest is allowed).
    pong: Option<Bytes>,
    /// A ping of ours is due.
    ping_due: bool,
    /// Our close frame, not yet handed out.
    close_out: Option<CloseFrame>,
    /// Whether `close_out` ends the handshake (a reply or an error) rather than starting it.
    close_is_final: bool,
    last_input: Instant,
    last_ping: Instant,
    ending: Option<Ending>,
    role: Role,
    /// Masking key source for the client role (xorshift; the core draws no randomness of its own).
    mask_state: u64,
    /// The window of permessage-deflate negotiated for our messages to the peer; 0 when not negotiated.
    deflate_bits: u8,
}

impl Connection {
    /// A connection that has just completed its opening handshake at `now`. `seed` feeds the client role's
    /// masking keys (any value for a server).
    pub fn new(now: Instant, settings: &ConnSettings, seed: u64) -> Self {
        Connection {
            decoder: Decoder::new(settings.role, settings.limits),
            state: State::Open,
            pong: None,
            ping_due: false,
            close_out: None,
            close_is_final: false,
            last_input: now,
            last_ping: now,
            ending: None,
            role: settings.role,
            mask_state: seed | 1,
            deflate_bits: 0,
        }
    }

    /// permessage-deflate was negotiated in the handshake: compressed messages from the peer are accepted (and
    /// must then be polled with [`Connection::poll_message_inflating`]).
    pub fn set_deflate(&mut self, agreement: Agreement) {
        self.deflate_bits = agreement.server_window_bits;
        self.decoder.allow_compressed();
    }

    /// The window bits of the permessage-deflate agreement, if one was made: messages to this peer may be
    /// compressed with a window of at most that.
    pub fn deflate_window(&self) -> Option<u8> {
        (self.deflate_bits != 0).then_some(self.deflate_bits)
    }

    /// Decodes from `input` and returns the next event: a data message, or word that a control frame (a pong)
    /// is ready. A close is handled inside (it queues the answering close). `None`: more input is needed, or
    /// the connection no longer delivers messages (closing or failed). Call until `None`, then drain
    /// [`Connection::poll_control`].
    pub fn poll_message(&mut self, now: Instant, settings: &ConnSettings, input: &mut BytesMut) -> Option<Event> {
        self.poll_message_inflating(now, settings, input, None)
    }

    /// [`Connection::poll_message`] for a connection with permessage-deflate: compressed messages are inflated
    /// with `inflater` (reset per message, so one serves every connection), their inflated size held to
    /// `max_message_size` (more: close 1009) and text checked for UTF-8 after inflation. Invalid compressed data
    /// closes with 1007; so does a compressed message when no inflater is given.
    pub fn poll_message_inflating(
        &mut self,
        now: Instant,
        settings: &ConnSettings,
        input: &mut BytesMut,
        mut inflater: Option<&mut Inflater>,
    ) -> Option<Event> {
        if !input.is_empty() {
            self.last_input = now;
        }
        loop {
            if matches!(self.state, State::Done { .. })
                || matches!(self.ending, Some(Ending::Failed(_) | Ending::PeerClosed(_)))
                || self.close_is_final
            {
                // RFC 6455 5.5.1 and 7.1.7: nothing after the peer's close, or after failing, is acted on.
                // (`close_is_final` also covers a peer close that crossed ours, where `ending` stays `WeClosed`.)
                input.clear();
                return None;
            }
            let decoded = match self.decoder.decode(input) {
                Ok(Some(Incoming::Deflated { text, payload })) => {
                    inflate(inflater.as_deref_mut(), &payload, text, self.decoder.limits().max_message_size)
                }
                other => other,
            };
            match decoded {
                Ok(None) => return None,
                Ok(Some(Incoming::Text(b))) if self.can_send() => return Some(Event::Message(Message::Text(b))),
                Ok(Some(Incoming::Binary(b))) if self.can_send() => return Some(Event::Message(Message::Binary(b))),
                // 5.5.1: after sending a close, data may still arrive; it is discarded.
                Ok(Some(Incoming::Text(_) | Incoming::Binary(_))) => {}
                Ok(Some(Incoming::Ping(payload))) => {
                    if self.can_send() {
                        self.pong = Some(payload);
                        return Some(Event::Control);
                    }
                }
                Ok(Some(Incoming::Pong(_) | Incoming::Deflated { .. })) => {}
                Ok(Some(Incoming::Close(frame))) => {
                    self.handle_peer_close(now, settings, frame);
                }
                Err(err) => {
                    self.fail(now, settings, err);
                    input.clear();
                    return None;
                }
            }
        }
    }

    fn handle_peer_close(&mut self, now: Instant, settings: &ConnSettings, frame: Option<CloseFrame>) {
        match self.state {
            State::Open if self.close_out.is_some() => {
                // Our close (not yet handed out) crossed theirs: it now ends the handshake.
                self.close_is_final = true;
            }
            State::Open => {
                // 5.5.1: answer with a close, echoing the status code received.
                let code = frame.as_ref().map(|f| f.code);
                self.ending = Some(Ending::PeerClosed(code));
                self.close_out = frame.map(|f| CloseFrame { code: f.code, reason: String::new() });
                if self.close_out.is_none() {
                    // An empty close is answered with an empty close.
                    self.close_out = Some(CloseFrame { code: CloseCode(0), reason: String::new() });
                }
                self.close_is_final = true;
                self.pong = None;
            }
            State::CloseSent { .. } => {
                self.state = State::Done { deadline: now + settings.close_timeout };
            }
            State::Done { .. } => {}
        }
    }

    fn fail(&mut self, now: Instant, settings: &ConnSettings, err: ProtocolError) {
        let code = err.close_code();
        let reason = err.to_string();
        self.pong = None;
        self.ping_due = false;
        match self.state {
            State::Open => {
                self.close_out = Some(CloseFrame { code, reason });
                self.close_is_final = true;
            }
            // Our close already went out: just end.
            State::CloseSent { .. } => self.state = State::Done { deadline: now + settings.close_timeout },
            State::Done { .. } => {}
        }
        self.ending = Some(Ending::Failed(err));
    }

    /// Starts the close handshake with `code` and `reason` (truncated to fit a control frame). Does nothing if
    /// a close is already under way. After this, [`Connection::can_send`] is false.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.state != State::Open || self.close_out.is_some() {
            return;
        }
        self.close_out = Some(CloseFrame { code, reason: reason.to_string() });
        self.close_is_final = false;
        self.ending = Some(Ending::WeClosed(code));
        self.pong = None;
        self.ping_due = false;
    }

    /// Advances the timers: queues a ping after `ping_interval` of silence, closes with 1001 after
    /// `idle_timeout`, and ends a close handshake or linger whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant, settings: &ConnSettings) {
        match self.state {
            State::Open if self.close_out.is_none() => {
                if let Some(idle) = settings.idle_timeout {
                    if now >= self.last_input + idle {
                        self.close(CloseCode::GOING_AWAY, "idle timeout");
                        return;
                    }
                }
                if let Some(interval) = settings.ping_interval {
                    if now >= self.last_input.max(self.last_ping) + interval {
                        self.ping_due = true;
                        self.last_ping = now;
                    }
                }
            }
            State::Open => {}
            State::CloseSent { deadline } | State::Done { deadline } => {
                if now >= deadline {
                    self.state = State::Done { deadline: now };
                }
            }
        }
    }

    /// The next instant at which [`Connection::handle_timeout`] has work to do.
    pub fn poll_timeout(&self, settings: &ConnSettings) -> Option<Instant> {
        match self.state {
            State::Open => {
                let idle = settings.idle_timeout.map(|d| self.last_input + d);
                let ping = settings.ping_interval.map(|d| self.last_input.max(self.last_ping) + d);
                match (idle, ping) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::CloseSent { deadline } | State::Done { deadline } => Some(deadline),
        }
    }

    /// The next control frame to send, encoded for our role: the pending pong (only when `pong_room`, i.e. the
    /// caller's queue has room for it; otherwise it stays pending and a newer ping replaces it), a ping of
    /// ours, or our close frame. After the close frame is handed out nothing else is.
    #[must_use]
    pub fn poll_control(&mut self, now: Instant, settings: &ConnSettings, pong_room: bool) -> Option<Bytes> {
        if let Some(close) = self.close_out.take() {
            let mut payload = Vec::with_capacity(2 + close.reason.len());
            if close.code.0 != 0 {
                close.encode_payload(&mut payload);
            }
            self.state = if self.close_is_final {
                State::Done { deadline: now + settings.close_timeout }
            } else {
                State::CloseSent { deadline: now + settings.close_timeout }
            };
            return Some(self.encode(OpCode::Close, &payload));
        }
        if self.state != State::Open {
            return None;
        }
        if pong_room {
            if let Some(payload) = self.pong.take() {
                return Some(self.encode(OpCode::Pong, &payload));
            }
        }
        if self.ping_due {
            self.ping_due = false;
            return Some(self.encode(OpCode::Ping, b""));
        }
        None
    }

    fn encode(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        match self.role {
            Role::Server => frame::frame(opcode, payload),
            Role::Client => {
                let mut out = Vec::with_capacity(frame::header_len(payload.len(), true) + payload.len());
                frame::write_masked_frame(&mut out, true, opcode, payload, self.next_mask());
                Bytes::from(out)
            }
        }
    }

    /// A fresh masking key (client role).
    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_ne_bytes()
    }

    /// Whether data frames may still be queued to the peer (no close sent or pending).
    pub fn can_send(&self) -> bool {
        self.state == State::Open && self.close_out.is_none()
    }

    /// Whether a pong is waiting for room in the caller's queue.
    pub fn has_pending_control(&self) -> bool {
        self.close_out.is_some() || (self.state == State::Open && (self.pong.is_some() || self.ping_due))
    }

    /// Whether the handshake is over: the caller flushes what is queued, then shuts the socket down and drops
    /// it at EOF or at the deadline ([`Connection::is_expired`]).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { .. }) && self.close_out.is_none()
    }

    /// Whether the connection's last deadline (close wait or linger) has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.state, State::Done { deadline } if now >= deadline)
    }

    /// How the connection ended (or is ending), if it is.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// Whether a message is half-received (so the caller keeps its read buffer).
    pub fn is_receiving(&self) -> bool {
        !self.decoder.is_idle()
    }

    /// Bytes of memory held for the message being reassembled.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Changes the frame and message size limits for what is decoded from now on (a server keeps them small
    /// until the client has authenticated, then restores the configured ones).
    pub fn set_limits(&mut self, limits: DecodeLimits) {
        self.decoder.set_limits(limits);
    }
}

/// Inflates one compressed message into the [`Incoming`] it stands for.
fn inflate(
    inflater: Option<&mut Inflater>,
    payload: &[u8],
    text: bool,
    max: u64,
) -> Result<Option<Incoming>, ProtocolError> {
    let inflater = inflater.ok_or(ProtocolError::InvalidCompressed)?;
    let data = inflater.inflate(payload, max).map_err(|e| match e {
        InflateError::TooLarge { max } => ProtocolError::InflatedTooLarge { max },
        InflateError::Invalid => ProtocolError::InvalidCompressed,
    })?;
    if text {
        std::str::from_utf8(&data).map_err(|_| ProtocolError::InvalidUtf8)?;
        Ok(Some(Incoming::Text(Bytes::from(data))))
    } else {
        Ok(Some(Incoming::Binary(Bytes::from(data))))
    }
}

#[cfg(test)]
mod tests;
