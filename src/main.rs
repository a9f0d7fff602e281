//! The `herald` binary: load the configuration, set up logging, run the server until SIGTERM/SIGINT; SIGHUP
//! re-reads the auth keys.

use anyhow::Context;
use clap::Parser;
use herald::config::{Cli, Config, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_cli(&cli).context("configuration")?;
    init_logging(config.server.log_format);
    // Handlers first: a SIGTERM that arrives as soon as the address is printed must drain, not kill.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let handle = herald::server::start(config).context("starting the server")?;
    // Machine-readable line for scripts and tests, whatever the log format.
    println!("herald listening on {}", handle.local_addr());

    let trigger = handle.shutdown_trigger();
    let reload = handle.key_reloader();
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
