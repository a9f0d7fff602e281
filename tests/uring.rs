//! What only the io_uring backend has: receive buffers lent from a fixed ring (more readers than buffers),
//! sends that belong to the kernel until they complete (connections closing under them), and a start that is
//! refused, with its cause, where io_uring is not allowed. Every other integration test runs on both backends
//! (`HERALD_TEST_BACKEND`, see `scripts/test`); these start herald with `--backend uring` themselves.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{client_frame, wait_until, FrameReader, RawWs, Server};

const KEY: [u8; 4] = [1, 2, 3, 4];

fn uring(args: &[&str]) -> Server {
    let mut all = vec!["--backend", "uring"];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// 64 echo clients write at once to a worker with 16 receive buffers: receives find the ring empty, wait for
/// buffers to come back and resume. Every echo comes back whole and in order, none is lost, and the
/// exhaustion was real (counted).
#[test]
fn more_readers_than_buffers_wait_for_one_and_lose_nothing() {
    const CLIENTS: usize = 64;
    const MESSAGES: u32 = 40;
    const SIZE: usize = 12 * 1024;
    let server = uring(&["--workers", "1", "--uring-buffers", "16"]);
    let mut clients: Vec<RawWs> = (0..CLIENTS).map(|_| RawWs::connect(server.addr, "/echo")).collect();
    let frames: Vec<Vec<u8>> = (0..CLIENTS)
        .map(|c| {
            (0..MESSAGES)
                .flat_map(|m| {
                    let mut payload = vec![(c % 251) as u8; SIZE];
                    payload[..4].copy_from_slice(&m.to_be_bytes());
                    client_frame(0x82, &payload, KEY)
                })
                .collect()
        })
        .collect();
    // Every client's whole stream is written before any echo is read: 64 x 480 KiB arrive at once.
    let writers: Vec<_> = clients
        .iter_mut()
        .zip(frames)
        .map(|(c, bytes)| {
            let mut s = c.stream.try_clone().expect("clone");
            std::thread::spawn(move || s.write_all(&bytes).expect("send"))
        })
        .collect();
    for (c, client) in clients.into_iter().enumerate() {
        let mut reader = FrameReader::new(client);
        for m in 0..MESSAGES {
            let (b0, payload) = reader.next_frame().unwrap_or_else(|e| panic!("client {c} echo {m}: {e}"));
            assert_eq!((b0, payload.len()), (0x82, SIZE), "client {c} echo {m}");
            assert_eq!(payload[..4], m.to_be_bytes(), "client {c}: echo {m} out of order");
            assert!(payload[4..].iter().all(|&b| b == (c % 251) as u8), "client {c} echo {m}: bytes of another");
        }
    }
    for w in writers {
        w.join().expect("writer");
    }
    let exhausted = server.metric("herald_uring_buffers_exhausted_total");
    assert!(exhausted > 0, "the 16 buffers were never all in use: the test did not test exhaustion");
    eprintln!("receives that waited for a buffer: {exhausted}");
}

/// 10,000 subscribers with tiny receive windows, each with a send the kernel cannot finish, are all reset at
/// once. The sends complete with errors after their connections are gone; the worker frees them and keeps
/// serving, and a new subscriber gets the next message.
#[test]
fn ten_thousand_connections_close_while_their_sends_are_in_flight() {
    const SUBS: usize = 10_000;
    let server = uring(&["--workers", "1", "--max-backpressure", "4MiB"]);
    let mut subs = Vec::with_capacity(SUBS);
    for i in 0..SUBS {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        // A receive window this small cannot take the message: the server's send stays in flight.
        socket.set_recv_buffer_size(2048).expect("rcvbuf");
        // Small segments keep the server's send buffer small: the kernel sizes it from the segment size (64 KiB
        // segments on loopback), and 10,000 of those filled with the message took the machine's TCP memory
        // past its hard limit (`tcp_mem`), where every socket's sends stall, the test's scrapes included.
        socket.set_mss(1024).expect("mss");
        // Spread over 127.0.0.x so ephemeral ports last.
        let local: std::net::SocketAddr = format!("127.0.0.{}:0", 2 + i % 200).parse().expect("addr");
        socket.bind(&local.into()).expect("bind");
        socket.connect(&server.addr.into()).expect("connect");
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(
                b"GET /sub/inflight HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .expect("upgrade");
        subs.push(stream);
    }
    for (i, s) in subs.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let head = support::read_head(s);
        assert!(head.starts_with(b"HTTP/1.1 101"), "subscriber {i}: {}", String::from_utf8_lossy(&head));
    }
    let mut publisher = RawWs::connect(server.addr, "/pub/inflight");
    publisher.send_frame(0x82, &vec![7u8; 512 * 1024], true);
    let stuck =
        wait_until(Duration::from_secs(20), || server.metric("herald_uring_sends_in_flight") >= (SUBS / 2) as u64);
    let in_flight = server.metric("herald_uring_sends_in_flight");
    assert!(stuck, "only {in_flight} sends were in flight");
    // Reset them all (SO_LINGER 0: an RST, not a FIN), sends still in flight.
    for s in subs.drain(..) {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("linger");
        drop(s);
    }
    let settled = wait_until(Duration::from_secs(20), || {
        server.metric("herald_uring_sends_in_flight") == 0 && server.metric("herald_connections_open") <= 2
    });
    assert!(settled, "sends or connections left: {}", server.metrics_text());
    // Still serving: a new subscriber gets the next message.
    let mut late = FrameReader::new(RawWs::connect(server.addr, "/sub/inflight"));
    std::thread::sleep(Duration::from_millis(100));
    publisher.send_frame(0x82, b"after", true);
    let (_, payload) = late.next_frame().expect("a message after the resets");
    assert_eq!(payload, b"after");
}

/// A seccomp filter that makes `io_uring_setup` fail with EPERM, as a container runtime's default profile
/// does: `--backend uring` refuses to start, says why and what to do, and does not fall back to epoll.
#[test]
fn a_start_where_io_uring_is_forbidden_is_refused_with_the_cause_and_the_fix() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--listen", "127.0.0.1:0", "--no-pin", "--workers", "1", "--backend", "uring"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes two prctl calls (async-signal
    // safe) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(forbid_io_uring);
    }
    let mut child = cmd.spawn().expect("spawn herald");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    let mut stdout = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read stdout");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "herald started without io_uring: {stdout}");
    assert!(!stdout.contains("listening"), "it fell back to another backend: {stdout}");
    assert!(stderr.contains("--backend uring") && stderr.contains("cannot create the ring"), "{stderr}");
    assert!(stderr.contains("seccomp") && stderr.contains("--backend epoll"), "the fix is named: {stderr}");
}

/// Installs a seccomp filter failing `io_uring_setup` with EPERM (everything else allowed).
fn forbid_io_uring() -> std::io::Result<()> {
    // offsetof(struct seccomp_data, nr) is 0.
    let filter = [
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prctl with integer arguments, then with a pointer to `prog`, which outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
