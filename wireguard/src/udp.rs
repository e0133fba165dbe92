//! The WireGuard UDP socket, tuned for throughput: gotatun's socket (batched recvmmsg, UDP GRO)
//! with receive and send buffers forced past `net.core.rmem_max` when we are root, sending with
//! UDP GSO: a run of datagrams to one peer leaves in one `sendmsg` with `UDP_SEGMENT`, one trip
//! through the kernel's UDP/IP stack for up to 64 packets (and the peer's GRO takes it whole).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gotatun::packet::Packet;
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, setsockopt, sockopt};
use tokio::io::Interest;

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
    type Send = GsoUdp;
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
        Ok((GsoUdp::new(send), recv))
    }
}

/// Segments in one GSO send at most (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS: usize = 64;
/// Payload of one GSO send at most: what fits one IP packet.
const GSO_BYTES: usize = 65_000;

/// gotatun's socket for sending, with UDP GSO for runs of equal-sized datagrams to one peer (the
/// last of a run may be shorter). Where the kernel or the route refuses GSO, it falls back to
/// gotatun's `sendmmsg` for good.
#[derive(Clone)]
pub struct GsoUdp {
    inner: UdpSocket,
    gso: Arc<AtomicBool>,
}

impl GsoUdp {
    fn new(inner: UdpSocket) -> Self {
        Self {
            inner,
            gso: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Sends `run` (one target, equal sizes but the last) as one GSO datagram train.
    async fn send_run(&self, run: &[(Packet, SocketAddr)], segment: u16) -> io::Result<()> {
        let mut iov = [IoSlice::new(&[]); GSO_SEGMENTS];
        for (slot, (packet, _)) in iov.iter_mut().zip(run) {
            *slot = IoSlice::new(&packet[..]);
        }
        let iov = &iov[..run.len()];
        let target = SockaddrStorage::from(run[0].1);
        let socket = self.inner.socket();
        let fd = socket.as_raw_fd();
        socket
            .async_io(Interest::WRITABLE, || {
                let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
                nix::sys::socket::sendmsg(fd, iov, &cmsg, MsgFlags::MSG_DONTWAIT, Some(&target))
                    .map_err(io::Error::from)
            })
            .await
            .map(drop)
    }
}

impl GsoUdp {
    /// Sends the collected single datagrams with one `sendmmsg`; after an error they are
    /// dropped, not sent late.
    async fn send_singles(&self, buf: &mut GsoBuf) -> io::Result<()> {
        if buf.singles.is_empty() {
            return Ok(());
        }
        let sent = self
            .inner
            .send_many_to(&mut buf.inner, &mut buf.singles)
            .await;
        buf.singles.clear();
        sent
    }
}

/// The length of the GSO run at the start of `packets`: one target, equal sizes, the last may
/// be shorter, within [`GSO_SEGMENTS`] and [`GSO_BYTES`].
fn gso_run(packets: &[(Packet, SocketAddr)]) -> usize {
    let Some((first, target)) = packets.first() else {
        return 0;
    };
    let size = first.len();
    let mut bytes = size;
    let mut n = 1;
    for (packet, to) in &packets[1..] {
        if n == GSO_SEGMENTS
            || to != target
            || packet.len() > size
            || bytes + packet.len() > GSO_BYTES
        {
            break;
        }
        n += 1;
        bytes += packet.len();
        if packet.len() < size {
            break;
        }
    }
    n
}

/// [`GsoUdp`]'s reused buffers: gotatun's, and the datagrams that form no run (sent together
/// with one `sendmmsg`).
#[derive(Default)]
pub struct GsoBuf {
    inner: <UdpSocket as UdpSend>::SendManyBuf,
    singles: Vec<(Packet, SocketAddr)>,
}

impl UdpSend for GsoUdp {
    type SendManyBuf = GsoBuf;

    async fn send_to(&self, packet: Packet, target: SocketAddr) -> io::Result<()> {
        self.inner.send_to(packet, target).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.inner.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut GsoBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        while !packets.is_empty() {
            let gso = self.gso.load(Ordering::Relaxed);
            let n = if gso { gso_run(packets) } else { packets.len() };
            if n == 1 || !gso {
                buf.singles.extend(packets.drain(..n));
                continue;
            }
            // Earlier datagrams first: a peer's packets stay in order.
            self.send_singles(buf).await?;
            let segment = u16::try_from(packets[0].0.len()).unwrap_or(u16::MAX);
            match self.send_run(&packets[..n], segment).await {
                Ok(()) => drop(packets.drain(..n)),
                // No GSO on this kernel or egress device: sendmmsg from now on.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EIO | nix::libc::EINVAL | nix::libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::warn!("UDP GSO refused ({e}); sending datagram by datagram");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.send_singles(buf).await
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.inner)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.inner.set_fwmark(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(sizes: &[(usize, u16)]) -> Vec<(Packet, SocketAddr)> {
        sizes
            .iter()
            .map(|&(size, port)| {
                let packet = Packet::copy_from(&vec![0u8; size][..]);
                (packet, SocketAddr::from(([10, 0, 0, 1], port)))
            })
            .collect()
    }

    #[test]
    fn a_run_is_one_target_and_one_size_with_a_shorter_last() {
        let p = packets(&[(1452, 1), (1452, 1), (1452, 1), (600, 1), (1452, 1)]);
        assert_eq!(gso_run(&p), 4, "the shorter packet ends the run, included");
        let p = packets(&[(1452, 1), (1452, 2), (1452, 2)]);
        assert_eq!(gso_run(&p), 1, "another peer ends the run");
        let p = packets(&[(600, 1), (1452, 1)]);
        assert_eq!(gso_run(&p), 1, "a larger packet never follows");
        assert_eq!(gso_run(&[]), 0);
    }

    #[test]
    fn a_run_stays_within_the_kernel_limits() {
        let p = packets(&vec![(100, 1); 100]);
        assert_eq!(gso_run(&p), GSO_SEGMENTS);
        let p = packets(&vec![(1452, 1); 100]);
        assert_eq!(gso_run(&p), GSO_BYTES / 1452);
    }
}
