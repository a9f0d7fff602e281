//! The io_uring driver: one ring per worker, created with `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`.
//!
//! - **Accept:** a multishot accept on each of the worker's own `SO_REUSEPORT` listeners.
//! - **Receive:** a multishot receive per connection, selecting from the worker's provided-buffer ring
//!   ([`bufring`]): a buffer is taken only when bytes arrive, the bytes are handed to the state at once
//!   (through [`Io::read`](super::Io::read)) and the buffer goes straight back, so an idle connection holds
//!   no read buffer. When the state does not take everything (its read budget, a paused reader, the drain),
//!   the rest waits in the connection's stash and the receive is cancelled until the state reads again: the
//!   kernel's socket buffer, not the worker, holds what a paused client sends.
//! - **Send:** one `sendmsg` entry per connection with everything it has queued; all of a turn's sends go in
//!   one submission (one `io_uring_enter` for a broadcast to any number of subscribers). At most one send is
//!   in flight per socket (`SENDING`); the plain bytes it covers stay in the outbox (and their `Bytes` in the
//!   send's record) until the completion says how many went, so a short write resumes where it stopped. TLS
//!   ciphertext is moved out of the session into the record, which sends the rest itself after a short write.
//!   A record outlives its connection: closing a connection while its send is in flight frees nothing the
//!   kernel still reads.
//! - **Timers** are the wait's own timeout (`IORING_ENTER_EXT_ARG`), the worker's next tick.
//! - **Wake:** an eventfd read kept armed ([`wake`]).
//!
//! Every completion names its operation, the connection's slab key and a generation in its `user_data`;
//! a completion for a connection that has since closed (its generation moved on) only gives its buffer back.
//!
//! The crate denies `unsafe`; this module is where the kernel shares our memory, so it allows it, and every
//! `unsafe` here says why it is sound.
#![allow(unsafe_code)]

pub mod bufring;
pub mod wake;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use self::bufring::BufRing;
use self::wake::EventFd;
use super::send_flags;
use super::Io;
use crate::broker::index::ConnKey;
use crate::config::Config;
use crate::metrics::Metric;
use crate::server::conn::SENDING;
use crate::server::outbox::Outbox;
use crate::server::worker::{Listeners, Worker};
use crate::tls::TlsSession;

/// Why the uring backend cannot start here.
#[derive(Debug, thiserror::Error)]
#[error("--backend uring: {what} ({source}); {fix}")]
pub struct UringError {
    /// What failed.
    what: &'static str,
    /// The fix, or the way around it.
    fix: &'static str,
    /// The OS error.
    source: io::Error,
}

impl UringError {
    fn new(what: &'static str, source: io::Error) -> Self {
        let fix = match source.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no io_uring: use a kernel of 6.1 or later, or --backend epoll",
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "io_uring is forbidden here (the kernel.io_uring_disabled sysctl, or a seccomp profile such as a \
                 container runtime's default): allow io_uring_setup, or use --backend epoll"
            }
            Some(libc::ENOMEM) => {
                "not enough locked memory for the ring: raise RLIMIT_MEMLOCK (ulimit -l), lower \
                 server.uring_entries or server.uring_buffers, or use --backend epoll"
            }
            Some(libc::EINVAL) => {
                "this kernel lacks an io_uring feature herald needs (DEFER_TASKRUN and provided-buffer rings: \
                 6.1 or later): upgrade the kernel, or use --backend epoll"
            }
            _ => "use --backend epoll",
        };
        UringError { what, fix, source }
    }
}

/// A worker's ring, made (disabled) on the starting thread so that a refusal stops the start with its cause;
/// the worker's thread enables it and becomes its only submitter.
pub struct UringSetup {
    ring: IoUring,
    bufs: BufRing,
    wake: Arc<EventFd>,
}

impl std::fmt::Debug for UringSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSetup").field("bufs", &self.bufs).finish_non_exhaustive()
    }
}

impl UringSetup {
    /// A ring, its receive buffers and its waker, sized by `[server]`.
    pub fn new(cfg: &Config) -> Result<Self, UringError> {
        let entries = cfg.server.uring_entries;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_r_disabled()
            .setup_cqsize(entries.saturating_mul(4))
            .build(entries)
            .map_err(|e| UringError::new("cannot create the ring", e))?;
        let count = u16::try_from(cfg.server.uring_buffers.next_power_of_two()).unwrap_or(32768);
        let size = u32::try_from(cfg.limits.read_buffer.bytes()).unwrap_or(u32::MAX);
        let bufs = BufRing::new(count, size).map_err(|e| UringError::new("cannot allocate receive buffers", e))?;
        bufs.register(&ring).map_err(|e| UringError::new("cannot register the receive buffer ring", e))?;
        let wake = Arc::new(EventFd::new().map_err(|e| UringError::new("cannot create the wake eventfd", e))?);
        Ok(UringSetup { ring, bufs, wake })
    }

    /// What peers wake this worker with.
    pub fn waker(&self) -> Arc<EventFd> {
        self.wake.clone()
    }
}

/// What a completion is for (the top 4 bits of its `user_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Wake = 4,
    Cancel = 5,
}

/// Generations wrap at 28 bits (the bits left beside the key and the operation).
const GEN_MASK: u32 = 0x0FFF_FFFF;

fn user_data(op: Op, gen: u32, index: usize) -> u64 {
    ((op as u64) << 60) | (u64::from(gen & GEN_MASK) << 32) | (index as u64 & 0xFFFF_FFFF)
}

fn parse_user_data(ud: u64) -> (u64, u32, usize) {
    (ud >> 60, ((ud >> 32) as u32) & GEN_MASK, (ud & 0xFFFF_FFFF) as usize)
}

/// A connection's receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Recv {
    /// None armed.
    #[default]
    Off,
    /// A multishot receive is armed.
    Armed,
    /// Its cancellation is submitted; its last completion has not come yet.
    Cancelling,
}

/// The driver's view of one connection (indexed by the state's slab key). Eight bytes, kept for every slab
/// index ever used: this is what an idle connection costs the uring driver in user space. Bytes the state has
/// not taken yet are rare and live in [`UringIo::stashes`], not here.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Bumped when the connection closes: completions of an older generation are stale.
    gen: u32,
    recv: Recv,
    /// The peer's EOF has completed.
    eof: bool,
    /// A receive failed with this errno (handed to the state by the next read; errno values fit 16 bits).
    error: u16,
}

/// An in-flight send: what the kernel reads from until the completion.
#[derive(Debug)]
struct SendRec {
    key: ConnKey,
    gen: u32,
    /// Plain: the queued buffers the iovecs point into (kept alive here, whatever happens to the connection).
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    /// The message header the send names (boxed: the kernel reads it at an address that must not move).
    msg: Box<libc::msghdr>,
    /// TLS: the ciphertext, and how much of it is sent.
    tls: Vec<u8>,
    off: usize,
    /// The worker shuts the socket down once this send completes: send with `MSG_MORE`, so that the FIN
    /// rides in the last segment (see `Io::send_outbox`).
    fin_follows: bool,
}

impl Default for SendRec {
    fn default() -> Self {
        // SAFETY: an all-zero msghdr is a valid empty header (null name, no iovecs, no control data).
        let msg = Box::new(unsafe { std::mem::zeroed::<libc::msghdr>() });
        SendRec { key: 0, gen: 0, bufs: Vec::new(), iov: Vec::new(), msg, tls: Vec::new(), off: 0, fin_follows: false }
    }
}

// SAFETY: the raw pointers in `iov` point into `bufs`, owned by the same record; the record never leaves the
// worker's thread in practice, and `Send` is only needed because the driver is built on the starting thread.
unsafe impl Send for SendRec {}

/// The bytes of the completion being handed to the state.
#[derive(Debug, Clone, Copy)]
struct Current {
    key: ConnKey,
    bid: u16,
    off: usize,
    len: usize,
}

/// Most spare send records kept for reuse.
const SPARE_SENDS: usize = 1024;

/// The uring driver's side of a worker.
pub struct UringIo {
    ring: IoUring,
    bufs: BufRing,
    listeners: [Option<std::net::TcpListener>; 2],
    /// Whether each listener's multishot accept is armed.
    accepting: [bool; 2],
    /// When to arm again an accept that stopped on an error (EMFILE and the like).
    accept_retry: Option<Instant>,
    main_tls: bool,
    slots: Vec<Slot>,
    /// Bytes received that the state has not taken yet, per connection (only while it is paused or over its
    /// budget; an entry is removed once drained).
    stashes: HashMap<ConnKey, Vec<u8>>,
    sends: Slab<SendRec>,
    spare: Vec<SendRec>,
    current: Option<Current>,
    /// Connections whose receive stopped because every buffer was in use: armed again at the end of the turn.
    starved: Vec<ConnKey>,
    wake: Arc<EventFd>,
    wake_buf: Box<u64>,
    /// Receives that found every buffer in use, since the last metrics hand-over.
    exhausted: u64,
    completions: Vec<(u64, i32, u32)>,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo").field("sends", &self.sends.len()).finish_non_exhaustive()
    }
}

impl UringIo {
    /// The driver over `setup`'s ring, with the worker's listeners.
    pub fn new(setup: UringSetup, listeners: Listeners) -> Self {
        UringIo {
            ring: setup.ring,
            bufs: setup.bufs,
            listeners: [Some(listeners.main), listeners.tls],
            accepting: [false; 2],
            accept_retry: None,
            main_tls: listeners.main_tls,
            slots: Vec::new(),
            stashes: HashMap::new(),
            sends: Slab::new(),
            spare: Vec::new(),
            current: None,
            starved: Vec::new(),
            wake: setup.wake,
            wake_buf: Box::new(0),
            exhausted: 0,
            completions: Vec::with_capacity(1024),
        }
    }

    /// Queues `entry`, submitting what is queued first when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller keeps `entry`'s buffers alive until its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full (and has overflowed): the kernel takes no more entries
                    // until completions are consumed. Move them aside for the next turn and try again (trying
                    // again without this spun for as long as the overflow lasted: 10,000 sends in one turn).
                    self.completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
                }
                Err(e) => {
                    tracing::warn!("io_uring submit failed: {e}");
                    return;
                }
            }
        }
    }

    fn slot(&mut self, key: ConnKey) -> &mut Slot {
        if key >= self.slots.len() {
            self.slots.resize_with(key + 1, Slot::default);
        }
        &mut self.slots[key]
    }

    fn arm_accept(&mut self, which: usize) {
        let Some(listener) = &self.listeners[which] else { return };
        let fd = types::Fd(listener.as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd)
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Op::Accept, 0, which));
        // SAFETY: a multishot accept without an address points to no memory of ours.
        unsafe { self.push(&entry) };
        self.accepting[which] = true;
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry =
            opcode::Read::new(types::Fd(self.wake.fd()), buf.cast(), 8).build().user_data(user_data(Op::Wake, 0, 0));
        // SAFETY: `wake_buf` is a box owned by this driver, alive until the ring is dropped (field order).
        unsafe { self.push(&entry) };
    }

    fn arm_recv(&mut self, key: ConnKey, fd: i32) {
        let slot = self.slot(key);
        if slot.recv != Recv::Off || slot.eof || slot.error != 0 {
            return;
        }
        slot.recv = Recv::Armed;
        let gen = slot.gen;
        let entry =
            opcode::RecvMulti::new(types::Fd(fd), bufring::GROUP).build().user_data(user_data(Op::Recv, gen, key));
        // SAFETY: the receive writes only into buffers of the registered ring, which outlives every request.
        unsafe { self.push(&entry) };
    }

    fn cancel(&mut self, target: u64) {
        let entry = opcode::AsyncCancel::new(target).build().user_data(user_data(Op::Cancel, 0, 0));
        // SAFETY: a cancellation points to no memory.
        unsafe { self.push(&entry) };
    }

    pub(super) fn read(&mut self, key: ConnKey, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        // The stash holds older bytes than the completion being handed over: it goes first, and the completion
        // fills what room is left, so that a short read means both are empty (the state stops at a short read).
        let mut n = 0;
        if let Some(stash) = self.stashes.get_mut(&key) {
            n = buf.len().min(stash.len());
            buf[..n].copy_from_slice(&stash[..n]);
            stash.drain(..n);
            if !stash.is_empty() {
                return Ok(n);
            }
            self.stashes.remove(&key);
        }
        if let Some(cur) = self.current.as_mut().filter(|c| c.key == key && c.off < c.len) {
            let bytes = self.bufs.filled(cur.bid, cur.len);
            let more = (buf.len() - n).min(cur.len - cur.off);
            buf[n..n + more].copy_from_slice(&bytes[cur.off..cur.off + more]);
            cur.off += more;
            n += more;
        }
        if n > 0 {
            if self.current.is_none_or(|c| c.key != key || c.off == c.len) {
                // The state is reading and has everything: receive again now (if nothing is armed), since it
                // may stop at this read without asking once more (with epoll, the next edge would come anyway).
                self.arm_recv(key, stream.as_raw_fd());
            }
            return Ok(n);
        }
        let slot = self.slot(key);
        if slot.error != 0 {
            let e = std::mem::take(&mut slot.error);
            return Err(io::Error::from_raw_os_error(i32::from(e)));
        }
        if slot.eof {
            return Ok(0);
        }
        // Everything received is taken: receive more.
        self.arm_recv(key, stream.as_raw_fd());
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// A send record (a spare one when there is) for `key`'s current connection.
    fn record_for(&mut self, key: ConnKey) -> SendRec {
        let gen = self.slot(key).gen;
        let mut rec = self.spare.pop().unwrap_or_default();
        rec.key = key;
        rec.gen = gen;
        rec
    }

    pub(super) fn send_outbox(
        &mut self,
        key: ConnKey,
        stream: &TcpStream,
        outbox: &mut Outbox,
        flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        let mut rec = self.record_for(key);
        rec.fin_follows = fin_follows;
        let send_flags = send_flags(fin_follows);
        for b in outbox.queued() {
            rec.iov.push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
            rec.bufs.push(b.clone());
        }
        let fd = types::Fd(stream.as_raw_fd());
        // send/sendmsg, not write/writev: io_uring completes a writev on a non-blocking socket with EAGAIN when
        // the socket is full, while a send waits for room inside the kernel. One buffer (a message sent alone,
        // the common case at low rates) goes as a plain send: no header or iovec for the kernel to copy in
        // (`io_msg_copy_hdr` and the iovec import were 4-5% of the worker's CPU at 1000 msgs/s).
        let entry = if let [one] = rec.iov[..] {
            // A longer buffer than a u32 counts is sent in part; the rest goes as a short write does.
            let len = u32::try_from(one.iov_len).unwrap_or(u32::MAX);
            opcode::Send::new(fd, one.iov_base as *const u8, len).flags(send_flags).build()
        } else {
            rec.msg.msg_iov = rec.iov.as_mut_ptr();
            rec.msg.msg_iovlen = rec.iov.len();
            opcode::SendMsg::new(fd, &*rec.msg).flags(send_flags as u32).build()
        };
        let index = self.sends.insert(rec);
        // SAFETY: the header, the iovecs and the bytes they point to are owned by the record (the header boxed,
        // the vectors and the `Bytes` on the heap: none moves when the record does), which stays in `sends`
        // until this send's completion removes it.
        unsafe { self.push(&entry.user_data(user_data(Op::Send, 0, index))) };
        *flags |= SENDING;
        Err(io::ErrorKind::WouldBlock.into())
    }

    pub(super) fn send_ciphertext(
        &mut self,
        key: ConnKey,
        stream: &TcpStream,
        session: &mut TlsSession,
        flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        let mut rec = self.record_for(key);
        rec.fin_follows = fin_follows;
        session.drain_tls_into(&mut rec.tls);
        let index = self.sends.insert(rec);
        self.submit_tls(index, stream.as_raw_fd());
        *flags |= SENDING;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Submits what record `index` has of ciphertext left.
    fn submit_tls(&mut self, index: usize, fd: i32) {
        let Some(rec) = self.sends.get(index) else { return };
        let rest = &rec.tls[rec.off..];
        let entry = opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
            .flags(send_flags(rec.fin_follows))
            .build()
            .user_data(user_data(Op::Send, 0, index));
        // SAFETY: the ciphertext is owned by the record, which stays in `sends` until the completion.
        unsafe { self.push(&entry) };
    }

    pub(super) fn admitted(&mut self, key: ConnKey, stream: &TcpStream) -> io::Result<()> {
        let slot = self.slot(key);
        let gen = slot.gen;
        *slot = Slot { gen, ..Slot::default() };
        self.arm_recv(key, stream.as_raw_fd());
        Ok(())
    }

    pub(super) fn closing(&mut self, key: ConnKey, _stream: &TcpStream) {
        let slot = self.slot(key);
        let armed = slot.recv == Recv::Armed;
        let target = user_data(Op::Recv, slot.gen, key);
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        slot.recv = Recv::Off;
        slot.eof = false;
        slot.error = 0;
        self.stashes.remove(&key);
        if armed {
            self.cancel(target);
        }
        // Entries still queued name this socket by its descriptor number, which the kernel resolves only at
        // submission: submit them before the descriptor closes (a last close frame must reach this socket, and
        // nothing may reach the next connection given the same number). Once submitted, a request holds the
        // socket itself, so closing the descriptor does not cut it short.
        if !self.ring.submission().is_empty() {
            if let Err(e) = self.ring.submit() {
                tracing::warn!("io_uring submit before a close failed: {e}");
            }
        }
    }

    pub(super) fn stop_accepting(&mut self) {
        for which in 0..2 {
            if self.listeners[which].take().is_some() && self.accepting[which] {
                self.cancel(user_data(Op::Accept, 0, which));
                self.accepting[which] = false;
            }
        }
    }

    /// Submits what is queued and waits up to `timeout` for a completion.
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        // Completions moved aside while submitting are handled now, not after a wait.
        let timeout = if self.completions.is_empty() { timeout } else { Duration::ZERO };
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves the completions out of the ring.
    fn reap(&mut self) -> Vec<(u64, i32, u32)> {
        let mut out = std::mem::take(&mut self.completions);
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        out
    }

    fn recycle(&mut self, mut rec: SendRec) {
        if self.spare.len() < SPARE_SENDS {
            rec.bufs.clear();
            rec.iov.clear();
            rec.tls.clear();
            rec.off = 0;
            rec.fin_follows = false;
            if rec.tls.capacity() > 64 * 1024 {
                rec.tls = Vec::new();
            }
            self.spare.push(rec);
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        self.bufs.unregister(&self.ring);
    }
}

fn uring(worker: &mut Worker) -> &mut UringIo {
    match &mut worker.io {
        Io::Uring(u) => u,
        Io::Epoll(_) => unreachable!("the uring loop runs only uring workers"),
    }
}

/// Runs `worker`'s loop on its ring until it has drained after a shutdown request.
pub fn run(mut worker: Worker) -> io::Result<()> {
    {
        let io = uring(&mut worker);
        io.ring.submitter().register_enable_rings()?;
        io.arm_accept(0);
        io.arm_accept(1);
        io.arm_wake();
    }
    loop {
        let timeout = worker.poll_timeout();
        uring(&mut worker).wait(timeout)?;
        worker.begin_turn();
        let mut completions = uring(&mut worker).reap();
        for &(ud, res, flags) in &completions {
            let (op, gen, index) = parse_user_data(ud);
            match op {
                x if x == Op::Recv as u64 => on_recv(&mut worker, index, gen, res, flags),
                x if x == Op::Send as u64 => on_send(&mut worker, index, res),
                x if x == Op::Accept as u64 => on_accept(&mut worker, index, res, flags),
                x if x == Op::Wake as u64 => uring(&mut worker).arm_wake(),
                _ => {}
            }
        }
        completions.clear();
        let io = uring(&mut worker);
        if io.completions.is_empty() {
            // The buffer goes back for the next turn, unless completions were moved aside during this one.
            io.completions = completions;
        }
        for key in std::mem::take(&mut uring(&mut worker).starved) {
            // Buffers came back during the turn: receive again (the state reads what arrives then).
            let Some(fd) = worker.conns.get(key).map(|c| c.stream.as_raw_fd()) else { continue };
            let io = uring(&mut worker);
            if io.slots.get(key).is_some_and(|s| s.recv == Recv::Off) && !io.stashes.contains_key(&key) {
                io.arm_recv(key, fd);
            }
        }
        let now = worker.now;
        let io = uring(&mut worker);
        if io.accept_retry.is_some_and(|at| now >= at) {
            io.accept_retry = None;
            for which in 0..2 {
                if !io.accepting[which] {
                    io.arm_accept(which);
                }
            }
        }
        let exhausted = std::mem::take(&mut io.exhausted);
        let in_flight = io.sends.len() as u64;
        if exhausted > 0 {
            worker.metrics.add(Metric::UringBuffersExhausted, exhausted);
        }
        worker.metrics.set(Metric::UringSendsInFlight, in_flight);
        if worker.end_turn() {
            finish(&mut worker);
            return Ok(());
        }
    }
}

/// A receive completed for connection `key`: hand its bytes (or its EOF, or its error) to the state.
fn on_recv(worker: &mut Worker, key: ConnKey, gen: u32, res: i32, flags: u32) {
    let bid = cqueue::buffer_select(flags);
    let more = cqueue::more(flags);
    let fd = worker.conns.get(key).map(|c| c.stream.as_raw_fd());
    let io = uring(worker);
    let live = fd.is_some() && io.slots.get(key).is_some_and(|s| s.gen == gen);
    if !live {
        if let Some(bid) = bid {
            io.bufs.give_back(bid);
        }
        return;
    }
    let slot = io.slot(key);
    if !more {
        slot.recv = Recv::Off;
    }
    match res {
        n if n > 0 => {
            let Some(bid) = bid else { return };
            io.current = Some(Current { key, bid, off: 0, len: n as usize });
            worker.read_conn(key);
            let io = uring(worker);
            let Some(cur) = io.current.take() else { return };
            if cur.off < cur.len {
                // The state took part of it (its budget, a pause, the drain): the rest waits here, and nothing
                // more is received until the state has taken it (the socket buffer holds the rest).
                let rest = io.bufs.filled(cur.bid, cur.len)[cur.off..].to_vec();
                if let Some(slot) = io.slots.get_mut(key).filter(|s| s.gen == gen) {
                    io.stashes.entry(key).or_default().extend_from_slice(&rest);
                    if slot.recv == Recv::Armed {
                        slot.recv = Recv::Cancelling;
                        io.cancel(user_data(Op::Recv, gen, key));
                    }
                }
            }
            io.bufs.give_back(cur.bid);
        }
        0 => {
            slot.eof = true;
            worker.read_conn(key);
            return;
        }
        e if -e == libc::ENOBUFS => {
            // Every buffer is in use: this receive waits for the end of the turn, when they are back.
            io.exhausted += 1;
            io.starved.push(key);
            return;
        }
        e if -e == libc::ECANCELED => {}
        e => {
            slot.error = u16::try_from(-e).unwrap_or(libc::EIO as u16);
            worker.read_conn(key);
            return;
        }
    }
    // A multishot receive ended (cancelled, or the kernel stopped it) while the state has taken everything:
    // receive again. With bytes still stashed, the state's next read arms it.
    let io = uring(worker);
    if let (Some(fd), Some(slot)) = (fd, io.slots.get(key)) {
        let idle = slot.gen == gen && slot.recv == Recv::Off && !io.stashes.contains_key(&key);
        if idle && worker_reads(worker, key) {
            uring(worker).arm_recv(key, fd);
        }
    }
}

/// Whether the state still reads `key` (it has not seen its EOF).
fn worker_reads(worker: &Worker, key: ConnKey) -> bool {
    worker.conns.get(key).is_some_and(|c| c.flags & crate::server::conn::PEER_EOF == 0)
}

/// A send completed: a TLS record with bytes left goes on; otherwise the state learns what was written.
fn on_send(worker: &mut Worker, index: usize, res: i32) {
    let io = uring(worker);
    let Some(mut rec) = io.sends.try_remove(index) else { return };
    let live = io.slots.get(rec.key).is_some_and(|s| s.gen == rec.gen);
    let fd = if live { worker.conns.get(rec.key).map(|c| c.stream.as_raw_fd()) } else { None };
    let io = uring(worker);
    let Some(fd) = fd else {
        // The connection is gone: the record (and the bytes it kept alive for the kernel) goes.
        io.recycle(rec);
        return;
    };
    let key = rec.key;
    let plain = rec.tls.is_empty();
    if !plain && res > 0 && rec.off + (res as usize) < rec.tls.len() {
        rec.off += res as usize;
        let index = io.sends.insert(rec);
        io.submit_tls(index, fd);
        return;
    }
    let written = if plain { res.max(0) as usize } else { rec.tls.len() };
    io.recycle(rec);
    let result = if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(written) };
    worker.sent(key, result, plain);
}

/// A multishot accept produced a socket (or stopped).
fn on_accept(worker: &mut Worker, which: usize, res: i32, flags: u32) {
    let now = worker.now;
    let io = uring(worker);
    let tls = which == 1 || io.main_tls;
    if !cqueue::more(flags) {
        io.accepting[which] = false;
        if res >= 0 || res == -libc::ECANCELED {
            io.arm_accept(which);
        } else {
            // EMFILE, ENFILE, ENOMEM: leave the rest in the backlog and try again at the next tick.
            io.accept_retry = Some(now + Duration::from_millis(100));
        }
    }
    if res < 0 {
        if res != -libc::ECANCELED {
            tracing::warn!(worker = worker.id, "accept failed: {}", io::Error::from_raw_os_error(-res));
        }
        return;
    }
    // SAFETY: a successful accept returns a new descriptor that nothing else owns.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) });
    let ip = match stream.peer_addr() {
        Ok(addr) => addr.ip(),
        // The client left already (ENOTCONN): nothing to serve.
        Err(_) => return,
    };
    let ip: IpAddr = ip.to_canonical();
    worker.admit(stream, ip, tls);
}

/// The worker has drained: cancel what is still armed and wait (briefly) for in-flight sends, so the ring is
/// torn down with no request reading memory that is about to be freed.
fn finish(worker: &mut Worker) {
    let io = uring(worker);
    let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(user_data(Op::Cancel, 0, 0));
    // SAFETY: a cancellation points to no memory.
    unsafe { io.push(&entry) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while !io.sends.is_empty() && Instant::now() < deadline {
        if io.wait(Duration::from_millis(10)).is_err() {
            break;
        }
        for (ud, _, _) in io.reap() {
            let (op, _, index) = parse_user_data(ud);
            if op == Op::Send as u64 {
                if let Some(rec) = io.sends.try_remove(index) {
                    io.recycle(rec);
                }
            }
        }
    }
}

impl UringIo {
    pub(super) fn wait_writable(&mut self, _key: ConnKey, _stream: &TcpStream, _flags: &mut u16) {
        // A send in flight completes by itself: there is no readiness to wait for.
    }

    pub(super) fn write_drained(&mut self, _key: ConnKey, _stream: &TcpStream, _flags: &mut u16) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_operation_the_generation_and_the_key() {
        for (op, gen, key) in [(Op::Recv, 0, 0), (Op::Send, GEN_MASK, u32::MAX as usize), (Op::Accept, 7, 1)] {
            let (o, g, k) = parse_user_data(user_data(op, gen, key));
            assert_eq!((o, g, k), (op as u64, gen, key));
        }
        let (_, g, _) = parse_user_data(user_data(Op::Recv, GEN_MASK + 1, 3));
        assert_eq!(g, 0, "generations wrap within their bits");
    }

    #[test]
    fn a_connection_costs_the_driver_eight_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 8);
    }

    #[test]
    fn a_refusal_names_its_cause_and_the_way_out() {
        let e = UringError::new("cannot create the ring", io::Error::from_raw_os_error(libc::EPERM));
        let text = e.to_string();
        assert!(text.contains("cannot create the ring"), "{text}");
        assert!(text.contains("seccomp") && text.contains("--backend epoll"), "{text}");
        let e = UringError::new("cannot create the ring", io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"));
    }
}
