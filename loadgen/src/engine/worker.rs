//! One worker thread's event loop: dialing at the connect rate, handshakes, the receive hot path (one read
//! buffer per thread, frames walked in place), the scenario's sending, timeouts, and the per-second hand-over
//! of latencies to the main thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use herald::protocol::frame::{write_masked_frame, OpCode};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::{Conn, EngineConfig, Kind, Load, Phase, RxTime, Shared, State, WorkerResult, DIAL_BATCH, TICK_NS, TIMER};
use crate::client::{classify_io, connect_result, Dialer, Handshake, HandshakeProgress};
use crate::echo::EchoLocal;
use crate::scan::{Frame, Scanner};
use crate::stats::{self, Failure, Failures, RecvCounters};
use crate::sys;

/// One worker's loop and everything it owns.
#[derive(Debug)]
pub struct Worker {
    id: usize,
    core: Option<usize>,
    shared: Arc<Shared>,
    poll: Poll,
    timer: sys::Timer,
    conns: Slab<Conn>,
    dialer: Dialer,
    host: String,
    to_dial: VecDeque<(Kind, String)>,
    dial_interval_ns: u64,
    next_dial_ns: u64,
    in_progress: Vec<usize>,
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
        let mut to_dial = VecDeque::new();
        match &load {
            Load::Fanout(f) => to_dial.extend(f.dial_list()),
            Load::Idle(setup) => to_dial.extend((0..setup.count).map(|i| (Kind::Idle(i as u32), setup.path.clone()))),
            Load::Echo(e) => to_dial.extend(e.dial_list()),
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
            dialer: Dialer::new(cfg.target.addr, cfg.source_ips.clone(), id, cfg.rx_time == RxTime::Kernel),
            host: cfg.target.host.clone(),
            to_dial,
            dial_interval_ns: if per_thread_rate > 0.0 { (1e9 / per_thread_rate) as u64 } else { 0 },
            next_dial_ns: now,
            in_progress: Vec::new(),
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
        if !self.to_dial.is_empty() {
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

    /// Dials the connections that are due under the connect rate.
    fn dial_due(&mut self) {
        let mut budget = DIAL_BATCH;
        while budget > 0 && self.now >= self.next_dial_ns {
            let Some((kind, path)) = self.to_dial.pop_front() else { break };
            budget -= 1;
            self.next_dial_ns = if self.dial_interval_ns == 0 {
                self.now
            } else {
                self.next_dial_ns.max(self.now.saturating_sub(self.dial_interval_ns)) + self.dial_interval_ns
            };
            let shared = self.shared.clone();
            let progress = &shared.progress[self.id];
            let mut sock = match self.dialer.dial() {
                Ok(sock) => sock,
                Err(e) => {
                    self.connect_failures.count(classify_io(&e));
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    self.on_gone(kind, false);
                    continue;
                }
            };
            let nonce_a = self.next_random().to_le_bytes();
            let nonce_b = self.next_random().to_le_bytes();
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&nonce_a);
            nonce[8..].copy_from_slice(&nonce_b);
            let entry = self.conns.vacant_entry();
            let token = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut sock, Token(token), Interest::READABLE | Interest::WRITABLE)
            {
                self.connect_failures.count(classify_io(&e));
                progress.failed.fetch_add(1, Ordering::Relaxed);
                self.on_gone(kind, false);
                continue;
            }
            entry.insert(Conn {
                sock,
                kind,
                state: State::Handshaking(Box::new(Handshake::new(&self.host, &path, nonce, &[]))),
                dialed_ns: self.now,
                scanner: Scanner::new(crate::plan::payload::HEADER_LEN),
                out: Vec::new(),
                out_pos: 0,
                write_blocked: false,
            });
            // The request is written once the connect completes (the socket turns writable).
            self.in_progress.push(token);
        }
    }

    /// Fails connections that have not opened within the connect timeout.
    fn expire_connects(&mut self) {
        let now = self.now;
        let timeout = self.connect_timeout_ns;
        let mut expired = Vec::new();
        self.in_progress.retain(|&token| match self.conns.get(token) {
            Some(conn) if !conn.is_open() => {
                if now.saturating_sub(conn.dialed_ns) > timeout {
                    expired.push(token);
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
        for token in expired {
            self.close(token, Some(Failure::Timeout));
        }
    }

    /// Handles readiness of connection `token`.
    fn on_ready(&mut self, token: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(token) else { return };
        match &mut conn.state {
            State::Handshaking(h) => {
                match connect_result(&conn.sock) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(f) => return self.close(token, Some(f)),
                }
                let progress = match h.write_request(&mut conn.sock) {
                    Ok(true) => h.read_response(&mut conn.sock),
                    Ok(false) => Ok(HandshakeProgress::Pending),
                    Err(f) => Err(f),
                };
                match progress {
                    Ok(HandshakeProgress::Pending) => {}
                    Ok(HandshakeProgress::Open(rest)) => {
                        conn.state = State::Open;
                        let kind = conn.kind;
                        stats::record(&mut self.connect_time, self.now.saturating_sub(conn.dialed_ns));
                        let p = &self.shared.progress[self.id];
                        p.connected.fetch_add(1, Ordering::Relaxed);
                        p.open.fetch_add(1, Ordering::Relaxed);
                        match &mut self.load {
                            Load::Fanout(f) => f.on_open(kind, token, &self.shared),
                            Load::Echo(e) => e.on_open(kind, token),
                            Load::Idle(_) => {}
                        }
                        if !rest.is_empty() {
                            self.process(token, &rest, self.now);
                        }
                        // More may have arrived after the head: the edge is consumed, so read now.
                        self.read(token);
                    }
                    Err(f) => self.close(token, Some(f)),
                }
            }
            State::Open => {
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
            let result = match self.rx_offset {
                Some(offset) => sys::recv_timestamped(conn.sock.as_raw_fd(), &mut self.rbuf[carry..carry + room])
                    .map(|(n, stamp)| (n, stamp.map(|real| real.wrapping_add(offset)))),
                None => conn.sock.read(&mut self.rbuf[carry..carry + room]).map(|n| (n, None)),
            };
            match result {
                Ok((0, _)) => return self.close(token, Some(Failure::Eof)),
                Ok((n, stamp)) => {
                    self.counters.reads += 1;
                    let recv_ns = stamp.unwrap_or_else(sys::now_ns);
                    if let Err(f) = self.process_rbuf(token, carry + n, recv_ns) {
                        return self.close(token, Some(f));
                    }
                    if n < room {
                        // A short read emptied the socket; the next arrival raises a new edge.
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
        if let Err(f) = self.process_rbuf(token, len, recv_ns) {
            self.close(token, Some(f));
        }
    }

    /// Walks the frames in `rbuf[..len]` for connection `token`: the receive hot path.
    fn process_rbuf(&mut self, token: usize, len: usize, recv_ns: u64) -> Result<(), Failure> {
        let Worker { conns, rbuf, load, counters, hist, rng, measure_ns, end_ns, .. } = self;
        let Some(conn) = conns.get_mut(token) else { return Ok(()) };
        let Conn { scanner, out, kind, .. } = &mut *conn;
        let kind = *kind;
        let mut close: Option<u16> = None;
        let before = counters.messages;
        let before_bytes = counters.bytes;
        let mask = (*rng as u32).to_le_bytes();
        let measure = *measure_ns;
        let mut target = match (kind, load) {
            (Kind::Sub(local), Load::Fanout(f)) => Sink::Sub(f.receiver(local)),
            (Kind::Echo(local), Load::Echo(e)) => Sink::Echo(e, local),
            _ => Sink::Count,
        };
        scanner
            .scan(&rbuf[..len], |frame| match frame {
                Frame::Data { opcode, len, prefix, .. } => {
                    counters.bytes += len;
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
            })
            .map_err(|_| Failure::Protocol)?;
        if recv_ns >= measure && recv_ns < *end_ns {
            counters.messages_in_window += counters.messages - before;
            counters.bytes_in_window += counters.bytes - before_bytes;
        }
        if conn.pending() > 0 {
            conn.flush()?;
        }
        if let Some(code) = close {
            return Err(Failure::ClosedByServer(code));
        }
        Ok(())
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
        let _ = self.poll.registry().deregister(&mut conn.sock);
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
