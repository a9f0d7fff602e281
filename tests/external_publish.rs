//! Publish sources outside the workers (HTTP bridge today, a Redis bridge later) enter through
//! `ExternalPublisher`, which hands each publish to one worker; that worker frames it and delivers it exactly as
//! if one of its own connections had published, including to subscribers on the other workers.
mod support;

use bytes::Bytes;
use clap::Parser;
use herald::broker::mesh::ExternalPublish;
use herald::config::{Cli, Config};
use support::{connect, next_data};
use tungstenite::Message;

#[test]
fn an_outside_source_reaches_subscribers_on_every_worker() {
    let cli = Cli::try_parse_from(["herald", "--listen", "127.0.0.1:0", "--workers", "2", "--no-pin"]).expect("args");
    let server = herald::server::start(Config::from_cli(&cli).expect("config")).expect("start");
    let url = format!("ws://{}/sub/ext", server.local_addr());
    let mut subs: Vec<_> = (0..8).map(|_| connect(&url)).collect();
    let mut publisher = server.external_publisher();

    // Probe until every subscriber has one (interest reaches the other worker within a loop turn).
    let mut seen = vec![false; subs.len()];
    for s in &subs {
        s.get_ref().set_nonblocking(true).expect("nonblocking");
    }
    for _ in 0..2000 {
        publisher
            .publish(ExternalPublish { topic: "ext".into(), text: true, payload: Bytes::from_static(b"probe") })
            .expect("workers running");
        std::thread::sleep(std::time::Duration::from_millis(2));
        for (i, s) in subs.iter_mut().enumerate() {
            while let Ok(m) = s.read() {
                if m == Message::text("probe") {
                    seen[i] = true;
                }
            }
        }
        if seen.iter().all(|&x| x) {
            break;
        }
    }
    assert!(seen.iter().all(|&x| x), "not every subscriber was reached by the probes: {seen:?}");
    for s in &subs {
        s.get_ref().set_nonblocking(false).expect("blocking");
    }

    for i in 0..200u32 {
        let payload = Bytes::from(i.to_be_bytes().to_vec());
        publisher.publish(ExternalPublish { topic: "ext".into(), text: false, payload }).expect("workers running");
    }
    for (n, s) in subs.iter_mut().enumerate() {
        let mut expected = 0u32;
        while expected < 200 {
            match next_data(s) {
                Message::Text(t) if t.as_str() == "probe" => continue,
                Message::Binary(b) => {
                    assert_eq!(b.as_ref(), expected.to_be_bytes(), "subscriber {n}: message {expected}");
                    expected += 1;
                }
                other => panic!("subscriber {n}: unexpected {other:?}"),
            }
        }
    }
    server.shutdown();
    drop(subs);
    server.join().expect("clean exit");
}
