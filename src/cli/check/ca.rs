//! The CA: reachable (a TLS handshake with its gRPC port verifies as a proxy's would, its HTTP
//! `/healthz/ready` answers 200), and the node's trust bundle consistent with the CA's
//! `/trust-bundle` (the same roots).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use nodemesh_identity::TrustBundle;

use super::http::Response;
use super::report::Item;
use super::tls::Refused;

/// The reachability item's name.
pub const REACHABLE: &str = "CA reachable";
/// The trust bundle item's name.
pub const BUNDLE: &str = "trust bundle matches the CA";

/// What was seen of the CA.
#[derive(Debug, Clone)]
pub struct CaFacts {
    /// The gRPC address (15012) and whether a TLS handshake with it verified, as a proxy's.
    pub grpc: (String, Result<(), Refused>),
    /// The HTTP address (15014) and its `/healthz/ready` answer.
    pub ready: (SocketAddr, Result<Response, String>),
    /// Its `/trust-bundle` answer.
    pub bundle: Result<Response, String>,
}

/// The reachability item.
pub fn reachable(facts: &CaFacts) -> Item {
    let (grpc_addr, grpc) = &facts.grpc;
    let (http_addr, ready) = &facts.ready;
    let hint = "start the CA (`nodemesh ca serve`) or make its ports 15012 and 15014 reachable from \
                this node; the address is the config's ca.address";
    match (grpc, ready) {
        (Ok(()), Ok(r)) if r.status == 200 => Item::ok(
            REACHABLE,
            format!(
                "gRPC {grpc_addr}: TLS verified with the trust bundle; {http_addr}/healthz/ready: 200"
            ),
        ),
        (Err(Refused::Connect(e)), _) => {
            Item::fail(REACHABLE, format!("gRPC {grpc_addr}: {e}"), hint)
        }
        (Err(Refused::Tls(e)), _) => Item::fail(
            REACHABLE,
            format!("gRPC {grpc_addr}: TLS: {e}"),
            "proxies cannot verify the CA either: its serving certificate must chain to a root of \
             this node's trust bundle (see the trust bundle item) and name the host of ca.address \
             (`nodemesh ca serve --serving-names`)",
        ),
        (Ok(()), Ok(r)) => Item::fail(
            REACHABLE,
            format!("{http_addr}/healthz/ready: {}", r.status),
            "the CA is up but not ready: see its log",
        ),
        (Ok(()), Err(e)) => Item::fail(REACHABLE, format!("HTTP: {e}"), hint),
    }
}

/// The trust bundle item: `local` is the node's bundle file (`path`) as read.
pub fn bundle(path: &Path, local: &Result<String, String>, facts: &CaFacts) -> Item {
    let roots = |pem: &str| -> Result<BTreeSet<Vec<u8>>, String> {
        let b = TrustBundle::from_pem(pem).map_err(|e| e.to_string())?;
        Ok(b.roots().iter().map(|r| r.as_ref().to_vec()).collect())
    };
    let local = match local.as_deref().map_err(Clone::clone).and_then(roots) {
        Ok(r) => r,
        Err(why) => {
            return Item::fail(
                BUNDLE,
                format!("{}: {why}", path.display()),
                "write the CA's bundle there: `curl http://<ca>:15014/trust-bundle` (or the ConfigMap nodemesh-trust-bundle)",
            );
        }
    };
    let ca = match &facts.bundle {
        Ok(r) if r.status == 200 => roots(&r.body),
        Ok(r) => Err(format!("/trust-bundle: {}", r.status)),
        Err(e) => Err(e.clone()),
    };
    let ca = match ca {
        Ok(r) => r,
        Err(why) => {
            return Item::fail(
                BUNDLE,
                format!("not compared: the CA's bundle: {why}"),
                "see the CA reachable item",
            );
        }
    };
    let unknown_to_us = ca.difference(&local).count();
    let only_ours = local.difference(&ca).count();
    let detail = format!(
        "{}: {} roots; the CA has {} ({unknown_to_us} not in the file, {only_ours} only in the file)",
        path.display(),
        local.len(),
        ca.len()
    );
    if unknown_to_us > 0 {
        Item::fail(
            BUNDLE,
            detail,
            "the CA signs with a root this node does not trust (a rotation, or another CA): \
             update the file from the CA's /trust-bundle",
        )
    } else if only_ours > 0 {
        Item::warn(
            BUNDLE,
            detail,
            "the file trusts roots the CA dropped: update it from the CA's /trust-bundle once \
             no certificate of the old root is in use",
        )
    } else {
        Item::ok(
            BUNDLE,
            format!("{}: the CA's {} root(s)", path.display(), ca.len()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    /// A new self-signed root, as PEM.
    fn root() -> String {
        nodemesh_test_support::TestCa::new("test root")
            .bundle()
            .to_pem()
    }

    fn ok(body: &str) -> Result<Response, String> {
        Ok(Response {
            status: 200,
            headers: vec![],
            body: body.to_owned(),
        })
    }

    fn facts(bundle: Result<Response, String>) -> CaFacts {
        CaFacts {
            grpc: ("10.0.0.1:15012".into(), Ok(())),
            ready: ("10.0.0.1:15014".parse().unwrap(), ok("ready\n")),
            bundle,
        }
    }

    #[test]
    fn reachable_needs_both_ports() {
        assert_eq!(reachable(&facts(ok(""))).status, Status::Ok);
        let mut f = facts(ok(""));
        f.grpc.1 = Err(Refused::Connect("connection refused".into()));
        let item = reachable(&f);
        assert_eq!(item.status, Status::Fail);
        assert!(item.detail.contains("connection refused"));
        assert!(item.hint.unwrap().contains("nodemesh ca serve"));
        f.grpc.1 = Err(Refused::Tls(
            "invalid peer certificate: UnknownIssuer".into(),
        ));
        let item = reachable(&f);
        assert_eq!(
            item.detail,
            "gRPC 10.0.0.1:15012: TLS: invalid peer certificate: UnknownIssuer"
        );
        assert!(item.hint.unwrap().contains("--serving-names"));
    }

    #[test]
    fn the_same_roots_match_other_roots_fail_extra_roots_warn() {
        let (a, b) = (root(), root());
        let path = Path::new("/etc/nodemesh/trust-bundle.pem");
        assert_eq!(
            bundle(path, &Ok(a.clone()), &facts(ok(&a))).status,
            Status::Ok
        );
        let other = bundle(path, &Ok(a.clone()), &facts(ok(&b)));
        assert_eq!(other.status, Status::Fail, "{other:?}");
        assert!(other.detail.contains("1 not in the file"), "{other:?}");
        let extra = bundle(path, &Ok(format!("{a}{b}")), &facts(ok(&a)));
        assert_eq!(extra.status, Status::Warn, "{extra:?}");
        let unread = bundle(path, &Err("No such file".into()), &facts(ok(&a)));
        assert_eq!(unread.status, Status::Fail);
    }
}
