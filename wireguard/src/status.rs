//! What a device reports about its peers, read from the WireGuard configuration protocol's
//! `get=1` answer (the text `wg show` reads). Pure: no sockets here.

use std::fmt;
use std::time::{Duration, SystemTime};

use nodemesh_config::WireguardPublicKey;

/// One peer of a running device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's public key.
    pub public_key: WireguardPublicKey,
    /// Where its packets go (and last came from).
    pub endpoint: Option<String>,
    /// Its allowed IPs.
    pub allowed_ips: Vec<String>,
    /// When the last handshake completed, if ever.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The device as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The UDP port it listens on.
    pub listen_port: Option<u16>,
    /// Its public key (derived from the private key, which is never kept here).
    pub public_key: Option<WireguardPublicKey>,
    /// Its peers, in the order reported.
    pub peers: Vec<PeerStatus>,
}

fn hex_key(hex: &str) -> Result<WireguardPublicKey, String> {
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(format!("key {hex:?} is not 64 hex digits"));
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("key {hex:?} is not hex"))?;
    }
    Ok(WireguardPublicKey::from_bytes(bytes))
}

impl DeviceStatus {
    /// Parses a `get=1` answer. `public_of` derives the device's public key from its private key
    /// (hex), which is dropped right away.
    pub fn parse(
        text: &str,
        public_of: impl Fn(&WireguardPublicKey) -> WireguardPublicKey,
    ) -> Result<Self, String> {
        let mut status = Self::default();
        let mut secs: Option<u64> = None;
        let mut nanos: u32 = 0;
        let mut errno = None;
        let finish = |peer: &mut PeerStatus, secs: &mut Option<u64>, nanos: &mut u32| {
            if let Some(s) = secs.take().filter(|s| *s > 0 || *nanos > 0) {
                peer.last_handshake = SystemTime::UNIX_EPOCH.checked_add(Duration::new(s, *nanos));
            }
            *nanos = 0;
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}={value:?} is not a number"))
            };
            match key {
                "private_key" => status.public_key = Some(public_of(&hex_key(value)?)),
                "listen_port" => status.listen_port = value.parse().ok(),
                "public_key" => {
                    if let Some(prev) = status.peers.last_mut() {
                        finish(prev, &mut secs, &mut nanos);
                    }
                    status.peers.push(PeerStatus {
                        public_key: hex_key(value)?,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    });
                }
                "errno" => errno = Some(num()?),
                _ => {
                    let Some(peer) = status.peers.last_mut() else {
                        continue;
                    };
                    match key {
                        "endpoint" => peer.endpoint = Some(value.to_owned()),
                        "allowed_ip" => peer.allowed_ips.push(value.to_owned()),
                        "rx_bytes" => peer.rx_bytes = num()?,
                        "tx_bytes" => peer.tx_bytes = num()?,
                        "last_handshake_time_sec" => secs = Some(num()?),
                        "last_handshake_time_nsec" => nanos = u32::try_from(num()?).unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        if let Some(prev) = status.peers.last_mut() {
            finish(prev, &mut secs, &mut nanos);
        }
        match errno {
            Some(0) => Ok(status),
            Some(n) => Err(format!("the device answered errno={n}")),
            None => Err("the answer has no errno line".into()),
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.public_key {
            writeln!(f, "public key: {key}")?;
        }
        if let Some(port) = self.listen_port {
            writeln!(f, "listening port: {port}")?;
        }
        writeln!(f, "peers: {}", self.peers.len())?;
        let now = SystemTime::now();
        for p in &self.peers {
            writeln!(f, "\npeer: {}", p.public_key)?;
            if let Some(e) = &p.endpoint {
                writeln!(f, "  endpoint: {e}")?;
            }
            writeln!(f, "  allowed ips: {}", p.allowed_ips.join(", "))?;
            match p.last_handshake {
                Some(t) => {
                    let ago = now.duration_since(t).unwrap_or_default().as_secs();
                    writeln!(f, "  latest handshake: {ago} s ago")?;
                }
                None => writeln!(f, "  latest handshake: never")?,
            }
            writeln!(
                f,
                "  transfer: {} B received, {} B sent",
                p.rx_bytes, p.tx_bytes
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str =
        "private_key=0101010101010101010101010101010101010101010101010101010101010101
listen_port=51820
public_key=0202020202020202020202020202020202020202020202020202020202020202
endpoint=10.0.0.2:51820
allowed_ip=10.2.0.0/24
last_handshake_time_sec=1700000000
last_handshake_time_nsec=5
rx_bytes=1234
tx_bytes=5678
persistent_keepalive_interval=0
public_key=0303030303030303030303030303030303030303030303030303030303030303
endpoint=10.0.0.3:51820
allowed_ip=10.3.0.0/24
last_handshake_time_sec=0
last_handshake_time_nsec=0
rx_bytes=0
tx_bytes=148
errno=0
";

    #[test]
    fn a_get_answer_is_read() {
        let s = DeviceStatus::parse(ANSWER, |_| WireguardPublicKey::from_bytes([9; 32])).unwrap();
        assert_eq!(s.listen_port, Some(51820));
        assert_eq!(s.public_key, Some(WireguardPublicKey::from_bytes([9; 32])));
        assert_eq!(s.peers.len(), 2);
        let b = &s.peers[0];
        assert_eq!(b.public_key, WireguardPublicKey::from_bytes([2; 32]));
        assert_eq!(b.endpoint.as_deref(), Some("10.0.0.2:51820"));
        assert_eq!(b.allowed_ips, ["10.2.0.0/24"]);
        assert_eq!(
            b.last_handshake,
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(1_700_000_000, 5))
        );
        assert_eq!((b.rx_bytes, b.tx_bytes), (1234, 5678));
        assert_eq!(s.peers[1].last_handshake, None);
        let text = s.to_string();
        assert!(text.contains("latest handshake: never"), "{text}");
        assert!(
            !text.contains("0101"),
            "the private key is never shown: {text}"
        );
    }

    #[test]
    fn errors_are_reported() {
        assert!(
            DeviceStatus::parse("errno=2\n", |k| *k)
                .unwrap_err()
                .contains("errno=2")
        );
        assert!(DeviceStatus::parse("listen_port=1\n", |k| *k).is_err());
        assert!(DeviceStatus::parse("public_key=zz\nerrno=0\n", |k| *k).is_err());
    }
}
