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
use kurier_smtp::client::{
    ClientAction, ClientConfig, ClientSession, Credentials, OutboundTransaction, SessionError,
    Stage, TlsPolicy, TransactionResult,
};
use kurier_smtp::data::DotStuffer;
use kurier_spool::{Failure, MessageData, RemoteHost, TlsUsed};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, TlsStream};

use super::destination::{Admission, DeadDestination, Destinations};
use super::outcome::{RemoteOutcome, outcomes};
use crate::config::{Config, TlsMode};
use crate::dns::Lookup;
use crate::maillog;
use crate::stream::Conn;
use crate::tls::client::{opportunistic, verifying};

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
    pool: Mutex<HashMap<PoolKey, Vec<Idle>>>,
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
            destinations: Destinations::new(config.delivery.per_destination),
            pool: Mutex::new(HashMap::new()),
        })
    }

    /// The route for a domain: an exact match, else a `*` route.
    fn route_for(&self, domain: &str) -> usize {
        let domain = domain.to_ascii_lowercase();
        self.routes
            .iter()
            .position(|r| r.domains.contains(&domain))
            .or_else(|| {
                self.routes
                    .iter()
                    .position(|r| r.domains.iter().any(|d| d == "*"))
            })
            .unwrap_or(self.routes.len() - 1)
    }

    /// Delivers one message to the recipients of one domain; one outcome per recipient.
    pub async fn deliver(
        &self,
        domain: &str,
        tx: &OutboundTransaction,
        body: &MessageData,
    ) -> Vec<RemoteOutcome> {
        let n = tx.recipients.len();
        let all = |o: RemoteOutcome| vec![o; n];
        let route_index = self.route_for(domain);
        let route = &self.routes[route_index];
        let hosts = match &route.host {
            Some(h) => vec![h.clone()],
            None => match self.resolver.mx_hosts(domain).await {
                Ok(h) => h.into_iter().map(|h| h.name).collect(),
                Err(e) => return all(RemoteOutcome::from_route_error(&e)),
            },
        };
        // The next hop: the route's host, or the domain (its MX hosts).
        let destination = route
            .host
            .clone()
            .unwrap_or_else(|| domain.to_ascii_lowercase());
        let slot = match self.destinations.admit(&destination, Instant::now()) {
            Admission::Go(slot) => slot,
            Admission::Busy => return all(RemoteOutcome::Busy),
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
        let (outcomes, contact) = self.deliver_to(domain, tx, body, route_index, hosts).await;
        match contact {
            Contact::Reached => slot.reached(),
            Contact::Unreachable(reason) => slot.unreachable(&reason, Instant::now()),
            Contact::NotTried => {}
        }
        outcomes
    }

    /// [`Outbound::deliver`] once the destination admitted it: each host, each address.
    async fn deliver_to(
        &self,
        domain: &str,
        tx: &OutboundTransaction,
        body: &MessageData,
        route_index: usize,
        hosts: Vec<String>,
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
        for host in hosts {
            let ips = match self.resolver.addresses(&host).await {
                Ok(ips) if !ips.is_empty() => ips,
                Ok(_) => {
                    last = RemoteOutcome::temporary(
                        EnhancedCode(4, 4, 3),
                        format!("{host} has no address"),
                    );
                    continue;
                }
                Err(e) => {
                    last = RemoteOutcome::temporary(e.status(), e.to_string());
                    continue;
                }
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, route.port);
                let mta = RemoteHost::new(host.clone(), Some(ip));
                let key = PoolKey {
                    addr,
                    route: route_index,
                };
                // A pooled connection first; if it went stale, a fresh one.
                if let Some(idle) = self.take_idle(&key) {
                    maillog::reusing_connection(&mta);
                    let mta = with_tls(&mta, &idle.conn, route);
                    match self
                        .transact(idle.conn, idle.session, tx, body, &host, route)
                        .await
                    {
                        Ok((result, dsn, reusable)) => {
                            self.give_back(key, reusable);
                            return (outcomes(result, &mta, dsn), Contact::Reached);
                        }
                        Err(e) if e.reply.is_none() => {}
                        Err(e) => {
                            let failed = RemoteOutcome::from_session_error(&e, &mta);
                            return (all(failed), Contact::Reached);
                        }
                    }
                }
                let (conn, session) = match self.connect(addr, &host, route).await {
                    Ok(c) => c,
                    Err(e) => {
                        maillog::next_hop_failed(&mta, &e.message);
                        last = RemoteOutcome::from_session_error(&e, &mta);
                        tried = true;
                        unreachable = e.message.clone();
                        if e.try_next_host() || e.reply.is_none() {
                            continue;
                        }
                        // It answered, with a refusal: alive.
                        return (all(last), Contact::Reached);
                    }
                };
                let mta = with_tls(&mta, &conn, route);
                // The server names itself as we do: this route or MX leads back to us.
                if session.capabilities().server_name == self.helo.to_ascii_lowercase() {
                    close_politely(conn, session).await;
                    let looped = RemoteOutcome::Failed {
                        permanent: true,
                        failure: Failure {
                            remote: Some(mta.clone()),
                            ..Failure::local(
                                EnhancedCode(5, 4, 6),
                                format!(
                                    "mail for {domain} loops back to myself ({host} greets as {})",
                                    self.helo
                                ),
                            )
                        },
                    };
                    return (all(looped), Contact::Reached);
                }
                let result = match self.transact(conn, session, tx, body, &host, route).await {
                    Ok((result, dsn, reusable)) => {
                        self.give_back(key, reusable);
                        outcomes(result, &mta, dsn)
                    }
                    Err(e) => all(RemoteOutcome::from_session_error(&e, &mta)),
                };
                return (result, Contact::Reached);
            }
        }
        let contact = match tried {
            true => Contact::Unreachable(unreachable),
            false => Contact::NotTried,
        };
        (all(last), contact)
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Idle> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        list.retain(|i| i.since.elapsed() < IDLE_REUSE);
        list.pop()
    }

    fn give_back(&self, key: PoolKey, reusable: Option<(Conn, ClientSession)>) {
        if let Some((conn, session)) = reusable {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.entry(key).or_default().push(Idle {
                conn,
                session,
                since: Instant::now(),
            });
        }
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

    /// Connects and runs the session up to "ready for MAIL".
    async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        route: &Route,
    ) -> Result<(Conn, ClientSession), SessionError> {
        let err = |message: String| SessionError {
            stage: Stage::Greeting,
            reply: None,
            message,
        };
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(err(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(err(format!("connect to {addr}: timed out"))),
        };
        let _ = tcp.set_nodelay(true);
        let implicit = route.tls == TlsMode::Implicit;
        let conn = if implicit {
            upgrade(Conn::Plain(tcp), host, &route.connector, self.timeout)
                .await
                .map_err(&err)?
        } else {
            Conn::Plain(tcp)
        };
        let policy = match route.tls {
            TlsMode::Opportunistic => TlsPolicy::Opportunistic,
            TlsMode::Required | TlsMode::Verify => TlsPolicy::Required,
            TlsMode::Implicit | TlsMode::None => TlsPolicy::Never,
        };
        let session = ClientSession::new(ClientConfig {
            helo: self.helo.clone(),
            tls: policy,
            tls_active: implicit,
            auth: route.auth.clone(),
        });
        let (conn, session, result) = self.drive(conn, session, None, host, route).await;
        match (result, conn) {
            (Ok(_), Some(conn)) => Ok((conn, session)),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(err("connection lost".into())),
        }
    }

    /// Sends one transaction on a ready session. Returns the result and the connection if it
    /// can be reused.
    async fn transact(
        &self,
        conn: Conn,
        mut session: ClientSession,
        tx: &OutboundTransaction,
        body: &MessageData,
        host: &str,
        route: &Route,
    ) -> Result<(TransactionResult, bool, Option<(Conn, ClientSession)>), SessionError> {
        let dsn = session.capabilities().dsn;
        session.send(tx);
        let (conn, session, result) = self.drive(conn, session, Some(body), host, route).await;
        match result? {
            Some(r) => Ok((r, dsn, conn.map(|c| (c, session)))),
            None => Err(SessionError {
                stage: Stage::Mail,
                reply: None,
                message: "no transaction result".into(),
            }),
        }
    }

    /// Moves bytes between the connection and the session until it is ready for the next
    /// transaction or fails.
    async fn drive(
        &self,
        mut conn: Conn,
        mut session: ClientSession,
        body: Option<&MessageData>,
        host: &str,
        route: &Route,
    ) -> (
        Option<Conn>,
        ClientSession,
        Result<Option<TransactionResult>, SessionError>,
    ) {
        let mut result = None;
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some(action) = session.poll_action() {
                match action {
                    ClientAction::Send(bytes) => {
                        if let Err(e) = conn.write_all(&bytes).await {
                            session.connection_lost(&e.to_string());
                        }
                    }
                    ClientAction::SendBody => {
                        if let Err(e) = send_body(&mut conn, body).await {
                            session.connection_lost(&e.to_string());
                        }
                    }
                    ClientAction::StartTls => {
                        match upgrade(conn, host, &route.connector, self.timeout).await {
                            Ok(c) => {
                                conn = c;
                                session.tls_established();
                            }
                            Err(message) => {
                                let e = SessionError {
                                    stage: Stage::StartTls,
                                    reply: None,
                                    message,
                                };
                                return (None, session, Err(e));
                            }
                        }
                    }
                    ClientAction::Ready => return (Some(conn), session, Ok(result)),
                    ClientAction::Done(r) => result = Some(r),
                    ClientAction::Failed(e) => return (None, session, Err(e)),
                    ClientAction::Closed => return (None, session, Ok(result)),
                }
            }
            match tokio::time::timeout(self.timeout, conn.read(&mut buf)).await {
                Ok(Ok(0)) => session.connection_lost("connection closed by the server"),
                Ok(Ok(n)) => session.receive(&buf[..n]),
                Ok(Err(e)) => session.connection_lost(&e.to_string()),
                Err(_) => session.connection_lost("timed out waiting for the server"),
            }
        }
    }
}

/// The host as reached on `conn`: with the TLS it negotiated, and whether the route's
/// connector checked the certificate.
fn with_tls(mta: &RemoteHost, conn: &Conn, route: &Route) -> RemoteHost {
    let tls = conn.tls_info().map(|t| TlsUsed {
        version: t.version,
        cipher: t.cipher,
        verified: route.verifies,
    });
    RemoteHost { tls, ..mta.clone() }
}

/// What goes to the server in one write of the message data.
const SEND_PIECE: usize = 64 * 1024;

/// The message, dot-stuffed piece by piece as it is read (from its queue file, for a large
/// one), so that sending it never needs it whole in memory. The file is read with blocking
/// positioned reads of one piece: a queue file just written is in the page cache.
async fn send_body(conn: &mut Conn, body: Option<&MessageData>) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::with_capacity(SEND_PIECE + 1024);
    let mut pos = 0u64;
    while let Some(data) = body
        && pos < data.len()
    {
        let piece = data.read_at(pos, SEND_PIECE)?;
        pos += piece.len() as u64;
        out.clear();
        stuffer.push(&piece, &mut out);
        conn.write_all(&out).await?;
    }
    out.clear();
    stuffer.finish(&mut out);
    conn.write_all(&out).await
}

/// QUIT, its reply, then the TLS close_notify and the TCP FIN (RFC 5321 §4.1.1.10; a
/// connection dropped without them is logged as an error by the other side), bounded by
/// [`QUIT_TIMEOUT`].
async fn close_politely(mut conn: Conn, mut session: ClientSession) {
    session.quit();
    let _ = tokio::time::timeout(QUIT_TIMEOUT, async {
        while let Some(ClientAction::Send(bytes)) = session.poll_action() {
            if conn.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf).await;
        conn.shutdown().await;
    })
    .await;
}

/// Runs the TLS handshake as a client on a plain connection.
async fn upgrade(
    conn: Conn,
    host: &str,
    connector: &TlsConnector,
    timeout: Duration,
) -> Result<Conn, String> {
    let Conn::Plain(tcp) = conn else {
        return Err("TLS is already active".into());
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a valid TLS server name: {e}"))?;
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Conn::Tls(Box::new(TlsStream::Client(s)))),
        Ok(Err(e)) => Err(format!("TLS handshake with {host} failed: {e}")),
        Err(_) => Err(format!("TLS handshake with {host} timed out")),
    }
}
