//! The few OS calls loadgen needs beyond `std` and `mio`: the CLOCK_MONOTONIC clock in nanoseconds (the clock
//! every payload timestamp uses, so that processes on one machine agree), wall-clock seconds (token claims),
//! CPU time of the process and of a thread, a `timerfd` for sub-millisecond pacing (epoll's timeout is whole
//! milliseconds), the `IP_BIND_ADDRESS_NO_PORT` socket option, and `/proc/PID/stat` samples of another process.
//!
//! This is the only module with `unsafe`; each block says what it relies on.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Reads a `clock_gettime` clock as nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clocks used here exist on every Linux since 2.6.12, so
    // the call cannot fail (it is checked anyway in debug builds).
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime({clock})");
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds: the timestamp carried in every payload (same machine, any process).
pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall-clock seconds since the Unix epoch (for token claims).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// CPU time (user + system) used by the calling thread so far, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Resource usage of this whole process (all threads), from `getrusage(RUSAGE_SELF)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
    /// Voluntary context switches.
    pub voluntary_switches: u64,
    /// Involuntary context switches (preemptions).
    pub involuntary_switches: u64,
}

/// `getrusage(RUSAGE_SELF)`.
pub fn process_usage() -> Usage {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF is always a valid target.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    debug_assert_eq!(rc, 0);
    let tv_ns = |tv: libc::timeval| (tv.tv_sec as u64) * 1_000_000_000 + (tv.tv_usec as u64) * 1_000;
    Usage {
        cpu_ns: tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
        voluntary_switches: ru.ru_nvcsw as u64,
        involuntary_switches: ru.ru_nivcsw as u64,
    }
}

/// A non-blocking CLOCK_MONOTONIC `timerfd`, armed at absolute times: it becomes readable at the deadline, so
/// a `mio` loop can wake with sub-millisecond precision.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    armed_at: u64,
}

impl Timer {
    /// Creates a disarmed timer.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create, is valid, and is owned by nobody else.
        Ok(Timer { fd: unsafe { OwnedFd::from_raw_fd(fd) }, armed_at: 0 })
    }

    /// Arms the timer to fire at `at_ns` (CLOCK_MONOTONIC); a no-op if already armed for that time. A time in
    /// the past fires at once.
    pub fn arm_at(&mut self, at_ns: u64) -> io::Result<()> {
        if self.armed_at == at_ns {
            return Ok(());
        }
        let at_ns = at_ns.max(1); // zero would disarm
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `self.fd` is a timerfd we own; `spec` is a valid itimerspec; a null old-value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_at = at_ns;
        Ok(())
    }

    /// Consumes an expiry (after the fd was readable), so the edge-triggered registration fires again.
    pub fn acknowledge(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from a timerfd we own; EAGAIN is fine (not expired).
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len()) };
        self.armed_at = 0;
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`, so binding a source address with port 0 leaves the port choice to
/// `connect`, which can then reuse a port toward a different destination (more connections per address).
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; `one` is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_REALTIME in nanoseconds (the clock of kernel receive timestamps).
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CLOCK_MONOTONIC minus CLOCK_REALTIME, in nanoseconds (wrapping), to turn a kernel receive timestamp into
/// the payloads' clock: `monotonic = realtime + offset`. Sampled once per thread; NTP slewing over a run
/// moves it by microseconds at most.
pub fn realtime_to_monotonic_offset() -> u64 {
    let (a, r, b) = (now_ns(), realtime_ns(), now_ns());
    (a / 2 + b / 2).wrapping_sub(r)
}

/// Asks the kernel to timestamp received data (`SO_TIMESTAMPNS`, CLOCK_REALTIME, ns) for [`recv_timestamped`].
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; `one` is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recvmsg` into `buf`, returning the bytes read and, if the kernel attached one, the CLOCK_REALTIME receive
/// time (ns) of the last segment read (for TCP, `tcp_recvmsg` reports the newest segment it copied).
pub fn recv_timestamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for one SCM_TIMESTAMPNS (a timespec) and then some; u64s keep it aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is a valid value of this plain C struct; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at one iovec over `buf` (valid for writes of its length) and at `control`, both
    // alive for the call; `fd` is an open socket owned by the caller.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some((ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The memory page size in KiB (the unit of `rss` in `/proc/PID/stat`).
pub fn page_size_kib() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64 / 1024
    } else {
        4
    }
}

/// One sample of another process from `/proc/PID/stat`: its CPU time and resident set size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProcSample {
    /// When the sample was taken (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
    /// User plus system CPU time so far, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// Threads of the process.
    pub threads: u64,
}

/// Reads `/proc/PID/stat`. Fails if the process does not exist or the file cannot be parsed.
pub fn proc_sample(pid: u32) -> io::Result<ProcSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&text, now_ns(), clock_ticks_per_sec(), page_size_kib())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparseable /proc/{pid}/stat")))
}

/// Parses the text of `/proc/PID/stat` (proc(5)): fields after the parenthesised command name, where utime
/// and stime are fields 14 and 15, num_threads 20, and rss (pages) 24.
fn parse_proc_stat(text: &str, at_ns: u64, ticks: u64, page_kib: u64) -> Option<ProcSample> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu_ticks = field(14)? + field(15)?;
    Some(ProcSample {
        at_ns,
        cpu_ns: cpu_ticks * (1_000_000_000 / ticks.max(1)),
        rss_kib: field(24)? * page_kib,
        threads: field(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_advances() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
    }

    #[test]
    fn parses_proc_stat_with_spaces_in_name() {
        let text = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 5000 \
                    100000000 2560 18446744073709551615";
        let s = parse_proc_stat(text, 5, 100, 4).expect("parses");
        assert_eq!(s.cpu_ns, 300 * 10_000_000);
        assert_eq!(s.threads, 7);
        assert_eq!(s.rss_kib, 2560 * 4);
    }

    #[test]
    fn reads_own_proc_stat() {
        let s = proc_sample(std::process::id()).expect("own stat");
        assert!(s.rss_kib > 0 && s.threads >= 1);
    }

    #[test]
    fn kernel_receive_timestamps_come_back_in_the_monotonic_clock() {
        use std::io::Write;
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut tx = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (rx, _) = listener.accept().expect("accept");
        enable_rx_timestamps(rx.as_raw_fd()).expect("SO_TIMESTAMPNS");
        // When no socket on the machine had timestamps on, the kernel switches them on from a workqueue
        // (net_enable_timestamp): segments that arrive meanwhile carry none, and loadgen reads the clock
        // instead. Retry until one is stamped.
        for round in 0.. {
            let before = now_ns();
            tx.write_all(b"hello").expect("write");
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut buf = [0u8; 16];
            let (n, stamp) = recv_timestamped(rx.as_raw_fd(), &mut buf).expect("recvmsg");
            let after = now_ns();
            assert_eq!(&buf[..n], b"hello");
            let Some(stamp) = stamp else {
                assert!(round < 100, "no receive timestamp within 2 s");
                continue;
            };
            let mono = stamp.wrapping_add(realtime_to_monotonic_offset());
            // Received right after the write, well before the read 20 ms later (1 ms of slack for the offset).
            assert!(mono + 1_000_000 >= before && mono < after - 10_000_000, "{before} {mono} {after}");
            break;
        }
    }

    #[test]
    fn timer_fires_at_deadline() {
        let mut timer = Timer::new().expect("timerfd");
        let at = now_ns() + 2_000_000;
        timer.arm_at(at).expect("arm");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from our own timerfd into an 8-byte buffer.
        let n = unsafe { libc::read(timer.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8, "expired once");
        assert!(now_ns() >= at);
    }
}
