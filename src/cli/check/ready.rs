//! Proxy ready: the proxy's `GET /healthz/ready` on its readiness port.

use std::net::SocketAddr;

use super::http::Response;
use super::report::Item;

/// The item's name.
pub const NAME: &str = "proxy ready";

/// The item from the readiness answer (or why there is none).
pub fn evaluate(addr: SocketAddr, answer: &Result<Response, String>) -> Item {
    match answer {
        Ok(r) if r.status == 200 => Item::ok(NAME, format!("{addr}/healthz/ready: 200")),
        Ok(r) => Item::fail(
            NAME,
            format!("{addr}/healthz/ready: {} {}", r.status, r.body.trim()),
            "the proxy is up but not ready: it waits for its state and its workloads' certificates \
             (see the CA and certificate items, and the proxy's log)",
        ),
        Err(why) => Item::fail(
            NAME,
            format!("not reachable: {why}"),
            "start the proxy (`nodemesh proxy`), or pass its --readiness-addr",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    fn answer(status: u16) -> Result<Response, String> {
        Ok(Response {
            status,
            headers: vec![],
            body: "not ready\n".into(),
        })
    }

    #[test]
    fn ready_not_ready_and_down() {
        let addr: SocketAddr = "127.0.0.1:15021".parse().unwrap();
        assert_eq!(evaluate(addr, &answer(200)).status, Status::Ok);
        let not_ready = evaluate(addr, &answer(503));
        assert_eq!(not_ready.status, Status::Fail);
        assert!(not_ready.detail.ends_with("503 not ready"), "{not_ready:?}");
        let down = evaluate(addr, &Err("connection refused".into()));
        assert!(down.hint.unwrap().contains("start the proxy"));
    }
}
