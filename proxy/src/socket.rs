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

/// Whether `ip` is an address of this host, asked of the kernel's routing (a UDP socket
/// "connected" to a local address gets that address as its own source). A connection to a
/// local address cannot leave from a pod's IP: the reply would be routed to the pod.
pub fn is_local(ip: IpAddr) -> bool {
    let probe = || -> io::Result<bool> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(
            match ip {
                IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                IpAddr::V6(_) => IpAddr::from([0u16; 8]),
            },
            0,
        ))?;
        socket.connect(SocketAddr::new(ip, 9))?;
        Ok(socket.local_addr()?.ip() == ip)
    };
    ip.is_loopback() || probe().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_told_apart() {
        assert!(is_local(IpAddr::from([127, 0, 0, 1])));
        assert!(is_local(IpAddr::from([127, 0, 0, 2])));
        // TEST-NET-1 is never an address of this host.
        assert!(!is_local(IpAddr::from([192, 0, 2, 1])));
    }
}
