//! Outbound delivery over SMTP: choosing the next hop, connecting, running the client session.
//!
//! For a recipient domain, a configured route decides the next hop (a smarthost with its port,
//! TLS mode and credentials); otherwise the domain's MX hosts are tried in order on port 25.
//! Every address of a host is tried before the next host (RFC 5321 §5.1). A refused or timed
//! out connection, or a 4xx/5xx greeting, EHLO or STARTTLS, moves on to the next address; a
//! failure once a transaction has started does not (the message's fate at that server is
//! decided by its replies).
//!
//! Connections are reused: after a transaction, a connection in good standing waits a few
//! seconds for the next message to the same address. A cap per destination domain keeps the
//! engine polite.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kurier_smtp::EnhancedCode;
use kurier_smtp::client::{ClientSession, Credentials, OutboundTransaction};
use kurier_spool::{Failure, MessageData, RemoteHost};
use tokio_rustls::TlsConnector;

use super::destination::{Admission, DeadDestination, Destinations};
use super::outcome::{RemoteOutcome, outcomes};
use crate::config::{AddressPreference, Config, TlsMode};
use crate::dns::Lookup;
use crate::maillog;
use crate::stream::Conn;
use crate::tls::client::{opportunistic, verifying};

mod family;
mod session;
use session::{close_politely, with_tls};

/// How long a connection waits for the next message to the same address.
const IDLE_REUSE: Duration = Duration::from_secs(10);

/// Whether a delivery reached its destination, for its dead-or-alive state.
enum Contact {
    /// A server answered (a transaction ran, or it refused with a reply).
    Reached,
    /// No host could be connected to, greeted or upgraded to TLS.
    Unreachable(String),
    /// No connection was tried (no address).
    NotTried,
}

/// What one delivery to a destination did.
pub struct Attempted {
    /// One outcome per recipient, in the transaction's order.
    pub outcomes: Vec<RemoteOutcome>,
    /// What else happened that the history should show.
    pub notes: Vec<String>,
}

/// How one address went.
enum Step {
    /// A transaction ran: its result, whether the server offers DSN, the host as reached.
    Done(kurier_smtp::client::TransactionResult, bool, RemoteHost),
    /// The session failed.
    Failed(kurier_smtp::client::SessionError, RemoteHost),
}

/// How long a polite close (QUIT, its reply, TLS close_notify) may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the next hop for a domain.
struct Route {
    domains: Vec<String>,
    host: Option<String>,
    port: u16,
    tls: TlsMode,
    connector: TlsConnector,
    /// The connector checks the server's certificate.
    verifies: bool,
    auth: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    route: usize,
}

struct Idle {
    conn: Conn,
    session: ClientSession,
    since: Instant,
}

/// The outbound SMTP engine: routes, resolver, connection pool, per-destination limits.
pub struct Outbound {
    resolver: Arc<dyn Lookup>,
    helo: String,
    timeout: Duration,
    /// Configured routes, then the default MX route last.
    routes: Vec<Route>,
    /// Each next hop's connections in use and whether it is dead.
    destinations: Arc<Destinations>,
    /// Which address family first, or only.
    preference: AddressPreference,
    pool: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// The server is stopping: no new connection or transaction is started; one under way
    /// finishes (a message whose data was sent waits for its reply, so it is not sent twice).
    stopping: tokio_util::sync::CancellationToken,
}

impl Outbound {
    /// Builds the engine from the configuration.
    pub fn new(config: &Config, resolver: Arc<dyn Lookup>) -> Result<Outbound, String> {
        let insecure = TlsConnector::from(opportunistic()?);
        let mut routes = Vec::new();
        for r in &config.routes {
            let auth = match (&r.username, &r.password) {
                (Some(u), Some(p)) => Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                _ => None,
            };
            // A password goes only to the server it is meant for: with credentials, the
            // certificate is always verified (against `ca_file`, which may be the
            // smarthost's own certificate, or the system's bundle) and STARTTLS is required.
            let tls = match r.tls {
                TlsMode::Opportunistic | TlsMode::Required if auth.is_some() => TlsMode::Verify,
                mode => mode,
            };
            let verifies = tls == TlsMode::Verify || auth.is_some();
            let connector = if verifies {
                TlsConnector::from(verifying(r.ca_file.as_deref())?)
            } else {
                insecure.clone()
            };
            routes.push(Route {
                domains: r.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                host: r.host.clone(),
                port: r.port,
                tls,
                connector,
                verifies,
                auth,
            });
        }
        routes.push(Route {
            domains: vec!["*".into()],
            host: None,
            // RFC 5321 §4.5.4: MX delivery is on port 25; only a route changes it.
            port: 25,
            tls: TlsMode::Opportunistic,
            connector: insecure,
            verifies: false,
            auth: None,
        });
        Ok(Outbound {
            resolver,
            helo: config.hostname.clone(),
            timeout: config.delivery.remote_timeout,
            routes,
            destinations: Destinations::new(
                config.delivery.per_destination,
                config.delivery.rate_limits.clone(),
            ),
            preference: config.delivery.address_preference,
            pool: Mutex::new(HashMap::new()),
            stopping: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Stops starting deliveries (at shutdown): what is not yet connected is put back
    /// untried, not counted as an attempt, and stays queued for the next start.
    pub fn stop_starting(&self) {
        self.stopping.cancel();
    }

    /// The route for a domain: an exact match, else a `*` route.
    fn route_for(&self, domain: &str) -> usize {
        crate::config::route_position(self.routes.iter().map(|r| r.domains.as_slice()), domain)
            .unwrap_or(self.routes.len() - 1)
    }

    /// Delivers one message to the recipients of one domain: one outcome per recipient, and
    /// notes for the history (a refusal that made it try the other address family).
    pub async fn deliver(
        &self,
        id: &kurier_spool::QueueId,
        domain: &str,
        tx: &OutboundTransaction,
        body: &MessageData,
    ) -> Attempted {
        let n = tx.recipients.len();
        let all = |o: RemoteOutcome| Attempted {
            outcomes: vec![o; n],
            notes: Vec::new(),
        };
        if self.stopping.is_cancelled() {
            return all(RemoteOutcome::Busy);
        }
        let route_index = self.route_for(domain);
        let route = &self.routes[route_index];
        let hosts = match &route.host {
            Some(h) => vec![h.clone()],
            None => {
                let found = tokio::select! {
                    found = self.resolver.mx_hosts(domain) => found,
                    _ = self.stopping.cancelled() => return all(RemoteOutcome::Busy),
                };
                match found {
                    Ok(h) => h.into_iter().map(|h| h.name).collect(),
                    Err(e) => return all(RemoteOutcome::from_route_error(&e)),
                }
            }
        };
        // The next hop: the route's host, or the domain (its MX hosts).
        let destination = match &route.host {
            Some(host) => crate::config::next_hop(host, route.port),
            None => domain.to_ascii_lowercase(),
        };
        let slot = match self.destinations.admit(&destination, Instant::now()) {
            Admission::Go(slot) => slot,
            Admission::Busy => {
                self.destinations.wait_for(&destination, id);
                return all(RemoteOutcome::Busy);
            }
            Admission::Dead { left, reason } => {
                return all(RemoteOutcome::temporary(
                    EnhancedCode(4, 4, 1),
                    format!(
                        "{destination} is not answering ({reason}); deliveries to it suspended for {} s",
                        left.as_secs()
                    ),
                ));
            }
        };
        let mut notes = Vec::new();
        let (outcomes, contact) = self
            .deliver_to(domain, tx, body, route_index, hosts, &mut notes)
            .await;
        match contact {
            Contact::Reached => slot.reached(),
            Contact::Unreachable(reason) => slot.unreachable(&reason, Instant::now()),
            Contact::NotTried => {}
        }
        Attempted { outcomes, notes }
    }

    /// [`Outbound::deliver`] once the destination admitted it: each host, each address (in
    /// the order of `delivery.address_preference`). A refusal of the sending address over
    /// one family skips that family's other addresses and tries the other one.
    async fn deliver_to(
        &self,
        domain: &str,
        tx: &OutboundTransaction,
        body: &MessageData,
        route_index: usize,
        hosts: Vec<String>,
        notes: &mut Vec<String>,
    ) -> (Vec<RemoteOutcome>, Contact) {
        let n = tx.recipients.len();
        let all = |o: RemoteOutcome| vec![o; n];
        let route = &self.routes[route_index];
        let mut tried = false;
        let mut unreachable = String::new();
        let mut last = RemoteOutcome::temporary(
            EnhancedCode(4, 4, 1),
            format!("no mail host for {domain} could be reached"),
        );
        // The family whose address was refused (true: IPv6), and the refusal.
        let mut refused: Option<(bool, Vec<RemoteOutcome>)> = None;
        for host in hosts {
            let ips = match self.resolver.addresses(&host).await {
                Ok(ips) => family::order(ips, self.preference),
                Err(e) => {
                    last = RemoteOutcome::temporary(e.status(), e.to_string());
                    continue;
                }
            };
            if ips.is_empty() {
                last = RemoteOutcome::temporary(
                    EnhancedCode(4, 4, 3),
                    format!("{host} has no address usable here"),
                );
                continue;
            }
            for ip in ips {
                if refused.as_ref().is_some_and(|(v6, _)| *v6 == ip.is_ipv6()) {
                    continue;
                }
                let addr = SocketAddr::new(ip, route.port);
                let mta = RemoteHost::new(host.clone(), Some(ip));
                let key = PoolKey {
                    addr,
                    route: route_index,
                };
                let attempt = match self.take_idle(&key) {
                    Some(idle) => {
                        maillog::reusing_connection(&mta);
                        let mta = with_tls(&mta, &idle.conn, route);
                        match self
                            .transact(idle.conn, idle.session, tx, body, &host, route)
                            .await
                        {
                            Ok((result, dsn, reusable)) => {
                                self.give_back(key.clone(), reusable).await;
                                Some(Step::Done(result, dsn, mta))
                            }
                            // A pooled connection that went stale: a fresh one.
                            Err(e) if e.reply.is_none() => None,
                            Err(e) => Some(Step::Failed(e, mta)),
                        }
                    }
                    None => None,
                };
                let step = match attempt {
                    Some(step) => step,
                    None => match self.connect_unless_stopping(addr, &host, route).await {
                        // Stopping before the transaction: nothing was tried.
                        None => return (all(RemoteOutcome::Busy), Contact::NotTried),
                        Some(Err(e)) => {
                            maillog::next_hop_failed(&mta, &e.message);
                            tried = true;
                            unreachable = e.message.clone();
                            if family::address_refusal(&e).is_some() {
                                Step::Failed(e, mta)
                            } else {
                                last = RemoteOutcome::from_session_error(&e, &mta);
                                if e.try_next_host() || e.reply.is_none() {
                                    continue;
                                }
                                // It answered, with a refusal: alive.
                                return (all(last), Contact::Reached);
                            }
                        }
                        Some(Ok((conn, session))) => {
                            let mta = with_tls(&mta, &conn, route);
                            // The server names itself as we do: this route or MX leads back
                            // to us.
                            if session.capabilities().server_name == self.helo.to_ascii_lowercase()
                            {
                                close_politely(conn, session).await;
                                return (all(self.looped(domain, &host, mta)), Contact::Reached);
                            }
                            match self.transact(conn, session, tx, body, &host, route).await {
                                Ok((result, dsn, reusable)) => {
                                    self.give_back(key, reusable).await;
                                    Step::Done(result, dsn, mta)
                                }
                                Err(e) => Step::Failed(e, mta),
                            }
                        }
                    },
                };
                // A refusal of the sending address: the other family, if there is one.
                let refusal = match &step {
                    Step::Failed(e, _) => family::address_refusal(e).cloned(),
                    Step::Done(result, _, _) => family::mail_refusal(result).cloned(),
                };
                let result = match step {
                    Step::Done(result, dsn, mta) => outcomes(result, &mta, dsn),
                    Step::Failed(e, mta) => all(RemoteOutcome::from_session_error(&e, &mta)),
                };
                if let Some(reply) = refusal
                    && family::both(self.preference)
                    && refused.is_none()
                {
                    notes.push(format!(
                        "{host} [{ip}] refused the sending {} address ({}); trying the other family",
                        family::name(&ip),
                        reply.to_string().trim_end()
                    ));
                    refused = Some((ip.is_ipv6(), result));
                    continue;
                }
                return (result, Contact::Reached);
            }
        }
        if let Some((_, result)) = refused {
            notes.push("no address of the other family took the message".into());
            return (result, Contact::Reached);
        }
        let contact = match tried {
            true => Contact::Unreachable(unreachable),
            false => Contact::NotTried,
        };
        (all(last), contact)
    }

    /// The permanent failure of a route or MX that leads back to this server.
    fn looped(&self, domain: &str, host: &str, mta: RemoteHost) -> RemoteOutcome {
        RemoteOutcome::Failed {
            permanent: true,
            failure: Failure {
                remote: Some(mta),
                ..Failure::local(
                    EnhancedCode(5, 4, 6),
                    format!(
                        "mail for {domain} loops back to myself ({host} greets as {})",
                        self.helo
                    ),
                )
            },
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Idle> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        list.retain(|i| i.since.elapsed() < IDLE_REUSE);
        list.pop()
    }

    /// Pools a connection for the next message, or closes it politely when the server is
    /// stopping (the pool's QUITs may have gone out already).
    async fn give_back(&self, key: PoolKey, reusable: Option<(Conn, ClientSession)>) {
        let Some((conn, session)) = reusable else {
            return;
        };
        // Checked under the pool's lock: [`Outbound::close_all`] takes it after the stop.
        let closing = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if self.stopping.is_cancelled() {
                Some((conn, session))
            } else {
                pool.entry(key).or_default().push(Idle {
                    conn,
                    session,
                    since: Instant::now(),
                });
                None
            }
        };
        if let Some((conn, session)) = closing {
            close_politely(conn, session).await;
        }
    }

    /// Where a message put back for a busy destination goes when a slot is free.
    pub fn on_free(&self, to: tokio::sync::mpsc::UnboundedSender<kurier_spool::QueueId>) {
        self.destinations.on_free(to);
    }

    /// The destinations that are dead now.
    pub fn dead_destinations(&self) -> Vec<DeadDestination> {
        self.destinations.dead(Instant::now())
    }

    /// Closes connections that waited too long for another message, politely (on the side:
    /// a silent peer does not hold the caller).
    pub fn sweep(&self) {
        self.close_idle(false)
            .into_iter()
            .for_each(|c| drop(tokio::spawn(c)));
    }

    /// At shutdown: every pooled connection gets its QUIT, all at once (each bounded by
    /// [`QUIT_TIMEOUT`], so a silent peer holds the shutdown no longer than that).
    pub async fn close_all(&self) {
        let mut closing = tokio::task::JoinSet::new();
        for close in self.close_idle(true) {
            closing.spawn(close);
        }
        while closing.join_next().await.is_some() {}
    }

    /// Takes stale (or, with `all`, every) idle connection out of the pool; the futures
    /// close them.
    fn close_idle(&self, all: bool) -> Vec<impl std::future::Future<Output = ()> + use<>> {
        let mut stale = Vec::new();
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            for list in pool.values_mut() {
                let (fresh, old): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|i| !all && i.since.elapsed() < IDLE_REUSE);
                *list = fresh;
                stale.extend(old);
            }
            pool.retain(|_, l| !l.is_empty());
        }
        stale
            .into_iter()
            .map(|idle| close_politely(idle.conn, idle.session))
            .collect()
    }
}
