//! One SMTP session with a next hop: connecting (with implicit TLS or STARTTLS), driving the
//! sans-IO client session over the connection, sending the message dot-stuffed piece by
//! piece, and closing politely.

use std::net::SocketAddr;
use std::time::Duration;

use kurier_smtp::client::{
    ClientAction, ClientConfig, ClientSession, OutboundTransaction, SessionError, Stage, TlsPolicy,
    TransactionResult,
};
use kurier_smtp::data::DotStuffer;
use kurier_spool::{MessageData, RemoteHost, TlsUsed};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, TlsStream};

use super::{Outbound, QUIT_TIMEOUT, Route};
use crate::config::TlsMode;
use crate::stream::Conn;

impl Outbound {
    /// [`Outbound::connect`], given up when the server starts stopping (`None`): the
    /// connection, greeting, EHLO and TLS may take a whole timeout each, and no message
    /// has been offered yet, so nothing is lost by trying again after the restart.
    pub(super) async fn connect_unless_stopping(
        &self,
        addr: SocketAddr,
        host: &str,
        route: &Route,
    ) -> Option<Result<(Conn, ClientSession), SessionError>> {
        tokio::select! {
            connected = self.connect(addr, host, route) => Some(connected),
            _ = self.stopping.cancelled() => None,
        }
    }

    /// Connects and runs the session up to "ready for MAIL".
    pub(super) async fn connect(
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
    pub(super) async fn transact(
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
pub(super) fn with_tls(mta: &RemoteHost, conn: &Conn, route: &Route) -> RemoteHost {
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
/// positioned reads of one piece: a queue file just written is in the page cache. The end of
/// data goes out with the last piece, in the same write.
async fn send_body(conn: &mut Conn, body: Option<&MessageData>) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::with_capacity(SEND_PIECE + 1024);
    let mut pos = 0u64;
    let len = body.map_or(0, MessageData::len);
    while let Some(data) = body
        && pos < len
    {
        let piece = data.read_at(pos, SEND_PIECE)?;
        if piece.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the queue file ended before the message",
            ));
        }
        pos += piece.len() as u64;
        out.clear();
        stuffer.push(&piece, &mut out);
        if pos < len {
            conn.write_all(&out).await?;
        }
    }
    stuffer.finish(&mut out);
    conn.write_all(&out).await
}

/// QUIT, its reply, then the TLS close_notify and the TCP FIN (RFC 5321 §4.1.1.10; a
/// connection dropped without them is logged as an error by the other side), bounded by
/// [`QUIT_TIMEOUT`].
pub(super) async fn close_politely(mut conn: Conn, mut session: ClientSession) {
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
