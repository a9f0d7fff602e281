//! The cross-worker mesh: one bounded inbox and one waker per worker, and what travels between them.
//!
//! Only [`MeshMsg`] values, senders and wakers cross threads; every worker's topic index and connections stay
//! on its own core. Broadcast batches go through a bounded channel: when a peer's inbox is full the batch is
//! kept, in order, in this worker's overflow queue for that peer (never dropped) and the worker reports itself
//! stalled, so it stops reading from its publishers until the overflow has drained: backpressure to
//! publishers. Interest announcements (rare, tiny) use an unbounded channel so they are never refused.
//! A worker wakes each peer at most once per loop turn, however many messages it sent it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

/// A batch of frames published to one topic during one loop turn of one worker.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The topic.
    pub topic: Arc<str>,
    /// Coalesced raw frames, for `/sub` subscribers (when any worker has some).
    pub raw: Option<Bytes>,
    /// Coalesced JSON envelope frames, for `/ws` subscribers (when any worker has some).
    pub json: Option<Bytes>,
    /// How many messages the batch holds (for delivery and drop counts).
    pub messages: u32,
}

/// "Worker `worker` now has `raw` raw and `json` JSON subscribers of `topic`" (absolute counts).
#[derive(Debug, Clone)]
pub struct Interest {
    /// The topic.
    pub topic: Arc<str>,
    /// The announcing worker.
    pub worker: usize,
    /// Its `/sub` subscribers of the topic.
    pub raw: u32,
    /// Its `/ws` subscribers of the topic.
    pub json: u32,
}

/// A publish from outside the workers (HTTP bridge, a future Redis bridge): the receiving worker publishes it
/// exactly as if one of its own connections had.
#[derive(Debug, Clone)]
pub struct ExternalPublish {
    /// The topic (already validated by the sender).
    pub topic: String,
    /// Text (true) or binary.
    pub text: bool,
    /// The payload.
    pub payload: Bytes,
}

/// What a worker's inbox carries.
#[derive(Debug)]
pub enum MeshMsg {
    /// Frames to deliver to local subscribers.
    Broadcast(Broadcast),
    /// A peer's subscriber counts changed.
    Interest(Interest),
    /// A publish from an outside source.
    Publish(ExternalPublish),
    /// Shutdown barrier: the sending worker has stopped publishing, and every batch it sent this worker is
    /// ahead of this marker in the queue.
    Drained(usize),
    /// New verification keys (SIGHUP rotation), for the worker's auth policy.
    Keys(Arc<crate::protocol::auth::KeySet>),
    /// A certificate reload (SIGHUP): the TLS configuration for new handshakes, or word that it failed.
    Certificate(CertUpdate),
    /// A message from another node (cluster bridge), for the worker that carries its topic: published here
    /// like a local one, but not sent back to Redis.
    Foreign(crate::cluster::ForeignPublish),
    /// Messages from another node were lost for these topics (cluster bridge, to the topics' worker): their
    /// `/ws` subscribers get a gap notice, in order with the messages.
    Gap(Arc<[Arc<str>]>),
    /// Gap on these topics with `cluster.on_gap = "close"` (to every worker): close their raw subscribers.
    GapClose(Arc<[Arc<str>]>),
}

/// The outcome of a certificate reload, as the workers hear it.
#[derive(Debug, Clone)]
pub enum CertUpdate {
    /// The new configuration, for handshakes from now on (established connections keep theirs).
    New(Arc<rustls::ServerConfig>),
    /// The files were unusable; the old certificate stays (counted once, by worker 0).
    Failed,
}

/// What makes a worker's loop look at its inbox: a `mio::Waker` for the epoll driver, an eventfd the ring
/// reads for the io_uring one.
pub trait Wake: Send + Sync + std::fmt::Debug {
    /// Wakes the loop (at most once per turn per sender: see [`MeshEnd::wake_peers`]).
    fn wake(&self) -> std::io::Result<()>;
}

impl Wake for mio::Waker {
    fn wake(&self) -> std::io::Result<()> {
        mio::Waker::wake(self)
    }
}

/// The sending side of one worker's inbox, plus the waker that makes it look.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    data: Sender<MeshMsg>,
    control: Sender<MeshMsg>,
    waker: Arc<dyn Wake>,
}

impl PeerHandle {
    /// Sends a control message (ahead of queued data) and wakes the worker.
    pub fn send_control(&self, msg: MeshMsg) {
        // The worker has exited (shutdown) when this fails: nothing to tell it.
        if self.control.send(msg).is_ok() {
            self.wake();
        }
    }

    /// Queues a data message without blocking (the cluster bridge); gives it back when the inbox is full. A
    /// worker that has exited takes nothing: the message is dropped.
    pub fn try_send_data(&self, msg: MeshMsg) -> Result<(), MeshMsg> {
        match self.data.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
            Err(TrySendError::Full(m)) => Err(m),
        }
    }

    /// Wakes the worker's loop.
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::warn!("mesh: waking a worker failed: {e}");
        }
    }
}

/// The receiving side of one worker's inbox (stays on that worker).
#[derive(Debug)]
pub struct Inbox {
    data: Receiver<MeshMsg>,
    control: Receiver<MeshMsg>,
}

impl Inbox {
    /// The next message, control first, or `None` when both queues are empty.
    pub fn try_recv(&self) -> Option<MeshMsg> {
        match self.control.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        self.data.try_recv().ok()
    }
}

/// Builds one inbox per worker: `capacity` is the bounded data queue's length, in batches.
pub fn inboxes(wakers: Vec<Arc<dyn Wake>>, capacity: usize) -> (Vec<PeerHandle>, Vec<Inbox>) {
    let mut handles = Vec::with_capacity(wakers.len());
    let mut inboxes = Vec::with_capacity(wakers.len());
    for waker in wakers {
        let (data_tx, data_rx) = crossbeam_channel::bounded(capacity);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        handles.push(PeerHandle { data: data_tx, control: control_tx, waker });
        inboxes.push(Inbox { data: data_rx, control: control_rx });
    }
    (handles, inboxes)
}

/// A handle for publish sources outside the workers: sends each publish to one worker, which then publishes it
/// like its own (frames it once, delivers locally, forwards to interested peers). All publishes of one topic go
/// through the same worker (chosen by a hash of the topic), so a source's messages keep their order per topic;
/// different topics spread over the workers.
#[derive(Debug, Clone)]
pub struct ExternalPublisher {
    peers: Vec<PeerHandle>,
}

impl ExternalPublisher {
    /// A publisher over every worker's inbox.
    pub fn new(peers: Vec<PeerHandle>) -> Self {
        ExternalPublisher { peers }
    }

    /// The worker that carries every publish of `topic` (FNV-1a of the name).
    fn worker_for(&self, topic: &str) -> usize {
        let hash =
            topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (hash % self.peers.len() as u64) as usize
    }

    /// Queues a publish; blocks while the topic's worker's inbox is full (backpressure to the source).
    /// Fails only when the workers have exited.
    pub fn publish(&mut self, publish: ExternalPublish) -> Result<(), ExternalPublish> {
        if self.peers.is_empty() {
            return Err(publish);
        }
        let peer = &self.peers[self.worker_for(&publish.topic)];
        match peer.data.send(MeshMsg::Publish(publish)) {
            Ok(()) => {
                peer.wake();
                Ok(())
            }
            Err(e) => match e.0 {
                MeshMsg::Publish(p) => Err(p),
                _ => unreachable!("bug: send returned a different message"),
            },
        }
    }
}

/// One worker's view of the mesh: senders to every peer, the overflow kept when a peer is full, and which
/// peers to wake at the end of the turn.
#[derive(Debug)]
pub struct MeshEnd {
    me: usize,
    peers: Vec<PeerHandle>,
    overflow: Vec<VecDeque<MeshMsg>>,
    to_wake: u64,
    /// Times a send found a peer's inbox full (for metrics).
    pub full_events: u64,
    /// The node's cluster bridge, when `[cluster]` is on.
    bridge: Option<crate::cluster::WorkerLink>,
}

impl MeshEnd {
    /// Worker `me`'s end, given every worker's handle (its own included, unused).
    pub fn new(me: usize, peers: Vec<PeerHandle>) -> Self {
        let n = peers.len();
        MeshEnd {
            me,
            peers,
            overflow: (0..n).map(|_| VecDeque::new()).collect(),
            to_wake: 0,
            full_events: 0,
            bridge: None,
        }
    }

    /// Connects this end to the node's cluster bridge: publishes and interest go to it too.
    pub fn set_bridge(&mut self, link: crate::cluster::WorkerLink) {
        self.bridge = Some(link);
    }

    /// The cluster bridge's link, when the cluster is on.
    pub fn bridge(&mut self) -> Option<&mut crate::cluster::WorkerLink> {
        self.bridge.as_mut()
    }

    /// This worker's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.peers.len()
    }

    /// Sends a batch to `worker`, in order behind anything already waiting for it.
    pub fn send_broadcast(&mut self, worker: usize, batch: Broadcast) {
        self.send_data(worker, MeshMsg::Broadcast(batch));
    }

    /// Tells every other worker that this one has stopped publishing (shutdown barrier), behind every batch
    /// already sent to it.
    pub fn send_drained(&mut self) {
        for w in 0..self.peers.len() {
            if w != self.me {
                self.send_data(w, MeshMsg::Drained(self.me));
            }
        }
    }

    fn send_data(&mut self, worker: usize, msg: MeshMsg) {
        if !self.overflow[worker].is_empty() {
            self.overflow[worker].push_back(msg);
            return;
        }
        match self.peers[worker].data.try_send(msg) {
            Ok(()) => self.to_wake |= 1 << worker,
            Err(TrySendError::Full(m)) => {
                self.full_events += 1;
                self.to_wake |= 1 << worker;
                self.overflow[worker].push_back(m);
            }
            // The peer has exited (shutdown): nothing to deliver to.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Announces this worker's subscriber counts for `topic` to every other worker (and to the cluster
    /// bridge, which subscribes the node to the topic while any worker has subscribers).
    pub fn announce(&mut self, topic: &Arc<str>, raw: u32, json: u32) {
        if let Some(bridge) = &mut self.bridge {
            bridge.interest(topic, self.me, raw + json > 0);
        }
        for (w, peer) in self.peers.iter().enumerate() {
            if w == self.me {
                continue;
            }
            let msg = MeshMsg::Interest(Interest { topic: topic.clone(), worker: self.me, raw, json });
            if peer.control.send(msg).is_ok() {
                self.to_wake |= 1 << w;
            }
        }
    }

    /// Retries the overflow queues; true while any batch is still waiting (publishers stay paused).
    pub fn retry_overflow(&mut self) -> bool {
        let mut stalled = false;
        for w in 0..self.peers.len() {
            while let Some(msg) = self.overflow[w].pop_front() {
                match self.peers[w].data.try_send(msg) {
                    Ok(()) => self.to_wake |= 1 << w,
                    Err(TrySendError::Full(m)) => {
                        self.overflow[w].push_front(m);
                        stalled = true;
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.overflow[w].clear();
                        break;
                    }
                }
            }
        }
        stalled
    }

    /// Whether any batch waits for a full peer.
    pub fn is_stalled(&self) -> bool {
        self.overflow.iter().any(|q| !q.is_empty())
    }

    /// Wakes each peer (and the cluster bridge) that was sent something this turn, once.
    pub fn wake_peers(&mut self) {
        if let Some(bridge) = &mut self.bridge {
            bridge.wake();
        }
        let mut mask = self.to_wake;
        self.to_wake = 0;
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            self.peers[w].wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn what_crosses_threads_is_send() {
        assert_send::<MeshMsg>();
        assert_send::<PeerHandle>();
        assert_send::<Inbox>();
        assert_send::<ExternalPublisher>();
    }

    fn wakers(n: usize) -> (Vec<mio::Poll>, Vec<Arc<dyn Wake>>) {
        let polls: Vec<mio::Poll> = (0..n).map(|_| mio::Poll::new().expect("poll")).collect();
        let wakers = polls
            .iter()
            .map(|p| Arc::new(mio::Waker::new(p.registry(), mio::Token(0)).expect("waker")) as Arc<dyn Wake>)
            .collect();
        (polls, wakers)
    }

    fn batch(n: u32) -> Broadcast {
        Broadcast { topic: Arc::from("t"), raw: Some(Bytes::from_static(b"x")), json: None, messages: n }
    }

    #[test]
    fn full_inbox_keeps_batches_in_order_and_reports_stall() {
        let (_polls, wakers) = wakers(2);
        let (handles, inboxes) = inboxes(wakers, 2);
        let mut end = MeshEnd::new(0, handles);
        for i in 0..5 {
            end.send_broadcast(1, batch(i));
        }
        assert!(end.is_stalled(), "3 of 5 batches must wait");
        assert_eq!(end.full_events, 1);
        let mut seen = Vec::new();
        loop {
            while let Some(MeshMsg::Broadcast(b)) = inboxes[1].try_recv() {
                seen.push(b.messages);
            }
            if !end.retry_overflow() {
                while let Some(MeshMsg::Broadcast(b)) = inboxes[1].try_recv() {
                    seen.push(b.messages);
                }
                break;
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4], "nothing lost, nothing reordered");
        assert!(!end.is_stalled());
    }

    #[test]
    fn interest_is_announced_to_every_other_worker() {
        let (_polls, wakers) = wakers(3);
        let (handles, inboxes) = inboxes(wakers, 1);
        let mut end = MeshEnd::new(1, handles);
        end.announce(&Arc::from("news"), 2, 1);
        assert!(inboxes[1].try_recv().is_none(), "not to itself");
        for w in [0, 2] {
            match inboxes[w].try_recv() {
                Some(MeshMsg::Interest(i)) => assert_eq!((i.worker, i.raw, i.json), (1, 2, 1)),
                other => panic!("expected interest, got {other:?}"),
            }
        }
    }
}
