//! The TUN device (tun-rs) as the packet source and sink of the userspace WireGuard device.

use std::io;
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};

use crate::error::WireguardError;

/// The tunnel's MTU: 1500 minus the WireGuard, UDP and IPv4 overhead (80 bytes, IPv6-safe).
pub const MTU: u16 = 1420;

/// An open TUN interface; the interface goes away when the last clone is dropped.
#[derive(Clone)]
pub struct Tun {
    dev: Arc<tun_rs::AsyncDevice>,
    mtu: u16,
}

impl Tun {
    /// Creates the TUN interface `name` with the given MTU and brings it up.
    pub fn create(name: &str, mtu: u16) -> Result<Self, WireguardError> {
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .enable(true)
            .build_async()
            .map_err(|source| WireguardError::Tun {
                name: name.to_owned(),
                error: source,
            })?;
        Ok(Self {
            dev: Arc::new(dev),
            mtu,
        })
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.dev.send(&packet.into_bytes()).await?;
        Ok(())
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        loop {
            let mut packet = pool.get();
            let n = self.dev.recv(&mut packet).await?;
            packet.truncate(n);
            // A packet that is not IP (none should come from a TUN) is skipped, not fatal.
            if let Ok(ip) = packet.try_into_ip() {
                return Ok(std::iter::once(ip));
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(self.mtu)
    }
}
