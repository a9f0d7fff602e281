//! What upgraded connections do with the messages they receive: echo them (`/echo`), publish them (`/pub`),
//! ignore them (`/sub`), or read them as JSON control requests (`/ws`).

use bytes::Bytes;

use super::conn::{Conn, Endpoint, Phase};
use super::worker::{mark_dirty, Sink, Worker};
use crate::broker::index::{ConnKey, IndexError, SubKind};
use crate::broker::topic;
use crate::control::{self, ControlRequest};
use crate::metrics::Metric;
use crate::protocol::auth::session::{self, subject_hash, AuthMessage};
use crate::protocol::auth::{AuthError, Authenticated, ConnAuth, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED};
use crate::protocol::close::CloseCode;
use crate::protocol::conn::{Event, Message};
use crate::protocol::frame::{self, OpCode};

/// Payloads up to this size are echoed in one copied buffer; larger ones as a header plus the shared payload.
const COPY_ECHO_MAX: usize = 1024;

impl Worker {
    /// Decodes and acts on every complete message in the read buffer.
    pub(super) fn process_ws(&mut self, key: ConnKey) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Conn { phase: Phase::WebSocket { core, endpoint }, rbuf, .. } = conn else { return };
            let inflater = core.deflate_window().map(|_| self.deflate.inflater());
            let msg = match core.poll_message_inflating(self.now, &self.settings, rbuf, inflater) {
                None => break,
                Some(Event::Control) => {
                    self.pump_control(key);
                    continue;
                }
                Some(Event::Message(msg)) => msg,
            };
            self.metrics.inc(Metric::MessagesIn);
            if !matches!(conn.auth, ConnAuth::Off) {
                // Auth in force: the auth message comes first, a lapsed token acts on nothing, and an auth
                // message on a raw endpoint is a refresh, not a payload.
                if !conn.auth.is_open() {
                    self.first_auth(key, &msg);
                    continue;
                }
                if !core.can_send() || conn.auth.lapsed(self.now, self.unix).is_some() {
                    continue;
                }
                if !matches!(endpoint, Endpoint::Json(_)) {
                    if let Some(am) = auth_message(&msg) {
                        if let Err(reason) = self.refresh(key, &am.token) {
                            self.close_ws(key, CLOSE_UNAUTHORIZED, reason);
                        }
                        continue;
                    }
                }
            }
            match endpoint {
                Endpoint::Echo => {
                    match core.deflate_window() {
                        Some(bits) => {
                            let frame = self.deflate.frame_for(msg.opcode(), msg.payload(), bits, &mut self.metrics);
                            conn.outbox.push(frame);
                        }
                        None => echo(&mut conn.outbox, &msg),
                    }
                    self.metrics.inc(Metric::MessagesOut);
                    mark_dirty(conn, key, &mut self.dirty);
                }
                Endpoint::Sub(_) | Endpoint::SubPending(_) => {}
                Endpoint::Pub(topic) => {
                    let topic = topic.clone();
                    self.metrics.inc(Metric::Publishes);
                    let text = matches!(msg, Message::Text(_));
                    if self.publish(&topic, text, msg.payload(), None).is_err() {
                        self.close_ws(key, crate::cluster::CLOSE_OVERLOADED, "cluster queue full");
                    }
                }
                Endpoint::Json(_) => self.handle_json(key, msg),
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            // A pending pong or close to send, or a close handshake just completed (the socket can go).
            if conn.core().is_some_and(|c| c.has_pending_control() || c.is_done()) {
                mark_dirty(conn, key, &mut self.dirty);
            }
        }
    }

    /// Publishes one message from this worker (and, with `[cluster]`, to the other nodes); returns the local
    /// subscribers it reaches. Refused, and not delivered at all, when the queue to Redis is full and
    /// `cluster.on_overflow = "reject"`.
    pub(super) fn publish(
        &mut self,
        topic: &str,
        text: bool,
        payload: &[u8],
        json: Option<&serde_json::value::RawValue>,
    ) -> Result<usize, crate::cluster::Overflow> {
        use crate::cluster::Kind;
        let kind = if json.is_some() {
            Kind::Json
        } else if text {
            Kind::Text
        } else {
            Kind::Binary
        };
        crate::cluster::offer(&mut self.mesh, &mut self.metrics, topic, kind, payload)?;
        let mut sink =
            Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits, &mut self.deflate);
        Ok(self.index.publish(topic, text, payload, json, &mut sink, &mut self.mesh))
    }

    fn handle_json(&mut self, key: ConnKey, msg: Message) {
        let mut reply = Vec::with_capacity(64);
        match msg {
            Message::Binary(_) => {
                control::write_error(&mut reply, None, "invalid_request", "binary messages are not understood on /ws")
            }
            Message::Text(text) => match control::parse_request(&text, self.cfg.limits.max_json_depth) {
                Err(e) => {
                    if e.too_deep {
                        self.metrics.inc(Metric::JsonDepthLimit);
                    }
                    control::write_error(&mut reply, e.id.as_deref(), e.code, &e.message)
                }
                Ok(ControlRequest::Subscribe { topic, token, id }) => {
                    match self.authorize(key, Action::Subscribe, &topic, token.as_deref()) {
                        Ok(()) => match self.json_subscribe(key, &topic) {
                            Ok(()) => control::write_ack(&mut reply, id.as_deref()),
                            Err((code, message)) => control::write_error(&mut reply, id.as_deref(), code, message),
                        },
                        Err((code, message)) => control::write_error(&mut reply, id.as_deref(), code, message),
                    }
                }
                Ok(ControlRequest::Auth { token, id }) => match self.refresh(key, &token) {
                    Ok(()) => control::write_ack(&mut reply, id.as_deref()),
                    Err(message) => control::write_error(&mut reply, id.as_deref(), "unauthorized", message),
                },
                Ok(ControlRequest::Unsubscribe { topic, id }) => {
                    self.json_unsubscribe(key, &topic);
                    control::write_ack(&mut reply, id.as_deref());
                }
                Ok(ControlRequest::Publish { topic, data, token, id }) => match topic::validate(&topic) {
                    Err(e) => control::write_error(&mut reply, id.as_deref(), "invalid_topic", &e.to_string()),
                    Ok(name) => match self.authorize(key, Action::Publish, name, token.as_deref()) {
                        Ok(()) => {
                            self.metrics.inc(Metric::Publishes);
                            match self.publish(name, true, data.get().as_bytes(), Some(&data)) {
                                Ok(_) => control::write_ack(&mut reply, id.as_deref()),
                                Err(e) => control::write_error(&mut reply, id.as_deref(), "overloaded", &e.to_string()),
                            }
                        }
                        Err((code, message)) => control::write_error(&mut reply, id.as_deref(), code, message),
                    },
                },
            },
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.can_send() {
            conn.outbox.push(frame::frame(OpCode::Text, &reply));
            self.metrics.inc(Metric::MessagesOut);
            mark_dirty(conn, key, &mut self.dirty);
        }
    }

    /// The first message while awaiting auth (message mode): a valid auth message opens the connection (and a
    /// pending `/sub` subscription); anything else, or a bad token, closes it with 4401.
    fn first_auth(&mut self, key: ConnKey, msg: &Message) {
        let Some(am) = auth_message(msg) else {
            self.metrics.inc(Metric::AuthUnauthorized);
            self.close_ws(key, CLOSE_UNAUTHORIZED, "auth message required first");
            return;
        };
        let authed = match self.verify_token(&am.token, self.unix) {
            Ok(ok) => ok,
            Err(e) => {
                self.metrics.inc(Metric::AuthUnauthorized);
                self.close_ws(key, CLOSE_UNAUTHORIZED, e.description());
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::WebSocket { endpoint, core } = &mut conn.phase else { return };
        let allowed = match endpoint {
            Endpoint::SubPending(t) => authed.grants.may_subscribe(t),
            Endpoint::Pub(t) => authed.grants.may_publish(t),
            _ => true,
        };
        if !allowed {
            self.metrics.inc(Metric::AuthForbidden);
            self.close_ws(key, CLOSE_FORBIDDEN, "topic not allowed");
            return;
        }
        tracing::debug!(worker = self.id, key, sub = authed.subject.as_deref(), "authenticated by message");
        self.metrics.inc(Metric::AuthOk);
        core.set_limits(self.settings.limits);
        conn.auth = authed.into_conn_auth();
        match endpoint {
            Endpoint::SubPending(t) => {
                let t = t.clone();
                match self.index.subscribe(&t, key, SubKind::Raw) {
                    Ok(sub) => {
                        if let Some(Conn { phase: Phase::WebSocket { endpoint, .. }, .. }) = self.conns.get_mut(key) {
                            *endpoint = Endpoint::Sub(sub);
                        }
                    }
                    // A /sub connection subscribes once in its life: the new-topic rate never applies to it.
                    Err(IndexError::TooManyTopics | IndexError::RateLimited) => {
                        self.metrics.inc(Metric::TopicLimit);
                        self.close_ws(key, CloseCode::POLICY.0, "too many topics on this worker");
                    }
                }
            }
            Endpoint::Json(_) => {
                let mut reply = Vec::with_capacity(32);
                control::write_ack(&mut reply, am.id.as_deref());
                self.send_reply(key, &reply);
            }
            _ => {}
        }
    }

    /// A fresh token for an authenticated connection: it must verify, and name the same subject; its expiry
    /// and grants then replace the old ones. Returns the reason on failure.
    fn refresh(&mut self, key: ConnKey, token: &str) -> Result<(), &'static str> {
        let verified = self.verify_token(token, self.unix);
        let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
        let authed = match verified {
            Ok(ok) => ok,
            Err(_) if matches!(conn.auth, ConnAuth::Off) => return Ok(()), // auth is off: nothing to refresh
            Err(e) => {
                self.metrics.inc(Metric::AuthUnauthorized);
                return Err(e.description());
            }
        };
        match &mut conn.auth {
            ConnAuth::Off | ConnAuth::Awaiting { .. } => {}
            ConnAuth::Granted { subject, .. } => {
                if *subject != subject_hash(authed.subject.as_deref()) {
                    self.metrics.inc(Metric::AuthUnauthorized);
                    return Err("a refresh must name the same subject");
                }
                conn.auth = authed.into_conn_auth();
            }
            ConnAuth::PerMessage { .. } => {
                conn.auth.remember(token.as_bytes(), authed.grants.clone(), authed.expires);
                if let ConnAuth::PerMessage { expires, .. } = &mut conn.auth {
                    *expires = authed.expires;
                }
            }
        }
        self.metrics.inc(Metric::AuthOk);
        Ok(())
    }

    /// Whether this `/ws` connection may do `action` on `topic`: always with auth off; by its grants when it
    /// authenticated as a whole; by the request's own token in per-message mode (cached by its bytes).
    fn authorize(
        &mut self,
        key: ConnKey,
        action: Action,
        topic: &str,
        token: Option<&str>,
    ) -> Result<(), (&'static str, &'static str)> {
        let unix = self.unix;
        let Some(conn) = self.conns.get_mut(key) else { return Err(("internal", "no connection")) };
        let (grants, expires) = match &conn.auth {
            ConnAuth::Off => return Ok(()),
            ConnAuth::Awaiting { .. } => return Err(("unauthorized", "auth message required first")),
            ConnAuth::Granted { grants, expires, .. } => (grants.clone(), u64::from(*expires)),
            ConnAuth::PerMessage { .. } => {
                let Some(token) = token else {
                    self.metrics.inc(Metric::AuthUnauthorized);
                    return Err(("unauthorized", "this request needs a token"));
                };
                if let Some(hit) = conn.auth.cached(token.as_bytes(), unix) {
                    self.metrics.inc(Metric::AuthCacheHits);
                    hit
                } else {
                    let authed = self.verify_token(token, unix).map_err(|e| {
                        self.metrics.inc(Metric::AuthUnauthorized);
                        ("unauthorized", e.description())
                    })?;
                    self.metrics.inc(Metric::AuthOk);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.auth.remember(token.as_bytes(), authed.grants.clone(), authed.expires);
                    }
                    (authed.grants, authed.expires)
                }
            }
        };
        let allowed = match action {
            Action::Subscribe => grants.may_subscribe(topic),
            Action::Publish => grants.may_publish(topic),
        };
        if !allowed {
            self.metrics.inc(Metric::AuthForbidden);
            return Err(("forbidden", "topic not allowed"));
        }
        if action == Action::Subscribe {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.auth.hold_until(expires);
            }
        }
        Ok(())
    }

    /// Verifies a token through the worker's cache, counting cache hits.
    fn verify_token(&mut self, token: &str, unix: u64) -> Result<Authenticated, AuthError> {
        let authed = self.auth.verify(token, unix, &mut self.auth_mem)?;
        if authed.cached {
            self.metrics.inc(Metric::AuthTokenCacheHits);
        }
        Ok(authed)
    }

    /// Closes a WebSocket with `code` and `reason` (the core sends the frame; the socket goes after the reply).
    fn close_ws(&mut self, key: ConnKey, code: u16, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Phase::WebSocket { core, .. } = &mut conn.phase {
            core.close(CloseCode(code), reason);
            mark_dirty(conn, key, &mut self.dirty);
        }
    }

    /// Queues one `/ws` reply.
    fn send_reply(&mut self, key: ConnKey, reply: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.can_send() {
            conn.outbox.push(frame::frame(OpCode::Text, reply));
            self.metrics.inc(Metric::MessagesOut);
            mark_dirty(conn, key, &mut self.dirty);
        }
    }

    /// Subscribes a `/ws` connection to `name`: idempotent; refused past `max_subscriptions`, past
    /// `max_topics_per_worker`, or when the topic is new to the worker and the connection is past its
    /// new-topic rate.
    fn json_subscribe(&mut self, key: ConnKey, name: &str) -> Result<(), (&'static str, &'static str)> {
        let name = topic::validate(name)
            .map_err(|_| ("invalid_topic", "topic names are 1 to 128 bytes of A-Z a-z 0-9 . _ : -"))?;
        let limits = &self.cfg.limits;
        let (max, per_second, burst) = (
            limits.max_subscriptions,
            u32::try_from(limits.max_new_topics_per_second).unwrap_or(u32::MAX),
            u32::try_from(limits.new_topics_burst).unwrap_or(u32::MAX),
        );
        let now = self.now;
        let existing = self.index.lookup(name);
        let Some(Conn { phase: Phase::WebSocket { endpoint: Endpoint::Json(json), .. }, .. }) = self.conns.get_mut(key)
        else {
            return Err(("internal", "not a /ws connection"));
        };
        if existing.is_some_and(|id| json.subs.iter().any(|&s| self.index.topic_of(s) == Some(id))) {
            return Ok(()); // already subscribed: idempotent
        }
        if json.subs.len() >= max {
            self.metrics.inc(Metric::SubscriptionLimit);
            return Err(("too_many_subscriptions", "max_subscriptions reached for this connection"));
        }
        let pace = &mut json.new_topics;
        match self.index.subscribe_with(name, key, SubKind::Json, || pace.admit(now, per_second, burst)) {
            Ok(sub) => {
                json.subs.push(sub);
                Ok(())
            }
            Err(IndexError::TooManyTopics) => {
                self.metrics.inc(Metric::TopicLimit);
                Err(("too_many_topics", "max_topics_per_worker reached"))
            }
            Err(IndexError::RateLimited) => {
                self.metrics.inc(Metric::NewTopicRateLimit);
                Err(("rate_limited", "new topics past max_new_topics_per_second for this connection"))
            }
        }
    }

    fn json_unsubscribe(&mut self, key: ConnKey, name: &str) {
        let Some(id) = self.index.lookup(name) else { return };
        let Some(Conn { phase: Phase::WebSocket { endpoint: Endpoint::Json(json), .. }, .. }) = self.conns.get_mut(key)
        else {
            return;
        };
        let Some(pos) = json.subs.iter().position(|&s| self.index.topic_of(s) == Some(id)) else { return };
        let sub = json.subs.swap_remove(pos);
        self.index.unsubscribe(sub, key);
    }
}

/// What a `/ws` request wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Subscribe,
    Publish,
}

/// The auth message in `msg`, if it is one.
fn auth_message(msg: &Message) -> Option<AuthMessage> {
    match msg {
        Message::Text(t) => session::parse_auth_message(t),
        Message::Binary(_) => None,
    }
}

/// Queues the echo of `msg`: small payloads copied into one frame, large ones as header + shared payload.
fn echo(outbox: &mut super::outbox::Outbox, msg: &Message) {
    let payload = msg.payload();
    if payload.len() <= COPY_ECHO_MAX {
        outbox.push(frame::frame(msg.opcode(), payload));
    } else {
        let mut header = Vec::with_capacity(frame::MAX_HEADER_LEN);
        frame::write_header(&mut header, true, msg.opcode(), payload.len(), None);
        outbox.push(Bytes::from(header));
        outbox.push(payload.clone());
    }
}
