//! What upgraded connections do with the messages they receive: echo them (`/echo`), publish them (`/pub`),
//! ignore them (`/sub`), or read them as JSON control requests (`/ws`).

use bytes::Bytes;

use super::conn::{Conn, Endpoint, Phase};
use super::worker::{mark_dirty, Sink, Worker};
use crate::broker::index::{ConnKey, IndexError, SubKind, TopicId};
use crate::broker::topic;
use crate::control::{self, ControlRequest};
use crate::metrics::Metric;
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
            let msg = match core.poll_message(self.now, &self.settings, rbuf) {
                None => break,
                Some(Event::Control) => {
                    self.pump_control(key);
                    continue;
                }
                Some(Event::Message(msg)) => msg,
            };
            self.metrics.inc(Metric::MessagesIn);
            match endpoint {
                Endpoint::Echo => {
                    echo(&mut conn.outbox, &msg);
                    self.metrics.inc(Metric::MessagesOut);
                    mark_dirty(conn, key, &mut self.dirty);
                }
                Endpoint::Sub(_) => {}
                Endpoint::Pub(topic) => {
                    let topic = topic.clone();
                    self.metrics.inc(Metric::Publishes);
                    let text = matches!(msg, Message::Text(_));
                    self.publish(&topic, text, msg.payload(), None);
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

    /// Publishes one message from this worker; returns the subscribers it reaches.
    pub(super) fn publish(
        &mut self,
        topic: &str,
        text: bool,
        payload: &[u8],
        json: Option<&serde_json::value::RawValue>,
    ) -> usize {
        let mut sink = Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits);
        self.index.publish(topic, text, payload, json, &mut sink, &mut self.mesh)
    }

    fn handle_json(&mut self, key: ConnKey, msg: Message) {
        let mut reply = Vec::with_capacity(64);
        match msg {
            Message::Binary(_) => {
                control::write_error(&mut reply, None, "invalid_request", "binary messages are not understood on /ws")
            }
            Message::Text(text) => match control::parse_request(&text) {
                Err(e) => control::write_error(&mut reply, e.id.as_deref(), e.code, &e.message),
                Ok(ControlRequest::Subscribe { topic, id }) => match self.json_subscribe(key, &topic) {
                    Ok(()) => control::write_ack(&mut reply, id.as_deref()),
                    Err((code, message)) => control::write_error(&mut reply, id.as_deref(), code, message),
                },
                Ok(ControlRequest::Unsubscribe { topic, id }) => {
                    self.json_unsubscribe(key, &topic);
                    control::write_ack(&mut reply, id.as_deref());
                }
                Ok(ControlRequest::Publish { topic, data, id }) => match topic::validate(&topic) {
                    Err(e) => control::write_error(&mut reply, id.as_deref(), "invalid_topic", &e.to_string()),
                    Ok(name) => {
                        self.metrics.inc(Metric::Publishes);
                        self.publish(name, true, data.get().as_bytes(), Some(&data));
                        control::write_ack(&mut reply, id.as_deref());
                    }
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

    fn json_topics(&mut self, key: ConnKey) -> Option<&mut Vec<TopicId>> {
        match &mut self.conns.get_mut(key)?.phase {
            Phase::WebSocket { endpoint: Endpoint::Json(topics), .. } => Some(topics),
            _ => None,
        }
    }

    fn json_subscribe(&mut self, key: ConnKey, name: &str) -> Result<(), (&'static str, &'static str)> {
        let name = topic::validate(name)
            .map_err(|_| ("invalid_topic", "topic names are 1 to 128 bytes of A-Z a-z 0-9 . _ : -"))?;
        let existing = self.index.lookup(name);
        let max = self.cfg.limits.max_subscriptions;
        let topics = self.json_topics(key).ok_or(("internal", "not a /ws connection"))?;
        if existing.is_some_and(|id| topics.contains(&id)) {
            return Ok(()); // already subscribed: idempotent
        }
        if topics.len() >= max {
            self.metrics.inc(Metric::SubscriptionLimit);
            return Err(("too_many_subscriptions", "max_subscriptions reached for this connection"));
        }
        match self.index.subscribe(name, key, SubKind::Json) {
            Ok(id) => {
                if let Some(topics) = self.json_topics(key) {
                    topics.push(id);
                }
                Ok(())
            }
            Err(IndexError::TooManyTopics) => {
                self.metrics.inc(Metric::TopicLimit);
                Err(("too_many_topics", "max_topics_per_worker reached"))
            }
        }
    }

    fn json_unsubscribe(&mut self, key: ConnKey, name: &str) {
        let Some(id) = self.index.lookup(name) else { return };
        let Some(topics) = self.json_topics(key) else { return };
        if let Some(pos) = topics.iter().position(|&t| t == id) {
            topics.swap_remove(pos);
            self.index.unsubscribe(id, key, SubKind::Json);
        }
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
