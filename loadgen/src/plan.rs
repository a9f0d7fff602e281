//! What a run will do, decided before any socket opens: the target (URL, paths), who subscribes and publishes
//! to which topic, the load model (open loop at a fixed rate, closed loop with a window, or as fast as
//! possible), the open-loop schedule, and the payload layout every published message carries.
//!
//! Pure data and arithmetic: no sockets, no clock reads (times are passed in), so every rule here is unit
//! tested. The mapping is deterministic: subscriber `s` is on topic `s % topics`, publisher `p` on topic
//! `p % topics`, and `p / topics` is its slot among the publishers of its topic.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// An error in the run's description (bad URL, impossible combination of settings).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The URL is not `ws://host[:port][/...]` or `wss://host[:port][/...]`.
    #[error("invalid URL {0:?}: expected ws://host[:port] or wss://host[:port]")]
    BadUrl(String),
    /// The host did not resolve.
    #[error("cannot resolve {0:?}")]
    Unresolvable(String),
    /// A source address list or range could not be parsed.
    #[error("invalid --source-ips {0:?}: expected a list (a,b,c) or an IPv4 range (a-b)")]
    BadSourceIps(String),
    /// A CPU list could not be parsed.
    #[error("invalid CPU list {0:?}: expected e.g. 0,2 or 0-3")]
    BadCpuList(String),
    /// A rate that is not a positive number or `max`.
    #[error("invalid rate {0:?}: expected messages per second (e.g. 10000, 1.5e6) or max")]
    BadRate(String),
    /// A duration such as `10s`, `500ms`, `2m`, `1.5s` could not be parsed.
    #[error("invalid duration {0:?}: expected e.g. 500ms, 10s, 2m")]
    BadDuration(String),
    /// A path template without `{topic}`.
    #[error("path template {0:?} must contain {{topic}}")]
    BadTemplate(String),
    /// The settings contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// `ws://` and `wss://` URLs in one run.
    #[error("URLs {0:?} and {1:?} mix ws:// and wss://: give every --url and --pub-url the same scheme")]
    MixedSchemes(String, String),
}

/// Where to connect: the resolved address, and the `Host` header value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The `Host` header (`host:port` as written in the URL).
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// `wss://`: TLS on every connection.
    pub tls: bool,
    /// The host without port or IPv6 brackets: the name the server's certificate must carry.
    pub hostname: String,
}

impl Target {
    /// Parses `ws://host[:port][/ignored]` or `wss://...` (default port 80 or 443) and resolves the host (the
    /// first address wins).
    pub fn parse(url: &str) -> Result<Target, PlanError> {
        let bad = || PlanError::BadUrl(url.to_owned());
        let (tls, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err(bad()),
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let hostname = match authority.rfind(']') {
            Some(close) => authority[..close].trim_start_matches('['),
            None if has_port => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            None => authority,
        };
        let default_port = if tls { 443 } else { 80 };
        let with_port = if has_port { authority.to_owned() } else { format!("{authority}:{default_port}") };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|_| PlanError::Unresolvable(authority.to_owned()))?
            .next()
            .ok_or_else(|| PlanError::Unresolvable(authority.to_owned()))?;
        Ok(Target { url: url.to_owned(), host: authority.to_owned(), addr, tls, hostname: hostname.to_owned() })
    }
}

/// Parses a list of URLs (each item of `items` may itself be a comma-separated list): at least one, all `ws://`
/// or all `wss://` (one TLS setup serves the whole run).
pub fn parse_targets<S: AsRef<str>>(items: &[S]) -> Result<Vec<Target>, PlanError> {
    let mut out: Vec<Target> = Vec::new();
    for url in items.iter().flat_map(|i| i.as_ref().split(',')).map(str::trim).filter(|u| !u.is_empty()) {
        let target = Target::parse(url)?;
        if let Some(first) = out.first() {
            if first.tls != target.tls {
                return Err(PlanError::MixedSchemes(first.url.clone(), target.url));
            }
        }
        out.push(target);
    }
    if out.is_empty() {
        return Err(PlanError::BadUrl(String::new()));
    }
    Ok(out)
}

/// Which endpoint connection number `index` dials, out of `urls` (`--url`) followed by `pub_urls`
/// (`--pub-url`): a publisher goes to the `--pub-url` list when there is one, every other connection to the
/// `--url` list; within a list, connections are dealt round robin by their number.
pub fn endpoint_of(publisher: bool, index: usize, urls: usize, pub_urls: usize) -> usize {
    if publisher && pub_urls > 0 {
        urls + index % pub_urls
    } else {
        index % urls.max(1)
    }
}

/// Parses `--source-ips`: a comma-separated list of addresses, or an IPv4 range `a.b.c.d-a.b.c.e`.
pub fn parse_source_ips(text: &str) -> Result<Vec<IpAddr>, PlanError> {
    let bad = || PlanError::BadSourceIps(text.to_owned());
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(bad());
            }
            out.extend((a..=b).map(|ip| IpAddr::V4(ip.into())));
        } else {
            out.push(item.parse().map_err(|_| bad())?);
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Parses a CPU list such as `0,2,4-7`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, PlanError> {
    let bad = || PlanError::BadCpuList(text.to_owned());
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if b < a || b - a > 4096 {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.push(item.parse().map_err(|_| bad())?);
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Parses a duration: a number with `ns`, `us`, `ms`, `s`, `m` or `h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, PlanError> {
    let bad = || PlanError::BadDuration(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size: bytes, or with `KiB`/`MiB`/`GiB` (also `k`/`K`/`M`/`G`, binary).
pub fn parse_size(text: &str) -> Result<usize, PlanError> {
    let bad = || PlanError::Invalid(format!("invalid size {text:?}: expected e.g. 64, 16KiB, 1MiB"));
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: usize = num.parse().map_err(|_| bad())?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        _ => return Err(bad()),
    };
    value.checked_mul(scale).ok_or_else(bad)
}

/// Checks a path template and fills it in for one topic.
pub fn check_template(template: &str) -> Result<(), PlanError> {
    if template.contains("{topic}") && template.starts_with('/') {
        Ok(())
    } else {
        Err(PlanError::BadTemplate(template.to_owned()))
    }
}

/// `template` with `{topic}` replaced.
pub fn fill_template(template: &str, topic: &str) -> String {
    template.replace("{topic}", topic)
}

/// How fast publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "msgs_per_sec", rename_all = "snake_case")]
pub enum Rate {
    /// Open loop: this many messages per second in total over all publishers, on a fixed schedule.
    Fixed(f64),
    /// As fast as the sockets (and the window, if any) allow.
    Max,
}

impl Rate {
    /// Parses `max` or a positive number of messages per second (`1e6` and `250k`/`2M` suffixes allowed).
    pub fn parse(text: &str) -> Result<Rate, PlanError> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let (num, scale) = match t.chars().last() {
            Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
            Some('M') => (&t[..t.len() - 1], 1e6),
            _ => (t, 1.0),
        };
        let value: f64 = num.parse().map_err(|_| PlanError::BadRate(text.to_owned()))?;
        let value = value * scale;
        if !value.is_finite() || value <= 0.0 {
            return Err(PlanError::BadRate(text.to_owned()));
        }
        Ok(Rate::Fixed(value))
    }
}

/// Which of herald's protocols the connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// One endpoint per role and topic (`--sub-path`, `--pub-path`); payloads go as they are.
    Raw,
    /// herald's JSON protocol on one endpoint (`--ws-path`): subscribe and publish requests, deliveries in
    /// envelopes, the payload header as hex digits in a JSON string.
    Json,
}

/// The fan-out scenario, fully decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutPlan {
    /// Subscriber connections.
    pub subs: usize,
    /// Topics; subscriber `s` and publisher `p` use topic `s % topics` and `p % topics`.
    pub topics: usize,
    /// Publisher connections.
    pub pubs: usize,
    /// Payload bytes per message (at least [`payload::HEADER_LEN`]).
    pub size: usize,
    /// The load model's rate.
    pub rate: Rate,
    /// Closed loop: a publisher stays at most this many messages ahead of the slowest subscriber of its topic.
    pub window: Option<u64>,
    /// Closed loop: with messages in flight, a publisher waits until this many can be sent at once (default:
    /// half the window), so the server gets batches to coalesce rather than one message per acknowledgement.
    pub batch: Option<u64>,
    /// Warm-up before measuring (messages sent then are delivered but not counted).
    #[serde(serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// The measured window.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// After the window, how long to wait for messages still in flight.
    #[serde(serialize_with = "ser_secs")]
    pub grace: Duration,
    /// Longest wait for every subscriber to be confirmed by a probe message.
    #[serde(serialize_with = "ser_secs")]
    pub probe_timeout: Duration,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// `--protocol json`: the path of the JSON endpoint (`/ws`).
    pub ws_path: String,
    /// Subscriber path template (`/sub/{topic}`).
    pub sub_path: String,
    /// Publisher path template (`/pub/{topic}`).
    pub pub_path: String,
    /// Topic names are this prefix followed by the topic number.
    pub topic_prefix: String,
    /// Send binary frames (default) or text frames (the payload is then not valid UTF-8 in general; only
    /// for servers that require text: the padding is ASCII but the header bytes are not).
    pub text: bool,
    /// What follows the payload header (`--payload`).
    pub payload: crate::filler::Filler,
}

/// Serializes a duration as fractional seconds.
pub fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl FanoutPlan {
    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), PlanError> {
        let invalid = |m: &str| Err(PlanError::Invalid(m.to_owned()));
        if self.subs == 0 || self.pubs == 0 || self.topics == 0 {
            return invalid("--subs, --pubs and --topics must be at least 1");
        }
        if self.size < payload::HEADER_LEN {
            return Err(PlanError::Invalid(format!("--size must be at least {} bytes", payload::HEADER_LEN)));
        }
        if self.pubs > u32::MAX as usize {
            return invalid("too many publishers");
        }
        if self.window == Some(0) {
            return invalid("--window must be at least 1");
        }
        match (self.window, self.batch) {
            (None, Some(_)) => return invalid("--batch needs --window"),
            (Some(w), Some(b)) if b == 0 || b > w => return invalid("--batch must be between 1 and --window"),
            _ => {}
        }
        if self.duration.is_zero() {
            return invalid("--duration must be positive");
        }
        match self.protocol {
            Protocol::Raw => {
                check_template(&self.sub_path)?;
                check_template(&self.pub_path)?;
            }
            Protocol::Json => {
                if self.payload != crate::filler::Filler::Padding {
                    return invalid("--payload is for the raw protocol (--protocol json sends its own envelope)");
                }
                if !self.ws_path.starts_with('/') {
                    return invalid("--ws-path must start with /");
                }
                if self.size < crate::json::HEADER_HEX_LEN {
                    return Err(PlanError::Invalid(format!(
                        "--protocol json needs --size of at least {} bytes (the header in hex digits)",
                        crate::json::HEADER_HEX_LEN
                    )));
                }
                // The longest topic name has the longest envelope head; the receive path reads the header
                // from the first bytes of each message.
                let head = crate::json::envelope_head(&self.topic_name(self.topics - 1)).len();
                if head + crate::json::HEADER_HEX_LEN > crate::json::PREFIX_LEN {
                    return invalid("--topic-prefix is too long for --protocol json (at most about 40 bytes)");
                }
            }
        }
        Ok(())
    }

    /// Topic name of topic number `t`.
    pub fn topic_name(&self, t: usize) -> String {
        format!("{}{t}", self.topic_prefix)
    }

    /// Topic of subscriber `s`.
    pub fn topic_of_sub(&self, s: usize) -> usize {
        s % self.topics
    }

    /// Topic of publisher `p`.
    pub fn topic_of_pub(&self, p: usize) -> usize {
        p % self.topics
    }

    /// Slot of publisher `p` among the publishers of its topic.
    pub fn slot_of_pub(&self, p: usize) -> usize {
        p / self.topics
    }

    /// The most publishers any topic has (the width of a subscriber's sequence table).
    pub fn slots_per_topic(&self) -> usize {
        self.pubs.div_ceil(self.topics)
    }

    /// Publishers of topic `t`.
    pub fn pubs_on_topic(&self, t: usize) -> usize {
        count_on(self.pubs, self.topics, t)
    }

    /// Subscribers of topic `t`.
    #[cfg(test)]
    pub fn subs_on_topic(&self, t: usize) -> usize {
        count_on(self.subs, self.topics, t)
    }

    /// Per-publisher rate in messages per second, for a fixed rate.
    pub fn rate_per_pub(&self) -> Option<f64> {
        match self.rate {
            Rate::Fixed(total) => Some(total / self.pubs as f64),
            Rate::Max => None,
        }
    }
}

/// How many of `n` items numbered 0.. land on bucket `t` of `buckets` under `i % buckets`.
fn count_on(n: usize, buckets: usize, t: usize) -> usize {
    if t >= buckets {
        0
    } else {
        n / buckets + usize::from(t < n % buckets)
    }
}

/// The open-loop schedule of one publisher: message `k` is due at `start + (k + phase) / rate`, so the
/// publishers of a run are spread evenly instead of all sending at the same instants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// When message 0 is due (CLOCK_MONOTONIC ns), before the phase offset.
    pub start_ns: u64,
    /// Nanoseconds between two messages of this publisher.
    pub interval_ns: f64,
    /// Fraction of an interval by which this publisher is offset (0 <= phase < 1).
    pub phase: f64,
}

impl Schedule {
    /// The schedule of publisher `index` out of `count`, each at `rate` messages per second.
    pub fn new(start_ns: u64, rate: f64, index: usize, count: usize) -> Schedule {
        Schedule { start_ns, interval_ns: 1e9 / rate, phase: index as f64 / count.max(1) as f64 }
    }

    /// When message `k` is due.
    pub fn due_at(&self, k: u64) -> u64 {
        self.start_ns + ((k as f64 + self.phase) * self.interval_ns) as u64
    }

    /// How many messages are due by `now_ns` (messages 0..n).
    pub fn due_by(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = (now_ns - self.start_ns) as f64;
        let n = (elapsed / self.interval_ns - self.phase).floor() + 1.0;
        let mut n = if n <= 0.0 { 0 } else { n as u64 };
        // Float rounding must never put a message before its own due time.
        while n > 0 && self.due_at(n - 1) > now_ns {
            n -= 1;
        }
        while self.due_at(n) <= now_ns {
            n += 1;
        }
        n
    }
}

/// The layout of a published payload: publisher id (u32), sequence (u64), timestamp (u64, CLOCK_MONOTONIC ns:
/// the scheduled send time in open loop, the actual send time otherwise), all little-endian, then padding.
pub mod payload {
    /// Bytes of the fixed header; the smallest payload.
    pub const HEADER_LEN: usize = 20;
    /// The sequence number of probe messages (sent before measuring to confirm subscriptions).
    pub const PROBE_SEQ: u64 = u64::MAX;

    /// The fields of a payload header.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        /// Global publisher number.
        pub publisher: u32,
        /// Per-publisher sequence, from 0; [`PROBE_SEQ`] for probes.
        pub seq: u64,
        /// CLOCK_MONOTONIC nanoseconds the latency is measured from.
        pub sent_ns: u64,
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`] (a caller bug: sizes are validated at start).
    pub fn write(buf: &mut [u8], h: Header) {
        buf[0..4].copy_from_slice(&h.publisher.to_le_bytes());
        buf[4..12].copy_from_slice(&h.seq.to_le_bytes());
        buf[12..20].copy_from_slice(&h.sent_ns.to_le_bytes());
    }

    /// Reads a header from the front of a payload, or `None` if it is too short.
    #[inline]
    pub fn read(buf: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let publisher = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let seq = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
        let sent_ns = u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]);
        Some(Header { publisher, seq, sent_ns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let t = Target::parse("ws://127.0.0.1:8080").expect("url");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = Target::parse("ws://127.0.0.1/whatever").expect("url");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.host, "127.0.0.1");
        let t = Target::parse("ws://[::1]:9000").expect("url");
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert!(!t.tls);
        assert_eq!(t.hostname, "::1");
        assert!(Target::parse("http://127.0.0.1").is_err());
        assert!(Target::parse("ws://").is_err());
        assert!(Target::parse("wss://").is_err());
    }

    #[test]
    fn parses_wss_urls_with_port_443_by_default() {
        let t = Target::parse("wss://127.0.0.1").expect("url");
        assert!(t.tls);
        assert_eq!(t.addr.port(), 443);
        assert_eq!((t.host.as_str(), t.hostname.as_str()), ("127.0.0.1", "127.0.0.1"));
        let t = Target::parse("wss://localhost:9443/x").expect("url");
        assert_eq!(t.addr.port(), 9443);
        assert_eq!((t.host.as_str(), t.hostname.as_str()), ("localhost:9443", "localhost"));
    }

    #[test]
    fn url_lists_parse_from_repeats_and_commas_but_never_mix_schemes() {
        let t = parse_targets(&["ws://127.0.0.1:1,ws://127.0.0.1:2", "ws://127.0.0.1:3"]).expect("list");
        let ports: Vec<u16> = t.iter().map(|t| t.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3]);
        assert_eq!(t[1].url, "ws://127.0.0.1:2", "each target keeps its own URL");
        assert_eq!(parse_targets(&["wss://127.0.0.1:1, wss://127.0.0.1:2"]).expect("list").len(), 2);
        assert!(matches!(
            parse_targets(&["ws://127.0.0.1:1", "wss://127.0.0.1:2"]),
            Err(PlanError::MixedSchemes(a, b)) if a == "ws://127.0.0.1:1" && b == "wss://127.0.0.1:2"
        ));
        assert!(parse_targets(&[","]).is_err(), "at least one URL");
        assert!(parse_targets::<&str>(&[]).is_err());
        assert!(parse_targets(&["ws://127.0.0.1:1,http://x"]).is_err());
    }

    #[test]
    fn publishers_go_to_pub_urls_and_everyone_else_is_dealt_round_robin() {
        // Two --url, three --pub-url: endpoints 0-1 are subscribers', 2-4 publishers'.
        let subs: Vec<usize> = (0..5).map(|i| endpoint_of(false, i, 2, 3)).collect();
        assert_eq!(subs, [0, 1, 0, 1, 0]);
        let pubs: Vec<usize> = (0..4).map(|i| endpoint_of(true, i, 2, 3)).collect();
        assert_eq!(pubs, [2, 3, 4, 2]);
        // Without --pub-url, publishers share the --url list like everyone else.
        assert_eq!(endpoint_of(true, 3, 2, 0), 1);
        assert_eq!(endpoint_of(false, 7, 1, 0), 0);
    }

    #[test]
    fn source_ip_ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.8").expect("range");
        assert_eq!(ips.len(), 8);
        assert_eq!(ips[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.1, 127.0.0.3").expect("list").len(), 2);
        assert!(parse_source_ips("127.0.0.8-127.0.0.1").is_err());
        assert!(parse_source_ips("nope").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-4").expect("cpus"), vec![0, 2, 3, 4]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("256KiB").unwrap(), 256 * 1024);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("1.5k").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("max").unwrap(), Rate::Max);
        assert_eq!(Rate::parse("1000").unwrap(), Rate::Fixed(1000.0));
        assert_eq!(Rate::parse("250k").unwrap(), Rate::Fixed(250_000.0));
        assert_eq!(Rate::parse("2M").unwrap(), Rate::Fixed(2_000_000.0));
        assert!(Rate::parse("0").is_err());
        assert!(Rate::parse("fast").is_err());
    }

    fn plan(subs: usize, topics: usize, pubs: usize) -> FanoutPlan {
        FanoutPlan {
            subs,
            topics,
            pubs,
            size: 64,
            rate: Rate::Max,
            window: None,
            batch: None,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            protocol: Protocol::Raw,
            ws_path: "/ws".into(),
            sub_path: "/sub/{topic}".into(),
            pub_path: "/pub/{topic}".into(),
            topic_prefix: "t".into(),
            text: false,
            payload: crate::filler::Filler::Padding,
        }
    }

    #[test]
    fn json_plans_need_room_for_the_hex_header() {
        let mut p = plan(1, 1, 1);
        p.protocol = Protocol::Json;
        p.size = 40;
        p.sub_path = "ignored".into();
        assert!(p.validate().is_ok(), "raw path templates are not used");
        p.size = 39;
        assert!(p.validate().is_err());
        p.size = 64;
        p.topic_prefix = "x".repeat(60);
        assert!(p.validate().is_err(), "envelope head plus header beyond the scanned prefix");
        p.topic_prefix = "lg1234567-".into();
        p.topics = 1000;
        assert!(p.validate().is_ok());
        p.ws_path = "ws".into();
        assert!(p.validate().is_err());
    }

    #[test]
    fn topic_mapping_covers_everyone_once() {
        let p = plan(10, 3, 7);
        assert_eq!((0..3).map(|t| p.subs_on_topic(t)).sum::<usize>(), 10);
        assert_eq!((0..3).map(|t| p.pubs_on_topic(t)).sum::<usize>(), 7);
        assert_eq!(p.slots_per_topic(), 3);
        for pb in 0..7 {
            assert!(p.slot_of_pub(pb) < p.pubs_on_topic(p.topic_of_pub(pb)));
        }
        assert_eq!(p.pubs_on_topic(5), 0);
        assert!(plan(1, 1, 1).validate().is_ok());
        let mut bad = plan(1, 1, 1);
        bad.size = 19;
        assert!(bad.validate().is_err());
        bad = plan(1, 1, 1);
        bad.sub_path = "/sub/".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn schedule_counts_due_messages_exactly() {
        let s = Schedule::new(1_000, 1000.0, 0, 1); // one per ms from t=1000ns
        assert_eq!(s.due_by(999), 0);
        assert_eq!(s.due_by(1_000), 1);
        assert_eq!(s.due_by(1_000_999), 1);
        assert_eq!(s.due_by(1_001_000), 2);
        assert_eq!(s.due_at(5), 5_001_000);
        let half = Schedule::new(0, 1000.0, 1, 2);
        assert_eq!(half.due_at(0), 500_000);
        for now in (0..10_000_000).step_by(77_777) {
            let n = s.due_by(now);
            assert!(n == 0 || s.due_at(n - 1) <= now);
            assert!(s.due_at(n) > now);
        }
    }

    #[test]
    fn payload_round_trips() {
        let mut buf = [0u8; 64];
        let h = payload::Header { publisher: 7, seq: 123_456_789_012, sent_ns: 99 };
        payload::write(&mut buf, h);
        assert_eq!(payload::read(&buf), Some(h));
        assert_eq!(payload::read(&buf[..19]), None);
    }
}
