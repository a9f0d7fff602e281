//! `loadgen`: herald's load generator, built to out-run the WebSocket servers it measures.
//!
//! Thread-per-core like the server (`--threads` pinned mio loops), it drives any server that speaks the raw
//! `/sub/{topic}` and `/pub/{topic}` protocol (herald and the peers in `../shared/peers`), or herald's JSON
//! protocol on `/ws`, through herald's own sans-IO client core, with honest latency (open-loop schedules, no
//! coordinated omission) and exact delivery accounting (per-publisher sequence numbers). It authenticates
//! with a static token or JWTs it mints, in any carrier herald accepts.
//!
//! Modules: [`plan`] (what a run does), [`client`] (connect and handshake), [`auth`] (tokens and carriers),
//! [`json`] (herald's `/ws` protocol, client side), [`scan`] (the receive fast path),
//! [`engine`] (worker loops and phases), [`fanout`], [`findmax`], [`conns`], [`echo`] and [`soak`] (scenarios),
//! [`stats`] (histograms, sequence tracking, failures), [`report`] (table, JSON, thresholds), [`plot`] (the
//! SVG timeline), [`sys`] (clock, CPU time, timerfd, /proc).
//!
//! Exit status: 0 when the run completed and met its thresholds, 3 when a `--max-*` threshold was broken,
//! 2 for a usage error, 1 for any other error.
#![deny(unsafe_code)]

mod auth;
mod client;
mod conns;
mod echo;
mod engine;
mod fanout;
mod filler;
mod findmax;
mod inflate;
mod json;
mod plan;
mod plot;
mod report;
mod scan;
mod soak;
mod stats;
mod sys;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::engine::EngineConfig;
use crate::plan::{FanoutPlan, Protocol, Rate, Target};

/// Exit status when a threshold is broken.
const EXIT_THRESHOLD: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Load generator for WebSocket broadcast servers (herald and peers)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// S subscribers over T topics, P publishers: throughput, delivery accounting, end-to-end latency.
    Fanout(Box<FanoutArgs>),
    /// Open N connections, hold them, report connect rate, failures and the server's memory per connection.
    Conns(Box<ConnsArgs>),
    /// C connections each keeping K messages in flight to an echo endpoint: round trips and their latency.
    Echo(Box<EchoArgs>),
    /// Mixed traffic for a long time (fan-out, churn, slow consumers, bad handshakes); fails if the server's
    /// RSS, descriptors, loss or p99 trend upward, or a well-behaved subscriber loses a message.
    Soak(Box<SoakArgs>),
    /// Mint one JWT with the --jwt-* options and print it on stdout.
    Token(Box<TokenArgs>),
}

/// Options every scenario takes.
#[derive(Debug, Args)]
struct CommonArgs {
    /// Server URL: ws://host[:port] or wss://host[:port] (TLS; needs --ca or --insecure). Repeat it or give a
    /// comma list to deal connections over several servers (e.g. herald nodes) round robin; all URLs of a run
    /// share one scheme.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    url: Vec<String>,
    /// wss://: trust the certificates in this PEM file (the server's certificate must chain to one and name
    /// the URL's host, or --server-name).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// wss://: accept any server certificate (handshake signatures are still verified).
    #[arg(long)]
    insecure: bool,
    /// wss:// with --ca: verify the server's chain on every connection. By default a chain verified once is
    /// trusted again for 60 s when the same chain comes for the same name, as browsers cache their
    /// verifications; the handshake signature is verified on every connection either way.
    #[arg(long)]
    verify_every_chain: bool,
    /// wss://: resume TLS sessions (one ticket cache shared by every connection of the run); default: every
    /// connection makes a full handshake.
    #[arg(long)]
    tls_resume: bool,
    /// wss://: the name the server's certificate must carry (and the SNI sent); default: the URL's host.
    #[arg(long)]
    server_name: Option<String>,
    /// Offer permessage-deflate (as browsers do: `permessage-deflate; client_max_window_bits`) and inflate
    /// whatever arrives compressed; loadgen itself sends uncompressed. The report counts the connections that
    /// negotiated it and gives wire and payload bytes apart.
    #[arg(long)]
    compress: bool,
    /// Worker threads (event loops); default: available cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Cores to pin workers to, e.g. `0` or `2-3` (worker i on the i-th listed core); default: 0, 1, ...
    #[arg(long)]
    cpus: Option<String>,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// New connections per second over all threads (0: no limit).
    #[arg(long, default_value_t = 10_000.0)]
    connect_rate: f64,
    /// Longest time from dial to completed handshake before the attempt counts as a timeout.
    #[arg(long, default_value = "10s")]
    connect_timeout: String,
    /// Source addresses to spread connections over: a list (127.0.0.1,127.0.0.2) or range (127.0.0.1-127.0.0.8).
    #[arg(long)]
    source_ips: Option<String>,
    /// Bytes per read call (one buffer per worker thread).
    #[arg(long, default_value = "256KiB")]
    read_size: String,
    /// Receive time of a message: `kernel` (the socket's receive timestamp, excludes loadgen's own delays) or
    /// `read` (a clock read after each read call).
    #[arg(long, value_enum, default_value = "kernel")]
    rx_time: engine::RxTime,
    /// Write every figure and the full configuration as JSON to this file (`-`: to stdout, and the table to
    /// stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput and latency percentiles over time into this SVG file (fanout and echo).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Sample this process's CPU and RSS from /proc (the server under test).
    #[arg(long)]
    server_pid: Option<u32>,
    /// No live progress line (it is only shown when stderr is a terminal anyway).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    auth: auth::AuthArgs,
}

/// Which of herald's protocols to speak.
#[derive(Debug, Args)]
struct ProtocolArgs {
    /// `raw`: the per-topic endpoints (path templates); `json`: herald's JSON protocol on --ws-path.
    #[arg(long, value_enum, default_value = "raw")]
    protocol: Protocol,
    /// `--protocol json`: the JSON endpoint's path.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subs: usize,
    /// Topics (subscriber s and publisher p use topic s % T and p % T).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Payload bytes per message (at least 20: publisher id, sequence, timestamp; with --protocol json, the
    /// `data` string's length, at least 40).
    #[arg(long, default_value = "64")]
    size: String,
    /// Messages per second over all publishers (open loop, latency from the schedule), or `max`.
    #[arg(long, default_value = "max")]
    rate: String,
    /// Closed loop: publishers stay at most K messages ahead of the slowest subscriber of their topic.
    #[arg(long)]
    window: Option<u64>,
    /// Closed loop: with messages in flight, wait until this many can be sent at once (default: window / 2).
    #[arg(long)]
    batch: Option<u64>,
    /// Measured window.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Load before measuring (delivered, not counted).
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// After the window, how long to wait for messages still in flight.
    #[arg(long, default_value = "2s")]
    grace: String,
    /// Longest wait for every subscriber to be confirmed by a probe message.
    #[arg(long, default_value = "10s")]
    probe_timeout: String,
    /// Subscriber path template.
    #[arg(long, default_value = "/sub/{topic}")]
    sub_path: String,
    /// Publisher path template.
    #[arg(long, default_value = "/pub/{topic}")]
    pub_path: String,
    /// Publishers connect here instead of --url (repeat it or give a comma list: dealt round robin), e.g.
    /// another herald node of a cluster, so cross-node latency and loss are measured; same scheme as --url.
    #[arg(long, value_delimiter = ',')]
    pub_url: Vec<String>,
    /// Topic name prefix (default: `lg<pid>-`, so concurrent runs do not mix).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Publish text frames instead of binary (the payload header is binary: only for lenient servers).
    #[arg(long)]
    text: bool,
    /// What follows the payload header: `padding` (`x`, compresses to almost nothing) or `json` (a realistic
    /// JSON event, for compression figures); raw protocol only.
    #[arg(long, value_enum, default_value_t = filler::Filler::Padding)]
    payload: filler::Filler,
    /// Fail (exit 3) when more than this fraction of expected deliveries is missing (e.g. 0, 0.001, 0.1%).
    #[arg(long)]
    max_loss: Option<String>,
    /// Fail (exit 3) when the p99 latency is above this (e.g. 10ms).
    #[arg(long)]
    max_p99: Option<String>,
    /// Search for the highest fixed rate that meets --slo-p99 and --max-loss (default 0), with short runs of
    /// --duration each, then confirm it with --confirm-runs runs.
    #[arg(long)]
    find_max: bool,
    /// --find-max: the p99 latency the server must stay under.
    #[arg(long, default_value = "10ms")]
    slo_p99: String,
    /// --find-max: first rate tried (default: --rate if it is a number, else 1000).
    #[arg(long)]
    start_rate: Option<String>,
    /// --find-max: stop when the failing rate is within this fraction above the passing one.
    #[arg(long, default_value_t = 0.05)]
    precision: f64,
    /// --find-max: confirmation runs at the found rate (all must pass).
    #[arg(long, default_value_t = 3)]
    confirm_runs: usize,
}

#[derive(Debug, Args)]
struct ConnsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long to hold them once all are settled.
    #[arg(long, default_value = "10s")]
    hold: String,
    /// Path to connect to (`{topic}` is replaced by `loadgen-idle`); with --protocol json, --ws-path instead
    /// (each connection subscribes to `loadgen-idle`).
    #[arg(long, default_value = "/sub/{topic}")]
    path: String,
    /// Send a ping on every connection this often (default: stay idle).
    #[arg(long)]
    ping_interval: Option<String>,
}

#[derive(Debug, Args)]
struct EchoArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Payload bytes per message (at least 20).
    #[arg(long, default_value = "64")]
    size: String,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    inflight: u64,
    /// Measured window.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Load before measuring.
    #[arg(long, default_value = "2s")]
    warmup: String,
    /// After the window, how long to wait for echoes in flight.
    #[arg(long, default_value = "2s")]
    grace: String,
    /// The echo endpoint.
    #[arg(long, default_value = "/echo")]
    path: String,
}

#[derive(Debug, Args)]
struct SoakArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// How long to soak.
    #[arg(long, default_value = "10m")]
    duration: String,
    /// Sampling period (one line, one point per interval).
    #[arg(long, default_value = "10s")]
    interval: String,
    /// Samples before this are left out of the trend test.
    #[arg(long, default_value = "60s")]
    trend_warmup: String,
    /// Well-behaved subscriber connections.
    #[arg(long, default_value_t = 500)]
    subs: usize,
    /// Topics.
    #[arg(long, default_value_t = 10)]
    topics: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 10)]
    pubs: usize,
    /// Payload bytes per message.
    #[arg(long, default_value = "256")]
    size: String,
    /// Messages per second over all publishers (open loop).
    #[arg(long, default_value = "2000")]
    rate: String,
    /// Churn: connections per second that connect, subscribe and leave.
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// Slow consumers kept connected (half read nothing, half a trickle).
    #[arg(long, default_value_t = 8)]
    slow: usize,
    /// How long a slow consumer lags before it drains and reconnects.
    #[arg(long, default_value = "30s")]
    slow_stall: String,
    /// Bytes per second a trickling slow consumer reads.
    #[arg(long, default_value = "2KiB")]
    slow_read_rate: String,
    /// Bad handshakes per second.
    #[arg(long, default_value_t = 5.0)]
    bad_rate: f64,
    /// After the soak, how long to wait for messages still in flight.
    #[arg(long, default_value = "5s")]
    grace: String,
    /// Longest wait for every subscriber to be confirmed by a probe message.
    #[arg(long, default_value = "10s")]
    probe_timeout: String,
    /// Absolute tolerance of the RSS trend test (default 4MiB, plus 10%).
    #[arg(long)]
    rss_tolerance: Option<String>,
    /// Absolute tolerance of the p99 trend test (default 2ms, plus 50%).
    #[arg(long)]
    p99_tolerance: Option<String>,
    /// Topic name prefix (default: `soak<pid>-`).
    #[arg(long)]
    topic_prefix: Option<String>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    jwt: auth::JwtArgs,
    /// The connection number `{conn}` in --jwt-sub stands for.
    #[arg(long, default_value_t = 0)]
    conn: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fanout(args) => run_fanout(*args),
        Command::Conns(args) => run_conns(*args),
        Command::Echo(args) => run_echo(*args),
        Command::Token(args) => run_token(*args),
        Command::Soak(args) => run_soak(*args),
    }
}

fn run_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let Some(minter) = auth::Minter::from_args(&args.jwt)? else {
        bail!("loadgen token needs --jwt-secret-file or --jwt-secret-env");
    };
    println!("{}", minter.mint(args.conn, sys::unix_now_s())?);
    Ok(ExitCode::SUCCESS)
}

/// `--auth-per-message` puts tokens into JSON requests: it needs the JSON protocol.
fn check_per_message(cfg: &EngineConfig, protocol: Protocol) -> anyhow::Result<()> {
    if cfg.auth.as_ref().is_some_and(|a| a.per_message) && protocol != Protocol::Json {
        bail!("--auth-per-message needs --protocol json");
    }
    Ok(())
}

/// Builds the engine settings from the common options, with publishers on `pub_urls` when not empty.
fn engine_config(c: &CommonArgs, pub_urls: &[String]) -> anyhow::Result<EngineConfig> {
    let mut targets = plan::parse_targets(&c.url).context("--url")?;
    let sub_targets = targets.len();
    if !pub_urls.is_empty() {
        targets.extend(plan::parse_targets(pub_urls).context("--pub-url")?);
        if targets[0].tls != targets[sub_targets].tls {
            let (a, b) = (targets[0].url.clone(), targets[sub_targets].url.clone());
            return Err(plan::PlanError::MixedSchemes(a, b).into());
        }
    }
    let target = targets[0].clone();
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = c.threads.unwrap_or(available);
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let cpus = match (&c.cpus, c.no_pin) {
        (Some(_), true) => bail!("--cpus and --no-pin contradict each other"),
        (_, true) => None,
        (Some(list), false) => Some(plan::parse_cpu_list(list)?),
        (None, false) => Some((0..threads).map(|i| i % available).collect()),
    };
    if !(c.connect_rate >= 0.0 && c.connect_rate.is_finite()) {
        bail!("--connect-rate must be a non-negative number");
    }
    Ok(EngineConfig {
        threads,
        cpus,
        connect_rate: c.connect_rate,
        connect_timeout: plan::parse_duration(&c.connect_timeout).context("--connect-timeout")?,
        source_ips: match &c.source_ips {
            Some(list) => plan::parse_source_ips(list)?,
            None => Vec::new(),
        },
        read_size: plan::parse_size(&c.read_size).context("--read-size")?,
        rx_time: c.rx_time,
        auth: auth::Auth::from_args(&c.auth)?.map(std::sync::Arc::new),
        origin: c.auth.origin.clone(),
        compress: c.compress,
        tls: client_tls(c, &targets)?.map(std::sync::Arc::new),
        target,
        targets,
        sub_targets,
    })
}

/// The TLS settings for `wss://` URLs (`None` for `ws://`): one certificate name for all of them.
fn client_tls(c: &CommonArgs, targets: &[Target]) -> anyhow::Result<Option<tls::ClientTls>> {
    let target = &targets[0];
    if !target.tls {
        if c.ca.is_some() || c.insecure || c.tls_resume || c.server_name.is_some() || c.verify_every_chain {
            return Err(tls::TlsSetupError::NotWss.into());
        }
        return Ok(None);
    }
    if c.verify_every_chain && c.ca.is_none() {
        bail!("--verify-every-chain goes with --ca (with --insecure no chain is verified at all)");
    }
    let trust = match (&c.ca, c.insecure) {
        (Some(_), true) => return Err(tls::TlsSetupError::BothTrust.into()),
        (Some(path), false) if c.verify_every_chain => tls::Trust::CaEveryChain(path.clone()),
        (Some(path), false) => tls::Trust::Ca(path.clone()),
        (None, true) => tls::Trust::Insecure,
        (None, false) => return Err(tls::TlsSetupError::NoTrust.into()),
    };
    if c.server_name.is_none() {
        if let Some(other) = targets.iter().find(|t| t.hostname != target.hostname) {
            bail!(
                "wss:// URLs {} and {} name different hosts: give --server-name, the one name every server's \
                 certificate carries",
                target.url,
                other.url
            );
        }
    }
    let name = c.server_name.as_deref().unwrap_or(&target.hostname);
    Ok(Some(tls::ClientTls::new(name, trust, c.tls_resume)?))
}

/// Parses `--max-loss`: a fraction (0.001) or a percentage (0.1%).
fn parse_loss(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .with_context(|| format!("invalid --max-loss {text:?}"))?;
    if !(0.0..=1.0).contains(&value) {
        bail!("--max-loss must be between 0 and 1 (or 0% and 100%)");
    }
    Ok(value)
}

fn run_fanout(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    let cfg = engine_config(&args.common, &args.pub_url)?;
    let plan = FanoutPlan {
        subs: args.subs,
        topics: args.topics,
        pubs: args.pubs,
        size: plan::parse_size(&args.size).context("--size")?,
        rate: Rate::parse(&args.rate)?,
        window: args.window,
        batch: args.batch,
        warmup: plan::parse_duration(&args.warmup).context("--warmup")?,
        duration: plan::parse_duration(&args.duration).context("--duration")?,
        grace: plan::parse_duration(&args.grace).context("--grace")?,
        probe_timeout: plan::parse_duration(&args.probe_timeout).context("--probe-timeout")?,
        protocol: args.protocol.protocol,
        ws_path: args.protocol.ws_path,
        sub_path: args.sub_path,
        pub_path: args.pub_path,
        topic_prefix: args.topic_prefix.unwrap_or_else(|| format!("lg{}-", std::process::id())),
        text: args.text,
        payload: args.payload,
    };
    plan.validate()?;
    check_per_message(&cfg, plan.protocol)?;
    let max_loss = args.max_loss.as_deref().map(parse_loss).transpose()?;
    let max_p99 = match &args.max_p99 {
        Some(d) => Some(plan::parse_duration(d).context("--max-p99")?.as_nanos() as u64),
        None => None,
    };
    let opts = fanout::RunOptions { progress: !args.common.quiet, server_pid: args.common.server_pid };
    if args.find_max {
        let start = match (&args.start_rate, plan.rate) {
            (Some(text), _) => match Rate::parse(text)? {
                Rate::Fixed(r) => r,
                Rate::Max => bail!("--start-rate must be a number"),
            },
            (None, Rate::Fixed(r)) => r,
            (None, Rate::Max) => 1000.0,
        };
        if !(args.precision > 0.0 && args.precision < 1.0) {
            bail!("--precision must be between 0 and 1");
        }
        let search = findmax::FindMaxPlan {
            slo_p99_ns: plan::parse_duration(&args.slo_p99).context("--slo-p99")?.as_nanos() as u64,
            max_loss: max_loss.unwrap_or(0.0),
            start_rate: start,
            precision: args.precision,
            confirm_runs: args.confirm_runs.max(1),
            max_trials: 30,
        };
        let json = args.common.json.as_deref();
        let report =
            findmax::run(&cfg, &plan, &search, &opts, |t| report::print_human(json, &(findmax::trial_line(t) + "\n")))?;
        report::print_human(json, &report.human());
        if let Some(path) = &args.common.json {
            report::write_json(path, &report)?;
        }
        return Ok(if report.found.is_some() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_THRESHOLD) });
    }
    let outcome = fanout::run(&cfg, plan.clone(), &opts)?;
    let report = report::FanoutReport::new(&cfg, &plan, &outcome, args.common.server_pid, (max_loss, max_p99));
    report::print_human(args.common.json.as_deref(), &report.human());
    if let Some(path) = &args.common.plot {
        let title = format!(
            "loadgen fanout {}: {} subs / {} topics / {} pubs, {} B",
            cfg.target.url, plan.subs, plan.topics, plan.pubs, plan.size
        );
        std::fs::write(path, plot::svg(&title, &report.timeline))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.common.json {
        report::write_json(path, &report)?;
    }
    Ok(if report.verdict.passed { ExitCode::SUCCESS } else { ExitCode::from(EXIT_THRESHOLD) })
}

fn run_conns(args: ConnsArgs) -> anyhow::Result<ExitCode> {
    let cfg = engine_config(&args.common, &[])?;
    check_per_message(&cfg, args.protocol.protocol)?;
    let path = match args.protocol.protocol {
        Protocol::Raw => plan::fill_template(&args.path, conns::IDLE_TOPIC),
        Protocol::Json => args.protocol.ws_path,
    };
    let plan = conns::ConnsPlan {
        conns: args.conns,
        hold: plan::parse_duration(&args.hold).context("--hold")?,
        path,
        protocol: args.protocol.protocol,
        ping_every: args.ping_interval.as_deref().map(plan::parse_duration).transpose().context("--ping-interval")?,
        server_pid: args.common.server_pid,
    };
    let outcome = conns::run(&cfg, &plan, !args.common.quiet)?;
    let report = conns::ConnsReport::new(&cfg, &plan, &outcome);
    report::print_human(args.common.json.as_deref(), &report.human());
    if let Some(path) = &args.common.json {
        report::write_json(path, &report)?;
    }
    if report.opened == 0 && plan.conns > 0 {
        return Err(engine::RunError::NothingConnected(report.connect_failures.summary()).into());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let cfg = engine_config(&args.common, &[])?;
    check_per_message(&cfg, Protocol::Raw)?;
    let plan = echo::EchoPlan {
        conns: args.conns,
        size: plan::parse_size(&args.size).context("--size")?,
        inflight: args.inflight,
        warmup: plan::parse_duration(&args.warmup).context("--warmup")?,
        duration: plan::parse_duration(&args.duration).context("--duration")?,
        grace: plan::parse_duration(&args.grace).context("--grace")?,
        path: args.path,
    };
    if plan.size < plan::payload::HEADER_LEN || plan.conns == 0 || plan.inflight == 0 || plan.duration.is_zero() {
        bail!("echo needs --size >= 20 and positive --conns, --inflight and --duration");
    }
    let outcome = echo::run(&cfg, &plan, !args.common.quiet, args.common.server_pid)?;
    let report = echo::EchoReport::new(&cfg, &plan, &outcome);
    report::print_human(args.common.json.as_deref(), &report.human());
    if let Some(path) = &args.common.plot {
        let title = format!(
            "loadgen echo {}: {} conns x {} in flight, {} B",
            cfg.target.url, plan.conns, plan.inflight, plan.size
        );
        std::fs::write(path, plot::svg(&title, &report.timeline))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.common.json {
        report::write_json(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_soak(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let cfg = engine_config(&args.common, &[])?;
    if cfg.auth.is_some() {
        bail!("loadgen soak does not authenticate (its side traffic could not)");
    }
    if cfg.targets.len() > 1 {
        bail!("loadgen soak takes one --url (its side traffic goes to one server)");
    }
    if cfg.tls.is_some() && (args.churn_rate > 0.0 || args.slow > 0 || args.bad_rate > 0.0) {
        bail!(
            "loadgen soak over wss://: the fan-out speaks TLS, but the side traffic (churn, slow consumers, bad \
             handshakes) is plain ws:// only; add --churn-rate 0 --slow 0 --bad-rate 0"
        );
    }
    let prefix = args.topic_prefix.unwrap_or_else(|| format!("soak{}-", std::process::id()));
    let fanout = FanoutPlan {
        subs: args.subs,
        topics: args.topics,
        pubs: args.pubs,
        size: plan::parse_size(&args.size).context("--size")?,
        rate: Rate::parse(&args.rate)?,
        window: None,
        batch: None,
        warmup: std::time::Duration::ZERO,
        duration: plan::parse_duration(&args.duration).context("--duration")?,
        grace: plan::parse_duration(&args.grace).context("--grace")?,
        probe_timeout: plan::parse_duration(&args.probe_timeout).context("--probe-timeout")?,
        protocol: Protocol::Raw,
        ws_path: "/ws".to_owned(),
        sub_path: "/sub/{topic}".to_owned(),
        pub_path: "/pub/{topic}".to_owned(),
        topic_prefix: prefix.clone(),
        text: false,
        payload: crate::filler::Filler::Padding,
    };
    fanout.validate()?;
    let interval = plan::parse_duration(&args.interval).context("--interval")?;
    if interval < std::time::Duration::from_millis(100) || !(args.churn_rate >= 0.0 && args.bad_rate >= 0.0) {
        bail!("--interval must be at least 100ms, --churn-rate and --bad-rate non-negative");
    }
    let server_pid = match args.common.server_pid {
        Some(pid) => Some(pid),
        None => soak::find_listener(cfg.target.addr.port()),
    };
    let mut rules = soak::trend::RULES;
    if let Some(text) = &args.rss_tolerance {
        rules.rss_kib.abs = (plan::parse_size(text).context("--rss-tolerance")? / 1024) as f64;
    }
    if let Some(text) = &args.p99_tolerance {
        rules.p99_ns.abs = plan::parse_duration(text).context("--p99-tolerance")?.as_nanos() as f64;
    }
    let side = soak::side::SidePlan {
        addr: cfg.target.addr,
        host: cfg.target.host.clone(),
        topics: (0..fanout.topics).map(|t| fanout.topic_name(t)).collect(),
        topic_prefix: prefix,
        churn_rate: args.churn_rate,
        slow: args.slow,
        slow_stall: plan::parse_duration(&args.slow_stall).context("--slow-stall")?,
        slow_read_rate: plan::parse_size(&args.slow_read_rate).context("--slow-read-rate")?,
        bad_rate: args.bad_rate,
    };
    let plan = soak::SoakPlan {
        fanout,
        side,
        interval,
        trend_warmup: plan::parse_duration(&args.trend_warmup).context("--trend-warmup")?,
        server_pid,
        rules,
    };
    let report = soak::run(&cfg, &plan, args.common.quiet, |line| println!("{line}"))?;
    print!("{}", report.human());
    if let Some(path) = &args.common.plot {
        std::fs::write(path, report.svg()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.common.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(EXIT_THRESHOLD) })
}
