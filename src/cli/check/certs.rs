//! Certificates present and not near expiry for every local mesh workload, from the proxy's
//! admin `GET /certs` (`[{identity, serial, not_after}]`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::report::Item;

/// The item's name.
pub const NAME: &str = "workload certificates";

/// One certificate the proxy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The SPIFFE ID.
    pub identity: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// Parses the admin's `/certs` JSON.
pub fn parse(body: &str) -> Result<Vec<Held>, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("/certs is not JSON: {e}"))?;
    let list = value.as_array().ok_or("/certs is not a list")?;
    list.iter()
        .map(|c| {
            let identity = c["identity"]
                .as_str()
                .ok_or("a /certs entry has no identity")?;
            let not_after = c["not_after"]
                .as_str()
                .ok_or("a /certs entry has no not_after")?;
            let not_after = humantime::parse_rfc3339(not_after)
                .map_err(|e| format!("not_after {not_after:?}: {e}"))?;
            Ok(Held {
                identity: identity.to_owned(),
                not_after,
            })
        })
        .collect()
}

/// The item: every identity of a local mesh workload (`expected`: identity to the workloads
/// that use it) has a certificate that expires later than `warn_within` from `now`.
pub fn evaluate(
    expected: &BTreeMap<String, Vec<String>>,
    held: &Result<Vec<Held>, String>,
    now: SystemTime,
    warn_within: Duration,
) -> Item {
    let held = match held {
        Ok(h) => h,
        Err(why) => {
            return Item::fail(
                NAME,
                format!("cannot read the proxy's certificates: {why}"),
                "start the proxy; its admin API (--admin-addr) lists them at /certs",
            );
        }
    };
    if expected.is_empty() {
        return Item::ok(NAME, "no mesh workloads on this node");
    }
    let mut missing = Vec::new();
    let mut expired = Vec::new();
    let mut soon = Vec::new();
    let mut earliest: Option<Duration> = None;
    for (identity, workloads) in expected {
        let newest = held
            .iter()
            .filter(|h| &h.identity == identity)
            .map(|h| h.not_after)
            .max();
        let who = format!("{identity} ({})", workloads.join(", "));
        match newest.map(|t| t.duration_since(now)) {
            None => missing.push(who),
            Some(Err(e)) => expired.push(format!("{who}, expired {} ago", round(e.duration()))),
            Some(Ok(left)) => {
                earliest = Some(earliest.map_or(left, |e| e.min(left)));
                if left < warn_within {
                    soon.push(format!("{who}, expires in {}", round(left)));
                }
            }
        }
    }
    let renew = "the proxy renews at half-life from the CA: check the CA items and the proxy's log \
                 (`journalctl`/`kubectl logs`) for refused or failed renewals";
    if !missing.is_empty() || !expired.is_empty() {
        let mut detail = Vec::new();
        if !missing.is_empty() {
            detail.push(format!("none for {}", missing.join("; ")));
        }
        if !expired.is_empty() {
            detail.push(expired.join("; "));
        }
        return Item::fail(NAME, detail.join("; "), renew);
    }
    if !soon.is_empty() {
        return Item::warn(NAME, soon.join("; "), renew);
    }
    let left = earliest.map_or_else(String::new, |e| {
        format!(", the first expires in {}", round(e))
    });
    Item::ok(
        NAME,
        format!("{} identities hold a certificate{left}", expected.len()),
    )
}

/// Whole seconds, for reading.
fn round(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn expected() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            (WEB.to_owned(), vec!["shop/web-1".to_owned()]),
            (DB.to_owned(), vec!["shop/db-1".to_owned()]),
        ])
    }

    fn held(identity: &str, not_after: SystemTime) -> Held {
        Held {
            identity: identity.into(),
            not_after,
        }
    }

    #[test]
    fn parses_the_admin_answer() {
        let body = r#"[{"identity":"spiffe://cluster.local/ns/shop/sa/web","serial":"0a","not_after":"2027-01-01T00:00:00.000Z"}]"#;
        let h = parse(body).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].identity, WEB);
        assert!(parse("{}").is_err());
    }

    #[test]
    fn every_identity_with_time_left_is_ok() {
        let h = Ok(vec![
            held(WEB, now() + 12 * HOUR),
            held(DB, now() + 20 * HOUR),
        ]);
        let item = evaluate(&expected(), &h, now(), HOUR);
        assert_eq!(item.status, Status::Ok, "{item:?}");
        assert_eq!(
            item.detail,
            "2 identities hold a certificate, the first expires in 12h"
        );
    }

    #[test]
    fn missing_and_expired_fail_near_expiry_warns() {
        let h = Ok(vec![held(WEB, now() - Duration::from_secs(90))]);
        let item = evaluate(&expected(), &h, now(), HOUR);
        assert_eq!(item.status, Status::Fail);
        assert_eq!(
            item.detail,
            format!("none for {DB} (shop/db-1); {WEB} (shop/web-1), expired 1m 30s ago")
        );
        assert!(item.hint.unwrap().contains("renews"));
        let h = Ok(vec![
            held(WEB, now() + 12 * HOUR),
            held(DB, now() + HOUR / 2),
        ]);
        let item = evaluate(&expected(), &h, now(), HOUR);
        assert_eq!(item.status, Status::Warn, "{item:?}");
        assert!(item.detail.ends_with("expires in 30m"), "{item:?}");
    }

    #[test]
    fn no_admin_answer_fails() {
        let item = evaluate(&expected(), &Err("connection refused".into()), now(), HOUR);
        assert_eq!(item.status, Status::Fail);
    }
}
