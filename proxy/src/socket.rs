//! Sockets the way the proxy needs them: transparent listeners (TPROXY delivers connections for
//! foreign addresses), marked outgoing sockets (capture skips the proxy's own traffic), and
//! optional source-IP binding.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Binds a listener; with `transparent`, sets `IP_TRANSPARENT` so TPROXY can deliver connections
/// addressed to other IPs (needs CAP_NET_ADMIN).
pub fn listen(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if transparent {
        socket.set_ip_transparent_v4(true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "IP_TRANSPARENT on {addr}: {e} (the proxy needs CAP_NET_ADMIN for capture)"
                ),
            )
        })?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How outgoing connections are made.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Set `SO_MARK` to this value (needs CAP_NET_ADMIN; skipped with a debug log otherwise).
    pub mark: Option<u32>,
}

impl ConnectOptions {
    /// Connects to `addr`, optionally from `source` (bound transparently, for source-IP
    /// preservation).
    pub async fn connect(&self, addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        let raw = socket2::SockRef::from(&socket);
        if let Some(mark) = self.mark
            && let Err(error) = raw.set_mark(mark)
        {
            tracing::debug!(%error, "cannot set SO_MARK (no CAP_NET_ADMIN?)");
        }
        if let Some(ip) = source {
            raw.set_ip_transparent_v4(true)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    }
}
