//! The `herald` binary: load the configuration, set up logging, run the server until SIGTERM/SIGINT; SIGHUP
//! re-reads the auth keys and the TLS certificate. Errors end the process with a one-line message (status 2 for a configuration
//! error, 1 for anything else), never a panic or a backtrace.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald::config::{Cli, Config, LogFormat};
use herald::server::rlimit;

/// Warn when fewer connections than this are possible.
const FEW_CONNECTIONS: usize = 10_000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_defaults {
        println!("{}", Config::default().render(true));
        return ExitCode::SUCCESS;
    }
    // Before the configuration: the default max_connections follows the open-files limit.
    let files = rlimit::raise_open_files();
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("{}", config.render(false));
        eprintln!("herald: configuration ok");
        return ExitCode::SUCCESS;
    }
    init_logging(config.server.log_format);
    match files {
        Ok(f) if f.before < f.now => tracing::info!(from = f.before, to = f.now, "open-files limit raised"),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not raise the open-files limit: {e}"),
    }
    let max = config.limits.max_connections;
    if max < FEW_CONNECTIONS {
        tracing::warn!(
            max_connections = max,
            "fewer than {FEW_CONNECTIONS} connections possible: raise the open-files hard limit (ulimit -Hn, \
             LimitNOFILE= in systemd) or set limits.max_connections"
        );
    } else {
        tracing::info!(max_connections = max, "connection limit");
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives as soon as the address is printed must drain, not kill.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let handle = herald::server::start(config)?;
    // Machine-readable line on stdout for scripts and tests, whatever the log format (logs go to stderr).
    println!("herald listening on {}", handle.local_addr());
    if let Some(tls) = handle.tls_addr() {
        println!("herald tls on {tls}");
    }

    let trigger = handle.shutdown_trigger();
    let reload = handle.key_reloader();
    let reload_cert = handle.cert_reloader();
    std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match reload() {
                        Ok(keys) => tracing::info!(keys, "SIGHUP: auth keys reloaded"),
                        Err(e) => tracing::error!("SIGHUP: keeping the old auth keys: {e}"),
                    }
                    match reload_cert.as_ref().map(|r| r()) {
                        Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Some(Err(e)) => tracing::error!("SIGHUP: keeping the old TLS certificate: {e}"),
                        None => {}
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal, "shutting down: draining connections");
                    trigger();
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the signal thread")?;

    handle.join().context("server")?;
    tracing::info!("herald stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: files, pipes and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
