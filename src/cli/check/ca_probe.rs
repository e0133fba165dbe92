//! The CA seen from this node (I/O): where it is, a TLS handshake with its gRPC port, its
//! `/healthz/ready` with our clock read around it (the skew sample), its `/trust-bundle`, and
//! the node's bundle file; [`super::ca`] and [`super::clock`] judge them.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;

use nodemesh_config::Config;

use super::clock::{self, Clock, ClockSample};
use super::report::Item;
use super::{ca, http, tls};

/// The CA's plain HTTP port.
const CA_HTTP_PORT: u16 = 15014;

/// Where the CA is: its gRPC address as written and resolved, and its HTTP address.
fn ca_addresses(
    ca_http_addr: Option<SocketAddr>,
    config: &Config,
) -> Result<(String, Result<SocketAddr, String>, SocketAddr), String> {
    let ca = config
        .ca()
        .ok_or("the config has no ca: section (address and rootCert)")?;
    let host = ca.address.host().ok_or("ca.address has no host")?;
    let port = ca.address.port_u16().unwrap_or(15012);
    let grpc = format!("{host}:{port}");
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "resolves to nothing".to_owned()))
        .map_err(|e| format!("cannot resolve {grpc} from this node: {e}"));
    let http = match (ca_http_addr, &resolved) {
        (Some(addr), _) => addr,
        (None, Ok(addr)) => SocketAddr::new(addr.ip(), CA_HTTP_PORT),
        (None, Err(e)) => return Err(format!("{e} (or pass --ca-http-addr)")),
    };
    Ok((grpc, resolved, http))
}

/// CA reachable, trust bundle, clock skew; `ca_http_addr` overrides the CA's HTTP address.
pub fn items(ca_http_addr: Option<SocketAddr>, config: &Config, clock: &dyn Clock) -> Vec<Item> {
    let (grpc, resolved, http_addr) = match ca_addresses(ca_http_addr, config) {
        Ok(a) => a,
        Err(why) => {
            let hint = "give the config a ca: section, as the proxy needs";
            return vec![
                Item::fail(ca::REACHABLE, why.clone(), hint),
                Item::fail(ca::BUNDLE, why.clone(), hint),
                clock::evaluate(Err(why)),
            ];
        }
    };
    let (path, local) = match config.ca() {
        Some(ca) => (
            ca.root_cert.clone(),
            std::fs::read_to_string(&ca.root_cert).map_err(|e| e.to_string()),
        ),
        None => (PathBuf::new(), Err("no ca: section".to_owned())),
    };
    let host = config
        .ca()
        .and_then(|ca| ca.address.host())
        .unwrap_or_default();
    let grpc_reach = match (&resolved, &local) {
        (Err(e), _) => Err(tls::Refused::Connect(e.clone())),
        (Ok(_), Err(e)) => Err(tls::Refused::Tls(format!(
            "not tried: the trust bundle {}: {e}",
            path.display()
        ))),
        (Ok(addr), Ok(pem)) => tls::handshake(*addr, host, pem),
    };
    let (ready, sample) = sampled_get(http_addr, "/healthz/ready", clock);
    let facts = ca::CaFacts {
        grpc: (grpc, grpc_reach),
        ready: (http_addr, ready),
        bundle: http::get(http_addr, "/trust-bundle"),
    };
    let mut items = vec![ca::reachable(&facts)];
    items.push(ca::bundle(&path, &local, &facts));
    items.push(clock::evaluate(sample));
    items
}

/// The clock item alone (`--pre`): the CA's clock, when the config names a CA.
pub fn clock_item(ca_http_addr: Option<SocketAddr>, config: &Config, clock: &dyn Clock) -> Item {
    match ca_addresses(ca_http_addr, config) {
        Ok((_, _, http_addr)) => clock::evaluate(sampled_get(http_addr, "/healthz/ready", clock).1),
        Err(why) => clock::evaluate(Err(why)),
    }
}

/// `GET path`, with our clock read around it and the answer's `Date` for a skew sample.
fn sampled_get(
    addr: SocketAddr,
    path: &str,
    clock: &dyn Clock,
) -> (Result<http::Response, String>, Result<ClockSample, String>) {
    let sent = clock.now();
    let answer = http::get(addr, path);
    let received = clock.now();
    let sample = match &answer {
        Err(e) => Err(e.clone()),
        Ok(r) => match r.header("date") {
            None => Err(format!("{addr}{path} sent no Date header")),
            Some(date) => httpdate::parse_http_date(date)
                .map(|ca_date| ClockSample {
                    sent,
                    received,
                    ca_date,
                })
                .map_err(|e| format!("Date {date:?}: {e}")),
        },
    };
    (answer, sample)
}
