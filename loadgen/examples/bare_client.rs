//! A bare fan-out client, to calibrate loadgen against: how many deliveries per second can one thread take in
//! when it does nothing but read?
//!
//! It opens `SUBS` subscribers on `/sub/bare` and one publisher on `/pub/bare`, then runs batch-synchronous
//! closed loop: the publisher writes `BATCH` masked 64-byte binary frames in one `write`, and the next batch
//! goes only when every subscriber has received all of them. Receiving is counting bytes (every frame is 66
//! bytes on the wire): no parsing, no timestamps, no per-message accounting. Whatever this reaches is the
//! ceiling for any client on the machine; loadgen's figure beside it shows what its accounting costs.
//!
//! ```sh
//! cargo run --release -p loadgen --example bare_client -- 127.0.0.1:9001 1000 32 5
//! #                                                      address         subs batch seconds
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

const PAYLOAD: usize = 64;
const FRAME: usize = 2 + PAYLOAD;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args.get(1).map_or("127.0.0.1:8080", String::as_str).parse()?;
    let subs: usize = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let seconds: u64 = args.get(4).map_or(Ok(5), |s| s.parse())?;

    let mut poll = Poll::new()?;
    let mut socks = Vec::with_capacity(subs);
    for i in 0..subs {
        let mut s = MioStream::from_std(upgrade(addr, "/sub/bare")?);
        poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
        socks.push(s);
    }
    let mut publisher = upgrade(addr, "/pub/bare")?;
    publisher.set_nodelay(true)?;
    std::thread::sleep(Duration::from_millis(500)); // let every subscription go live

    let mut frames = Vec::with_capacity(batch * (FRAME + 4));
    for _ in 0..batch {
        // FIN + binary, masked, 64-byte payload; an all-zero mask leaves the payload as it is.
        frames.extend_from_slice(&[0x82, 0x80 | PAYLOAD as u8, 0, 0, 0, 0]);
        frames.extend_from_slice(&[0x5a; PAYLOAD]);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut received: u64 = 0;
    let mut batches: u64 = 0;
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        publisher.write_all(&frames)?;
        batches += 1;
        let target = batches * (batch * subs * FRAME) as u64;
        while received < target {
            poll.poll(&mut events, Some(Duration::from_secs(5)))?;
            if events.is_empty() {
                anyhow::bail!("no progress for 5 s: {received} of {target} bytes");
            }
            for ev in events.iter() {
                let s = &mut socks[ev.token().0];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => anyhow::bail!("subscriber {} closed", ev.token().0),
                        Ok(n) => received += n as u64,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns() - cpu0) as f64;
    let deliveries = received / FRAME as u64;
    println!(
        "bare client: {subs} subs, batch {batch}: {deliveries} deliveries in {secs:.2} s = {:.2} M/s, \
         {:.0}% of a core, {:.0} ns CPU per delivery",
        deliveries as f64 / secs / 1e6,
        cpu / secs / 1e7,
        cpu / deliveries as f64
    );
    Ok(())
}

/// Connects and completes a WebSocket upgrade on `path`; returns the socket, non-blocking.
fn upgrade(addr: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte so nothing after the head (the first frames) is swallowed; only at setup.
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            anyhow::bail!("closed during the handshake");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        anyhow::bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the valid timespec we pass and reads nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
