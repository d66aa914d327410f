//! The running server: listeners, connection limits, startup order and graceful shutdown.
//!
//! Startup order matters for safety: bind the ports (possibly as root), read a configured
//! certificate, switch to the unprivileged user, and only then touch the data directory
//! (lock, spool, users), so the spool is never written as root.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kurier_smtp::{Reply, Role, codes};
use kurier_spool::{Spool, SpoolError};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::{self, Shutdown};
use crate::delivery::{self, DeliveryHandle};
use crate::directory::Directory;
use crate::dkim::Signers;
use crate::dns::MxResolver;
use crate::greylist::Greylist;
use crate::outbound::Outbound;
use crate::throttle::{AuthThrottle, RateLimit};
use crate::{privilege, tls};

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
    /// Outbound delivery could not be set up (resolver, TLS roots).
    #[error("outbound delivery: {0}")]
    Outbound(String),
}

/// Shared state of the running server.
pub struct Context {
    /// The configuration.
    pub config: Arc<Config>,
    /// Users, aliases, domains.
    pub directory: Arc<Directory>,
    /// The queue.
    pub spool: Spool,
    /// TLS, when a certificate is available.
    pub tls: Option<TlsAcceptor>,
    /// Delivery workers.
    pub delivery: DeliveryHandle,
    /// DNS for inbound checks (DNSBL).
    pub resolver: Arc<MxResolver>,
    /// Greylisting, when enabled.
    pub greylist: Option<Arc<Greylist>>,
    /// AUTH failures per client address.
    pub auth_throttle: AuthThrottle,
    /// Messages per minute per client address.
    pub message_rate: RateLimit,
    /// DKIM keys of the local domains.
    pub signers: Arc<Signers>,
}

/// Counts connections in total and per client address (RFC 5321 §4.5.3.2 lets a server
/// refuse with 421 when it is too busy).
struct Limiter {
    total: usize,
    per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Reply> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 >= self.total {
            return Err(Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections, try again later",
            ));
        }
        let n = s.1.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections from your address, try again later",
            ));
        }
        *n += 1;
        s.0 += 1;
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        if let Some(n) = s.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.1.remove(&self.ip);
            }
        }
    }
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
    data_dir: PathBuf,
    stop: CancellationToken,
    abort: CancellationToken,
    sessions: TaskTracker,
    workers: TaskTracker,
    lock: std::fs::File,
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config, data_dir: PathBuf) -> Result<(), StartError> {
    // The handlers are in place before a port is bound: a SIGTERM that arrives while the
    // server starts (or right after the banner) is a graceful stop, never the default action
    // that kills the process without a 421 to anyone.
    let signals = Signals::install();
    let running = start(config, data_dir).await?;
    print_banner(&running.config, &running.data_dir);
    signals.wait().await;
    running.shutdown().await;
    Ok(())
}

/// Binds the listeners, drops privileges, opens the data directory and starts accepting.
pub async fn start(config: Config, data_dir: PathBuf) -> Result<Running, StartError> {
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
        privilege::drop_to(user, &data_dir).map_err(|message| StartError::Privileges {
            user: user.clone(),
            message,
        })?;
    } else if nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "running as root: set `run_as` in the config to switch to an unprivileged user after binding"
        );
    }
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::DataDir { path, source }
    };
    std::fs::create_dir_all(&data_dir).map_err(dir_err(&data_dir))?;
    let lock_path = data_dir.join("kurier.lock");
    let lock = std::fs::File::create(&lock_path).map_err(dir_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(StartError::AlreadyRunning(data_dir));
    }
    let cert = match configured_cert {
        Some(c) => c,
        None => {
            let (c, generated) = tls::load_or_generate(&data_dir, &config.hostname)?;
            if generated {
                tracing::info!(path = %data_dir.join("tls/cert.pem").display(), "generated a self-signed certificate");
            }
            c
        }
    };
    let tls = Some(TlsAcceptor::from(tls::server_config(cert)?));
    let (spool, recovery) = Spool::open(data_dir.join("spool"))?;
    tracing::info!(
        queued = recovery.queued.len(),
        removed_unacknowledged = recovery.removed_tmp,
        quarantined = recovery.quarantined,
        "spool recovered"
    );
    let directory = Arc::new(Directory::new(&config, &data_dir));
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let workers = TaskTracker::new();
    let outbound = Arc::new(Outbound::new(&config).map_err(StartError::Outbound)?);
    let signers = Arc::new(Signers::load(&data_dir));
    let delivery = delivery::start(
        delivery::Setup {
            spool: spool.clone(),
            directory: directory.clone(),
            config: config.clone(),
            outbound,
            signers: signers.clone(),
            recovered: recovery.queued,
        },
        stop.clone(),
        &workers,
    );
    let control = crate::queue::bind(&data_dir).map_err(|source| StartError::DataDir {
        path: crate::queue::socket_path(&data_dir),
        source,
    })?;
    workers.spawn(crate::queue::serve(
        control,
        delivery.engine().clone(),
        stop.clone(),
    ));
    let resolver = Arc::new(MxResolver::new(&config.dns.servers).map_err(StartError::Outbound)?);
    let greylist = config.greylisting.enabled.then(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Arc::new(Greylist::open(
            config.greylisting.clone(),
            data_dir.join("greylist.json"),
            now,
        ))
    });
    if let Some(g) = greylist.clone() {
        // Saved every 30 s and once more at shutdown, so the state survives restarts.
        let stop = stop.clone();
        workers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.cancelled() => true,
                };
                let g = g.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || g.save()).await {
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
    let ctx = Arc::new(Context {
        config: config.clone(),
        directory,
        spool,
        tls,
        delivery,
        resolver,
        greylist,
        auth_throttle,
        message_rate: RateLimit::per_minute(config.limits.messages_per_minute),
        signers,
    });
    let limiter = Arc::new(Limiter {
        total: config.limits.connections,
        per_ip: config.limits.connections_per_ip,
        state: Mutex::new((0, HashMap::new())),
    });
    let addresses = listeners
        .iter()
        .map(|(l, role)| l.local_addr().map(|a| (*role, a)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    let sessions = TaskTracker::new();
    let shutdown = Shutdown {
        stop: stop.clone(),
        abort: abort.clone(),
    };
    for (listener, role) in listeners {
        let (ctx, limiter, shutdown, tracker) = (
            ctx.clone(),
            limiter.clone(),
            shutdown.clone(),
            sessions.clone(),
        );
        sessions.spawn(accept_loop(listener, role, ctx, limiter, shutdown, tracker));
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
    /// Graceful stop: no new connections; idle sessions get `421 4.3.2` at once, sessions in
    /// a transaction may finish it within `limits.shutdown_grace` and then get the 421
    /// (RFC 5321 §3.8); delivery workers finish their attempt.
    pub async fn shutdown(self) {
        let grace = self.config.limits.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections, finishing transactions");
        self.stop.cancel();
        self.sessions.close();
        self.workers.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: closing remaining sessions with 421");
            self.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.sessions.wait()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.workers.wait()).await;
        let _ = std::fs::remove_file(crate::queue::socket_path(&self.data_dir));
        tracing::info!("stopped");
        drop(self.lock);
    }
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    ctx: Arc<Context>,
    limiter: Arc<Limiter>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let connection_rate = RateLimit::per_minute(ctx.config.limits.connections_per_minute);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !connection_rate.allow(peer.ip()) {
            let reply = Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections per minute from your address, try again later",
            );
            tracing::warn!(peer = %peer.ip(), listener = %role.name(), "connection refused: {}", reply.text());
            tracker.spawn(connection::refuse(stream, reply));
            continue;
        }
        match limiter.acquire(peer.ip()) {
            Ok(permit) => {
                let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                tracker.spawn(async move {
                    connection::serve(stream, peer, role, ctx, shutdown).await;
                    drop(permit);
                });
            }
            Err(reply) => {
                tracing::warn!(peer = %peer.ip(), listener = role.name(), "connection refused: {}", reply.text());
                tracker.spawn(connection::refuse(stream, reply));
            }
        }
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

fn print_banner(config: &Config, data_dir: &Path) {
    let domain = config
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let mut text = format!(
        "Kurier {} is running; data in {}\n",
        env!("CARGO_PKG_VERSION"),
        data_dir.display()
    );
    for l in &config.listeners {
        let what = match l.role {
            crate::config::RoleName::Smtp => format!(
                "incoming mail for {} (STARTTLS offered)",
                config.domains.join(", ")
            ),
            crate::config::RoleName::Submission => {
                "submission: STARTTLS, then AUTH PLAIN/LOGIN".to_string()
            }
            crate::config::RoleName::Submissions => {
                "submission over implicit TLS, AUTH PLAIN/LOGIN".to_string()
            }
        };
        text.push_str(&format!(
            "  {:<12} {:<22} {}\n",
            Role::from(l.role).name(),
            l.address,
            what
        ));
    }
    let smtp = config
        .listeners
        .iter()
        .find(|l| l.role == crate::config::RoleName::Smtp)
        .map(|l| l.address.to_string())
        .unwrap_or_else(|| "HOST:PORT".into());
    text.push_str(&format!(
        "Mail is delivered to Maildirs under {}/mail/<domain>/<user>/ (postmaster@{domain} exists from the start)\n\
         Add a user:  kurier user add alice@{domain} --data-dir {}\n\
         Try it:      swaks --server {smtp} --to postmaster@{domain}\n\
         Stop with Ctrl-C.\n",
        data_dir.display(),
        data_dir.display()
    ));
    print!("{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
