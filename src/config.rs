//! Every setting herald has, named once.
//!
//! Each key is declared a single time in a `section!` block below: that one declaration gives the field of the
//! typed section struct the rest of the server reads (`Limits`, `Timeouts`, ...), its default, its TOML key
//! (`[limits] max_message_size = "1MiB"`), its CLI flag (`--max-message-size 1MiB`) and its `--help` text (the
//! doc comment). Precedence: CLI flag, then the TOML file given with `--config`, then the default.
//! Sizes accept `1024`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB` as powers of ten); durations accept `500ms`,
//! `30s`, `2m`, `1h`. Invalid values fail at start with a message naming the key.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong form (the message names it).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path given.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// An environment variable holds a value of the wrong form.
    #[error("invalid value in environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `HERALD_LIMITS_MAX_MESSAGE_SIZE`.
        var: String,
        /// Why.
        message: String,
    },
    /// A value is well-formed but not allowed.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The key, as `section.name`.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// A byte size, written `1024`, `64KiB`, `1MiB`, `16MiB`, `1GiB` (or `KB`/`MB`/`GB`, powers of ten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }
    /// The size as a `usize` (saturating on 32-bit targets).
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => return Err(format!("unknown size unit `{other}` (use B, KiB, MiB, GiB)")),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("size `{s}` overflows"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n != 0 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n != 0 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

/// A duration, written `500ms`, `30s`, `2m`, `1h` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 2m)"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("unknown duration unit `{other}` (use ms, s, m, h)")),
        };
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("duration `{s}` is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A listen address: `host:port`, where the host is an IP address (`127.0.0.1`, `[::1]`), a name resolved at
/// start (`localhost`: its first IPv4 address, else its first address), or empty for every IPv4 address
/// (`:8080` is `0.0.0.0:8080`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Listen(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!("`{s}` is not an address (host:port, e.g. 127.0.0.1:8080, localhost:8080, :8080)")
        })?;
        let port: u16 = port.parse().map_err(|_| format!("`{port}` in `{s}` is not a port number"))?;
        if host.is_empty() {
            return Ok(Listen(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| format!("cannot resolve `{host}` in `{s}`: {e}"))?
            .collect();
        found
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| found.first())
            .map(|a| Listen(*a))
            .ok_or_else(|| format!("`{host}` in `{s}` resolves to no address"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An optional listen address (`tls.listen`): empty for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptListen(pub Option<SocketAddr>);

impl FromStr for OptListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(OptListen(None));
        }
        s.parse::<Listen>().map(|l| OptListen(Some(l.0)))
    }
}

impl fmt::Display for OptListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

/// What happens to a subscriber whose queued outbound bytes would pass `max_backpressure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1008 "slow consumer" (counted in metrics). The default.
    Close,
    /// Drop the new message for that subscriber only (counted in metrics).
    Drop,
}

impl fmt::Display for SlowConsumerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlowConsumerPolicy::Close => "close",
            SlowConsumerPolicy::Drop => "drop",
        })
    }
}

impl FromStr for SlowConsumerPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "close" => Ok(SlowConsumerPolicy::Close),
            "drop" => Ok(SlowConsumerPolicy::Drop),
            other => Err(format!("`{other}` is not a slow-consumer policy (close or drop)")),
        }
    }
}

/// `server.backend`: how the workers wait for sockets and move their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A `mio` (epoll) loop: readiness, then `read`/`writev`/`accept` system calls. The default.
    Epoll,
    /// An io_uring ring per worker: multishot accept and receive, one submission for a turn's sends.
    Uring,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(Backend::Epoll),
            "uring" | "io_uring" => Ok(Backend::Uring),
            other => Err(format!("`{other}` is not a backend (epoll or uring)")),
        }
    }
}

/// `cluster.on_overflow`: what a publish meets when the queue to Redis holds `cluster.max_pending` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Deliver it locally, do not send it to Redis (counted; the other nodes see a gap). The default.
    Drop,
    /// Refuse it: `/ws` error reply, `POST` 503, `/pub` close 1013.
    Reject,
}

impl fmt::Display for OverflowPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverflowPolicy::Drop => "drop",
            OverflowPolicy::Reject => "reject",
        })
    }
}

impl FromStr for OverflowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(OverflowPolicy::Drop),
            "reject" => Ok(OverflowPolicy::Reject),
            other => Err(format!("`{other}` is not an overflow policy (drop or reject)")),
        }
    }
}

/// `cluster.on_gap`: what raw `/sub` subscribers get when messages of their topic from another node were lost
/// (`/ws` subscribers always get a `gap` notice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapPolicy {
    /// Nothing (the gap is counted). The default.
    Ignore,
    /// Close the connection with 4410 "messages lost", so the client reconnects and resyncs.
    Close,
}

impl fmt::Display for GapPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GapPolicy::Ignore => "ignore",
            GapPolicy::Close => "close",
        })
    }
}

impl FromStr for GapPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ignore" => Ok(GapPolicy::Ignore),
            "close" => Ok(GapPolicy::Close),
            other => Err(format!("`{other}` is not a gap policy (ignore or close)")),
        }
    }
}

/// `cluster.mode`: how the Redis URLs are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// Independent instances (Redis or Valkey), topics sharded over them by a hash of the name: PUBLISH and
    /// SUBSCRIBE. The default.
    Standalone,
    /// One Redis Cluster (7+), the URLs its seed nodes: sharded pub/sub (SPUBLISH, SSUBSCRIBE), each channel
    /// on the master that owns its slot, following MOVED and failover.
    Sharded,
}

impl fmt::Display for ClusterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterMode::Standalone => "standalone",
            ClusterMode::Sharded => "sharded",
        })
    }
}

impl FromStr for ClusterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standalone" => Ok(ClusterMode::Standalone),
            "sharded" => Ok(ClusterMode::Sharded),
            other => Err(format!("`{other}` is not a cluster mode (standalone or sharded)")),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Human,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format (human or json)")),
        }
    }
}

/// A list of CPU ids: `0,1`, `0-3`, `0-1,4`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(pub Vec<usize>);

impl FromStr for CpuList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("`{part}` is not a CPU id or range (e.g. 0,1 or 0-3)");
            if let Some((a, b)) = part.split_once('-') {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            } else {
                cpus.push(part.parse().map_err(|_| bad())?);
            }
        }
        Ok(CpuList(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// A list of strings: a TOML array, or (on the command line and in TOML alike) one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl List {
    /// A list of these items.
    pub fn of(items: &[&str]) -> List {
        List(items.iter().map(|s| s.to_string()).collect())
    }
}

impl FromStr for List {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(List(s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()))
    }
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => s.parse().map_err(serde::de::Error::custom)?,
            Raw::Many(v) => List(v),
        })
    }
}

/// One trusted proxy: an address (`127.0.0.1`, `::1`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address is read as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, 127.0.0.1, ::1)"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{p}` in `{s}` is not a prefix length (0 to {max})")),
            },
        };
        // Host bits are cleared: `10.1.2.3/8` is `10.0.0.0/8`.
        let addr = match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// `server.trusted_proxies`: addresses and CIDR blocks, a TOML array or one comma-separated string
/// (`"10.0.0.0/8, 127.0.0.1, ::1"`). Empty trusts nobody.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyList(pub Vec<Cidr>);

impl ProxyList {
    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl FromStr for ProxyList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::parse).collect::<Result<_, _>>().map(ProxyList)
    }
}

impl fmt::Display for ProxyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl<'de> Deserialize<'de> for ProxyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let List(items) = List::deserialize(d)?;
        items.join(",").parse().map_err(serde::de::Error::custom)
    }
}

impl TomlValue for ProxyList {
    fn toml(&self) -> String {
        let items: Vec<String> = self.0.iter().map(|c| toml_string(&c.to_string())).collect();
        format!("[{}]", items.join(", "))
    }
}

/// `auth.mode`: `auto` (handshake when a key is configured, else none), `none`, `handshake`, `message` or
/// `per_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthModeSetting {
    /// `handshake` when any key is configured, `none` otherwise.
    Auto,
    /// A resolved mode.
    Fixed(crate::protocol::auth::Mode),
}

impl fmt::Display for AuthModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::protocol::auth::Mode;
        f.write_str(match self {
            AuthModeSetting::Auto => "auto",
            AuthModeSetting::Fixed(Mode::None) => "none",
            AuthModeSetting::Fixed(Mode::Handshake) => "handshake",
            AuthModeSetting::Fixed(Mode::Message) => "message",
            AuthModeSetting::Fixed(Mode::PerMessage) => "per_message",
        })
    }
}

impl FromStr for AuthModeSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::protocol::auth::Mode;
        Ok(match s {
            "auto" => AuthModeSetting::Auto,
            "none" => AuthModeSetting::Fixed(Mode::None),
            "handshake" => AuthModeSetting::Fixed(Mode::Handshake),
            "message" => AuthModeSetting::Fixed(Mode::Message),
            "per_message" | "per-message" => AuthModeSetting::Fixed(Mode::PerMessage),
            other => {
                return Err(format!("`{other}` is not an auth mode (auto, none, handshake, message, per_message)"))
            }
        })
    }
}

/// Deserializes any of the `FromStr` setting types from a TOML string, or from an integer for sizes/durations.
macro_rules! deserialize_via_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw { Int(u64), Str(String) }
                let text = match Raw::deserialize(d)? { Raw::Int(n) => n.to_string(), Raw::Str(s) => s };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_via_from_str!(
    Size,
    Dur,
    SlowConsumerPolicy,
    Backend,
    LogFormat,
    CpuList,
    AuthModeSetting,
    Listen,
    OptListen,
    OverflowPolicy,
    GapPolicy,
    ClusterMode
);

/// How a setting's value is written in TOML (for `--check` and the generated example file).
trait TomlValue {
    fn toml(&self) -> String;
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

macro_rules! toml_bare {
    ($($t:ty),*) => {$( impl TomlValue for $t { fn toml(&self) -> String { self.to_string() } } )*};
}
toml_bare!(usize, u64, u32, u8, bool);

macro_rules! toml_quoted {
    ($($t:ty),*) => {$( impl TomlValue for $t { fn toml(&self) -> String { toml_string(&self.to_string()) } } )*};
}
toml_quoted!(
    String,
    Size,
    Dur,
    Listen,
    OptListen,
    CpuList,
    LogFormat,
    SlowConsumerPolicy,
    Backend,
    AuthModeSetting,
    OverflowPolicy,
    GapPolicy,
    ClusterMode
);

impl TomlValue for List {
    fn toml(&self) -> String {
        let items: Vec<String> = self.0.iter().map(|s| toml_string(s)).collect();
        format!("[{}]", items.join(", "))
    }
}

/// The environment variable of `table.key`: `HERALD_LIMITS_MAX_MESSAGE_SIZE` for `limits.max_message_size`.
pub fn env_var(table: &str, key: &str) -> String {
    format!("HERALD_{}_{}", table.to_ascii_uppercase(), key.to_ascii_uppercase())
}

/// Declares one config section: the typed struct, its defaults, its TOML table and its CLI flags.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident, $file:ident, $args:ident, $heading:literal {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr $(, flag = $flag:literal)? ; )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $( $(#[doc = $doc])* pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self { Self { $( $field: $default, )* } }
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $file { $( #[serde(default)] $field: Option<$ty>, )* }

        #[doc = concat!("Command-line flags of the `", $heading, "` section (each overrides the file).")]
        #[derive(Debug, Default, Clone, clap::Args)]
        #[command(next_help_heading = $heading)]
        pub struct $args {
            $( $(#[doc = $doc])* #[arg(long $(= $flag, id = $flag)?, value_name = stringify!($ty))] pub $field: Option<$ty>, )*
        }

        impl $name {
            /// The TOML table of this section.
            fn table() -> String {
                $heading.to_ascii_lowercase()
            }

            /// File, then environment (`HERALD_<SECTION>_<KEY>`), then flags, over what is already set.
            fn merge(&mut self, file: Option<$file>, env: &dyn Fn(&str) -> Option<String>, cli: &$args)
                -> Result<(), ConfigError>
            {
                if let Some(file) = file { $( if let Some(v) = file.$field { self.$field = v; } )* }
                $(
                    let var = env_var(&Self::table(), stringify!($field));
                    if let Some(text) = env(&var) {
                        self.$field = text
                            .parse::<$ty>()
                            .map_err(|e| ConfigError::Env { var, message: e.to_string() })?;
                    }
                )*
                $( if let Some(v) = &cli.$field { self.$field = v.clone(); } )*
                Ok(())
            }

            /// Appends this section as TOML, each key under its documentation when `docs`.
            fn render(&self, out: &mut String, docs: bool) {
                out.push_str(&format!("[{}]\n", Self::table()));
                $(
                    if docs {
                        $( out.push_str(concat!("#", $doc, "\n")); )*
                    }
                    out.push_str(&format!("{} = {}\n", stringify!($field), self.$field.toml()));
                    if docs {
                        out.push('\n');
                    }
                )*
            }
        }
    };
}

section! {
    /// Where and how the server runs (`[server]`).
    ServerSettings, ServerFile, ServerArgs, "Server" {
        /// Address to listen on (default 127.0.0.1:8080): IP:port, name:port (resolved at start) or :port (every
        /// IPv4 address). Port 0 binds a free port shared by every worker.
        listen: Listen = Listen(SocketAddr::from(([127, 0, 0, 1], 8080)));
        /// Worker threads, one event loop each (default 0 = one per available core).
        workers: usize = 0;
        /// CPUs to pin the workers to, e.g. `0,1` or `0-3` (default: all available, in order).
        cpus: CpuList = CpuList::default();
        /// Log format: human or json (default human). The level comes from RUST_LOG (default info).
        log_format: LogFormat = LogFormat::Human;
        /// Pin each worker to a core (default true; `--no-pin` turns it off).
        pin: bool = true;
        /// How workers wait and move bytes: epoll or uring (default epoll). `uring` refuses to start, naming
        /// the cause, where io_uring cannot be set up (old kernel, seccomp, RLIMIT_MEMLOCK); it never falls back.
        backend: Backend = Backend::Epoll;
        /// uring: receive buffers per worker, each `read_buffer` bytes, lent to connections only while bytes are
        /// in them (default 512, rounded up to a power of two). When all are in use, receiving waits for one to come back (counted).
        uring_buffers: usize = 512;
        /// uring: submission queue entries per worker (default 4096; a turn with more sends submits early).
        uring_entries: u32 = 4096;
        /// Proxies whose word on the client's address is taken: IP addresses and CIDR blocks, e.g.
        /// `10.0.0.0/8, 127.0.0.1, ::1` (default: empty, trust nobody). For a connection from one of them, the
        /// client is the rightmost address in X-Forwarded-For (or Forwarded: for=) that is not itself trusted,
        /// or, with proxy_protocol, the address in the PROXY header. The per-IP limit and the logs use it.
        trusted_proxies: ProxyList = ProxyList::default();
        /// Connections from a trusted proxy must start with a PROXY protocol header (v1 or v2) naming the
        /// client; without a valid one they are closed (default false: X-Forwarded-For is read instead).
        proxy_protocol: bool = false;
    }
}

section! {
    /// Size and count limits (`[limits]`). Every one is enforced, counted in metrics when hit, and tested.
    Limits, LimitsFile, LimitsArgs, "Limits" {
        /// Most open connections per process; past it, new connections get 503 (default 0 = derived from the
        /// open-files limit minus a reserve of 100 descriptors).
        max_connections: usize = 0;
        /// Most open connections from one IP address; past it, 503 (default 0 = no limit).
        max_connections_per_ip: usize = 0;
        /// Largest message after reassembly (default 1MiB); larger gets close 1009, a larger POST body 413.
        max_message_size: Size = Size::mib(1);
        /// Largest single frame payload (default: equal to max_message_size); larger gets close 1009.
        max_frame_size: Size = Size(0);
        /// Largest HTTP request head (default 8KiB); larger gets 431.
        max_request_head: Size = Size::kib(8);
        /// Most topics one connection may subscribe to (default 128).
        max_subscriptions: usize = 128;
        /// Most topics with local subscribers per worker (default 100000); topics only other workers' clients
        /// use do not count.
        max_topics_per_worker: usize = 100_000;
        /// Topics new to its worker one /ws connection may create per second, after a burst of
        /// new_topics_burst; past it, `rate_limited` (default 32; 0 = no limit).
        max_new_topics_per_second: usize = 32;
        /// New topics one /ws connection may create at once before max_new_topics_per_second applies (default
        /// 32; at least 1).
        new_topics_burst: usize = 32;
        /// Cap on one connection's queued outbound bytes (default 1MiB); past it the slow-consumer policy applies.
        max_backpressure: Size = Size::mib(1);
        /// What to do with a subscriber past max_backpressure: close (1008) or drop (default close).
        slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy::Close;
        /// Bytes read from one socket per read call; read buffers are pooled per worker (default 16KiB).
        read_buffer: Size = Size::kib(16);
        /// Frames for one topic coalesced into one shared buffer per loop turn, up to this size (default 64KiB).
        coalesce_limit: Size = Size::kib(64);
        /// Memory one worker may hold for partly received messages and request bodies, over all its connections
        /// (default 256MiB; at least max_message_size); past it, the connection holding the most is closed
        /// (1008 "receive budget exceeded", or 503 before the upgrade).
        max_receive_memory: Size = Size::mib(256);
        /// Capacity of each worker's cross-worker inbox, in batches; when full, publishers feeding it are paused
        /// (default 4096).
        inbox_capacity: usize = 4096;
        /// Deepest nesting of arrays and objects in a `/ws` request's `data` and `id` and in a JSON body of POST
        /// /publish (default 64). Deeper gets an invalid_request reply (a 400 for the POST), so subscribers'
        /// parsers never meet deeper documents (serde_json stops at 128).
        max_json_depth: usize = 64;
    }
}

section! {
    /// Timeouts (`[timeouts]`).
    Timeouts, TimeoutsFile, TimeoutsArgs, "Timeouts" {
        /// Time allowed from TCP accept to a complete request head; then the connection is closed (default 5s).
        handshake_timeout: Dur = Dur(Duration::from_secs(5));
        /// Interval between server pings on an otherwise quiet connection (default 30s; 0 disables).
        ping_interval: Dur = Dur(Duration::from_secs(30));
        /// A connection that sent nothing (not even a pong) for this long is closed with 1001 (default 120s;
        /// 0 disables).
        idle_timeout: Dur = Dur(Duration::from_secs(120));
        /// Time to wait for the peer's close frame (or EOF) after ours before dropping the socket (default 5s).
        close_timeout: Dur = Dur(Duration::from_secs(5));
        /// On SIGTERM/SIGINT, time to flush queued messages and close frames before exiting (default 10s).
        shutdown_timeout: Dur = Dur(Duration::from_secs(10));
    }
}

section! {
    /// Authentication and authorization (`[auth]`). Secrets are read from files or environment variables named
    /// here, never given as values on the command line (where `ps` would show them).
    Auth, AuthFile, AuthArgs, "Auth" {
        /// auto (handshake when a key is configured, else none), none, handshake, message or per_message.
        mode: AuthModeSetting = AuthModeSetting::Auto, flag = "auth-mode";
        /// File holding the HMAC secret (its bytes as they are; one trailing newline is dropped).
        secret_file: String = String::new(), flag = "auth-secret-file";
        /// Environment variable holding the HMAC secret (e.g. HERALD_JWT_SECRET).
        secret_env: String = String::new(), flag = "auth-secret-env";
        /// Algorithms the HMAC secret verifies (default HS256).
        secret_algorithms: List = List::of(&["HS256"]), flag = "auth-secret-algorithms";
        /// PEM public key file (RSA, EC or Ed25519).
        public_key_file: String = String::new(), flag = "auth-public-key-file";
        /// Algorithms the PEM key verifies, e.g. RS256 or ES256 or EdDSA (required with public_key_file).
        public_key_algorithms: List = List::default(), flag = "auth-public-key-algorithms";
        /// Local JWKS file; its keys are chosen by `kid`. Reloaded with the other keys on SIGHUP.
        jwks_file: String = String::new(), flag = "auth-jwks-file";
        /// Accepted `iss` values (default: not checked).
        issuer: List = List::default(), flag = "auth-issuer";
        /// Accepted `aud` values (default: not checked).
        audience: List = List::default(), flag = "auth-audience";
        /// Clock skew allowed on `exp` and `nbf` (default 30s).
        leeway: Dur = Dur(Duration::from_secs(30)), flag = "auth-leeway";
        /// Message and per-message modes: time allowed to authenticate after the upgrade (default 5s).
        timeout: Dur = Dur(Duration::from_secs(5)), flag = "auth-timeout";
        /// Where tokens are read from, tried in this order: authorization, x-auth-token, cookie, query,
        /// subprotocol (default: all).
        carriers: List = List::of(&["authorization", "x-auth-token", "cookie", "query", "subprotocol"]),
            flag = "auth-carriers";
        /// Name of the cookie carrying the token (default herald_token).
        cookie_name: String = "herald_token".to_string(), flag = "auth-cookie-name";
        /// Origins allowed to open WebSockets (exact, e.g. https://app.example). When set, any other Origin gets
        /// 403; cookie tokens are only accepted with a listed Origin (default: empty).
        allowed_origins: List = List::default(), flag = "auth-allowed-origins";
        /// File holding a static API key that authorizes POST /publish for any topic (compared in constant time).
        api_key_file: String = String::new(), flag = "auth-api-key-file";
        /// Environment variable holding that API key.
        api_key_env: String = String::new(), flag = "auth-api-key-env";
        /// Largest token accepted (default 8KiB).
        max_token_size: Size = Size::kib(8), flag = "auth-max-token-size";
        /// Verified tokens remembered per worker (about 40 bytes each), so a client reconnecting with the same
        /// token skips the signature check; cleared on SIGHUP (default 65536; 0 turns it off).
        token_cache: usize = crate::protocol::auth::cache::DEFAULT_CAPACITY, flag = "auth-token-cache";
    }
}

section! {
    /// TLS (`[tls]`): `wss://` and `https://` served by the workers themselves (rustls; TLS 1.3 and 1.2, ALPN
    /// http/1.1, session tickets). Setting cert_file and key_file turns it on; SIGHUP re-reads both files.
    Tls, TlsFile, TlsArgs, "TLS" {
        /// PEM certificate chain, leaf first (ECDSA, Ed25519 or RSA key). Re-read on SIGHUP.
        cert_file: String = String::new(), flag = "tls-cert-file";
        /// PEM private key of the certificate (PKCS#8, SEC1 or PKCS#1). Re-read on SIGHUP.
        key_file: String = String::new(), flag = "tls-key-file";
        /// Address of a TLS listener beside the plain one, e.g. 0.0.0.0:443 with server.listen on :80 (default
        /// empty: with cert_file and key_file set, the main listener, server.listen, speaks TLS).
        listen: OptListen = OptListen(None), flag = "tls-listen";
    }
}

impl Tls {
    /// Whether TLS is configured (a certificate and its key).
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

section! {
    /// permessage-deflate (RFC 7692) (`[compression]`). Each broadcast is compressed once per worker, whatever
    /// the number of subscribers, so it costs no memory per connection (README "Compression").
    Compression, CompressionFile, CompressionArgs, "Compression" {
        /// Offer permessage-deflate to clients that ask for it, on every WebSocket endpoint (default false).
        enabled: bool = false, flag = "compression";
        /// Messages smaller than this go uncompressed (default 256B: below it JSON saves a few bytes at most).
        min_size: Size = Size(256), flag = "compression-min-size";
        /// zlib compression level, 1 (fastest) to 9 (smallest) (default 6).
        level: u32 = 6, flag = "compression-level";
        /// Largest window of the compressor, 9 to 15 bits (default 15: 32KiB); a client may ask for less.
        window_bits: u8 = 15, flag = "compression-window-bits";
    }
}

section! {
    /// Several nodes over Redis Pub/Sub (`[cluster]`). Off while redis_urls is empty: a single node, no Redis.
    /// The Redis password is read from a file or an environment variable named here, never given as a value.
    Cluster, ClusterFile, ClusterArgs, "Cluster" {
        /// Redis (or Valkey) instances, `redis://host:port`; topics are sharded over them by a stable hash of
        /// the name, so every node must list the same instances in the same order (default: empty = off).
        redis_urls: List = List::default(), flag = "cluster-redis-urls";
        /// standalone (independent instances, PUBLISH/SUBSCRIBE) or sharded (one Redis Cluster 7+ whose seed
        /// nodes redis_urls lists: SPUBLISH/SSUBSCRIBE on each channel's slot owner) (default standalone).
        mode: ClusterMode = ClusterMode::Standalone, flag = "cluster-mode";
        /// This node's name in logs, /healthz and the envelope (default: random at each start).
        node_id: String = String::new(), flag = "cluster-node-id";
        /// Prefix of the Redis channel names: a topic `t` is the channel `<prefix>t` (default herald:).
        channel_prefix: String = "herald:".to_string(), flag = "cluster-channel-prefix";
        /// File holding the Redis password (one trailing newline is dropped).
        password_file: String = String::new(), flag = "cluster-password-file";
        /// Environment variable holding the Redis password.
        password_env: String = String::new(), flag = "cluster-password-env";
        /// Redis user for AUTH with a password (default: none, the `default` user).
        username: String = String::new(), flag = "cluster-username";
        /// rediss:// URLs: PEM file of the CA certificate(s) Redis's certificate must chain to (required with
        /// rediss://; for a public CA, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt). The name
        /// checked is the URL's host.
        tls_ca_file: String = String::new(), flag = "cluster-tls-ca-file";
        /// rediss:// URLs: PEM certificate chain herald presents to Redis (for `tls-auth-clients yes`, Redis's
        /// default) (default: none).
        tls_cert_file: String = String::new(), flag = "cluster-tls-cert-file";
        /// rediss:// URLs: PEM private key of tls_cert_file (default: none).
        tls_key_file: String = String::new(), flag = "cluster-tls-key-file";
        /// Time allowed to connect to Redis and get the first reply (default 2s).
        connect_timeout: Dur = Dur(Duration::from_secs(2)), flag = "cluster-connect-timeout";
        /// How often each subscribe connection checks itself with a self-published probe (default 1s).
        probe_interval: Dur = Dur(Duration::from_secs(1)), flag = "cluster-probe-interval";
        /// A probe not back within this time marks the link stalled: it is reconnected (default 3s).
        probe_timeout: Dur = Dur(Duration::from_secs(3)), flag = "cluster-probe-timeout";
        /// Longest wait between reconnection attempts (backoff doubles from 100ms, with jitter; default 5s).
        reconnect_max: Dur = Dur(Duration::from_secs(5)), flag = "cluster-reconnect-max";
        /// Time a topic stays subscribed in Redis after its last local subscriber left (default 5s).
        unsubscribe_linger: Dur = Dur(Duration::from_secs(5)), flag = "cluster-unsubscribe-linger";
        /// Most publishes waiting to be written to Redis, over all instances (default 65536).
        max_pending: usize = 65_536, flag = "cluster-max-pending";
        /// Past max_pending: drop (deliver locally only, counted; other nodes see a gap) or reject (the publisher
        /// gets an error: /ws error reply, POST 503, /pub close 1013) (default drop).
        on_overflow: OverflowPolicy = OverflowPolicy::Drop, flag = "cluster-on-overflow";
        /// Raw /sub subscribers on a gap: ignore (counted only) or close (4410, to resync) (default ignore).
        on_gap: GapPolicy = GapPolicy::Ignore, flag = "cluster-on-gap";
        /// /healthz answers 503 while any Redis instance is unreachable (default false: 200, state degraded).
        health_503_when_degraded: bool = false, flag = "cluster-health-503-when-degraded";
    }
}

/// The top of `herald.example.toml`.
const EXAMPLE_HEADER: &str = "\
# herald configuration: every key with its default, generated from the declarations in src/config.rs
# (`herald --print-defaults > herald.example.toml`). Use with `herald --config FILE`.
# Precedence: command-line flag, then environment variable, then this file, then the default.
# Flag: --key-with-dashes (auth keys: --auth-key, cluster keys: --cluster-key). Environment:
# HERALD_<SECTION>_<KEY>, e.g. HERALD_LIMITS_MAX_MESSAGE_SIZE=4MiB. Secrets are never values here: name a file or a variable.
# Sizes: 65536, 64KiB, 1MiB, 1GiB (KB/MB/GB are powers of ten). Durations: 500ms, 30s, 2m, 1h.

";

/// The whole configuration, after defaults, the file and the CLI have been merged and validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `[server]`
    pub server: ServerSettings,
    /// `[limits]`
    pub limits: Limits,
    /// `[timeouts]`
    pub timeouts: Timeouts,
    /// `[auth]`
    pub auth: Auth,
    /// `[tls]`
    pub tls: Tls,
    /// `[compression]`
    pub compression: Compression,
    /// `[cluster]`
    pub cluster: Cluster,
}

/// The TOML file layout.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<ServerFile>,
    limits: Option<LimitsFile>,
    timeouts: Option<TimeoutsFile>,
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
    compression: Option<CompressionFile>,
    cluster: Option<ClusterFile>,
}

/// Every command-line flag.
#[derive(Debug, Default, Clone, clap::Parser)]
#[command(name = "herald", version, about = "herald: a thread-per-core WebSocket push and broadcast server")]
pub struct Cli {
    /// Read settings from this TOML file (sections [server], [limits], [timeouts], [auth], [tls],
    /// [compression], [cluster]); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Check the configuration (file, environment, flags), print the effective settings as TOML, and exit
    /// without serving (status 0 when valid, 2 when not), like `nginx -t`.
    #[arg(long)]
    pub check: bool,
    /// Print every key with its documentation and default as TOML (the example config file), and exit.
    #[arg(long)]
    pub print_defaults: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub server: ServerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub timeouts: TimeoutsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub compression: CompressionArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
}

impl Config {
    /// Builds the configuration: defaults, then the file named by `--config` (if any), then the process
    /// environment (`HERALD_<SECTION>_<KEY>`), then the flags.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Self::merge(file, &|var| std::env::var(var).ok(), cli)
    }

    /// Builds the configuration from TOML text and flags, ignoring the environment (for tests and embedding).
    pub fn from_toml(text: &str, cli: &Cli) -> Result<Config, ConfigError> {
        Self::from_sources(text, &|_| None, cli)
    }

    /// Builds the configuration from TOML text, an environment (a look-up of variable names) and flags.
    pub fn from_sources(text: &str, env: &dyn Fn(&str) -> Option<String>, cli: &Cli) -> Result<Config, ConfigError> {
        let file = parse_file(text, Path::new("<inline>"))?;
        Self::merge(Some(file), env, cli)
    }

    /// The settings as a TOML file, each key under its documentation when `docs` (what `--check` prints;
    /// `Config::default().render(true)` is `herald.example.toml`).
    pub fn render(&self, docs: bool) -> String {
        let mut out = String::new();
        if docs {
            out.push_str(EXAMPLE_HEADER);
        }
        let gap = if docs { "" } else { "\n" };
        self.server.render(&mut out, docs);
        out.push_str(gap);
        self.limits.render(&mut out, docs);
        out.push_str(gap);
        self.timeouts.render(&mut out, docs);
        out.push_str(gap);
        self.auth.render(&mut out, docs);
        out.push_str(gap);
        self.tls.render(&mut out, docs);
        out.push_str(gap);
        self.compression.render(&mut out, docs);
        out.push_str(gap);
        self.cluster.render(&mut out, docs);
        while out.ends_with("\n\n") {
            out.pop();
        }
        out
    }

    fn merge(file: Option<ConfigFile>, env: &dyn Fn(&str) -> Option<String>, cli: &Cli) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let file = file.unwrap_or_default();
        config.server.merge(file.server, env, &cli.server)?;
        config.limits.merge(file.limits, env, &cli.limits)?;
        config.timeouts.merge(file.timeouts, env, &cli.timeouts)?;
        config.auth.merge(file.auth, env, &cli.auth)?;
        config.tls.merge(file.tls, env, &cli.tls)?;
        config.compression.merge(file.compression, env, &cli.compression)?;
        config.cluster.merge(file.cluster, env, &cli.cluster)?;
        if cli.no_pin {
            config.server.pin = false;
        }
        config.resolve()?;
        Ok(config)
    }

    /// Fills the derived defaults and checks cross-key rules.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let l = &mut self.limits;
        if l.max_message_size.0 == 0 {
            return Err(invalid("limits.max_message_size", "must be at least 1 byte"));
        }
        if l.max_frame_size.0 == 0 {
            l.max_frame_size = l.max_message_size;
        }
        if l.max_frame_size > l.max_message_size {
            return Err(invalid("limits.max_frame_size", "must not exceed limits.max_message_size"));
        }
        if l.max_request_head.0 < 256 {
            return Err(invalid("limits.max_request_head", "must be at least 256 bytes"));
        }
        if l.read_buffer.0 < 1024 || l.read_buffer > Size::mib(16) {
            return Err(invalid("limits.read_buffer", "must be between 1KiB and 16MiB"));
        }
        if l.max_backpressure.0 < 1024 {
            return Err(invalid("limits.max_backpressure", "must be at least 1KiB"));
        }
        if l.coalesce_limit.0 < 256 {
            return Err(invalid("limits.coalesce_limit", "must be at least 256 bytes"));
        }
        if l.max_receive_memory < l.max_message_size {
            return Err(invalid("limits.max_receive_memory", "must be at least limits.max_message_size"));
        }
        if l.inbox_capacity == 0 {
            return Err(invalid("limits.inbox_capacity", "must be at least 1"));
        }
        if l.max_json_depth == 0 {
            return Err(invalid("limits.max_json_depth", "must be at least 1"));
        }
        if l.max_new_topics_per_second > u32::MAX as usize {
            return Err(invalid("limits.max_new_topics_per_second", "must be at most 4294967295"));
        }
        if l.new_topics_burst == 0 || l.new_topics_burst > u32::MAX as usize {
            return Err(invalid("limits.new_topics_burst", "must be between 1 and 4294967295"));
        }
        if l.max_connections == 0 {
            l.max_connections = default_max_connections();
        }
        if self.server.workers == 0 {
            self.server.workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        }
        if self.server.workers > 64 {
            return Err(invalid("server.workers", "at most 64 workers are supported"));
        }
        if self.server.proxy_protocol && self.server.trusted_proxies.is_empty() {
            return Err(invalid("server.proxy_protocol", "needs server.trusted_proxies (the proxies that send it)"));
        }
        if self.timeouts.handshake_timeout.0.is_zero() {
            return Err(invalid("timeouts.handshake_timeout", "must be more than 0"));
        }
        if self.timeouts.close_timeout.0.is_zero() {
            return Err(invalid("timeouts.close_timeout", "must be more than 0"));
        }
        let a = &self.auth;
        if let Some(bad) = a.carriers.0.iter().find(|c| crate::protocol::auth::Carrier::from_name(c).is_none()) {
            return Err(ConfigError::Invalid {
                key: "auth.carriers",
                message: format!("`{bad}` is not a carrier (authorization, x-auth-token, cookie, query, subprotocol)"),
            });
        }
        if a.timeout.0.is_zero() {
            return Err(invalid("auth.timeout", "must be more than 0"));
        }
        if a.max_token_size.0 < 64 {
            return Err(invalid("auth.max_token_size", "must be at least 64 bytes"));
        }
        if !a.public_key_file.is_empty() && a.public_key_algorithms.0.is_empty() {
            return Err(invalid("auth.public_key_algorithms", "name the algorithms the public key verifies"));
        }
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return Err(invalid("tls.cert_file", "tls.cert_file and tls.key_file go together: set both or neither"));
        }
        if t.listen.0.is_some() && !t.enabled() {
            return Err(invalid("tls.listen", "needs tls.cert_file and tls.key_file"));
        }
        if t.listen.0.is_some_and(|a| a == self.server.listen.0 && a.port() != 0) {
            return Err(invalid("tls.listen", "must differ from server.listen (leave it empty to make that one TLS)"));
        }
        let sv = &self.server;
        if sv.backend == Backend::Uring {
            if !(16..=32768).contains(&sv.uring_buffers) {
                return Err(invalid("server.uring_buffers", "must be between 16 and 32768"));
            }
            if !(64..=32768).contains(&sv.uring_entries) {
                return Err(invalid("server.uring_entries", "must be between 64 and 32768"));
            }
            if self.limits.read_buffer.bytes() > u32::MAX as usize {
                return Err(invalid("limits.read_buffer", "must be under 4 GiB with the uring backend"));
            }
        }
        let c = &self.compression;
        if !(1..=9).contains(&c.level) {
            return Err(invalid("compression.level", "must be between 1 and 9"));
        }
        if !(9..=15).contains(&c.window_bits) {
            return Err(invalid("compression.window_bits", "must be between 9 and 15"));
        }
        self.cluster.check()
    }
}

impl Cluster {
    /// Whether the cluster is on (any Redis URL configured).
    pub fn enabled(&self) -> bool {
        !self.redis_urls.0.is_empty()
    }

    fn check(&self) -> Result<(), ConfigError> {
        for url in &self.redis_urls.0 {
            let url = crate::cluster::RedisUrl::parse(url)
                .map_err(|e| ConfigError::Invalid { key: "cluster.redis_urls", message: e.to_string() })?;
            if url.tls && self.tls_ca_file.is_empty() {
                return Err(invalid("cluster.tls_ca_file", "rediss:// needs the CA that signed Redis's certificate"));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(invalid(
                "cluster.tls_cert_file",
                "give cluster.tls_cert_file and cluster.tls_key_file together",
            ));
        }
        if self.max_pending == 0 {
            return Err(invalid("cluster.max_pending", "must be at least 1"));
        }
        if self.connect_timeout.0.is_zero() || self.probe_interval.0.is_zero() {
            return Err(invalid("cluster.connect_timeout", "connect_timeout and probe_interval must be more than 0"));
        }
        if self.probe_timeout.0 <= self.probe_interval.0 {
            return Err(invalid("cluster.probe_timeout", "must be longer than cluster.probe_interval"));
        }
        if self.reconnect_max.0 < Duration::from_millis(100) {
            return Err(invalid("cluster.reconnect_max", "must be at least 100ms"));
        }
        if !self.password_file.is_empty() && !self.password_env.is_empty() {
            return Err(invalid("cluster.password_file", "name a file or a variable, not both"));
        }
        Ok(())
    }
}

fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid { key, message: message.to_string() }
}

fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// Descriptors kept back from `max_connections` for listeners, the poll, wakers, logs and lingering closes.
pub const FD_RESERVE: u64 = 100;

/// The open-files soft limit minus [`FD_RESERVE`] (at least 1).
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit writes into the valid, properly aligned rlimit we pass and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let soft = if rc == 0 { lim.rlim_cur } else { 1024 };
    let soft = soft.min(10_000_000);
    usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).expect("valid test args")
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::from_toml("", &cli(&[])).expect("defaults are valid");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_message_size, Size::mib(1));
        assert_eq!(c.limits.max_frame_size, Size::mib(1), "max_frame_size defaults to max_message_size");
        assert_eq!(c.limits.max_backpressure, Size::mib(1));
        assert_eq!(c.limits.max_subscriptions, 128);
        assert_eq!((c.limits.max_new_topics_per_second, c.limits.new_topics_burst), (32, 32));
        assert_eq!(c.timeouts.handshake_timeout.0, Duration::from_secs(5));
        assert_eq!(c.timeouts.idle_timeout.0, Duration::from_secs(120));
        assert!(c.server.pin);
        assert!(c.server.workers >= 1);
        assert!(c.limits.max_connections >= 1);
    }

    #[test]
    fn compression_is_off_by_default_and_set_from_file_and_flags() {
        let c = Config::from_toml("", &cli(&[])).expect("defaults are valid");
        assert_eq!(c.compression, Compression { enabled: false, min_size: Size(256), level: 6, window_bits: 15 });
        let toml = "[compression]\nenabled = true\nmin_size = \"1KiB\"\nwindow_bits = 12\n";
        let c = Config::from_toml(toml, &cli(&["--compression-level", "1"])).expect("valid");
        assert_eq!(c.compression, Compression { enabled: true, min_size: Size::kib(1), level: 1, window_bits: 12 });
    }

    #[test]
    fn compression_level_and_window_bits_out_of_range_are_refused() {
        for (toml, key) in [
            ("[compression]\nlevel = 0\n", "compression.level"),
            ("[compression]\nlevel = 10\n", "compression.level"),
            ("[compression]\nwindow_bits = 8\n", "compression.window_bits"),
            ("[compression]\nwindow_bits = 16\n", "compression.window_bits"),
        ] {
            match Config::from_toml(toml, &cli(&[])) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let toml =
            "[server]\npin = false\nworkers = 3\n[limits]\nmax_message_size = \"16MiB\"\nslow_consumer = \"drop\"\n\
                    [timeouts]\nping_interval = \"500ms\"\n";
        let c = Config::from_toml(toml, &cli(&["--workers", "2", "--max-backpressure", "64KiB"])).expect("valid");
        assert!(!c.server.pin);
        assert_eq!(c.server.workers, 2, "the flag wins over the file");
        assert_eq!(c.limits.max_message_size, Size::mib(16));
        assert_eq!(c.limits.max_backpressure, Size::kib(64));
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.timeouts.ping_interval.0, Duration::from_millis(500));
    }

    #[test]
    fn tls_keys_come_from_file_env_and_flags_and_must_go_together() {
        let c =
            Config::from_toml("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nlisten = \":8443\"\n", &cli(&[]))
                .expect("valid");
        assert!(c.tls.enabled());
        assert_eq!(c.tls.listen.0, Some(SocketAddr::from(([0, 0, 0, 0], 8443))));
        let env = |v: &str| (v == "HERALD_TLS_LISTEN").then(|| "127.0.0.1:9443".to_string());
        let c = Config::from_sources("", &env, &cli(&["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"]))
            .expect("valid");
        assert_eq!(c.tls.listen.0, Some(SocketAddr::from(([127, 0, 0, 1], 9443))), "from the environment");
        assert!(!Config::default().tls.enabled(), "off by default");
        let err = Config::from_toml("[tls]\ncert_file = \"c.pem\"\n", &cli(&[])).expect_err("no key");
        assert!(err.to_string().contains("tls.cert_file"), "{err}");
        let err = Config::from_toml("[tls]\nlisten = \":8443\"\n", &cli(&[])).expect_err("no certificate");
        assert!(err.to_string().contains("tls.listen"), "{err}");
        let same = "[server]\nlisten = \"127.0.0.1:8443\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nlisten = \"127.0.0.1:8443\"\n";
        let err = Config::from_toml(same, &cli(&[])).expect_err("one address for both");
        assert!(err.to_string().contains("must differ"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::from_toml("[limits]\nmax_mesage_size = 5\n", &cli(&[])).expect_err("typo must fail");
        assert!(err.to_string().contains("max_mesage_size"), "{err}");
        let err = Config::from_toml("[server]\nlisten_on = \"x\"\n", &cli(&[])).expect_err("typo must fail");
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn bad_value_is_refused_with_its_key() {
        let err = Config::from_toml("[limits]\nmax_message_size = \"lots\"\n", &cli(&[])).expect_err("bad size");
        assert!(err.to_string().contains("max_message_size"), "{err}");
        let err = Config::from_toml("[limits]\nmax_frame_size = \"2MiB\"\n", &cli(&[])).expect_err("frame > msg");
        assert!(err.to_string().contains("limits.max_frame_size"), "{err}");
        let err =
            Config::from_toml("[limits]\nmax_receive_memory = \"512KiB\"\n", &cli(&[])).expect_err("budget < msg");
        assert!(err.to_string().contains("limits.max_receive_memory"), "{err}");
        let err = Config::from_toml("[limits]\nnew_topics_burst = 0\n", &cli(&[])).expect_err("empty burst");
        assert!(err.to_string().contains("limits.new_topics_burst"), "{err}");
    }

    #[test]
    fn max_json_depth_defaults_to_64_and_must_be_at_least_1() {
        assert_eq!(Config::from_toml("", &cli(&[])).expect("defaults").limits.max_json_depth, 64);
        let c = Config::from_toml("[limits]\nmax_json_depth = 8\n", &cli(&[])).expect("valid");
        assert_eq!(c.limits.max_json_depth, 8);
        assert_eq!(Config::from_toml("", &cli(&["--max-json-depth", "3"])).expect("flag").limits.max_json_depth, 3);
        let err = Config::from_toml("[limits]\nmax_json_depth = 0\n", &cli(&[])).expect_err("zero");
        assert!(err.to_string().contains("limits.max_json_depth"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let text = include_str!("../herald.example.toml");
        let from_file = Config::from_toml(text, &cli(&[])).expect("example config parses");
        let defaults = Config::from_toml("", &cli(&[])).expect("defaults");
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn the_example_config_is_generated_from_the_declarations() {
        let committed = include_str!("../herald.example.toml");
        let generated = Config::default().render(true);
        assert!(
            committed.trim_end() == generated.trim_end(),
            "herald.example.toml is out of date: run `cargo run -- --print-defaults > herald.example.toml`"
        );
    }

    #[test]
    fn effective_settings_print_as_toml_that_reads_back_the_same() {
        let c = Config::from_toml(
            "[limits]\nmax_message_size = \"4MiB\"\n[auth]\nissuer = [\"a\", \"b\\\"c\"]\n",
            &cli(&[]),
        )
        .expect("valid");
        let again = Config::from_toml(&c.render(false), &cli(&[])).expect("printed settings parse");
        assert_eq!(again, c);
    }

    #[test]
    fn environment_variables_sit_between_the_flags_and_the_file() {
        let env = |var: &str| match var {
            "HERALD_LIMITS_MAX_MESSAGE_SIZE" => Some("4MiB".to_string()),
            "HERALD_SERVER_WORKERS" => Some("3".to_string()),
            "HERALD_TIMEOUTS_PING_INTERVAL" => Some("7s".to_string()),
            _ => None,
        };
        let toml = "[limits]\nmax_message_size = \"2MiB\"\n[server]\nworkers = 5\n";
        let c = Config::from_sources(toml, &env, &cli(&["--workers", "2"])).expect("valid");
        assert_eq!(c.limits.max_message_size, Size::mib(4), "the environment wins over the file");
        assert_eq!(c.server.workers, 2, "the flag wins over the environment");
        assert_eq!(c.timeouts.ping_interval.0, Duration::from_secs(7), "the environment wins over the default");
        let bad = |var: &str| (var == "HERALD_LIMITS_MAX_BACKPRESSURE").then(|| "lots".to_string());
        let err = Config::from_sources("", &bad, &cli(&[])).expect_err("a bad value");
        assert!(err.to_string().contains("HERALD_LIMITS_MAX_BACKPRESSURE"), "{err}");
    }

    #[test]
    fn listen_addresses_take_names_and_an_empty_host() {
        assert_eq!("127.0.0.1:8080".parse::<Listen>(), Ok(Listen(SocketAddr::from(([127, 0, 0, 1], 8080)))));
        assert_eq!(":8080".parse::<Listen>(), Ok(Listen(SocketAddr::from(([0, 0, 0, 0], 8080)))));
        assert_eq!("localhost:9000".parse::<Listen>(), Ok(Listen(SocketAddr::from(([127, 0, 0, 1], 9000)))));
        assert_eq!("[::1]:80".parse::<Listen>().map(|l| l.0.is_ipv6()), Ok(true));
        assert!("localhost".parse::<Listen>().is_err(), "a port is required");
        assert!("localhost:http".parse::<Listen>().is_err());
        assert!("no-such-host.invalid:80".parse::<Listen>().is_err());
        let c = Config::from_toml("[server]\nlisten = \":0\"\n", &cli(&[])).expect("valid");
        assert_eq!(c.server.listen.0, SocketAddr::from(([0, 0, 0, 0], 0)));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_cidr_blocks_of_both_families() {
        let c = Config::from_toml("[server]\ntrusted_proxies = \"10.0.0.0/8, 127.0.0.1, ::1\"\n", &cli(&[]))
            .expect("valid");
        let p = &c.server.trusted_proxies;
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert!(p.contains(ip("10.200.3.4")) && p.contains(ip("127.0.0.1")) && p.contains(ip("::1")));
        assert!(p.contains(ip("::ffff:10.0.0.1")), "an IPv4-mapped peer matches its IPv4 block");
        assert!(!p.contains(ip("11.0.0.1")) && !p.contains(ip("127.0.0.2")) && !p.contains(ip("::2")));
        let c = Config::from_toml("[server]\ntrusted_proxies = [\"fd00::/8\", \"0.0.0.0/0\"]\n", &cli(&[]))
            .expect("an array works too");
        assert!(c.server.trusted_proxies.contains(ip("fdab::1")) && c.server.trusted_proxies.contains(ip("8.8.8.8")));
        assert_eq!("10.1.2.3/8".parse::<Cidr>().map(|c| c.to_string()), Ok("10.0.0.0/8".to_string()));
        let c = Config::from_toml("", &cli(&["--trusted-proxies", "127.0.0.1", "--proxy-protocol", "true"]))
            .expect("flags");
        assert!(c.server.proxy_protocol && c.server.trusted_proxies.contains(ip("127.0.0.1")));
        assert!(Config::from_toml("", &cli(&[])).expect("defaults").server.trusted_proxies.is_empty());
        let err = Config::from_toml("", &cli(&["--proxy-protocol", "true"])).expect_err("no proxy to trust");
        assert!(err.to_string().contains("server.proxy_protocol"), "{err}");
    }

    #[test]
    fn a_bad_trusted_proxy_is_refused_with_its_key() {
        for bad in ["10.0.0.0/33", "::1/129", "10.0.0/8", "proxy.local", "10.0.0.0/-1", "10.0.0.0/"] {
            let toml = format!("[server]\ntrusted_proxies = [\"{bad}\"]\n");
            let err = Config::from_toml(&toml, &cli(&[])).expect_err(bad);
            assert!(err.to_string().contains("trusted_proxies"), "{err}");
        }
        let env = |var: &str| (var == "HERALD_SERVER_TRUSTED_PROXIES").then(|| "10.0.0.1, nope".to_string());
        let err = Config::from_sources("", &env, &cli(&[])).expect_err("a bad value");
        assert!(err.to_string().contains("HERALD_SERVER_TRUSTED_PROXIES") && err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn sizes_durations_and_cpu_lists_parse() {
        assert_eq!("64KiB".parse::<Size>(), Ok(Size(65536)));
        assert_eq!("1000".parse::<Size>(), Ok(Size(1000)));
        assert_eq!("2MB".parse::<Size>(), Ok(Size(2_000_000)));
        assert!("12 parsecs".parse::<Size>().is_err());
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
        assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
        assert!("-1s".parse::<Dur>().is_err());
        assert_eq!("0-2,5".parse::<CpuList>(), Ok(CpuList(vec![0, 1, 2, 5])));
        assert!("3-1".parse::<CpuList>().is_err());
    }

    #[test]
    fn without_a_cluster_section_the_node_is_alone() {
        let c = Config::from_toml("", &cli(&[])).expect("defaults");
        assert!(!c.cluster.enabled());
        assert_eq!(c.cluster.channel_prefix, "herald:");
        assert_eq!(c.cluster.unsubscribe_linger.0, Duration::from_secs(5));
        assert_eq!((c.cluster.on_overflow, c.cluster.on_gap), (OverflowPolicy::Drop, GapPolicy::Ignore));
    }

    #[test]
    fn the_cluster_section_takes_a_list_of_instances_and_its_policies() {
        let toml = "[cluster]\nredis_urls = [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2\"]\n\
                    on_overflow = \"reject\"\non_gap = \"close\"\nmax_pending = 10\n";
        let c = Config::from_toml(toml, &cli(&["--cluster-node-id", "edge-1"])).expect("valid");
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.redis_urls.0.len(), 2);
        assert_eq!((c.cluster.on_overflow, c.cluster.on_gap), (OverflowPolicy::Reject, GapPolicy::Close));
        assert_eq!((c.cluster.max_pending, c.cluster.node_id.as_str()), (10, "edge-1"));
    }

    #[test]
    fn a_redis_url_with_a_password_or_a_bad_policy_is_refused_with_its_key() {
        let err = Config::from_toml("[cluster]\nredis_urls = \"redis://:pw@h:6379\"\n", &cli(&[])).expect_err("bad");
        assert!(err.to_string().contains("cluster.redis_urls"), "{err}");
        assert!(Config::from_toml("[cluster]\non_gap = \"panic\"\n", &cli(&[])).is_err());
        let err = Config::from_toml("[cluster]\nprobe_timeout = \"1s\"\nprobe_interval = \"2s\"\n", &cli(&[]))
            .expect_err("probe timeout shorter than the interval");
        assert!(err.to_string().contains("cluster.probe_timeout"), "{err}");
    }
}
