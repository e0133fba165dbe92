//! Addresses that cannot be swapped: the client's address and the original destination are
//! different types on every accept path (the model is linkerd's `proxy/transport/src/addrs.rs`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Where a connection comes from: the client pod (the accepted socket's peer, or the address a
/// peer proxy reports in `forwarded` once it is verified).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// Where the client meant to go: under TPROXY the accepted socket's local address (a pod IP or a
/// Service VIP), over HBONE the CONNECT target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

macro_rules! socket_addr_newtype {
    ($name:ident) => {
        impl $name {
            /// The IP address.
            pub fn ip(self) -> IpAddr {
                self.0.ip()
            }

            /// The port.
            pub fn port(self) -> u16 {
                self.0.port()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

socket_addr_newtype!(ClientAddr);
socket_addr_newtype!(OrigDstAddr);
