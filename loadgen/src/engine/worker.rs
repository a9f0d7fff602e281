//! One worker thread's event loop: handshakes, the receive hot path (one read buffer per thread, frames walked
//! in place), the scenario's sending, and the per-second hand-over of latencies to the main thread. Dialing,
//! connect timeouts and the requests a connection makes before it counts as open are in [`open`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use herald::protocol::frame::{write_masked_frame, OpCode};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use slab::Slab;

use super::{Conn, Dial, EngineConfig, Kind, Load, Phase, RxTime, Shared, State, WorkerResult, TICK_NS, TIMER};
use crate::auth::Auth;
use crate::client::{classify_io, connect_result, Dialer, HandshakeProgress};
use crate::echo::EchoLocal;
use crate::json::{self, Incoming};
use crate::scan::Frame;
use crate::stats::{self, Failure, Failures, RecvCounters, ReplyCode};
use crate::sys;

mod open;

/// One worker's loop and everything it owns.
#[derive(Debug)]
pub struct Worker {
    id: usize,
    core: Option<usize>,
    shared: Arc<Shared>,
    poll: Poll,
    timer: sys::Timer,
    conns: Slab<Conn>,
    /// Per endpoint of [`EngineConfig::targets`]: its dialer and `Host` header.
    endpoints: Vec<(Dialer, String)>,
    /// How many of `endpoints` are `--url` ones (the rest are `--pub-url`).
    sub_endpoints: usize,
    tls: Option<Arc<crate::tls::ClientTls>>,
    origin: Option<String>,
    /// `--compress`: permessage-deflate is offered.
    compress: bool,
    /// Inflates the compressed messages of every connection whose server compresses each message on its own.
    inflater: crate::inflate::MessageInflater,
    auth: Option<Arc<Auth>>,
    to_dial: VecDeque<Dial>,
    dial_interval_ns: u64,
    next_dial_ns: u64,
    in_progress: Vec<usize>,
    /// `--tls-resume`: dialing waits for a ticket (a handshake's end wakes the loop, not the dial clock).
    dial_blocked: bool,
    connect_timeout_ns: u64,
    load: Load,
    rbuf: Vec<u8>,
    counters: RecvCounters,
    hist: stats::FastHist,
    /// Scratch for handing `hist` over once a second.
    drained: Histogram<u64>,
    latency: Histogram<u64>,
    connect_time: Histogram<u64>,
    connect_failures: Failures,
    disconnects: Failures,
    rng: u64,
    now: u64,
    next_tick_ns: u64,
    next_flush_ns: u64,
    next_ping_ns: u64,
    measure_ns: u64,
    end_ns: u64,
    cpu_window: [(u64, u64); 2],
    /// With kernel receive timestamps: CLOCK_MONOTONIC minus CLOCK_REALTIME.
    rx_offset: Option<u64>,
}

impl Worker {
    /// Builds worker `id` (on the thread that will run it) for `load`.
    pub fn new(id: usize, cfg: &EngineConfig, shared: Arc<Shared>, load: Load) -> io::Result<Worker> {
        let core = cfg.cpus.as_ref().and_then(|cpus| cpus.get(id % cpus.len().max(1)).copied());
        if let Some(core) = core {
            // Pinning is best effort (a CPU outside the affinity mask is refused): report it, keep going.
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                eprintln!("loadgen: worker {id}: could not pin to CPU {core}");
            }
        }
        let poll = Poll::new()?;
        let timer = sys::Timer::new()?;
        poll.registry().register(&mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&timer)), TIMER, Interest::READABLE)?;
        let mut to_dial: VecDeque<Dial> = match &load {
            Load::Fanout(f) => f.dial_list().into(),
            Load::Idle(setup) => (0..setup.count)
                .map(|i| {
                    // Connections are dealt to workers round robin: worker `id` has numbers id, id + threads, ..
                    let (kind, index, path) = (Kind::Idle(i as u32), id + i * cfg.threads.max(1), setup.path.clone());
                    match &setup.subscribe {
                        Some(topic) => Dial::json(kind, index, path, Some(topic.clone())),
                        None => Dial::raw(kind, index, path),
                    }
                })
                .collect(),
            Load::Echo(e) => e.dial_list().into(),
        };
        if let Some(auth) = &cfg.auth {
            // Minted here, on the worker's thread and before the connect phase, so that minting shows neither
            // in connect times nor in the connect rate.
            let indices: Vec<usize> = to_dial.iter().map(|d| d.index).collect();
            let tokens = auth.tokens(&indices, sys::unix_now_s()).map_err(io::Error::other)?;
            for (dial, token) in to_dial.iter_mut().zip(tokens) {
                dial.token = Some(token);
            }
        }
        let per_thread_rate = cfg.connect_rate / cfg.threads.max(1) as f64;
        let now = sys::now_ns();
        Ok(Worker {
            id,
            core,
            shared,
            poll,
            timer,
            conns: Slab::with_capacity(to_dial.len()),
            endpoints: cfg
                .targets
                .iter()
                .map(|t| {
                    let dialer = Dialer::new(t.addr, cfg.source_ips.clone(), id, cfg.rx_time == RxTime::Kernel);
                    (dialer, t.host.clone())
                })
                .collect(),
            sub_endpoints: cfg.sub_targets,
            tls: cfg.tls.clone(),
            origin: cfg.origin.clone(),
            compress: cfg.compress,
            inflater: crate::inflate::MessageInflater::default(),
            auth: cfg.auth.clone(),
            to_dial,
            dial_interval_ns: if per_thread_rate > 0.0 { (1e9 / per_thread_rate) as u64 } else { 0 },
            next_dial_ns: now,
            in_progress: Vec::new(),
            dial_blocked: false,
            connect_timeout_ns: cfg.connect_timeout.as_nanos() as u64,
            load,
            rbuf: vec![0; cfg.read_size.max(4096) + crate::scan::CARRY_MAX],
            counters: RecvCounters::default(),
            hist: stats::FastHist::default(),
            drained: stats::new_histogram(),
            latency: stats::new_histogram(),
            connect_time: stats::new_histogram(),
            connect_failures: Failures::default(),
            disconnects: Failures::default(),
            rng: now ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            now,
            next_tick_ns: now,
            next_flush_ns: now + 1_000_000_000,
            next_ping_ns: now,
            measure_ns: u64::MAX,
            end_ns: u64::MAX,
            cpu_window: [(0, 0); 2],
            rx_offset: (cfg.rx_time == RxTime::Kernel).then(sys::realtime_to_monotonic_offset),
        })
    }

    /// Runs the loop until the Finish phase, then closes everything and hands back the results.
    pub fn run(mut self) -> io::Result<WorkerResult> {
        let mut events = Events::with_capacity(1024);
        self.shared.ready.fetch_add(1, Ordering::AcqRel);
        while self.shared.phase() == Phase::Prepare {
            std::thread::sleep(Duration::from_micros(200));
        }
        self.now = sys::now_ns();
        (self.next_dial_ns, self.next_tick_ns, self.next_ping_ns) = (self.now, self.now, self.now);
        self.next_flush_ns = self.now + 1_000_000_000;
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Finish {
                break;
            }
            let timeout = self.plan_wakeup(phase)?;
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.now = sys::now_ns();
            // Re-read the phase: the run may have started while we slept, and the messages in these events
            // must already be judged against its window.
            let phase = self.shared.phase().min(Phase::Run).max(phase);
            if phase == Phase::Run && self.measure_ns == u64::MAX {
                self.start_run();
            }
            for event in events.iter() {
                let token = event.token();
                if token == TIMER {
                    self.timer.acknowledge();
                    continue;
                }
                let failed = event.is_error() || (event.is_read_closed() && !event.is_readable());
                self.on_ready(token.0, event.is_readable() || failed, event.is_writable() || failed);
            }
            self.turn(phase);
        }
        self.close_all();
        self.flush_interval();
        let (fanout, echo) = match self.load {
            Load::Fanout(f) => (Some(f), None),
            Load::Echo(e) => (None, Some(e)),
            Load::Idle(_) => (None, None),
        };
        Ok(WorkerResult {
            core: self.core,
            counters: self.counters,
            latency: self.latency,
            connect_time: self.connect_time,
            connect_failures: self.connect_failures,
            disconnects: self.disconnects,
            cpu_window: self.cpu_window,
            fanout,
            echo,
        })
    }

    /// Decides how long the next poll may sleep, arming the timer for sub-millisecond deadlines.
    fn plan_wakeup(&mut self, phase: Phase) -> io::Result<Option<Duration>> {
        let now = sys::now_ns();
        let mut deadline = self.next_tick_ns;
        if !self.to_dial.is_empty() && !self.dial_blocked {
            deadline = deadline.min(self.next_dial_ns);
        }
        if phase == Phase::Run {
            let next = match &self.load {
                Load::Fanout(f) => f.next_wakeup(now),
                Load::Echo(e) => e.next_wakeup(),
                Load::Idle(_) => None,
            };
            match next {
                Some(at) if at <= now => return Ok(Some(Duration::ZERO)),
                Some(at) => deadline = deadline.min(at),
                None => {}
            }
        }
        if deadline <= now {
            return Ok(Some(Duration::ZERO));
        }
        if deadline - now < TICK_NS {
            self.timer.arm_at(deadline)?;
        }
        Ok(Some(Duration::from_nanos(TICK_NS)))
    }

    /// One loop turn after the events: dial, housekeeping, publishing.
    fn turn(&mut self, phase: Phase) {
        self.dial_due();
        for (i, at) in [self.measure_ns, self.end_ns].into_iter().enumerate() {
            if self.cpu_window[i].1 == 0 && self.now >= at {
                self.cpu_window[i] = (sys::thread_cpu_ns(), sys::now_ns());
            }
        }
        let tick = self.now >= self.next_tick_ns;
        if tick {
            self.next_tick_ns = self.now + TICK_NS;
            self.expire_connects();
        }
        let mut closed = Vec::new();
        if let Load::Fanout(f) = &mut self.load {
            match phase {
                Phase::Probe if tick => {
                    f.send_probes(&mut self.conns, self.now, &mut closed);
                    f.update_confirmations(&self.shared, &self.shared.progress[self.id]);
                }
                Phase::Run => {
                    f.publish_acks(&self.shared);
                    let sent = f.pump(&mut self.conns, &self.shared, self.now, &mut closed);
                    if sent > 0 {
                        self.shared.progress[self.id].published.fetch_add(sent, Ordering::Relaxed);
                    }
                    if tick {
                        f.update_outstanding(&self.shared, &self.shared.progress[self.id]);
                    }
                }
                _ => {}
            }
        }
        if let (Load::Echo(e), Phase::Run) = (&mut self.load, phase) {
            let sent = e.pump(&mut self.conns, self.now, &mut closed);
            if sent > 0 {
                self.shared.progress[self.id].published.fetch_add(sent, Ordering::Relaxed);
            }
            if tick {
                e.update_outstanding(self.now, &self.shared.progress[self.id]);
            }
        }
        if let Load::Idle(setup) = &self.load {
            if let Some(every) = setup.ping_every {
                if self.now >= self.next_ping_ns {
                    self.next_ping_ns = self.now + every.as_nanos() as u64;
                    self.ping_all(&mut closed);
                }
            }
        }
        for (token, failure) in closed {
            self.close(token, Some(failure));
        }
        let p = &self.shared.progress[self.id];
        p.received.store(self.counters.messages, Ordering::Relaxed);
        p.measured.store(self.counters.measured, Ordering::Relaxed);
        p.lost.store(self.counters.skipped.saturating_sub(self.counters.reordered), Ordering::Relaxed);
        if self.now >= self.next_flush_ns {
            self.next_flush_ns = self.now + 1_000_000_000;
            self.flush_interval();
        }
    }

    /// The run phase began: take its window and let the scenario set up its schedules.
    fn start_run(&mut self) {
        self.measure_ns = self.shared.measure_ns.load(Ordering::Acquire);
        self.end_ns = self.shared.end_ns.load(Ordering::Acquire);
        match &mut self.load {
            Load::Fanout(f) => f.start_run(&self.shared),
            Load::Echo(e) => e.start_run(&self.shared),
            Load::Idle(_) => {}
        }
    }

    /// Hands the latencies recorded since the last call to the main thread and folds them into the total.
    fn flush_interval(&mut self) {
        if self.hist.is_empty() {
            return;
        }
        self.drained.reset();
        self.hist.drain_into(&mut self.drained);
        stats::merge(&mut self.latency, &self.drained);
        if let Ok(mut slot) = self.shared.interval[self.id].lock() {
            stats::merge(&mut slot.hist, &self.drained);
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Handles readiness of connection `token`.
    fn on_ready(&mut self, token: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(token) else { return };
        match &mut conn.state {
            State::Handshaking(opening) => {
                let h = &mut opening.0;
                match connect_result(&conn.stream.sock) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(f) => return self.close(token, Some(f)),
                }
                let progress = match h.write_request(&mut conn.stream) {
                    Ok(true) => h.read_response(&mut conn.stream),
                    Ok(false) => Ok(HandshakeProgress::Pending),
                    Err(f) => Err(f),
                };
                match progress {
                    Ok(HandshakeProgress::Pending) => {}
                    Ok(HandshakeProgress::Open(rest)) => {
                        if let Some(tls) = &self.tls {
                            tls.count(&conn.stream);
                        }
                        if let Some(agreed) = h.deflate() {
                            self.counters.deflate_negotiated += 1;
                            conn.scanner.enable_deflate();
                            if !agreed.no_context_takeover {
                                conn.inflater = Some(Box::default());
                            }
                        }
                        let setup = State::Setup { awaiting: 0, message_token: None };
                        if let State::Handshaking(opening) = std::mem::replace(&mut conn.state, setup) {
                            self.upgraded(token, opening.1, &rest);
                        }
                    }
                    Err(f) => self.close(token, Some(f)),
                }
            }
            State::Setup { .. } | State::Open => {
                if writable && conn.pending() > 0 {
                    match conn.flush() {
                        Ok(_) => {}
                        Err(f) => return self.close(token, Some(f)),
                    }
                } else if writable {
                    conn.write_blocked = false;
                }
                if readable {
                    self.read(token);
                }
            }
        }
    }

    /// Reads connection `token` until drained, walking the frames of each read.
    fn read(&mut self, token: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(token) else { return };
            let carry = conn.scanner.carry().len();
            self.rbuf[..carry].copy_from_slice(conn.scanner.carry());
            let room = self.rbuf.len() - crate::scan::CARRY_MAX;
            let offset = self.rx_offset;
            let result = conn
                .stream
                .read_stamped(&mut self.rbuf[carry..carry + room], offset.is_some())
                .map(|(n, stamp)| (n, stamp.and_then(|real| offset.map(|o| real.wrapping_add(o)))));
            match result {
                Ok((0, _)) => return self.close(token, Some(Failure::Eof)),
                Ok((n, stamp)) => {
                    self.counters.reads += 1;
                    let recv_ns = stamp.unwrap_or_else(sys::now_ns);
                    match self.process_rbuf(token, carry + n, recv_ns) {
                        Ok(false) => {}
                        Ok(true) => self.mark_open(token),
                        Err(f) => return self.close(token, Some(f)),
                    }
                    if n < room && !self.conns.get(token).is_some_and(|c| c.stream.read_pending()) {
                        // A short read emptied the socket (for TLS too); the next arrival raises a new edge.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(token, Some(classify_io(&e))),
            }
        }
    }

    /// Walks bytes that are not in the read buffer (those that came with the handshake response).
    fn process(&mut self, token: usize, bytes: &[u8], recv_ns: u64) {
        let Some(conn) = self.conns.get_mut(token) else { return };
        let mut buf = conn.scanner.carry().to_vec();
        buf.extend_from_slice(bytes);
        let len = buf.len();
        if self.rbuf.len() < len {
            self.rbuf.resize(len, 0);
        }
        self.rbuf[..len].copy_from_slice(&buf);
        match self.process_rbuf(token, len, recv_ns) {
            Ok(false) => {}
            Ok(true) => self.mark_open(token),
            Err(f) => self.close(token, Some(f)),
        }
    }

    /// Walks the frames in `rbuf[..len]` for connection `token`: the receive hot path. `Ok(true)`: the acks
    /// the connection was waiting for to open all arrived.
    fn process_rbuf(&mut self, token: usize, len: usize, recv_ns: u64) -> Result<bool, Failure> {
        let Worker { conns, rbuf, load, counters, hist, rng, measure_ns, end_ns, inflater, .. } = self;
        let Some(conn) = conns.get_mut(token) else { return Ok(false) };
        let Conn { scanner, out, kind, json, state, inflater: own_inflater, .. } = &mut *conn;
        let keep = scanner.prefix();
        let mut invalid_deflate = false;
        let (kind, json) = (*kind, *json);
        let mut awaiting = match state {
            State::Setup { awaiting, .. } => *awaiting,
            _ => 0,
        };
        let setting_up = awaiting > 0;
        let mut refused: Option<ReplyCode> = None;
        let mut close: Option<u16> = None;
        let before = counters.messages;
        let before_bytes = counters.bytes;
        let before_wire = counters.wire_bytes;
        let mask = (*rng as u32).to_le_bytes();
        let measure = *measure_ns;
        let mut target = match (kind, load) {
            (Kind::Sub(local), Load::Fanout(f)) => Sink::Sub(f.receiver(local)),
            (Kind::Echo(local), Load::Echo(e)) => Sink::Echo(e, local),
            _ => Sink::Count,
        };
        scanner
            .scan(&rbuf[..len], |frame| {
                // A compressed message is inflated whole (its CPU is loadgen's), then read like a plain one; `wire`
                // is what its payload took on the wire.
                let mut head = [0u8; 125];
                let (frame, wire) = match frame {
                    Frame::Deflated { opcode, payload } => {
                        let (inflater, reset) = match own_inflater {
                            Some(own) => (&mut **own, false),
                            None => (&mut *inflater, true),
                        };
                        match inflater.inflate(payload, reset, &mut head[..keep]) {
                            Ok((len, kept)) => {
                                counters.compressed_messages += 1;
                                (Frame::Data { opcode, fin: true, len, prefix: &head[..kept] }, payload.len() as u64)
                            }
                            Err(_) => {
                                invalid_deflate = true;
                                return;
                            }
                        }
                    }
                    Frame::Data { len, .. } => (frame, len),
                    other => (other, 0),
                };
                match frame {
                    Frame::Data { opcode: OpCode::Text, len, prefix, .. } if json => {
                        // herald's JSON endpoint: replies are told from deliveries by their first bytes.
                        let head = match &target {
                            Sink::Sub(sub) => sub.head(),
                            _ => &[],
                        };
                        match json::incoming(prefix, head) {
                            Incoming::Message(data) => {
                                counters.bytes += len;
                                counters.wire_bytes += wire;
                                match &mut target {
                                    Sink::Sub(sub) => {
                                        sub.receive_header(json::read_header(data), recv_ns, measure, counters, hist)
                                    }
                                    _ => counters.messages += 1,
                                }
                            }
                            Incoming::Ack => {
                                counters.acks += 1;
                                awaiting = awaiting.saturating_sub(1);
                            }
                            Incoming::Error(code) if awaiting > 0 => {
                                refused.get_or_insert(ReplyCode::new(code));
                            }
                            Incoming::Error(_) => counters.error_replies += 1,
                            Incoming::Gap => counters.gap_notices += 1,
                            Incoming::Other => {
                                counters.bytes += len;
                                counters.wire_bytes += wire;
                                counters.messages += 1;
                                counters.foreign += 1;
                            }
                        }
                    }
                    Frame::Data { opcode, len, prefix, .. } => {
                        counters.bytes += len;
                        counters.wire_bytes += wire;
                        if opcode != OpCode::Continuation {
                            match &mut target {
                                Sink::Sub(sub) => sub.receive(prefix, recv_ns, measure, counters, hist),
                                Sink::Echo(e, local) => e.receive(*local, prefix, recv_ns, counters, hist),
                                Sink::Count => counters.messages += 1,
                            }
                        }
                    }
                    Frame::Ping(payload) => {
                        counters.pings += 1;
                        if close.is_none() {
                            write_masked_frame(out, true, OpCode::Pong, payload, mask);
                        }
                    }
                    Frame::Pong(_) => {}
                    Frame::Close(payload) => {
                        if close.is_none() {
                            let code = match payload {
                                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                                _ => 0,
                            };
                            close = Some(code);
                            // Echo the close (RFC 6455 section 5.5.1), code only.
                            let body: &[u8] = if payload.len() >= 2 { &payload[..2] } else { &[] };
                            write_masked_frame(out, true, OpCode::Close, body, mask);
                        }
                    }
                    Frame::Deflated { .. } => {}
                }
            })
            .map_err(|_| Failure::Protocol)?;
        if invalid_deflate {
            return Err(Failure::Protocol);
        }
        if let State::Setup { awaiting: left, .. } = state {
            *left = awaiting;
        }
        if recv_ns >= measure && recv_ns < *end_ns {
            counters.messages_in_window += counters.messages - before;
            counters.bytes_in_window += counters.bytes - before_bytes;
            counters.wire_bytes_in_window += counters.wire_bytes - before_wire;
        }
        if conn.pending() > 0 {
            conn.flush()?;
        }
        if let Some(code) = refused {
            return Err(Failure::ErrorReply(code));
        }
        if let Some(code) = close {
            return Err(Failure::ClosedByServer(code));
        }
        Ok(setting_up && awaiting == 0)
    }

    /// Sends a ping on every open idle connection.
    fn ping_all(&mut self, closed: &mut Vec<(usize, Failure)>) {
        let mask = (self.next_random() as u32).to_le_bytes();
        for (token, conn) in self.conns.iter_mut() {
            if conn.is_open() {
                write_masked_frame(&mut conn.out, true, OpCode::Ping, b"loadgen", mask);
                if let Err(f) = conn.flush() {
                    closed.push((token, f));
                }
            }
        }
    }

    /// Removes connection `token`, counting `failure` unless the run is finishing.
    fn close(&mut self, token: usize, failure: Option<Failure>) {
        if !self.conns.contains(token) {
            return;
        }
        let mut conn = self.conns.remove(token);
        let _ = self.poll.registry().deregister(&mut conn.stream.sock);
        let was_open = conn.is_open();
        let p = &self.shared.progress[self.id];
        if was_open {
            p.open.fetch_sub(1, Ordering::Relaxed);
            p.closed.fetch_add(1, Ordering::Relaxed);
        } else {
            p.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = failure {
            if self.shared.phase() != Phase::Finish {
                if was_open {
                    self.disconnects.count(f);
                } else {
                    self.connect_failures.count(f);
                }
            }
        }
        self.on_gone(conn.kind, was_open);
    }

    /// Tells the scenario that a connection of `kind` is gone (or never came).
    fn on_gone(&mut self, kind: Kind, _was_open: bool) {
        match &mut self.load {
            Load::Fanout(f) => f.on_closed(kind, &self.shared),
            Load::Echo(e) => e.on_closed(kind),
            Load::Idle(_) => {}
        }
    }

    /// Sends a close frame on every open connection (best effort, one write) and drops them all.
    fn close_all(&mut self) {
        let mask = (self.next_random() as u32).to_le_bytes();
        for (_, conn) in self.conns.iter_mut() {
            if conn.is_open() {
                conn.out.clear();
                conn.out_pos = 0;
                write_masked_frame(&mut conn.out, true, OpCode::Close, &1000u16.to_be_bytes(), mask);
                let _ = conn.flush();
            }
        }
        self.conns.clear();
        self.shared.progress[self.id].open.store(0, Ordering::Relaxed);
    }
}

/// Where the data messages of one read go.
enum Sink<'a> {
    /// A fan-out subscriber's sequence row.
    Sub(crate::fanout::Receiver<'a>),
    /// An echo connection.
    Echo(&'a mut EchoLocal, u32),
    /// Counted only (publishers, idle connections).
    Count,
}
