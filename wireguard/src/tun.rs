//! The TUN device (tun-rs) as the packet source and sink of the userspace WireGuard device.
//!
//! With TUN offloads (IFF_VNET_HDR, TSO/USO) the kernel hands over up to 64 KiB of TCP or UDP at
//! once, which tun-rs splits into MTU-sized packets: one read for dozens of packets. Where the
//! kernel refuses offloads the device falls back to one packet per read.
//!
//! The other way, decrypted packets go to a writer task ([`Tun::writer`]) that takes whatever has
//! queued up (up to a batch) and hands it to tun-rs, which coalesces the segments of one TCP or
//! UDP flow into one super-packet (GRO): one write and one trip through the kernel's stack for
//! dozens of packets under load, one write per packet when idle (no added latency).

use std::io::{self, IoSlice};
use std::sync::{Arc, OnceLock};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tokio::sync::mpsc;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::error::WireguardError;

/// The tunnel's MTU: 1500 minus the WireGuard, UDP and IPv4 overhead (80 bytes, IPv6-safe).
pub const MTU: u16 = 1420;

/// An open TUN interface; the interface goes away when the last clone is dropped.
pub struct Tun {
    dev: Arc<tun_rs::AsyncDevice>,
    mtu: u16,
    /// Whether every read and write carries a virtio-net header (offloads on).
    offload: bool,
    /// Buffers of the offload read path, made on first use (one per clone).
    scratch: Option<Box<Scratch>>,
}

struct Scratch {
    original: Vec<u8>,
    /// Packets from the device's pool that tun-rs splits into directly (no copy afterwards);
    /// each one handed on is replaced by a fresh one from the pool.
    slots: Vec<Slot>,
    sizes: Vec<usize>,
}

impl Scratch {
    fn new(pool: &PacketBufPool) -> Self {
        Self {
            original: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            slots: (0..IDEAL_BATCH_SIZE).map(|_| Slot(pool.get())).collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }
}

/// A pool packet as a buffer tun-rs can write into.
struct Slot(Packet);

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Clone for Tun {
    /// Another handle on the same interface (its read buffers are its own, made on first use).
    fn clone(&self) -> Self {
        Self {
            dev: Arc::clone(&self.dev),
            mtu: self.mtu,
            offload: self.offload,
            scratch: None,
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

/// Decrypted packets queued for the TUN writer at most; a full queue holds the decrypting side
/// back instead of dropping.
const WRITE_QUEUE: usize = 1024;

/// The capacity of a write buffer: the largest super-packet GRO makes, and the headers.
const WRITE_BUF: usize = 2 * VIRTIO_NET_HDR_LEN + 65535;

/// The sending half of the TUN for the device: packets go to the writer task of
/// [`Tun::writer`].
#[derive(Clone)]
pub struct TunWriter {
    tx: mpsc::Sender<Packet<Ip>>,
    /// The errno that stopped the writer for good (the interface went away).
    failed: Arc<OnceLock<i32>>,
}

impl Tun {
    /// Starts the writer task (on the current tokio runtime) and returns its sending half. The
    /// task ends when every [`TunWriter`] is dropped, or when the interface goes away.
    pub fn writer(&self) -> TunWriter {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let failed = Arc::new(OnceLock::new());
        let writer = BatchWriter::new(Arc::clone(&self.dev), self.offload);
        tokio::spawn(writer.run(rx, Arc::clone(&failed)));
        TunWriter { tx, failed }
    }
}

impl IpSend for TunWriter {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        if self.tx.send(packet).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: report why, so the device stops too (ENODEV: fatal to gotatun).
        let errno = self.failed.get().copied().unwrap_or(nix::libc::ENODEV);
        Err(io::Error::from_raw_os_error(errno))
    }
}

/// Writes batches of packets to the TUN, coalesced with GRO when offloads are on. Its buffers
/// are reused from batch to batch (a buffer that took a coalesced super-packet keeps its size).
struct BatchWriter {
    dev: Arc<tun_rs::AsyncDevice>,
    offload: bool,
    batch: Vec<Packet<Ip>>,
    bufs: Vec<Vec<u8>>,
    gro: GROTable,
}

impl BatchWriter {
    fn new(dev: Arc<tun_rs::AsyncDevice>, offload: bool) -> Self {
        Self {
            dev,
            offload,
            batch: Vec::with_capacity(IDEAL_BATCH_SIZE),
            bufs: Vec::new(),
            gro: GROTable::default(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Packet<Ip>>, failed: Arc<OnceLock<i32>>) {
        while rx.recv_many(&mut self.batch, IDEAL_BATCH_SIZE).await > 0 {
            if let Err(e) = self.write_batch().await {
                match e.raw_os_error() {
                    Some(errno @ (nix::libc::EBADF | nix::libc::EBADFD | nix::libc::ENODEV)) => {
                        tracing::error!("TUN device is gone: {e}");
                        let _ = failed.set(errno);
                        return;
                    }
                    _ => tracing::debug!("TUN write failed: {e}"),
                }
            }
        }
    }

    /// Writes and empties the batch.
    async fn write_batch(&mut self) -> io::Result<()> {
        if !self.offload {
            let mut result = Ok(());
            for packet in self.batch.drain(..) {
                if let Err(e) = self.dev.send(&packet.into_bytes()).await {
                    result = Err(e);
                }
            }
            return result;
        }
        let n = self.batch.len();
        for (i, packet) in self.batch.drain(..).enumerate() {
            if self.bufs.len() <= i {
                // Room for a whole super-packet: tun-rs coalesces only into a buffer that has it
                // (pages are touched only when a packet grows into them).
                self.bufs.push(Vec::with_capacity(WRITE_BUF));
            }
            let buf = &mut self.bufs[i];
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(&packet.into_bytes());
        }
        self.dev
            .send_multiple(&mut self.gro, &mut self.bufs[..n], VIRTIO_NET_HDR_LEN)
            .await
            .map(drop)
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
                let s = self
                    .scratch
                    .get_or_insert_with(|| Box::new(Scratch::new(pool)));
                let n = self
                    .dev
                    .recv_multiple(&mut s.original, &mut s.slots, &mut s.sizes, 0)
                    .await?;
                for (slot, &size) in s.slots.iter_mut().zip(&s.sizes).take(n) {
                    let mut packet = std::mem::replace(&mut slot.0, pool.get());
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
