//! The WireGuard UDP socket, tuned for throughput: gotatun's socket (batched sendmmsg/recvmmsg,
//! UDP GRO) with receive and send buffers forced past `net.core.rmem_max` when we are root.

use std::io;

use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{setsockopt, sockopt};

/// The socket buffer size asked for (each direction). The default 208 KiB drops packets at
/// gigabit rates.
pub const SOCKET_BUFFER: usize = 7 << 20;

/// A [`UdpTransportFactory`] that binds gotatun's socket, then forces large buffers.
#[derive(Debug, Default)]
pub struct FastUdp {
    inner: UdpSocketFactory,
}

impl FastUdp {
    /// A factory asking for [`SOCKET_BUFFER`] bytes each way.
    pub fn new() -> Self {
        Self {
            inner: UdpSocketFactory {
                recv_buffer_size: Some(SOCKET_BUFFER),
                send_buffer_size: Some(SOCKET_BUFFER),
            },
        }
    }
}

impl UdpTransportFactory for FastUdp {
    type Send = UdpSocket;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let (send, recv) = self.inner.bind(params).await?;
        // SO_*BUFFORCE needs CAP_NET_ADMIN; without it the plain (capped) sizes stay.
        let forced = setsockopt(&send, sockopt::RcvBufForce, &SOCKET_BUFFER)
            .and_then(|()| setsockopt(&send, sockopt::SndBufForce, &SOCKET_BUFFER));
        if let Err(e) = forced {
            tracing::warn!(
                "cannot force the WireGuard socket buffers to {SOCKET_BUFFER} bytes: {e}"
            );
        }
        Ok((send, recv))
    }
}
