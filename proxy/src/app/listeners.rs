//! The proxy's listening sockets: bound afresh, or inherited from the process this one takes
//! over from (the upgrade handoff).

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::TcpListener;

use super::{Listening, ProxyOptions, StartError};
use crate::bounds::Listener;
use crate::socket;

/// Listening sockets received from the process this one takes over from (the upgrade
/// handoff). The proxy accepts on them only once every local workload's certificate is
/// loaded: until then the running process keeps accepting on the same sockets.
#[derive(Debug)]
pub struct InheritedListeners {
    /// Outbound capture.
    pub outbound: StdTcpListener,
    /// HBONE.
    pub hbone: Vec<StdTcpListener>,
    /// Inbound plaintext.
    pub plaintext: Vec<StdTcpListener>,
}

/// The bound listeners, before any connection is accepted.
pub(super) struct Listeners {
    pub(super) outbound: TcpListener,
    pub(super) hbone: Vec<TcpListener>,
    pub(super) plaintext: Vec<TcpListener>,
}

impl Listeners {
    pub(super) fn inherit(inherited: InheritedListeners) -> Result<Self, StartError> {
        let adopt = |l: StdTcpListener| {
            let error = |source| StartError::Bind {
                addr: l
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
                source,
            };
            l.set_nonblocking(true).map_err(error)?;
            TcpListener::from_std(l).map_err(|source| StartError::Bind {
                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                source,
            })
        };
        let all =
            |ls: Vec<StdTcpListener>| ls.into_iter().map(adopt).collect::<Result<Vec<_>, _>>();
        Ok(Self {
            outbound: adopt(inherited.outbound)?,
            hbone: all(inherited.hbone)?,
            plaintext: all(inherited.plaintext)?,
        })
    }

    /// Copies of every socket, with its side and address.
    pub(super) fn dup(&self) -> Result<Vec<(Listener, SocketAddr, OwnedFd)>, StartError> {
        let one = |side, l: &TcpListener| {
            let addr = l.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                source,
            })?;
            let fd = l
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| StartError::Bind { addr, source })?;
            Ok((side, addr, fd))
        };
        std::iter::once(one(Listener::Outbound, &self.outbound))
            .chain(self.hbone.iter().map(|l| one(Listener::Hbone, l)))
            .chain(self.plaintext.iter().map(|l| one(Listener::Plaintext, l)))
            .collect()
    }

    pub(super) fn bind(opts: &ProxyOptions) -> Result<Self, StartError> {
        let bind = |addr: SocketAddr| {
            socket::listen(addr, opts.transparent)
                .map_err(|source| StartError::Bind { addr, source })
        };
        let all = |addr: SocketAddr| {
            opts.listen_addrs(addr)
                .into_iter()
                .map(bind)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            outbound: bind(opts.outbound_addr)?,
            hbone: all(opts.inbound_addr)?,
            plaintext: all(opts.inbound_plaintext_addr)?,
        })
    }

    pub(super) fn addresses(&self) -> Result<Listening, StartError> {
        let local = |l: &TcpListener| {
            l.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                source,
            })
        };
        Ok(Listening {
            outbound: local(&self.outbound)?,
            inbound: self.hbone.iter().map(local).collect::<Result<_, _>>()?,
            inbound_plaintext: self.plaintext.iter().map(local).collect::<Result<_, _>>()?,
        })
    }
}
