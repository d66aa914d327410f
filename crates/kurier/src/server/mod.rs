//! The running server: listeners, connection limits, startup order, signals and graceful
//! shutdown. It builds the other wings' shared state and launches them; nothing depends on
//! it in return.
//!
//! Startup order matters for safety: bind the ports (possibly as root), read a configured
//! certificate, switch to the unprivileged user, and only then touch the data directory
//! (lock, spool, users), so the spool is never written as root.
//!
//! - [`listen`]: the accept loop and connection limits.
//! - [`privilege`]: switching to the unprivileged user.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kurier_smtp::Role;
use kurier_spool::{Spool, SpoolError};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::delivery::{self, smtp::Outbound};
use crate::directory::Directory;
use crate::dkim::Signers;
use crate::dns::MxResolver;
use crate::fsutil;
use crate::inbound::Inbound;
use crate::load::{Load, MemoryBudget};
use crate::maillog;
use crate::policy::greylist::Greylist;
use crate::policy::throttle::{AuthThrottle, RateLimit};
use crate::policy::{PASSWORD_CHECKS, Policy};
use crate::shutdown::Shutdown;
use crate::time::SystemClock;
use crate::time::unix_now;
use crate::{control, tls};

mod banner;
mod listen;
pub mod privilege;

/// How often greylisting state is saved (and once more at shutdown), so it survives restarts.
const GREYLIST_SAVE_INTERVAL: Duration = Duration::from_secs(30);
/// After the grace period, how long sessions get to send their 421 and close.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long delivery workers get at least to finish at shutdown, even when the sessions
/// used up the grace period (pooled connections' QUIT takes up to 5 s).
const WORKERS_MIN: Duration = Duration::from_secs(6);

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}{hint}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
        /// Advice for the common causes.
        hint: &'static str,
    },
    /// Another Kurier runs on the same data directory.
    #[error(
        "another kurier is already running on data directory {0} (lock held on {0}/kurier.lock)"
    )]
    AlreadyRunning(PathBuf),
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Switching to the unprivileged user failed.
    #[error("cannot switch to user {user}: {message}")]
    Privileges {
        /// The configured user.
        user: String,
        /// What failed.
        message: String,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// An alias would lose mail (no user at its end, or a loop).
    #[error(transparent)]
    Aliases(#[from] crate::directory::aliases::AliasError),
    /// Outbound delivery could not be set up (resolver, TLS roots).
    #[error("outbound delivery: {0}")]
    Outbound(String),
}

/// A started server: its listeners are bound and accepting, its delivery workers run.
///
/// [`start`] hands this back so that the caller (the binary, or a test in the same process)
/// knows the bound addresses without parsing a banner, and decides when to stop.
pub struct Running {
    /// Each listener's role and the address it is bound to, in configuration order (a port 0
    /// in the configuration shows here as the port the system chose).
    pub addresses: Vec<(Role, SocketAddr)>,
    config: Arc<Config>,
    data_dir: DataDir,
    stop: CancellationToken,
    abort: CancellationToken,
    sessions: TaskTracker,
    workers: TaskTracker,
    lock: std::fs::File,
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config, data_dir: DataDir) -> Result<(), StartError> {
    // The handlers are in place before a port is bound: a SIGTERM that arrives while the
    // server starts (or right after the banner) is a graceful stop, never the default action
    // that kills the process without a 421 to anyone.
    let signals = Signals::install();
    let running = start(config, data_dir).await?;
    running.write_listening();
    banner::print_banner(&running.config, &running.addresses, running.data_dir.root());
    signals.wait().await;
    running.shutdown().await;
    Ok(())
}

/// Binds the listeners, drops privileges, opens the data directory and starts accepting.
pub async fn start(config: Config, data_dir: DataDir) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| StartError::Bind {
                address: l.address,
                hint: match source.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        " (is another mail server running on this port?)"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need root; kurier drops to `run_as` after binding)"
                    }
                    _ => "",
                },
                source,
            })?;
        listeners.push((listener, Role::from(l.role)));
    }
    let configured_cert = match (&config.tls.certificate, &config.tls.private_key) {
        (Some(c), Some(k)) => Some(tls::load(c, k)?),
        _ => None,
    };
    if let Some(user) = &config.run_as {
        privilege::drop_to(user, data_dir.root()).map_err(|message| StartError::Privileges {
            user: user.clone(),
            message,
        })?;
    } else if nix::unistd::geteuid().is_root() {
        maillog::running_as_root();
    }
    let dir_err = |path: PathBuf| move |source| StartError::DataDir { path, source };
    std::fs::create_dir_all(data_dir.root()).map_err(dir_err(data_dir.root().to_path_buf()))?;
    match privilege::make_private(data_dir.root()) {
        Ok(true) => maillog::data_dir_made_private(data_dir.root()),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot make the data directory private"),
    }
    let lock_path = data_dir.server_lock();
    let lock = std::fs::File::create(&lock_path).map_err(dir_err(lock_path))?;
    if lock.try_lock().is_err() {
        return Err(StartError::AlreadyRunning(data_dir.root().to_path_buf()));
    }
    let cert = match configured_cert {
        Some(c) => c,
        None => {
            let (c, generated) = tls::load_or_generate(&data_dir, &config.hostname)?;
            if generated {
                tracing::info!(
                    path = %data_dir.tls_cert().display(),
                    "generated a self-signed certificate"
                );
            }
            c
        }
    };
    let tls = Some(TlsAcceptor::from(tls::server_config(cert)?));
    let (spool, recovery) = Spool::open(data_dir.spool())?;
    tracing::info!(
        queued = recovery.queued.len(),
        removed_unacknowledged = recovery.removed_tmp,
        quarantined = recovery.quarantined,
        "spool recovered"
    );
    let directory = Arc::new(Directory::new(&config, &data_dir));
    directory.check_aliases()?;
    // The config's [users] may have changed since the last start.
    if let Err(e) = crate::directory::dovecot::write_passwd(&config, &data_dir) {
        tracing::warn!(error = %e, "cannot write the users for Dovecot");
    }
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let workers = TaskTracker::new();
    let resolver = Arc::new(MxResolver::new(&config.dns.servers).map_err(StartError::Outbound)?);
    let outbound =
        Arc::new(Outbound::new(&config, resolver.clone()).map_err(StartError::Outbound)?);
    let signers = Arc::new(Signers::load(&data_dir));
    let delivery = delivery::start(
        delivery::Setup {
            spool: Arc::new(spool.clone()),
            local: Arc::new(delivery::maildir::Maildirs {
                hostname: config.hostname.clone(),
            }),
            clock: Arc::new(crate::time::SystemClock),
            directory: directory.clone(),
            config: config.clone(),
            outbound,
            signers: signers.clone(),
            recovered: recovery.queued,
            dead_destinations: data_dir.dead_destinations(),
            history: Arc::new(crate::history::History::configured(&config, &data_dir)),
            suppressions: Arc::new(crate::delivery::suppress::SuppressionList::new(
                data_dir.root(),
            )),
        },
        stop.clone(),
        &workers,
    );
    let control = control::bind(&data_dir).map_err(dir_err(data_dir.control_socket()))?;
    let engine = delivery.engine().clone();
    workers.spawn(control::serve(
        control,
        move |cmd| {
            let engine = engine.clone();
            async move { engine.command(cmd).await }
        },
        stop.clone(),
    ));
    let greylist = config.greylisting.enabled.then(|| {
        Arc::new(Greylist::open(
            config.greylisting.clone(),
            data_dir.greylist(),
            unix_now(),
        ))
    });
    if let Some(g) = greylist.clone() {
        let stop = stop.clone();
        workers.spawn(async move {
            let mut tick = tokio::time::interval(GREYLIST_SAVE_INTERVAL);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.cancelled() => true,
                };
                let g = g.clone();
                let save = move || {
                    g.expire(unix_now());
                    g.save()
                };
                if let Ok(Err(e)) = tokio::task::spawn_blocking(save).await {
                    tracing::warn!(error = %e, "cannot save the greylist");
                }
                if stopping {
                    break;
                }
            }
        });
    }
    let auth_throttle = AuthThrottle::new(
        config.limits.auth_failures_per_ip,
        config.limits.auth_failure_window,
    );
    let policy = Policy {
        config: config.clone(),
        directory,
        resolver,
        greylist,
        auth_throttle,
        message_rate: RateLimit::per_minute(config.limits.messages_per_minute),
        clock: Arc::new(SystemClock),
        password_checks: Semaphore::new(PASSWORD_CHECKS),
    };
    let load = Arc::new(Load::new(config.limits.connections));
    let inbound = Arc::new(Inbound {
        config: config.clone(),
        policy,
        spool,
        tls,
        delivery,
        signers,
        load: load.clone(),
        memory: MemoryBudget::new(config.limits.message_memory),
    });
    let limits = &config.limits;
    let limiter = listen::Limiter::new(limits.connections, limits.connections_per_ip, load);
    let addresses = listeners
        .iter()
        .map(|(l, role)| l.local_addr().map(|a| (*role, a)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(dir_err(data_dir.root().to_path_buf()))?;
    let sessions = TaskTracker::new();
    let shutdown = Shutdown {
        stop: stop.clone(),
        abort: abort.clone(),
    };
    for (listener, role) in listeners {
        let (inbound, limiter, shutdown, tracker) = (
            inbound.clone(),
            limiter.clone(),
            shutdown.clone(),
            sessions.clone(),
        );
        sessions.spawn(listen::accept_loop(
            listener, role, inbound, limiter, shutdown, tracker,
        ));
    }
    Ok(Running {
        addresses,
        config,
        data_dir,
        stop,
        abort,
        sessions,
        workers,
        lock,
    })
}

impl Running {
    /// Writes [`DataDir::listening`]: the process id and each bound address. Failing to
    /// write it is logged, not fatal: the server runs without it.
    fn write_listening(&self) {
        let mut text = format!("pid {}\n", std::process::id());
        for (role, address) in &self.addresses {
            text.push_str(&format!("{} {address}\n", role.name()));
        }
        if let Err(e) = fsutil::write_private(&self.data_dir.listening(), text.as_bytes()) {
            maillog::listening_file_not_written(&self.data_dir.listening(), &e);
        }
    }

    /// Graceful stop: no new connections; idle sessions get `421 4.3.2` at once, sessions in
    /// a transaction may finish it within `limits.shutdown_grace` and then get the 421
    /// (RFC 5321 §3.8); delivery workers start nothing new and finish what runs, within the
    /// same grace period.
    pub async fn shutdown(self) {
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections, finishing transactions");
        let deadline = tokio::time::Instant::now() + grace;
        self.stop.cancel();
        self.sessions.close();
        self.workers.close();
        if tokio::time::timeout_at(deadline, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: closing remaining sessions with 421");
            self.abort.cancel();
            let _ = tokio::time::timeout(ABORT_TIMEOUT, self.sessions.wait()).await;
        }
        // Deliveries under way finish within the same grace period: one whose data was
        // sent gets its reply recorded, so it is not sent again after the restart.
        let workers_until = deadline.max(tokio::time::Instant::now() + WORKERS_MIN);
        if tokio::time::timeout_at(workers_until, self.workers.wait())
            .await
            .is_err()
        {
            maillog::deliveries_cut_at_shutdown();
        }
        let _ = std::fs::remove_file(self.data_dir.control_socket());
        let _ = std::fs::remove_file(self.data_dir.listening());
        tracing::info!("stopped");
        drop(self.lock);
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(self) {
        match (self.term, self.int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
