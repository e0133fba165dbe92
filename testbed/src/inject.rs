//! Hand-made TCP segments sent from inside a namespace through a raw socket: what a flow's later
//! segments look like to the node once the proxy socket that owned the flow is gone.

use std::net::{SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::TestbedError;
use crate::netns::Netns;

/// TCP flags ACK and PSH: a data segment of an established flow.
const ACK_PSH: u8 = 0x18;

/// A TCP header (20 bytes, no options) with `payload`, flags ACK|PSH and a correct checksum
/// over the IPv4 pseudo-header of `src` → `dst`.
pub fn tcp_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = Vec::with_capacity(20 + payload.len());
    seg.extend_from_slice(&src.port().to_be_bytes());
    seg.extend_from_slice(&dst.port().to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.push(5 << 4); // data offset: 5 words
    seg.push(ACK_PSH);
    seg.extend_from_slice(&65535u16.to_be_bytes()); // window
    seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    seg.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + seg.len());
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg);
    let sum = checksum(&pseudo);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    seg
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Netns {
    /// Sends one TCP data segment `src` → `dst` carrying `payload` from inside this namespace
    /// (a raw socket: the kernel adds the IPv4 header, no TCP socket of ours is involved).
    pub fn inject_tcp(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), TestbedError> {
        let segment = tcp_segment(src, dst, seq, 1, payload);
        let sent = self.run(move || {
            let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
            socket.send_to(&segment, &SockAddr::from(SocketAddr::V4(dst)))
        })?;
        sent.map(drop).map_err(|source| TestbedError::Netns {
            netns: self.name().to_owned(),
            what: "send a raw TCP segment",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_verifies() {
        let src = "10.200.1.11:40000".parse().unwrap();
        let dst = "10.200.2.11:9000".parse().unwrap();
        let seg = tcp_segment(src, dst, 7, 1, b"odd");
        let mut pseudo = vec![10, 200, 1, 11, 10, 200, 2, 11, 0, 6];
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&seg);
        assert_eq!(checksum(&pseudo), 0, "a correct checksum sums to zero");
        assert_eq!(&seg[20..], b"odd");
        assert_eq!(u16::from_be_bytes([seg[2], seg[3]]), 9000);
    }
}
