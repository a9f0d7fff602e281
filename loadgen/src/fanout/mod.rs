//! The fan-out scenario: S subscribers over T topics, P publishers, on every worker thread.
//!
//! Worker side ([`FanoutLocal`]): a worker owns subscribers `s` with `s % threads == id` and publishers `p`
//! with `p % threads == id`. Subscribers check each message against a flat table of [`Pair`]s (one per
//! subscriber and publisher slot of its topic) and record its latency; publishers send on their load model:
//!
//! - open loop (`--rate R`): message `k` of a publisher is due at a fixed time ([`Schedule`]), carries that
//!   *scheduled* time, and is sent as soon as the loop gets to it. A stalled server delays the send, and the
//!   delay shows in the latency (no coordinated omission, as wrk2 does it).
//! - closed loop (`--window K`): a publisher sends only while it is fewer than K messages ahead of the
//!   slowest live subscriber of its topic (on any thread); messages carry their actual send time.
//! - `--rate max`: as fast as the socket takes them (with `--window`, also bounded by it).
//!
//! With `--protocol json` every connection goes to herald's JSON endpoint: subscribers subscribe there (the
//! worker waits for the ack before counting them open), publishers send publish requests built once per
//! publisher ([`json::PublishTemplate`]), and subscribers find the header right after their topic's fixed
//! envelope head. The accounting is the same.
//!
//! The main-thread side is in [`mod@run`]: it spawns the workers, steps them through the phases, prints progress,
//! waits for stragglers after the window, and turns the workers' results into a [`run::FanoutOutcome`].

pub mod run;

pub use run::{run, FanoutOutcome, RunOptions, Tick};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hdrhistogram::Histogram;
use herald::protocol::frame::{header_len, write_masked_frame, OpCode};
use slab::Slab;

use crate::engine::{Conn, Dial, Kind, Progress, Shared};
use crate::json;
use crate::plan::{fill_template, payload, FanoutPlan, Protocol, Schedule};
use crate::stats::{self, Failure, Pair, RecvCounters};
use crate::sys;

/// Bytes of frames a publisher builds before writing them.
const PUBLISH_BATCH_BYTES: usize = 256 * 1024;
/// Batches a publisher may write in one loop turn before letting the others (and the readers) run.
const BATCHES_PER_TURN: usize = 4;
/// How often a window-blocked publisher rechecks its window when its subscribers are on other threads.
const WINDOW_RECHECK_NS: u64 = 200_000;

/// A subscriber owned by this worker.
#[derive(Debug, Clone)]
struct SubLocal {
    topic: u32,
    open: bool,
    /// Open when the run started: its deliveries are expected.
    counted: bool,
}

/// A publisher owned by this worker.
#[derive(Debug, Clone)]
struct PubLocal {
    global: u32,
    topic: u32,
    token: Option<usize>,
    sent: u64,
    first: Option<u64>,
    done: bool,
    schedule: Option<Schedule>,
    /// Blocked by the window at the last attempt.
    window_blocked: bool,
    /// Its socket was full at the last attempt (a WRITABLE event will wake the loop).
    socket_blocked: bool,
    /// `--protocol json`: its publish request, built when it opens.
    template: Option<json::PublishTemplate>,
}

/// One worker's share of the fan-out scenario.
#[derive(Debug)]
pub struct FanoutLocal {
    plan: Arc<FanoutPlan>,
    thread: usize,
    threads: usize,
    slots: usize,
    subs: Vec<SubLocal>,
    pairs: Vec<Pair>,
    /// Local subscriber indices by topic (only filled in closed loop, for the window).
    subs_by_topic: Vec<Vec<u32>>,
    /// Closed loop: per global publisher, the low-water mark of this worker's subscribers.
    lows: Vec<LowMark>,
    /// Publishers whose low-water mark must be recomputed.
    dirty: Vec<u32>,
    /// (topic, slot) of every publisher.
    routes: Vec<(u32, u32)>,
    pubs: Vec<PubLocal>,
    /// `--protocol json`: per topic, the envelope head every delivery starts with (empty for raw).
    heads: Vec<Vec<u8>>,
    payload: Vec<u8>,
    frame_len: usize,
    rng: u64,
    t0_ns: u64,
    measure_ns: u64,
    end_ns: u64,
    /// How late open-loop messages were sent relative to their schedule (ns).
    pub send_lag: Histogram<u64>,
}

impl FanoutLocal {
    /// Worker `thread` of `threads`' share of `plan`.
    pub fn new(plan: Arc<FanoutPlan>, thread: usize, threads: usize) -> FanoutLocal {
        let slots = plan.slots_per_topic();
        let subs: Vec<SubLocal> = (thread..plan.subs)
            .step_by(threads)
            .map(|s| SubLocal { topic: plan.topic_of_sub(s) as u32, open: false, counted: false })
            .collect();
        let pubs: Vec<PubLocal> = (thread..plan.pubs)
            .step_by(threads)
            .map(|p| PubLocal {
                global: p as u32,
                topic: plan.topic_of_pub(p) as u32,
                token: None,
                sent: 0,
                first: None,
                done: false,
                schedule: None,
                window_blocked: false,
                socket_blocked: false,
                template: None,
            })
            .collect();
        let mut subs_by_topic = Vec::new();
        let mut lows = Vec::new();
        if plan.window.is_some() {
            lows = vec![LowMark::default(); plan.pubs];
            subs_by_topic = vec![Vec::new(); plan.topics];
            for (i, s) in subs.iter().enumerate() {
                subs_by_topic[s.topic as usize].push(i as u32);
            }
        }
        let routes = (0..plan.pubs).map(|p| (plan.topic_of_pub(p) as u32, plan.slot_of_pub(p) as u32)).collect();
        // Padding is ASCII so that text mode stays mostly readable.
        let payload = plan.payload.payload(plan.size, payload::HEADER_LEN);
        let heads = match plan.protocol {
            Protocol::Raw => Vec::new(),
            Protocol::Json => (0..plan.topics).map(|t| json::envelope_head(&plan.topic_name(t))).collect(),
        };
        let frame_len = match plan.protocol {
            Protocol::Raw => header_len(plan.size, true) + plan.size,
            Protocol::Json => json::PublishTemplate::new(&plan.topic_name(0), plan.size, None).len() + 14,
        };
        FanoutLocal {
            frame_len,
            heads,
            pairs: vec![Pair::default(); subs.len() * slots],
            plan,
            thread,
            threads,
            slots,
            subs,
            subs_by_topic,
            dirty: (0..lows.len() as u32).collect(),
            routes,
            lows,
            pubs,
            payload,
            rng: 0x2545_F491_4F6C_DD1D ^ (thread as u64 + 1),
            t0_ns: u64::MAX,
            measure_ns: u64::MAX,
            end_ns: u64::MAX,
            send_lag: stats::new_histogram(),
        }
    }

    /// The connections to open, subscribers first. Connection numbers: subscriber `s` is `s`, publisher `p`
    /// is `subs + p`.
    pub fn dial_list(&self) -> Vec<Dial> {
        let plan = &self.plan;
        let (threads, thread) = (self.threads, self.thread);
        let subs = self.subs.iter().enumerate().map(|(i, s)| {
            let (kind, index, topic) = (Kind::Sub(i as u32), thread + i * threads, plan.topic_name(s.topic as usize));
            match plan.protocol {
                Protocol::Raw => Dial::raw(kind, index, fill_template(&plan.sub_path, &topic)),
                Protocol::Json => Dial::json(kind, index, plan.ws_path.clone(), Some(topic)),
            }
        });
        let pubs = self.pubs.iter().enumerate().map(|(i, p)| {
            let (kind, index) = (Kind::Pub(i as u32), plan.subs + p.global as usize);
            match plan.protocol {
                Protocol::Raw => {
                    Dial::raw(kind, index, fill_template(&plan.pub_path, &plan.topic_name(p.topic as usize)))
                }
                Protocol::Json => Dial::json(kind, index, plan.ws_path.clone(), None),
            }
        });
        subs.chain(pubs).collect()
    }

    /// A connection of `kind` is open as `token`; `message_token` goes into each JSON request
    /// (`--auth-per-message`).
    pub fn on_open(&mut self, kind: Kind, token: usize, shared: &Shared, message_token: Option<&str>) {
        match kind {
            Kind::Sub(i) => {
                if let Some(s) = self.subs.get_mut(i as usize) {
                    s.open = true;
                }
            }
            Kind::Pub(i) => {
                if let Some(p) = self.pubs.get_mut(i as usize) {
                    p.token = Some(token);
                    if self.plan.protocol == Protocol::Json {
                        let topic = self.plan.topic_name(p.topic as usize);
                        p.template = Some(json::PublishTemplate::new(&topic, self.plan.size, message_token));
                    }
                    shared.pub_open[p.global as usize].store(1, Ordering::Release);
                }
            }
            Kind::Idle(_) | Kind::Echo(_) => {}
        }
    }

    /// A connection of `kind` ended (or failed to open).
    pub fn on_closed(&mut self, kind: Kind, shared: &Shared) {
        match kind {
            Kind::Sub(i) => {
                if let Some(s) = self.subs.get_mut(i as usize) {
                    s.open = false;
                    let topic = s.topic as usize;
                    if !self.lows.is_empty() {
                        self.dirty.extend((topic..self.plan.pubs).step_by(self.plan.topics).map(|p| p as u32));
                    }
                }
            }
            Kind::Pub(i) => {
                let started = self.t0_ns != u64::MAX;
                if let Some(p) = self.pubs.get_mut(i as usize) {
                    p.token = None;
                    shared.pub_open[p.global as usize].store(0, Ordering::Release);
                    if started {
                        finish_pub(p, shared);
                    }
                }
            }
            Kind::Idle(_) | Kind::Echo(_) => {}
        }
    }

    /// The receive side of local subscriber `local`.
    #[inline]
    pub fn receiver(&mut self, local: u32) -> Receiver<'_> {
        let start = local as usize * self.slots;
        let topic = self.subs.get(local as usize).map_or(u32::MAX, |s| s.topic);
        Receiver {
            head: self.heads.get(topic as usize).map_or(&[], Vec::as_slice),
            pairs: self.pairs.get_mut(start..start + self.slots).unwrap_or_default(),
            lows: &mut self.lows,
            dirty: &mut self.dirty,
            routes: &self.routes,
            topic,
        }
    }

    /// The run begins: read its times, set up the schedules, count the open subscribers, retire the
    /// publishers that never connected.
    pub fn start_run(&mut self, shared: &Shared) {
        self.t0_ns = shared.t0_ns.load(Ordering::Acquire);
        self.measure_ns = shared.measure_ns.load(Ordering::Acquire);
        self.end_ns = shared.end_ns.load(Ordering::Acquire);
        let per_pub = self.plan.rate_per_pub();
        let count = self.plan.pubs;
        for p in &mut self.pubs {
            p.schedule = per_pub.map(|rate| Schedule::new(self.t0_ns, rate, p.global as usize, count));
            if p.token.is_none() {
                finish_pub(p, shared);
            }
        }
        for s in &mut self.subs {
            s.counted = s.open;
        }
        self.dirty = (0..self.lows.len() as u32).collect();
        self.publish_acks(shared);
    }

    /// Publishes, for every publisher whose low-water mark may have moved, the lowest next-sequence among
    /// this worker's live subscribers of its topic (closed loop only). A mark is recomputed only when every
    /// subscriber that sat at it has moved on, so the cost is O(1) per delivery, not O(subscribers) per turn.
    pub fn publish_acks(&mut self, shared: &Shared) {
        while let Some(p) = self.dirty.pop() {
            let p = p as usize;
            let (topic, slot) = (self.plan.topic_of_pub(p), self.plan.slot_of_pub(p));
            let (mut low, mut at_low) = (u64::MAX, 0u32);
            for &local in &self.subs_by_topic[topic] {
                if self.subs[local as usize].open {
                    let next = self.pairs[local as usize * self.slots + slot].next;
                    match next.cmp(&low) {
                        std::cmp::Ordering::Less => (low, at_low) = (next, 1),
                        std::cmp::Ordering::Equal => at_low += 1,
                        std::cmp::Ordering::Greater => {}
                    }
                }
            }
            self.lows[p] = LowMark { low, at_low };
            shared.acked[self.thread * self.plan.pubs + p].store(low, Ordering::Release);
        }
    }

    /// Sends a probe from every open publisher.
    pub fn send_probes(&mut self, conns: &mut Slab<Conn>, now: u64, closed: &mut Vec<(usize, Failure)>) {
        for i in 0..self.pubs.len() {
            let Some(token) = self.pubs[i].token else { continue };
            let Some(conn) = conns.get_mut(token) else { continue };
            if conn.pending() > 0 {
                continue;
            }
            let header = payload::Header { publisher: self.pubs[i].global, seq: payload::PROBE_SEQ, sent_ns: now };
            self.write_message(i, conn, header);
            if let Err(f) = conn.flush() {
                closed.push((token, f));
            }
        }
    }

    /// Recounts confirmed subscribers: open, and with a probe seen from every open publisher of the topic.
    pub fn update_confirmations(&self, shared: &Shared, progress: &Progress) {
        let (mut confirmable, mut confirmed) = (0, 0);
        let topics = self.plan.topics;
        for (i, s) in self.subs.iter().enumerate() {
            if !s.open {
                continue;
            }
            let (mut any_open, mut all_probed) = (false, true);
            for slot in 0..self.plan.pubs_on_topic(s.topic as usize) {
                let p = slot * topics + s.topic as usize;
                if shared.pub_open[p].load(Ordering::Acquire) == 0 {
                    continue;
                }
                any_open = true;
                all_probed &= self.pairs[i * self.slots + slot].probed;
            }
            if any_open {
                confirmable += 1;
                confirmed += usize::from(all_probed);
            }
        }
        progress.confirmable.store(confirmable, Ordering::Relaxed);
        progress.confirmed.store(confirmed, Ordering::Relaxed);
        progress.probe_rounds.fetch_add(1, Ordering::Release);
    }

    /// Measured deliveries still missing on this worker's live subscribers, once every publisher is done.
    pub fn update_outstanding(&self, shared: &Shared, progress: &Progress) {
        if shared.pubs_done.load(Ordering::Acquire) < self.plan.pubs {
            progress.outstanding.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        let topics = self.plan.topics;
        let mut missing = 0u64;
        for (i, s) in self.subs.iter().enumerate() {
            if !(s.open && s.counted) {
                continue;
            }
            for slot in 0..self.slots {
                let p = slot * topics + s.topic as usize;
                if p >= self.plan.pubs {
                    continue;
                }
                let first = shared.pub_first[p].load(Ordering::Acquire);
                let end = shared.pub_end[p].load(Ordering::Acquire);
                let pair = &self.pairs[i * self.slots + slot];
                // Only what may still come: the tail above the highest received.
                missing += end.saturating_sub(pair.next.max(first));
            }
        }
        progress.outstanding.store(missing, Ordering::Relaxed);
    }

    /// When this worker's publishers next need the loop: `Some(t <= now)` to poll without sleeping.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        let mut at: Option<u64> = None;
        let mut soonest = |t: u64| at = Some(at.map_or(t, |a: u64| a.min(t)));
        for p in &self.pubs {
            if p.done || p.token.is_none() {
                continue;
            }
            soonest(self.end_ns);
            if p.socket_blocked {
                continue;
            }
            if p.window_blocked {
                soonest(now + WINDOW_RECHECK_NS);
                continue;
            }
            match &p.schedule {
                Some(s) => soonest(s.due_at(p.sent)),
                None => soonest(now),
            }
        }
        at
    }

    /// Sends what each publisher may send now; returns how many messages were built.
    pub fn pump(
        &mut self,
        conns: &mut Slab<Conn>,
        shared: &Shared,
        now: u64,
        closed: &mut Vec<(usize, Failure)>,
    ) -> u64 {
        if self.t0_ns == u64::MAX || now < self.t0_ns {
            return 0;
        }
        let mut built = 0;
        for i in 0..self.pubs.len() {
            if self.pubs[i].done {
                continue;
            }
            let Some(token) = self.pubs[i].token else { continue };
            let Some(conn) = conns.get_mut(token) else { continue };
            if conn.pending() > 0 {
                if conn.write_blocked {
                    self.pubs[i].socket_blocked = true;
                    continue;
                }
                match conn.flush() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.pubs[i].socket_blocked = true;
                        continue;
                    }
                    Err(f) => {
                        closed.push((token, f));
                        continue;
                    }
                }
            }
            for _ in 0..BATCHES_PER_TURN {
                let (allowed, finished) = self.allowed(i, now, shared);
                if finished {
                    finish_pub(&mut self.pubs[i], shared);
                    break;
                }
                let sent = self.pubs[i].sent;
                if allowed <= sent {
                    break;
                }
                let batch = (allowed - sent).min((PUBLISH_BATCH_BYTES / self.frame_len).max(1) as u64);
                let stamp = if self.pubs[i].schedule.is_none() { sys::now_ns() } else { 0 };
                for _ in 0..batch {
                    let p = &mut self.pubs[i];
                    let seq = p.sent;
                    let sent_ns = match &p.schedule {
                        Some(s) => {
                            let due = s.due_at(seq);
                            stats::record(&mut self.send_lag, now.saturating_sub(due));
                            due
                        }
                        None => stamp,
                    };
                    if p.first.is_none() && sent_ns >= self.measure_ns {
                        p.first = Some(seq);
                    }
                    p.sent += 1;
                    let header = payload::Header { publisher: p.global, seq, sent_ns };
                    self.write_message(i, conn, header);
                }
                built += batch;
                match conn.flush() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(f) => {
                        closed.push((token, f));
                        break;
                    }
                }
            }
            self.pubs[i].socket_blocked = conn.write_blocked;
        }
        built
    }

    /// How many messages publisher `i` may have sent by now, and whether it is finished.
    fn allowed(&mut self, i: usize, now: u64, shared: &Shared) -> (u64, bool) {
        let p = &self.pubs[i];
        let mut allowed = match &p.schedule {
            Some(s) => {
                if s.due_at(p.sent) >= self.end_ns {
                    return (p.sent, true);
                }
                s.due_by(now.min(self.end_ns - 1))
            }
            None => {
                if now >= self.end_ns {
                    return (p.sent, true);
                }
                u64::MAX
            }
        };
        let mut blocked = false;
        if let Some(window) = self.plan.window {
            let g = p.global as usize;
            let low = (0..self.threads)
                .map(|t| shared.acked[t * self.plan.pubs + g].load(Ordering::Acquire))
                .min()
                .unwrap_or(u64::MAX);
            // Like TCP avoiding silly windows: with messages in flight, wait until a batch (default half the
            // window) is free, so the server gets batches it can coalesce, not one message per acknowledgement.
            let cap = low.saturating_add(window);
            let room = cap.saturating_sub(p.sent);
            let in_flight = p.sent > low;
            if room == 0 || (in_flight && room < self.plan.batch.unwrap_or(window.div_ceil(2))) {
                allowed = p.sent;
                blocked = true;
            } else {
                allowed = allowed.min(cap);
            }
        }
        self.pubs[i].window_blocked = blocked;
        (allowed, false)
    }

    /// Appends one masked message frame from publisher `i` to the connection's output.
    fn write_message(&mut self, i: usize, conn: &mut Conn, header: payload::Header) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (self.rng as u32).to_le_bytes();
        if let Some(template) = &mut self.pubs[i].template {
            write_masked_frame(&mut conn.out, true, OpCode::Text, template.fill(header), mask);
            return;
        }
        payload::write(&mut self.payload, header);
        let opcode = if self.plan.text { OpCode::Text } else { OpCode::Binary };
        write_masked_frame(&mut conn.out, true, opcode, &self.payload, mask);
    }
}

/// Marks a publisher finished and publishes its measured range.
fn finish_pub(p: &mut PubLocal, shared: &Shared) {
    if p.done {
        return;
    }
    p.done = true;
    let g = p.global as usize;
    shared.pub_first[g].store(p.first.unwrap_or(p.sent), Ordering::Release);
    shared.pub_end[g].store(p.sent, Ordering::Release);
    shared.pubs_done.fetch_add(1, Ordering::AcqRel);
}

/// The low-water mark of one publisher among a worker's live subscribers of its topic.
#[derive(Debug, Clone, Copy, Default)]
struct LowMark {
    /// The lowest next-sequence.
    low: u64,
    /// Live subscribers at exactly `low`; when it drops to 0, the mark is recomputed.
    at_low: u32,
}

/// The receive side of one subscriber: its row of the pair table.
#[derive(Debug)]
pub struct Receiver<'a> {
    /// `--protocol json`: the envelope head of its topic's deliveries (empty for raw).
    head: &'a [u8],
    pairs: &'a mut [Pair],
    lows: &'a mut [LowMark],
    dirty: &'a mut Vec<u32>,
    /// (topic, slot) of every publisher: a lookup instead of two divisions per message.
    routes: &'a [(u32, u32)],
    topic: u32,
}

impl Receiver<'_> {
    /// `--protocol json`: the envelope head its deliveries start with.
    #[inline]
    pub fn head(&self) -> &[u8] {
        self.head
    }

    /// Accounts one raw data message whose payload starts with `prefix`, received at `recv_ns`.
    #[inline]
    pub fn receive(
        &mut self,
        prefix: &[u8],
        recv_ns: u64,
        measure_ns: u64,
        counters: &mut RecvCounters,
        hist: &mut stats::FastHist,
    ) {
        self.receive_header(payload::read(prefix), recv_ns, measure_ns, counters, hist)
    }

    /// Accounts one data message with header `h` (`None`: not loadgen's), received at `recv_ns`.
    #[inline]
    pub fn receive_header(
        &mut self,
        h: Option<payload::Header>,
        recv_ns: u64,
        measure_ns: u64,
        counters: &mut RecvCounters,
        hist: &mut stats::FastHist,
    ) {
        let Some(h) = h else {
            counters.messages += 1;
            counters.foreign += 1;
            return;
        };
        let p = h.publisher;
        let pair = match self.routes.get(p as usize) {
            Some(&(topic, slot)) if topic == self.topic => self.pairs.get_mut(slot as usize),
            _ => None,
        };
        let Some(pair) = pair else {
            counters.messages += 1;
            counters.foreign += 1;
            return;
        };
        pair.probed = true;
        if h.seq == payload::PROBE_SEQ {
            counters.probes += 1;
            return;
        }
        counters.messages += 1;
        let before = pair.next;
        if !counters.count_sequence(pair.record(h.seq)) {
            return;
        }
        if let Some(mark) = self.lows.get_mut(p as usize) {
            if pair.next != before && before == mark.low && mark.at_low > 0 {
                mark.at_low -= 1;
                if mark.at_low == 0 {
                    self.dirty.push(p);
                }
            }
        }
        if h.sent_ns >= measure_ns {
            pair.measured += 1;
            counters.measured += 1;
            hist.record(recv_ns.saturating_sub(h.sent_ns));
        }
    }
}

#[cfg(test)]
mod tests;
