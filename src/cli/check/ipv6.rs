//! The IPv6 stance: what this node does with its mesh pods' IPv6 traffic. nodemesh captures
//! and encrypts IPv4 only; on a host with IPv6 the guard drops (and counts) IPv6 forwarded to
//! or from a mesh pod, so nothing leaves in plaintext beside the mesh.

use nodemesh_redirect::Status;

use super::report::Item;

/// The item's name.
pub const NAME: &str = "IPv6 stance";

/// The item, from the capture status and the number of mesh pods with an IPv6 address.
/// `dropped` is the guard's counter, when it could be read.
pub fn evaluate(status: &Result<Status, String>, pods6: usize, dropped: Option<u64>) -> Item {
    let Ok(status) = status else {
        return Item::warn(
            NAME,
            "unknown: the capture rules could not be read",
            "see the capture item",
        );
    };
    let (Some(set), Some(guard)) = (&status.ipv6_pod_set, &status.ipv6_forward) else {
        return Item::ok(
            NAME,
            "this node has no IPv6: mesh pods talk IPv4 only (captured, mTLS)",
        );
    };
    if set.in_sync() && guard.in_sync() {
        let counted = dropped.map_or_else(String::new, |n| format!("; {n} packets dropped so far"));
        let which = match pods6 {
            0 => "mesh pods (none here has an IPv6 address)".to_owned(),
            n => format!("the {n} mesh pods with an IPv6 address"),
        };
        return Item::ok(
            NAME,
            format!(
                "IPv4 captured (mTLS); IPv6 forwarded to or from {which} is dropped by the guard{counted}"
            ),
        );
    }
    Item::fail(
        NAME,
        format!(
            "the IPv6 guard is not in place ({}, {}): mesh pods' IPv6 would pass in plaintext",
            set.name, guard.name
        ),
        "reinstall the capture rules (see the capture item); they include the IPv6 guard",
    )
}

#[cfg(test)]
mod tests {
    use nodemesh_redirect::ItemState;

    use super::*;
    use crate::cli::check::capture::tests::in_sync;
    use crate::cli::check::report::Status as Outcome;

    #[test]
    fn no_ipv6_on_the_host_is_ok() {
        let item = evaluate(&Ok(in_sync(false)), 0, None);
        assert_eq!(item.status, Outcome::Ok);
        assert!(item.detail.contains("no IPv6"), "{item:?}");
    }

    #[test]
    fn the_guard_in_place_is_ok_and_counts() {
        let item = evaluate(&Ok(in_sync(true)), 2, Some(7));
        assert_eq!(item.status, Outcome::Ok);
        assert!(item.detail.contains("2 mesh pods"), "{item:?}");
        assert!(
            item.detail.ends_with("7 packets dropped so far"),
            "{item:?}"
        );
    }

    #[test]
    fn a_missing_guard_fails() {
        let mut st = in_sync(true);
        if let Some(g) = st.ipv6_forward.as_mut() {
            g.state = ItemState::Missing;
        }
        let item = evaluate(&Ok(st), 1, None);
        assert_eq!(item.status, Outcome::Fail);
        assert!(item.detail.contains("plaintext"), "{item:?}");
    }
}
