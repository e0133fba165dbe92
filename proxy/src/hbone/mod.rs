//! HBONE: TCP tunnelled in HTTP/2 CONNECT streams over mutual TLS, wire-compatible with Istio
//! ambient's ztunnel. The protocol, not the proxy's decisions: [`request`] is what a CONNECT must
//! look like (sans-IO), [`pool`] which connection a stream takes (sans-IO), [`conn`] dials one
//! connection, [`client`] is the pool that opens tunnels, [`H2Stream`] is one stream's bytes.
//! The server side (15008) is [`crate::inbound`]'s.

pub mod client;
mod conn;
mod error;
pub(crate) mod keepalive;
pub mod pool;
pub mod request;
mod stream;
mod tunnel;

pub use client::{HboneClient, PoolKey};
pub use error::HboneError;
pub use stream::H2Stream;
pub use tunnel::Tunnel;

/// The HBONE port on every pod IP.
pub const HBONE_PORT: u16 = nodemesh_net::ports::HBONE;

/// HTTP/2 settings shared by both ends.
pub mod settings {
    /// Per-stream flow-control window.
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// Connection flow-control window.
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Largest frame.
    pub const MAX_FRAME: u32 = 1024 * 1024;
    /// Streams a server allows per connection.
    pub const SERVER_MAX_STREAMS: u32 = 200;
    /// Streams a client opens per connection before it opens another one.
    pub const CLIENT_STREAMS_PER_CONNECTION: usize = 100;
    /// Largest header list.
    pub const MAX_HEADER_LIST: u32 = 64 * 1024;
    /// Idle pooled connections are released after this.
    pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);
    /// Keep-alive PING interval.
    pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
    /// A keep-alive PING unanswered this long closes the connection.
    pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
}

/// Read buffer under TLS on HBONE connections. rustls reads at most 4 KiB per call; without a
/// buffer below it, every 4 KiB of tunnel data costs a `recv` system call.
pub const TLS_READ_BUFFER: usize = 64 * 1024;

/// An HBONE TCP connection with a read buffer under TLS (see [`TLS_READ_BUFFER`]); writes pass
/// straight through.
pub fn buffered(tcp: tokio::net::TcpStream) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}
