//! One worker's topic index: topic -> local subscribers, what other workers hold, and this turn's frames.
//!
//! A publish is framed once into the topic's coalescing buffer (raw frames for `/sub` subscribers, JSON
//! envelope frames for `/ws` subscribers, each built only if some worker has such subscribers). At the end
//! of the loop turn, or when a buffer reaches `coalesce_limit`, [`TopicIndex::flush`] freezes each buffer into
//! one immutable `Bytes` and hands a reference of it to every local subscriber and to every other worker with
//! subscribers of that topic. Per subscriber that is a refcount bump: no copy, no allocation.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use slab::Slab;

use super::mesh::{Broadcast, MeshEnd};
use crate::control;
use crate::protocol::frame::{self, OpCode};

/// A connection's key in its worker's slab.
pub type ConnKey = usize;

/// A topic's key in one worker's index (meaningless on other workers).
pub type TopicId = usize;

/// Which framing a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// `/sub`: the publisher's exact payload and opcode.
    Raw,
    /// `/ws`: JSON envelopes.
    Json,
}

/// Where frames go: implemented by the worker over its connections.
pub trait Deliver {
    /// Queue `frames` (holding `messages` messages) to connection `key`.
    fn deliver(&mut self, key: ConnKey, frames: &Bytes, messages: u32);
}

/// Refusals from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The worker already holds `max_topics_per_worker` topics.
    #[error("too many topics on this worker")]
    TooManyTopics,
}

#[derive(Debug)]
struct RemoteCount {
    worker: usize,
    raw: u32,
    json: u32,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    raw: Vec<ConnKey>,
    json: Vec<ConnKey>,
    remote: Vec<RemoteCount>,
    pend_raw: BytesMut,
    pend_json: BytesMut,
    pend_msgs: u32,
    dirty: bool,
    /// Local counts last announced to the other workers.
    announced: (u32, u32),
    changed: bool,
}

impl Topic {
    fn remote_raw(&self) -> bool {
        self.remote.iter().any(|r| r.raw > 0)
    }
    fn remote_json(&self) -> bool {
        self.remote.iter().any(|r| r.json > 0)
    }
    fn is_unused(&self) -> bool {
        self.raw.is_empty() && self.json.is_empty() && self.remote.is_empty() && !self.dirty && self.announced == (0, 0)
    }
}

/// The per-worker topic index.
#[derive(Debug)]
pub struct TopicIndex {
    by_name: HashMap<Arc<str>, TopicId>,
    topics: Slab<Topic>,
    dirty: Vec<TopicId>,
    changed: Vec<TopicId>,
    max_topics: usize,
    coalesce_limit: usize,
    subscriptions: usize,
}

impl TopicIndex {
    /// An empty index holding at most `max_topics` topics with local subscribers, coalescing up to
    /// `coalesce_limit` bytes per topic per turn.
    pub fn new(max_topics: usize, coalesce_limit: usize) -> Self {
        TopicIndex {
            by_name: HashMap::new(),
            topics: Slab::new(),
            dirty: Vec::new(),
            changed: Vec::new(),
            max_topics,
            coalesce_limit,
            subscriptions: 0,
        }
    }

    /// Number of topics known (with local subscribers or remote interest).
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Number of local subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Gives back the room of topics that are gone once at most a quarter of it is in use (the worker calls
    /// this on its timer); returns the topic slots given back. Ids stay valid: the slab only drops vacant slots
    /// after the last live topic.
    pub fn shrink(&mut self) -> usize {
        let before = self.topics.capacity();
        if before > 64 && self.topics.len() <= before / 4 {
            self.topics.shrink_to_fit();
            self.by_name.shrink_to_fit();
            self.dirty.shrink_to_fit();
            self.changed.shrink_to_fit();
        }
        before - self.topics.capacity()
    }

    /// The id of `name`, if the worker knows it.
    pub fn lookup(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    fn intern(&mut self, name: &str) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.topics.insert(Topic {
            name: name.clone(),
            raw: Vec::new(),
            json: Vec::new(),
            remote: Vec::new(),
            pend_raw: BytesMut::new(),
            pend_json: BytesMut::new(),
            pend_msgs: 0,
            dirty: false,
            announced: (0, 0),
            changed: false,
        });
        self.by_name.insert(name, id);
        id
    }

    /// Adds `key` as a subscriber of `name`.
    pub fn subscribe(&mut self, name: &str, key: ConnKey, kind: SubKind) -> Result<TopicId, IndexError> {
        if !self.by_name.contains_key(name) && self.topics.len() >= self.max_topics {
            return Err(IndexError::TooManyTopics);
        }
        let id = self.intern(name);
        let topic = &mut self.topics[id];
        match kind {
            SubKind::Raw => topic.raw.push(key),
            SubKind::Json => topic.json.push(key),
        }
        self.subscriptions += 1;
        self.mark_changed(id);
        Ok(id)
    }

    /// Removes `key` from `id`'s subscribers (no-op if it is not one).
    pub fn unsubscribe(&mut self, id: TopicId, key: ConnKey, kind: SubKind) {
        let Some(topic) = self.topics.get_mut(id) else { return };
        let list = match kind {
            SubKind::Raw => &mut topic.raw,
            SubKind::Json => &mut topic.json,
        };
        if let Some(pos) = list.iter().position(|&k| k == key) {
            list.swap_remove(pos);
            self.subscriptions -= 1;
            self.mark_changed(id);
        }
    }

    fn mark_changed(&mut self, id: TopicId) {
        let topic = &mut self.topics[id];
        if !topic.changed {
            topic.changed = true;
            self.changed.push(id);
        }
    }

    /// Records a peer's subscriber counts for `name`.
    pub fn set_remote(&mut self, name: &str, worker: usize, raw: u32, json: u32) {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None if raw == 0 && json == 0 => return,
            None => self.intern(name),
        };
        let topic = &mut self.topics[id];
        match topic.remote.iter().position(|r| r.worker == worker) {
            Some(pos) if raw == 0 && json == 0 => {
                topic.remote.swap_remove(pos);
            }
            Some(pos) => {
                topic.remote[pos].raw = raw;
                topic.remote[pos].json = json;
            }
            None if raw == 0 && json == 0 => {}
            None => topic.remote.push(RemoteCount { worker, raw, json }),
        }
        // Let flush drop the topic if it is now unused.
        self.mark_changed(id);
    }

    /// Publishes one message to `name` from this worker. Returns the number of subscribers it will reach (local
    /// ones now, remote ones as last announced). Frames go out at the next [`TopicIndex::flush`], or at once
    /// if the topic's buffer reached the coalescing limit.
    pub fn publish(
        &mut self,
        name: &str,
        text: bool,
        payload: &[u8],
        json_data: Option<&serde_json::value::RawValue>,
        out: &mut impl Deliver,
        mesh: &mut MeshEnd,
    ) -> usize {
        let Some(&id) = self.by_name.get(name) else { return 0 };
        let topic = &mut self.topics[id];
        let wants_raw = !topic.raw.is_empty() || topic.remote_raw();
        let wants_json = !topic.json.is_empty() || topic.remote_json();
        if wants_raw {
            // A /ws publish reaches raw subscribers as the JSON text of its data.
            let (opcode, body) = match json_data {
                Some(data) => (OpCode::Text, data.get().as_bytes()),
                None => (if text { OpCode::Text } else { OpCode::Binary }, payload),
            };
            reserve_for(&mut topic.pend_raw, frame::header_len(body.len(), false) + body.len());
            frame::write_frame(&mut topic.pend_raw, opcode, body);
        }
        if wants_json {
            let mut envelope = Vec::with_capacity(payload.len() + topic.name.len() + 48);
            match json_data {
                Some(data) => control::write_envelope_json(&mut envelope, &topic.name, data),
                None if text => {
                    // The decoder checked text messages for UTF-8 already; a lossy view never changes them.
                    control::write_envelope_text(&mut envelope, &topic.name, &String::from_utf8_lossy(payload))
                }
                None => control::write_envelope_binary(&mut envelope, &topic.name, payload),
            }
            reserve_for(&mut topic.pend_json, frame::header_len(envelope.len(), false) + envelope.len());
            frame::write_frame(&mut topic.pend_json, OpCode::Text, &envelope);
        }
        let reached =
            topic.raw.len() + topic.json.len() + topic.remote.iter().map(|r| (r.raw + r.json) as usize).sum::<usize>();
        if wants_raw || wants_json {
            topic.pend_msgs += 1;
            if !topic.dirty {
                topic.dirty = true;
                self.dirty.push(id);
            }
            if topic.pend_raw.len() >= self.coalesce_limit || topic.pend_json.len() >= self.coalesce_limit {
                Self::flush_topic(topic, out, mesh);
            }
        }
        reached
    }

    fn flush_topic(topic: &mut Topic, out: &mut impl Deliver, mesh: &mut MeshEnd) {
        if topic.pend_msgs == 0 {
            return;
        }
        let messages = std::mem::take(&mut topic.pend_msgs);
        let raw = (!topic.pend_raw.is_empty()).then(|| std::mem::take(&mut topic.pend_raw).freeze());
        let json = (!topic.pend_json.is_empty()).then(|| std::mem::take(&mut topic.pend_json).freeze());
        if let Some(raw) = &raw {
            for &key in &topic.raw {
                out.deliver(key, raw, messages);
            }
        }
        if let Some(json) = &json {
            for &key in &topic.json {
                out.deliver(key, json, messages);
            }
        }
        for r in &topic.remote {
            let batch = Broadcast {
                topic: topic.name.clone(),
                raw: if r.raw > 0 { raw.clone() } else { None },
                json: if r.json > 0 { json.clone() } else { None },
                messages,
            };
            if batch.raw.is_some() || batch.json.is_some() {
                mesh.send_broadcast(r.worker, batch);
            }
        }
    }

    /// Delivers a batch from another worker to the local subscribers.
    pub fn deliver_remote(&mut self, batch: &Broadcast, out: &mut impl Deliver) {
        let Some(&id) = self.by_name.get(&*batch.topic) else { return };
        let topic = &self.topics[id];
        if let Some(raw) = &batch.raw {
            for &key in &topic.raw {
                out.deliver(key, raw, batch.messages);
            }
        }
        if let Some(json) = &batch.json {
            for &key in &topic.json {
                out.deliver(key, json, batch.messages);
            }
        }
    }

    /// End of turn: sends every topic's coalesced frames, announces changed subscriber counts to the other
    /// workers, and forgets topics nobody uses any more.
    pub fn flush(&mut self, out: &mut impl Deliver, mesh: &mut MeshEnd) {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(topic) = self.topics.get_mut(id) {
                topic.dirty = false;
                Self::flush_topic(topic, out, mesh);
            }
        }
        for id in std::mem::take(&mut self.changed) {
            let Some(topic) = self.topics.get_mut(id) else { continue };
            topic.changed = false;
            let now = (topic.raw.len() as u32, topic.json.len() as u32);
            if now != topic.announced {
                topic.announced = now;
                mesh.announce(&topic.name, now.0, now.1);
            }
            if topic.is_unused() {
                let topic = self.topics.remove(id);
                self.by_name.remove(&topic.name);
            }
        }
    }
}

/// Grows a coalescing buffer for `need` more bytes, starting small so idle topics hold nothing.
fn reserve_for(buf: &mut BytesMut, need: usize) {
    if buf.capacity() - buf.len() < need {
        buf.reserve(need.max(4096).max(buf.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::mesh::{inboxes, MeshMsg};

    #[derive(Default)]
    struct Sink(Vec<(ConnKey, Bytes, u32)>);
    impl Deliver for Sink {
        fn deliver(&mut self, key: ConnKey, frames: &Bytes, messages: u32) {
            self.0.push((key, frames.clone(), messages));
        }
    }

    fn mesh(n: usize, me: usize) -> (Vec<mio::Poll>, MeshEnd, Vec<crate::broker::mesh::Inbox>) {
        let polls: Vec<mio::Poll> = (0..n).map(|_| mio::Poll::new().expect("poll")).collect();
        let wakers =
            polls.iter().map(|p| Arc::new(mio::Waker::new(p.registry(), mio::Token(0)).expect("waker"))).collect();
        let (handles, inboxes) = inboxes(wakers, 16);
        (polls, MeshEnd::new(me, handles), inboxes)
    }

    #[test]
    fn one_turn_of_publishes_is_one_shared_buffer_per_subscriber() {
        let (_p, mut mesh, _in) = mesh(1, 0);
        let mut index = TopicIndex::new(10, 64 * 1024);
        for key in 0..3 {
            index.subscribe("t", key, SubKind::Raw).expect("room");
        }
        let mut sink = Sink::default();
        for i in 0..10u8 {
            assert_eq!(index.publish("t", false, &[i; 64], None, &mut sink, &mut mesh), 3);
        }
        assert!(sink.0.is_empty(), "nothing goes out before the end of the turn");
        index.flush(&mut sink, &mut mesh);
        assert_eq!(sink.0.len(), 3, "one delivery per subscriber");
        let first = &sink.0[0].1;
        assert_eq!(first.len(), 10 * 66);
        assert_eq!(sink.0[0].2, 10);
        for (_, b, _) in &sink.0 {
            assert_eq!(b.as_ptr(), first.as_ptr(), "the same bytes, not copies");
        }
        assert_eq!(&first[..2], &[0x82, 64]);
    }

    #[test]
    fn a_full_coalescing_buffer_is_sent_at_once() {
        let (_p, mut mesh, _in) = mesh(1, 0);
        let mut index = TopicIndex::new(10, 1000);
        index.subscribe("t", 7, SubKind::Raw).expect("room");
        let mut sink = Sink::default();
        for _ in 0..20 {
            index.publish("t", true, &[b'a'; 98], None, &mut sink, &mut mesh);
        }
        assert_eq!(sink.0.len(), 2, "every 10 frames of 100 bytes fill the 1000-byte buffer");
        index.flush(&mut sink, &mut mesh);
        assert_eq!(sink.0.len(), 2, "nothing left");
    }

    #[test]
    fn topic_limit_refuses_new_topics_only() {
        let mut index = TopicIndex::new(1, 1024);
        index.subscribe("a", 1, SubKind::Raw).expect("first topic");
        assert_eq!(index.subscribe("b", 1, SubKind::Raw), Err(IndexError::TooManyTopics));
        assert!(index.subscribe("a", 2, SubKind::Json).is_ok(), "an existing topic takes more subscribers");
    }

    #[test]
    fn json_subscribers_get_envelopes_and_raw_ones_the_payload() {
        let (_p, mut mesh, _in) = mesh(1, 0);
        let mut index = TopicIndex::new(10, 1 << 16);
        index.subscribe("t", 1, SubKind::Raw).expect("room");
        index.subscribe("t", 2, SubKind::Json).expect("room");
        let mut sink = Sink::default();
        index.publish("t", true, b"hi", None, &mut sink, &mut mesh);
        index.flush(&mut sink, &mut mesh);
        let raw = &sink.0.iter().find(|d| d.0 == 1).expect("raw delivery").1;
        let json = &sink.0.iter().find(|d| d.0 == 2).expect("json delivery").1;
        assert_eq!(&raw[..], b"\x81\x02hi");
        let v: serde_json::Value = serde_json::from_slice(&json[2..]).expect("envelope is JSON");
        assert_eq!(v, serde_json::json!({"type":"message","topic":"t","data":"hi"}));
    }

    #[test]
    fn batches_go_to_workers_that_announced_interest_and_unused_topics_are_forgotten() {
        let (_p, mut mesh0, inboxes) = mesh(2, 0);
        let mut index = TopicIndex::new(10, 1 << 16);
        let mut sink = Sink::default();
        assert_eq!(index.publish("t", true, b"x", None, &mut sink, &mut mesh0), 0, "unknown topic reaches no one");
        index.set_remote("t", 1, 2, 0);
        assert_eq!(index.publish("t", true, b"x", None, &mut sink, &mut mesh0), 2);
        index.flush(&mut sink, &mut mesh0);
        match inboxes[1].try_recv() {
            Some(MeshMsg::Broadcast(b)) => {
                assert_eq!(b.raw.as_deref(), Some(&b"\x81\x01x"[..]));
                assert!(b.json.is_none(), "no JSON subscribers anywhere: no envelope built");
            }
            other => panic!("expected a broadcast, got {other:?}"),
        }
        index.set_remote("t", 1, 0, 0);
        index.flush(&mut sink, &mut mesh0);
        assert_eq!(index.topics(), 0);
    }
}
