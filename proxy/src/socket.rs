//! Sockets the way the proxy needs them: transparent listeners (TPROXY delivers connections for
//! foreign addresses), marked outgoing sockets (capture skips the proxy's own traffic), and
//! optional source-IP binding.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Set `SO_MARK` to this value (needs CAP_NET_ADMIN; skipped with a debug log otherwise).
    pub mark: Option<u32>,
    /// How long a TCP connect may take before it fails with [`io::ErrorKind::TimedOut`]:
    /// without it a peer that drops SYNs holds the caller for the kernel's two minutes of
    /// retries.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            mark: None,
            timeout: nodemesh_net::timeouts::CONNECT,
        }
    }
}

/// Whether `error` is a connect that ran out of time (refused as `connect_timeout`, not
/// `upstream_connect`).
pub fn is_timeout(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::TimedOut
}

/// Closes `stream` with a TCP RST instead of a FIN (`SO_LINGER` 0), so a refused client fails at
/// once rather than reading an orderly end it could take for an empty answer.
pub fn reset(stream: TcpStream) {
    if let Err(error) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%error, "cannot set SO_LINGER 0; closing with FIN");
    }
    drop(stream);
}

impl ConnectOptions {
    /// Connects to `addr`, optionally from `source` (bound transparently, for source-IP
    /// preservation), within [`ConnectOptions::timeout`].
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
            // The port is chosen here, at random, on purpose: left to connect
            // (`IP_BIND_ADDRESS_NO_PORT`), it follows the same hash sequence as the pod's own
            // connect to that destination and collides with the captured flow's conntrack entry
            // (`e2e_node::pod_source_binds_do_not_collide_in_conntrack`).
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        match tokio::time::timeout(self.timeout, socket.connect(addr)).await {
            Ok(connected) => connected,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {:?}", self.timeout),
            )),
        }
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
