//! Sockets: the client listener, TLS configurations and the stream type sessions use.

pub mod http;
pub mod listener;
pub mod stream;
pub mod tls;

pub use stream::MaybeTls;
