//! One worker's topic index: topic -> local subscribers, what other workers hold, and this turn's frames.
//!
//! A publish is framed once into the topic's coalescing buffer (raw frames for `/sub` subscribers, JSON
//! envelope frames for `/ws` subscribers, each built only if some worker has such subscribers). At the end
//! of the loop turn, or when a buffer reaches `coalesce_limit`, [`TopicIndex::flush`] freezes each buffer into
//! one immutable `Bytes` and hands a reference of it to every local subscriber and to every other worker with
//! subscribers of that topic. Per subscriber that is a refcount bump: no copy, no allocation. Subscribers that
//! negotiated permessage-deflate get a compressed form of the same frames, made by the deliverer once per batch
//! on this worker ([`Batch`]); other workers get the plain frames and compress them once for theirs.
//!
//! The index holds two kinds of topics: those with local subscribers (counted, and capped by
//! `max_topics_per_worker`) and those only other workers' clients use (known from their interest
//! announcements, so that publishes here reach them; bounded by the other workers' caps).
//!
//! Every subscription has a [`SubId`] that records where it sits in its topic's subscriber list; removing one
//! is a swap-remove that updates the moved entry's record, O(1) however many subscribers the topic has.

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

/// A subscription's key in one worker's index: what a connection keeps to unsubscribe in O(1).
pub type SubId = u32;

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

    /// Queue one form of `batch` to `key`: the plain frames by default. A deliverer that knows which
    /// connections negotiated permessage-deflate gives those the compressed form instead, made on first need
    /// and kept in `batch` for the other subscribers of the same batch (compressed once per batch per worker).
    fn deliver_batch(&mut self, key: ConnKey, batch: &mut Batch<'_>, messages: u32) {
        self.deliver(key, batch.plain, messages);
    }
}

/// One topic's frozen frames on their way to the local subscribers, and the compressed forms made of them so
/// far, one per compressor window (almost always one; none until a subscriber that negotiated compression).
#[derive(Debug)]
pub struct Batch<'a> {
    /// The frames as framed, uncompressed.
    pub plain: &'a Bytes,
    /// `(window bits, compressed frames)` made so far.
    pub deflated: Vec<(u8, Bytes)>,
}

impl<'a> Batch<'a> {
    /// A batch of `plain` frames with no compressed form yet.
    pub fn new(plain: &'a Bytes) -> Self {
        Batch { plain, deflated: Vec::new() }
    }
}

/// Refusals from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The worker already holds `max_topics_per_worker` topics with local subscribers (or, far beyond any
    /// memory, its 2^31 subscription ids are all in use).
    #[error("too many topics on this worker")]
    TooManyTopics,
    /// The subscription would create a topic new to this worker, and the caller's rate refused it.
    #[error("new topics are being created too fast")]
    RateLimited,
}

/// One entry of a topic's subscriber list: the connection, and the subscription that points back here.
#[derive(Debug, Clone, Copy)]
struct Member {
    key: u32,
    sub: SubId,
}

/// Where a subscription sits: its topic and its position in that topic's raw or JSON list (the top bit of
/// `pos` says which). A free record holds `topic == FREE` and the next free id in `pos`.
#[derive(Debug, Clone, Copy)]
struct SubRec {
    topic: u32,
    pos: u32,
}

const FREE: u32 = u32::MAX;
const JSON_BIT: u32 = 1 << 31;
/// End of the free list.
const NO_FREE: u32 = u32::MAX;

impl SubRec {
    fn kind(self) -> SubKind {
        if self.pos & JSON_BIT != 0 {
            SubKind::Json
        } else {
            SubKind::Raw
        }
    }
    fn slot(self) -> usize {
        (self.pos & !JSON_BIT) as usize
    }
    fn at(topic: u32, kind: SubKind, slot: usize) -> SubRec {
        let bit = if kind == SubKind::Json { JSON_BIT } else { 0 };
        // Slots stay below 2^31: a list has one entry per connection of the worker (bounded by descriptors).
        SubRec { topic, pos: slot as u32 | bit }
    }
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
    raw: Vec<Member>,
    json: Vec<Member>,
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
    fn has_local(&self) -> bool {
        !self.raw.is_empty() || !self.json.is_empty()
    }
    fn list(&mut self, kind: SubKind) -> &mut Vec<Member> {
        match kind {
            SubKind::Raw => &mut self.raw,
            SubKind::Json => &mut self.json,
        }
    }
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
    /// Every subscription's place, indexed by [`SubId`]; free records form a list from `free`.
    subs: Vec<SubRec>,
    free: u32,
    max_topics: usize,
    coalesce_limit: usize,
    subscriptions: usize,
    /// Topics with at least one local subscriber: what `max_topics_per_worker` caps.
    local_topics: usize,
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
            subs: Vec::new(),
            free: NO_FREE,
            max_topics,
            coalesce_limit,
            subscriptions: 0,
            local_topics: 0,
        }
    }

    /// Number of topics with local subscribers (what `max_topics_per_worker` caps).
    pub fn topics(&self) -> usize {
        self.local_topics
    }

    /// Number of topics known: with local subscribers, or used only by other workers' clients.
    pub fn known_topics(&self) -> usize {
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

    /// The topic of subscription `sub`, if it is live.
    pub fn topic_of(&self, sub: SubId) -> Option<TopicId> {
        self.subs.get(sub as usize).filter(|r| r.topic != FREE).map(|r| r.topic as usize)
    }

    /// Whether a subscription to `name` would add a topic with local subscribers (one the cap and the
    /// new-topic rate count): the worker does not know it, or knows it only from other workers.
    pub fn is_new_here(&self, name: &str) -> bool {
        self.by_name.get(name).is_none_or(|&id| !self.topics[id].has_local())
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
    pub fn subscribe(&mut self, name: &str, key: ConnKey, kind: SubKind) -> Result<SubId, IndexError> {
        self.subscribe_with(name, key, kind, || true)
    }

    /// Adds `key` as a subscriber of `name`; when that adds a topic with local subscribers, the cap must have
    /// room and then `admit_new` must agree (a rate limit), else nothing changes.
    pub fn subscribe_with(
        &mut self,
        name: &str,
        key: ConnKey,
        kind: SubKind,
        admit_new: impl FnOnce() -> bool,
    ) -> Result<SubId, IndexError> {
        let new_here = self.is_new_here(name);
        if new_here && self.local_topics >= self.max_topics {
            return Err(IndexError::TooManyTopics);
        }
        let key = u32::try_from(key).map_err(|_| IndexError::TooManyTopics)?;
        if self.free == NO_FREE && self.subs.len() >= JSON_BIT as usize {
            return Err(IndexError::TooManyTopics);
        }
        if new_here && !admit_new() {
            return Err(IndexError::RateLimited);
        }
        let id = self.intern(name);
        let Some(topic_u32) = u32::try_from(id).ok().filter(|&t| t != FREE) else {
            self.mark_changed(id); // the flush forgets it again
            return Err(IndexError::TooManyTopics);
        };
        let sub = match self.free {
            NO_FREE => {
                self.subs.push(SubRec { topic: FREE, pos: 0 });
                (self.subs.len() - 1) as SubId
            }
            free => {
                self.free = self.subs[free as usize].pos;
                free
            }
        };
        let list = self.topics[id].list(kind);
        self.subs[sub as usize] = SubRec::at(topic_u32, kind, list.len());
        list.push(Member { key, sub });
        if new_here {
            self.local_topics += 1;
        }
        self.subscriptions += 1;
        self.mark_changed(id);
        Ok(sub)
    }

    /// Ends subscription `sub` of connection `key` in O(1): swap-removes it from its topic's list and records
    /// the moved entry's new place. A no-op if `sub` is not a live subscription of `key`.
    pub fn unsubscribe(&mut self, sub: SubId, key: ConnKey) {
        let Some(&rec) = self.subs.get(sub as usize) else { return };
        if rec.topic == FREE {
            return;
        }
        let id = rec.topic as usize;
        let Some(topic) = self.topics.get_mut(id) else { return };
        let list = topic.list(rec.kind());
        let slot = rec.slot();
        if list.get(slot).is_none_or(|m| m.sub != sub || m.key as usize != key) {
            return;
        }
        list.swap_remove(slot);
        if let Some(moved) = list.get(slot) {
            self.subs[moved.sub as usize] = SubRec::at(rec.topic, rec.kind(), slot);
        }
        if !topic.has_local() {
            self.local_topics -= 1;
        }
        self.subs[sub as usize] = SubRec { topic: FREE, pos: self.free };
        self.free = sub;
        self.subscriptions -= 1;
        self.mark_changed(id);
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
            let mut batch = Batch::new(raw);
            for m in &topic.raw {
                out.deliver_batch(m.key as ConnKey, &mut batch, messages);
            }
        }
        if let Some(json) = &json {
            let mut batch = Batch::new(json);
            for m in &topic.json {
                out.deliver_batch(m.key as ConnKey, &mut batch, messages);
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
        // Other workers send plain frames; this worker compresses them once for its own subscribers.
        if let Some(raw) = &batch.raw {
            let mut frames = Batch::new(raw);
            for m in &topic.raw {
                out.deliver_batch(m.key as ConnKey, &mut frames, batch.messages);
            }
        }
        if let Some(json) = &batch.json {
            let mut frames = Batch::new(json);
            for m in &topic.json {
                out.deliver_batch(m.key as ConnKey, &mut frames, batch.messages);
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

impl TopicIndex {
    /// Queues a JSON notice (a cluster gap notice) for the `/ws` subscribers of `name`, here and on the other
    /// workers, in order with the topic's messages: it goes out with this turn's coalesced frames. Returns
    /// whether any worker has `/ws` subscribers of it.
    pub fn publish_notice(&mut self, name: &str, notice: &[u8], out: &mut impl Deliver, mesh: &mut MeshEnd) -> bool {
        let Some(&id) = self.by_name.get(name) else { return false };
        let topic = &mut self.topics[id];
        if topic.json.is_empty() && !topic.remote_json() {
            return false;
        }
        let need = frame::header_len(notice.len(), false) + notice.len();
        if topic.pend_json.capacity() == 0 {
            // A notice comes to every topic of an instance at once (after a reconnection): sized exactly, not
            // the 4 KiB a publish starts a buffer with, or 100,000 topics would take 400 MiB at once.
            topic.pend_json = BytesMut::with_capacity(need);
        } else {
            reserve_for(&mut topic.pend_json, need);
        }
        frame::write_frame(&mut topic.pend_json, OpCode::Text, notice);
        topic.pend_msgs += 1;
        if !topic.dirty {
            topic.dirty = true;
            self.dirty.push(id);
        }
        if topic.pend_json.len() >= self.coalesce_limit {
            Self::flush_topic(topic, out, mesh);
        }
        true
    }

    /// This worker's subscribers of `name` of one kind.
    pub fn local_subscribers(&self, name: &str, kind: SubKind) -> Vec<ConnKey> {
        let Some(&id) = self.by_name.get(name) else { return Vec::new() };
        let topic = &self.topics[id];
        let list = if kind == SubKind::Raw { &topic.raw } else { &topic.json };
        list.iter().map(|m| m.key as ConnKey).collect()
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
            polls.iter().map(|p| Arc::new(mio::Waker::new(p.registry(), mio::Token(0)).expect("waker")) as _).collect();
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
    fn topics_known_only_from_other_workers_do_not_count_against_the_cap() {
        let mut index = TopicIndex::new(2, 1024);
        for name in ["r1", "r2", "r3"] {
            index.set_remote(name, 1, 1, 0);
        }
        index.subscribe("a", 1, SubKind::Raw).expect("remote-only topics leave room for local ones");
        index.subscribe("r1", 2, SubKind::Json).expect("a remote topic gains its first local subscriber");
        assert_eq!(index.subscribe("b", 3, SubKind::Raw), Err(IndexError::TooManyTopics), "2 local topics: full");
        assert_eq!(
            index.subscribe("r2", 3, SubKind::Raw),
            Err(IndexError::TooManyTopics),
            "a remote-only topic becomes a local one: it counts"
        );
    }

    #[test]
    fn the_last_local_unsubscribe_gives_the_topic_room_back() {
        let mut index = TopicIndex::new(1, 1024);
        let a1 = index.subscribe("a", 1, SubKind::Raw).expect("first topic");
        let a2 = index.subscribe("a", 2, SubKind::Json).expect("same topic");
        assert_eq!(index.topics(), 1);
        index.unsubscribe(a1, 1);
        assert_eq!(index.subscribe("b", 3, SubKind::Raw), Err(IndexError::TooManyTopics), "a still has a subscriber");
        index.unsubscribe(a2, 2);
        assert_eq!(index.topics(), 0, "no local subscriber left: no longer counted, even before the flush");
        index.subscribe("b", 3, SubKind::Raw).expect("room again");
    }

    #[test]
    fn unsubscribe_ignores_a_subscription_that_is_not_the_callers() {
        let mut index = TopicIndex::new(4, 1024);
        let sub = index.subscribe("a", 1, SubKind::Raw).expect("room");
        index.unsubscribe(sub, 2);
        index.unsubscribe(sub + 1, 1);
        assert_eq!(index.subscriptions(), 1, "wrong key, unknown id: nothing removed");
        index.unsubscribe(sub, 1);
        index.unsubscribe(sub, 1);
        assert_eq!(index.subscriptions(), 0, "a second unsubscribe is a no-op");
    }

    #[test]
    fn the_new_topic_check_is_asked_only_for_topics_new_to_the_worker() {
        let mut index = TopicIndex::new(10, 1024);
        index.set_remote("remote", 1, 1, 0);
        index.subscribe("old", 1, SubKind::Json).expect("room");
        assert!(index.subscribe_with("old", 2, SubKind::Json, || false).is_ok(), "old has local subscribers");
        assert_eq!(
            index.subscribe_with("remote", 2, SubKind::Json, || false),
            Err(IndexError::RateLimited),
            "a topic only other workers use is new here"
        );
        assert_eq!(index.subscribe_with("fresh", 2, SubKind::Json, || false), Err(IndexError::RateLimited));
        assert_eq!((index.topics(), index.subscriptions()), (1, 2), "a refusal changes nothing");
        assert_eq!(index.lookup("fresh"), None);
    }

    /// Checks the index against a model of live subscriptions `(sub, topic, key, kind)`.
    fn check_against(index: &TopicIndex, model: &[(SubId, String, ConnKey, SubKind)]) {
        assert_eq!(index.subscriptions(), model.len());
        let mut names: Vec<&str> = model.iter().map(|m| m.1.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(index.topics(), names.len(), "topics with local subscribers");
        for &(sub, ref name, key, kind) in model {
            let id = index.lookup(name).expect("a subscribed topic is known");
            assert_eq!(index.topic_of(sub), Some(id));
            let rec = index.subs[sub as usize];
            assert_eq!(rec.kind(), kind);
            let list = match kind {
                SubKind::Raw => &index.topics[id].raw,
                SubKind::Json => &index.topics[id].json,
            };
            let member = list[rec.slot()];
            assert_eq!((member.sub, member.key as ConnKey), (sub, key), "the record points at its own entry");
        }
        for (_, topic) in &index.topics {
            let mut listed: Vec<(u32, SubId)> = topic.raw.iter().chain(&topic.json).map(|m| (m.key, m.sub)).collect();
            let mut expected: Vec<(u32, SubId)> =
                model.iter().filter(|m| *m.1 == *topic.name).map(|m| (m.2 as u32, m.0)).collect();
            listed.sort_unstable();
            expected.sort_unstable();
            assert_eq!(listed, expected, "topic {} lists exactly its subscribers", topic.name);
        }
    }

    proptest::proptest! {
        /// Any sequence of subscribes and unsubscribes (including repeats, wrong keys and flushes) leaves every
        /// topic listing exactly its live subscribers, every record pointing at its entry, and the counts right.
        #[test]
        fn random_subscribe_and_unsubscribe_sequences_keep_the_index_exact(
            ops in proptest::collection::vec((0u8..4, 0usize..5, 0usize..6, proptest::bool::ANY, 0usize..64), 1..200)
        ) {
            let (_p, mut mesh, _in) = mesh(1, 0);
            let mut index = TopicIndex::new(3, 1024);
            let mut model: Vec<(SubId, String, ConnKey, SubKind)> = Vec::new();
            let mut sink = Sink::default();
            for (op, topic, key, json, pick) in ops {
                let kind = if json { SubKind::Json } else { SubKind::Raw };
                match op {
                    0 | 1 => {
                        let name = format!("t{topic}");
                        let full = index.topics() >= 3 && !model.iter().any(|m| m.1 == name);
                        match index.subscribe(&name, key, kind) {
                            Ok(sub) => {
                                proptest::prop_assert!(!full, "past the cap");
                                model.push((sub, name, key, kind));
                            }
                            Err(e) => proptest::prop_assert!(full, "refused with room: {e}"),
                        }
                    }
                    2 if !model.is_empty() => {
                        let (sub, _, key, _) = model.swap_remove(pick % model.len());
                        index.unsubscribe(sub, key);
                    }
                    2 => {}
                    _ => {
                        if let Some(m) = model.get(pick % model.len().max(1)) {
                            index.unsubscribe(m.0, m.2 + 1); // not its key: ignored
                        }
                        index.flush(&mut sink, &mut mesh);
                    }
                }
                check_against(&index, &model);
            }
        }
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
    fn a_notice_on_an_idle_topic_takes_its_size_not_a_publish_buffer() {
        let (_p, mut mesh0, _in) = mesh(1, 0);
        let mut index = TopicIndex::new(10, 1 << 16);
        index.subscribe("t", 2, SubKind::Json).expect("room");
        let notice = br#"{"type":"gap","topic":"t"}"#;
        assert!(index.publish_notice("t", notice, &mut Sink::default(), &mut mesh0));
        let id = index.lookup("t").expect("known");
        assert!(index.topics[id].pend_json.capacity() < 64, "100,000 topics get a notice at once after a reconnection");
    }

    #[test]
    fn a_notice_reaches_json_subscribers_here_and_elsewhere_in_order_and_not_raw_ones() {
        let (_p, mut mesh0, inboxes) = mesh(2, 0);
        let mut index = TopicIndex::new(10, 1 << 16);
        index.subscribe("t", 1, SubKind::Raw).expect("room");
        index.subscribe("t", 2, SubKind::Json).expect("room");
        index.set_remote("t", 1, 0, 1);
        let mut sink = Sink::default();
        index.publish("t", true, b"a", None, &mut sink, &mut mesh0);
        assert!(index.publish_notice("t", br#"{"type":"gap","topic":"t"}"#, &mut sink, &mut mesh0));
        index.publish("t", true, b"b", None, &mut sink, &mut mesh0);
        assert!(!index.publish_notice("nobody", b"{}", &mut sink, &mut mesh0), "no such topic");
        index.flush(&mut sink, &mut mesh0);
        let raw = &sink.0.iter().find(|d| d.0 == 1).expect("raw delivery").1;
        assert_eq!(&raw[..], b"\x81\x01a\x81\x01b", "raw subscribers get the messages only");
        let json = &sink.0.iter().find(|d| d.0 == 2).expect("json delivery").1;
        let text = String::from_utf8_lossy(json);
        let (a, gap, b) =
            (text.find("\"a\"").expect("a"), text.find("gap").expect("gap"), text.find("\"b\"").expect("b"));
        assert!(a < gap && gap < b, "in order with the messages: {text}");
        let batch = std::iter::from_fn(|| inboxes[1].try_recv())
            .find_map(|m| match m {
                MeshMsg::Broadcast(b) => Some(b),
                _ => None,
            })
            .expect("a broadcast to the other worker");
        assert_eq!(batch.json.as_deref(), Some(&json[..]), "the same frames");
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
