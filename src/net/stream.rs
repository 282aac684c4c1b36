//! One stream type for every transport a session uses: plain TCP, TLS over TCP (either side),
//! and Unix sockets towards the upstream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub enum MaybeTls {
    Plain(TcpStream),
    Unix(UnixStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// TLS protocol version, for logs and audit.
    pub fn tls_version(&self) -> Option<&'static str> {
        let version = match self {
            Self::ServerTls(s) => s.get_ref().1.protocol_version(),
            Self::ClientTls(s) => s.get_ref().1.protocol_version(),
            _ => None,
        };
        version.and_then(|v| v.as_str())
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::ServerTls(_) | Self::ClientTls(_))
    }
}

impl std::fmt::Debug for MaybeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "MaybeTls::Plain",
            Self::Unix(_) => "MaybeTls::Unix",
            Self::ServerTls(_) => "MaybeTls::ServerTls",
            Self::ClientTls(_) => "MaybeTls::ClientTls",
        })
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).$method($($arg),*),
            MaybeTls::Unix(s) => Pin::new(s).$method($($arg),*),
            MaybeTls::ServerTls(s) => Pin::new(s.as_mut()).$method($($arg),*),
            MaybeTls::ClientTls(s) => Pin::new(s.as_mut()).$method($($arg),*),
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
            Self::ServerTls(s) => s.is_write_vectored(),
            Self::ClientTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, poll_shutdown(cx))
    }
}
