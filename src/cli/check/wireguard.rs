//! WireGuard peers with a recent handshake: the device's status over its control socket
//! (`<state-dir>/wireguard.sock`, WireGuard's configuration protocol) against the other nodes
//! the config lists with a `wireguardPublicKey`. Peers keep alive every 25 s and rekey every
//! two minutes, so a handshake older than three minutes means the peer is not answering.

use std::time::{Duration, SystemTime};

use nodemesh_config::WireguardPublicKey;
use nodemesh_wireguard::DeviceStatus;

use super::report::Item;

/// The item's name.
pub const NAME: &str = "WireGuard peers";
/// A handshake older than this is a warning.
pub const WARN_AGE: Duration = Duration::from_secs(180);
/// A handshake older than this is a failure.
pub const FAIL_AGE: Duration = Duration::from_secs(300);

/// The item. `expected` is every other node and its key; `device` the running device's status.
pub fn evaluate(
    expected: &[(String, WireguardPublicKey)],
    device: &Result<DeviceStatus, String>,
    now: SystemTime,
) -> Item {
    let device = match device {
        Ok(d) => d,
        Err(why) => {
            return Item::fail(
                NAME,
                format!("no device: {why}"),
                "start the proxy with --wireguard (or `nodemesh wireguard up`); pass the proxy's --state-dir",
            );
        }
    };
    let mut never = Vec::new();
    let mut stale = Vec::new();
    let mut old = Vec::new();
    let mut fresh = 0;
    for (node, key) in expected {
        let Some(peer) = device.peers.iter().find(|p| p.public_key == *key) else {
            never.push(format!("{node} (not a peer of the device)"));
            continue;
        };
        match peer
            .last_handshake
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
        {
            None => never.push(format!("{node} (no handshake yet)")),
            Some(age) if age > FAIL_AGE => stale.push(format!("{node} ({}s ago)", age.as_secs())),
            Some(age) if age > WARN_AGE => old.push(format!("{node} ({}s ago)", age.as_secs())),
            Some(_) => fresh += 1,
        }
    }
    let hint = "the peer's node must run nodemesh with --wireguard and reach this node on UDP 51820; \
                compare its key with the config's wireguardPublicKey (`nodemesh wireguard pubkey`)";
    if !never.is_empty() || !stale.is_empty() {
        let detail = never
            .into_iter()
            .chain(stale)
            .chain(old)
            .collect::<Vec<_>>()
            .join(", ");
        return Item::fail(NAME, format!("no recent handshake: {detail}"), hint);
    }
    if !old.is_empty() {
        return Item::warn(
            NAME,
            format!("handshake getting old: {}", old.join(", ")),
            hint,
        );
    }
    Item::ok(
        NAME,
        format!(
            "{fresh} of {} peers handshook within {}s",
            expected.len(),
            WARN_AGE.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use nodemesh_wireguard::PeerStatus;

    use super::*;
    use crate::cli::check::report::Status;

    fn key(n: u8) -> WireguardPublicKey {
        WireguardPublicKey::from_bytes([n; 32])
    }

    fn device(ages: &[(u8, Option<u64>)], now: SystemTime) -> Result<DeviceStatus, String> {
        Ok(DeviceStatus {
            listen_port: Some(51820),
            public_key: Some(key(0)),
            peers: ages
                .iter()
                .map(|(k, age)| PeerStatus {
                    public_key: key(*k),
                    endpoint: None,
                    allowed_ips: vec![],
                    last_handshake: age.map(|a| now - Duration::from_secs(a)),
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        })
    }

    #[test]
    fn fresh_old_stale_and_missing_peers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expected = vec![("node-b".to_owned(), key(1)), ("node-c".to_owned(), key(2))];
        let ok = evaluate(
            &expected,
            &device(&[(1, Some(10)), (2, Some(100))], now),
            now,
        );
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert_eq!(ok.detail, "2 of 2 peers handshook within 180s");
        let old = evaluate(
            &expected,
            &device(&[(1, Some(10)), (2, Some(200))], now),
            now,
        );
        assert_eq!(old.status, Status::Warn, "{old:?}");
        let bad = evaluate(&expected, &device(&[(1, None), (2, Some(400))], now), now);
        assert_eq!(bad.status, Status::Fail);
        assert_eq!(
            bad.detail,
            "no recent handshake: node-b (no handshake yet), node-c (400s ago)"
        );
        let absent = evaluate(&expected, &device(&[(1, Some(1))], now), now);
        assert!(
            absent.detail.contains("node-c (not a peer of the device)"),
            "{absent:?}"
        );
        let down = evaluate(&expected, &Err("connection refused".into()), now);
        assert!(down.hint.unwrap().contains("--wireguard"));
    }
}
