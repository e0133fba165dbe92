//! The TUN device (tun-rs) as the packet source and sink of the userspace WireGuard device.
//!
//! With TUN offloads (IFF_VNET_HDR, TSO/USO) the kernel hands over up to 64 KiB of TCP or UDP at
//! once, which tun-rs splits into MTU-sized packets: one read for dozens of packets. Where the
//! kernel refuses offloads the device falls back to one packet per read.

use std::io::{self, IoSlice};
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::error::WireguardError;

/// The tunnel's MTU: 1500 minus the WireGuard, UDP and IPv4 overhead (80 bytes, IPv6-safe).
pub const MTU: u16 = 1420;

/// An open TUN interface; the interface goes away when the last clone is dropped.
#[derive(Clone)]
pub struct Tun {
    dev: Arc<tun_rs::AsyncDevice>,
    mtu: u16,
    /// Whether every read and write carries a virtio-net header (offloads on).
    offload: bool,
    /// Buffers of the offload read path, made on first use (one per clone).
    scratch: Option<Box<Scratch>>,
}

#[derive(Clone)]
struct Scratch {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl Scratch {
    fn new(mtu: u16) -> Self {
        Self {
            original: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            bufs: vec![vec![0; usize::from(mtu) + 80]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }
}

impl Tun {
    /// Creates the TUN interface `name` with the given MTU and brings it up, with offloads when
    /// the kernel has them.
    pub fn create(name: &str, mtu: u16) -> Result<Self, WireguardError> {
        let build = |offload| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .offload(offload)
                .enable(true)
                .build_async()
        };
        let (dev, offload) = match build(true) {
            Ok(dev) => (dev, true),
            Err(e) => {
                tracing::warn!("TUN offloads unavailable ({e}): one packet per read");
                let dev = build(false).map_err(|error| WireguardError::Tun {
                    name: name.to_owned(),
                    error,
                })?;
                (dev, false)
            }
        };
        Ok(Self {
            dev: Arc::new(dev),
            mtu,
            offload,
            scratch: None,
        })
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let bytes = packet.into_bytes();
        if self.offload {
            // A zero header: a complete packet, no segmentation, checksums done.
            let header = [0u8; VIRTIO_NET_HDR_LEN];
            self.dev
                .send_vectored(&[IoSlice::new(&header), IoSlice::new(&bytes)])
                .await?;
        } else {
            self.dev.send(&bytes).await?;
        }
        Ok(())
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        loop {
            let mut packets = Vec::new();
            if self.offload {
                let mtu = self.mtu;
                let s = self
                    .scratch
                    .get_or_insert_with(|| Box::new(Scratch::new(mtu)));
                let n = self
                    .dev
                    .recv_multiple(&mut s.original, &mut s.bufs, &mut s.sizes, 0)
                    .await?;
                for (buf, &size) in s.bufs.iter().zip(&s.sizes).take(n) {
                    let mut packet = pool.get();
                    let (Some(dst), Some(src)) = (packet.get_mut(..size), buf.get(..size)) else {
                        continue;
                    };
                    dst.copy_from_slice(src);
                    packet.truncate(size);
                    packets.extend(packet.try_into_ip().ok());
                }
            } else {
                let mut packet = pool.get();
                let n = self.dev.recv(&mut packet).await?;
                packet.truncate(n);
                packets.extend(packet.try_into_ip().ok());
            }
            // Packets that are not IP (none should come from a TUN) are skipped, not fatal.
            if !packets.is_empty() {
                return Ok(packets.into_iter());
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(self.mtu)
    }
}
