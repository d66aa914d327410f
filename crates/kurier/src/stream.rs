//! A TCP connection before or after TLS, for both directions (server sessions and outbound
//! delivery).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// The stream, in plaintext or wrapped in TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client or server side).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Reads what is available.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    /// Writes everything and flushes (TLS buffers records until flushed).
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    /// Closes the write side (sends close_notify for TLS).
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        };
    }

    /// True once TLS is up.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The negotiated TLS, once it is up.
    pub fn tls_info(&self) -> Option<kurier_smtp::TlsInfo> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => Some(match s.as_ref() {
                TlsStream::Client(c) => crate::tls::session_info(c.get_ref().1),
                TlsStream::Server(c) => crate::tls::session_info(c.get_ref().1),
            }),
        }
    }
}
