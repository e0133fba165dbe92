//! [`PacketCapture`]: what actually crossed the wire. An `AF_PACKET` socket in the underlay's
//! namespace records every frame on every port of its bridge, so the tests can check that a
//! plaintext marker never appears and which protocols and ports carried the traffic.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::netns::{Netns, NetnsTask};

/// `htons(ETH_P_ALL)`: every protocol.
const ETH_P_ALL_BE: i32 = 0x0300;
/// Largest frame kept (GSO frames on veth reach 64 KiB).
const SNAPLEN: usize = 1 << 17;
/// At most this many bytes are kept; later frames are counted, not stored.
const MAX_BYTES: usize = 256 << 20;

/// A running capture.
#[derive(Debug)]
pub struct PacketCapture {
    stop: Arc<AtomicBool>,
    task: NetnsTask<std::io::Result<Captured>>,
}

impl PacketCapture {
    /// Starts capturing every frame seen in `ns`; returns once the socket is open.
    pub fn start(ns: &Netns) -> Result<Self, TestbedError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let task = ns.spawn(move || {
            let socket = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(ETH_P_ALL_BE)),
            )
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = opened_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            record(&socket, &flag)
        })?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Self { stop, task }),
            Ok(Err(e)) => Err(TestbedError::Netns {
                netns: ns.name().to_owned(),
                what: "open an AF_PACKET socket",
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(TestbedError::Netns {
                netns: ns.name().to_owned(),
                what: "capture",
                source: std::io::Error::other("capture thread ended early"),
            }),
        }
    }

    /// Stops the capture and returns what it saw.
    pub fn finish(self) -> Result<Captured, TestbedError> {
        // Frames still queued in the socket are read before the loop sees the flag.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.task.join()?.map_err(|source| TestbedError::Netns {
            netns: "underlay".into(),
            what: "capture",
            source,
        })
    }
}

fn record(mut socket: &Socket, stop: &AtomicBool) -> std::io::Result<Captured> {
    let mut captured = Captured::default();
    let mut buf = vec![0u8; SNAPLEN];
    while !stop.load(Ordering::Relaxed) {
        match socket.read(&mut buf) {
            // The namespace's own loopback traffic (the underlay's hosts probing themselves)
            // crossed no link: skipped.
            Ok(n) if parse(&buf[..n]).is_some_and(|f| f.src == f.dst) => {}
            Ok(n) => captured.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(captured)
}

/// The frames a capture saw.
#[derive(Debug, Default)]
pub struct Captured {
    frames: Vec<Vec<u8>>,
    bytes: usize,
    dropped: usize,
}

/// Transport of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// TCP with source and destination ports.
    Tcp(u16, u16),
    /// UDP with source and destination ports.
    Udp(u16, u16),
    /// ICMP.
    Icmp,
    /// Another IP protocol number.
    Other(u8),
}

/// The headers of one IPv4 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport and ports.
    pub transport: Transport,
}

impl Captured {
    fn push(&mut self, frame: &[u8]) {
        if self.bytes + frame.len() > MAX_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += frame.len();
        self.frames.push(frame.to_vec());
    }

    /// How many frames were kept.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether the kept frames are all that passed (none was counted only).
    pub fn complete(&self) -> bool {
        self.dropped == 0
    }

    /// Whether any kept frame, IPv4 or not, contains `needle` anywhere.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.frames
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
    }

    /// The IPv4 frames whose bytes contain `needle` anywhere (headers or payload).
    pub fn containing(&self, needle: &[u8]) -> Vec<FrameInfo> {
        self.frames
            .iter()
            .filter(|f| f.windows(needle.len()).any(|w| w == needle))
            .filter_map(|f| parse(f))
            .collect()
    }

    /// The headers of every IPv4 frame.
    pub fn ipv4(&self) -> impl Iterator<Item = FrameInfo> + '_ {
        self.frames.iter().filter_map(|f| parse(f))
    }

    /// Frame counts per transport, for the IPv4 frames between `a` and `b` (either way).
    pub fn between(&self, a: Ipv4Addr, b: Ipv4Addr) -> BTreeMap<Transport, usize> {
        let mut counts = BTreeMap::new();
        for f in self.ipv4() {
            if (f.src == a && f.dst == b) || (f.src == b && f.dst == a) {
                *counts.entry(f.transport).or_default() += 1;
            }
        }
        counts
    }
}

/// Parses an Ethernet frame carrying IPv4.
pub fn parse(frame: &[u8]) -> Option<FrameInfo> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = *ip.get(9)?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let ports = || -> Option<(u16, u16)> {
        let p = ip.get(ihl..ihl + 4)?;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    };
    let transport = match proto {
        6 => ports().map(|(s, d)| Transport::Tcp(s, d))?,
        17 => ports().map(|(s, d)| Transport::Udp(s, d))?,
        1 => Transport::Icmp,
        other => Transport::Other(other),
    };
    Some(FrameInfo {
        src: addr(12)?,
        dst: addr(16)?,
        transport,
    })
}

impl Testbed {
    /// Starts capturing on the underlay (every frame between nodes).
    pub fn capture_underlay(&self) -> Result<PacketCapture, TestbedError> {
        PacketCapture::start(self.underlay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_over_ipv4() {
        let mut frame = vec![0u8; 14 + 20 + 20];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[14 + 9] = 6;
        frame[14 + 12..14 + 16].copy_from_slice(&[10, 200, 1, 11]);
        frame[14 + 16..14 + 20].copy_from_slice(&[10, 200, 2, 11]);
        frame[34..36].copy_from_slice(&40000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&15008u16.to_be_bytes());
        let info = parse(&frame).unwrap();
        assert_eq!(info.transport, Transport::Tcp(40000, 15008));
        assert_eq!(info.dst, Ipv4Addr::new(10, 200, 2, 11));
        assert!(parse(&frame[..20]).is_none());
    }
}
