//! The I/O side: listeners, one pinned `mio` worker per core, and the handle that starts and stops them.
//!
//! - [`listener`]: one `SO_REUSEPORT` socket per worker on the same address.
//! - [`worker`]: a worker's state: admit, read, process, flush, timers, drain, whichever driver runs it.
//! - [`driver`]: how a worker waits and moves bytes: `epoll` (mio) or `uring` (io_uring).
//! - [`http`]: requests before the upgrade, and plain HTTP endpoints.
//! - [`ws`]: what each WebSocket endpoint does with messages.
//! - [`compress`]: the worker's permessage-deflate compressors and inflater, shared by its connections.
//! - [`conn`]: one connection's socket, phase, buffer and outbox.
//! - [`outbox`]: queued frames and the vectored write.
//! - [`transport`]: a connection's bytes in the clear or through TLS; `secure` drives the TLS side.
//! - [`keys`]: reading the configured key material into the auth policy (at start and on SIGHUP).
//! - [`pool`]: the worker's spare read buffers.
//! - [`loglimit`]: the budget of log lines clients can cause.
//! - [`rlimit`]: raising the open-files limit at start.
//! - [`trim`]: giving back the room of connections and topics that are gone, after a load.

mod cluster;
pub mod compress;
pub mod conn;
pub mod driver;
pub mod http;
pub mod keys;
pub mod listener;
pub mod loglimit;
pub mod outbox;
pub mod pool;
pub mod rlimit;
mod secure;
pub mod timers;
pub mod transport;
pub mod trim;
pub mod worker;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::broker::mesh::{self, CertUpdate, ExternalPublisher, MeshEnd, PeerHandle};
use crate::config::{Backend, Config};
use crate::tls::certs::{self, CertError};
use worker::{Listeners, Shared, Worker};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {}", bind_reason(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating a poll, waker or thread failed.
    #[error("cannot start worker {worker}: {source}")]
    Worker {
        /// Which worker.
        worker: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker's loop failed.
    #[error("worker {worker} failed: {source}")]
    Loop {
        /// Which worker.
        worker: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("worker {0} panicked")]
    Panicked(usize),
    /// The `[auth]` settings could not be put in force.
    #[error(transparent)]
    Auth(#[from] keys::AuthSetupError),
    /// The `[tls]` certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] CertError),
    /// `--backend uring` cannot run here (the message names the cause and the fix).
    #[error(transparent)]
    Uring(#[from] driver::uring::UringError),
    /// The `[cluster]` bridge could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// The TLS material kept for reloads: the session-ticket key (kept across reloads, so clients' tickets stay
/// valid) and the files to re-read.
struct TlsSource {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

impl TlsSource {
    /// Reads and checks the files, and builds the configuration new handshakes use.
    fn load(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let provider = certs::provider();
        let key = certs::load_certified_key(&self.cert_file, &self.key_file, &provider)?;
        certs::server_config_with(Arc::new(key), self.ticketer.clone(), provider)
    }
}

/// A running server: its address, and the means to stop it and wait for it.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsSource>>,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    peers: Vec<PeerHandle>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    /// The cluster bridge's thread (it exits once every worker has).
    bridge: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address actually bound (the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address that speaks TLS, when TLS is on: the `tls.listen` one, or the main one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// A closure that re-reads `tls.cert_file` and `tls.key_file` and puts the certificate in force for new
    /// handshakes on every worker (for SIGHUP). On an error the old certificate stays, the failure is
    /// counted, and the error is returned. `None` when TLS is off.
    pub fn cert_reloader(&self) -> Option<impl Fn() -> Result<(), CertError> + Send + 'static> {
        let source = self.tls.clone()?;
        let peers = self.peers.clone();
        Some(move || {
            let loaded = source.load();
            let update = match &loaded {
                Ok(config) => CertUpdate::New(config.clone()),
                Err(_) => CertUpdate::Failed,
            };
            for p in &peers {
                p.send_control(mesh::MeshMsg::Certificate(update.clone()));
            }
            loaded.map(|_| ())
        })
    }

    /// Starts the graceful shutdown: stop accepting, close every WebSocket with 1001, flush, exit.
    pub fn shutdown(&self) {
        begin_shutdown(&self.shared, &self.peers);
    }

    /// A closure that starts the shutdown, for a signal thread.
    pub fn shutdown_trigger(&self) -> impl Fn() + Send + 'static {
        let shared = self.shared.clone();
        let peers = self.peers.clone();
        move || begin_shutdown(&shared, &peers)
    }

    /// A closure that re-reads the configured keys and puts them in force on every worker (for SIGHUP). On
    /// an error the old keys stay in force and the error is returned.
    pub fn key_reloader(&self) -> impl Fn() -> Result<usize, keys::AuthSetupError> + Send + 'static {
        let cfg = self.cfg.clone();
        let peers = self.peers.clone();
        move || {
            let set = Arc::new(keys::load_keys(&cfg.auth)?);
            let n = set.len();
            for p in &peers {
                p.send_control(mesh::MeshMsg::Keys(set.clone()));
            }
            Ok(n)
        }
    }

    /// A publisher for sources outside the workers (it enters through the workers' normal publish path).
    pub fn external_publisher(&self) -> ExternalPublisher {
        ExternalPublisher::new(self.peers.clone())
    }

    /// Waits for every worker to finish.
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => result = Err(ServerError::Loop { worker: i, source }),
                Err(_) => result = Err(ServerError::Panicked(i)),
            }
        }
        if let Some(bridge) = self.bridge {
            let _ = bridge.join();
        }
        result
    }
}

fn bind_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "address already in use (another herald, or another server, is listening there)".to_string()
    } else {
        e.to_string()
    }
}

fn begin_shutdown(shared: &Shared, peers: &[PeerHandle]) {
    shared.draining.store(true, Ordering::SeqCst);
    for p in peers {
        p.wake();
    }
}

/// Binds the listeners and starts the workers, each on its own (pinned) thread.
pub fn start(cfg: Config) -> Result<ServerHandle, ServerError> {
    let cfg = Arc::new(cfg);
    let auth = keys::build_policy(&cfg.auth)?;
    let workers = cfg.server.workers;
    let (tls, tls_config) = if cfg.tls.enabled() {
        let source = TlsSource {
            ticketer: certs::ticketer()?,
            cert_file: cfg.tls.cert_file.clone().into(),
            key_file: cfg.tls.key_file.clone().into(),
        };
        let config = source.load()?;
        (Some(Arc::new(source)), Some(config))
    } else {
        (None, None)
    };
    let (listeners, addr) = listener::bind_all(cfg.server.listen.0, workers)
        .map_err(|source| ServerError::Bind { addr: cfg.server.listen.0, source })?;
    let (tls_listeners, tls_addr) = match cfg.tls.listen.0 {
        Some(at) => {
            let (l, bound) =
                listener::bind_all(at, workers).map_err(|source| ServerError::Bind { addr: at, source })?;
            (l.into_iter().map(Some).collect(), Some(bound))
        }
        None => ((0..workers).map(|_| None).collect::<Vec<_>>(), tls_config.as_ref().map(|_| addr)),
    };
    let main_tls = tls_config.is_some() && cfg.tls.listen.0.is_none();
    let mut polls = Vec::with_capacity(workers);
    let mut wakers: Vec<Arc<dyn mesh::Wake>> = Vec::with_capacity(workers);
    for worker in 0..workers {
        match cfg.server.backend {
            Backend::Epoll => {
                let poll = mio::Poll::new().map_err(|source| ServerError::Worker { worker, source })?;
                let waker = mio::Waker::new(poll.registry(), driver::epoll::WAKER)
                    .map_err(|source| ServerError::Worker { worker, source })?;
                polls.push(Setup::Epoll(poll));
                wakers.push(Arc::new(waker));
            }
            Backend::Uring => {
                let setup = driver::uring::UringSetup::new(&cfg)?;
                wakers.push(setup.waker());
                polls.push(Setup::Uring(Box::new(setup)));
            }
        }
    }
    let (peers, inboxes) = mesh::inboxes(wakers, cfg.limits.inbox_capacity);
    let mut shared = Shared::new(workers);
    let cluster_state = crate::cluster::bridge::state_for(&cfg);
    if let Some(state) = &cluster_state {
        // The bridge's metrics slot comes after the workers'.
        shared.slots.push(crate::metrics::WorkerSlot::default());
        shared.cluster = Some(state.clone());
    }
    let shared = Arc::new(shared);
    let (mut links, bridge) = match cluster_state {
        Some(state) => {
            let (links, thread) =
                crate::cluster::bridge::spawn(cfg.clone(), state, peers.clone(), shared.clone(), workers)?;
            (links.into_iter().map(Some).collect(), Some(thread))
        }
        None => ((0..workers).map(|_| None).collect::<Vec<_>>(), None),
    };
    let cores = pick_cores(&cfg);
    let mut threads = Vec::with_capacity(workers);
    let sockets = listeners.into_iter().zip(tls_listeners);
    for (id, ((poll, (main, tls_listener)), inbox)) in polls.into_iter().zip(sockets).zip(inboxes).enumerate() {
        let listeners = Listeners { main, main_tls, tls: tls_listener, tls_config: tls_config.clone() };
        let mut mesh_end = MeshEnd::new(id, peers.clone());
        if let Some(link) = links[id].take() {
            mesh_end.set_bridge(link);
        }
        let shared = shared.clone();
        let cfg = cfg.clone();
        let auth = auth.clone();
        let core = cores.as_ref().and_then(|c| c.get(id % c.len().max(1)).copied());
        let thread = std::thread::Builder::new()
            .name(format!("herald-worker-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, "could not pin to core {}", core.id);
                    }
                }
                let tls_config = listeners.tls_config.clone();
                let mesh = (mesh_end, inbox);
                match poll {
                    Setup::Epoll(poll) => {
                        let io = driver::Io::Epoll(driver::epoll::EpollIo::new(&poll, listeners)?);
                        driver::epoll::run(Worker::new(id, io, tls_config, mesh, shared, cfg, auth), poll)
                    }
                    Setup::Uring(setup) => {
                        let io = driver::Io::Uring(Box::new(driver::uring::UringIo::new(*setup, listeners)));
                        driver::uring::run(Worker::new(id, io, tls_config, mesh, shared, cfg, auth))
                    }
                }
            })
            .map_err(|source| ServerError::Worker { worker: id, source })?;
        threads.push(thread);
    }
    tracing::info!(%addr, tls = ?tls_addr, workers, pinned = cores.is_some(), auth = ?auth.mode(), "herald listening");
    Ok(ServerHandle { addr, tls_addr, tls, cfg, shared, peers, threads, bridge })
}

/// A worker's driver as made on the starting thread (so that a failure stops the start).
enum Setup {
    Epoll(mio::Poll),
    Uring(Box<driver::uring::UringSetup>),
}

/// The cores to pin to, in worker order, or `None` when pinning is off or impossible.
fn pick_cores(cfg: &Config) -> Option<Vec<core_affinity::CoreId>> {
    if !cfg.server.pin {
        return None;
    }
    let available = core_affinity::get_core_ids()?;
    if cfg.server.cpus.0.is_empty() {
        return Some(available);
    }
    let chosen: Vec<_> = cfg.server.cpus.0.iter().map(|&id| core_affinity::CoreId { id }).collect();
    Some(chosen)
}
