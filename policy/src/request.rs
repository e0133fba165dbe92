//! What the engine is asked about: a connection (peer, destination) and, at L7, one HTTP request.
//!
//! Everything borrows from the caller so that a decision allocates nothing (except to join a
//! repeated header's values).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;

/// Labels of a workload, looked up by key.
pub trait Labels {
    /// The value of label `key`, if the workload has it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for [(K, V)] {
    fn label(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for Vec<(K, V)> {
    fn label(&self, key: &str) -> Option<&str> {
        self.as_slice().label(key)
    }
}

/// HTTP request headers, looked up by name.
pub trait Headers {
    /// The value of header `name` (given in ASCII lowercase) as policy matches it: the values of
    /// every field with that name joined by `,` in order, as Envoy does (so `x: a` twice is
    /// `a,a`); `None` when absent. Borrows unless the header is repeated.
    fn joined(&self, name: &str) -> Option<Cow<'_, [u8]>>;
}

/// Joins `values` by `,`, borrowing when there is only one.
fn join<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<Cow<'a, [u8]>> {
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut all = Vec::with_capacity(first.len() + second.len() + 1);
    all.extend_from_slice(first);
    for v in std::iter::once(second).chain(values) {
        all.push(b',');
        all.extend_from_slice(v);
    }
    Some(Cow::Owned(all))
}

impl<K: AsRef<str>, V: AsRef<[u8]>> Headers for [(K, V)] {
    fn joined(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        join(
            self.iter()
                .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_ref()),
        )
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> Headers for Vec<(K, V)> {
    fn joined(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        self.as_slice().joined(name)
    }
}

impl Headers for http::HeaderMap {
    fn joined(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        join(self.get_all(name).iter().map(http::HeaderValue::as_bytes))
    }
}

/// The calling side of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    /// The peer's verified identity, with or without `spiffe://`; `None` for plaintext.
    pub principal: Option<&'a str>,
    /// The peer's namespace; when `None` it is taken from the principal.
    pub namespace: Option<&'a str>,
    /// The peer's IP address (`source.ip`, and `remote.ip`, which equals it).
    pub ip: Option<IpAddr>,
}

/// The workload being called.
#[derive(Clone, Copy)]
pub struct Destination<'a> {
    /// Namespace of the destination workload.
    pub namespace: &'a str,
    /// Labels of the destination workload (for policy selectors).
    pub labels: &'a dyn Labels,
    /// The destination IP (`destination.ip`).
    pub ip: Option<IpAddr>,
    /// The destination port (`ports`, `destination.port`).
    pub port: u16,
}

impl std::fmt::Debug for Destination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("namespace", &self.namespace)
            .field("ip", &self.ip)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// One connection: who calls which workload.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The caller.
    pub source: Peer<'a>,
    /// The callee.
    pub destination: Destination<'a>,
}

/// One HTTP request on a connection, as received (the engine normalizes the path).
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method as sent (matched case-insensitively).
    pub method: &'a str,
    /// The raw request-target path (`:path`), query included.
    pub path: &'a str,
    /// `Host` / `:authority`; empty when absent.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a dyn Headers,
}

impl std::fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}
