//! What the L7 server needs to know about a tunnel, and what it reports per request.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_identity::SpiffeId;
use nodemesh_policy::{
    Connection, Destination, HttpRequest, PathOptions, Peer, PolicySet, Reason, Verdict,
};
use nodemesh_state::{MeshState, MeshStore};

use super::sniff::HttpProtocol;
use crate::observe::ResponseFlags;

/// The destination workload of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Destination {
    /// Namespace of the destination pod.
    pub namespace: String,
    /// Labels of the destination pod (for policy selectors).
    pub labels: BTreeMap<String, String>,
    /// The destination pod's IP.
    pub ip: IpAddr,
    /// The destination port on the pod.
    pub port: u16,
}

/// The calling side of a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Source {
    /// The peer's verified SPIFFE ID; `None` for plaintext (permissive) traffic.
    pub principal: Option<SpiffeId>,
    /// The client pod's IP.
    pub ip: IpAddr,
}

/// Abuse limits and timeouts of one L7 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L7Limits {
    /// How long the client may stay silent before the stream is taken for a server-first,
    /// non-HTTP protocol.
    pub sniff_timeout: Duration,
    /// HTTP/1: time allowed to receive a request head. Hyper starts this timer as soon as the
    /// connection goes idle, so it also bounds how long an idle keep-alive connection lives.
    pub header_read_timeout: Duration,
    /// Request head (HTTP/1) or header list (h2) size limit, in bytes.
    pub max_header_bytes: usize,
    /// A connection with no request in flight for this long is closed (h2: GOAWAY).
    pub idle_timeout: Duration,
    /// h2: concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// How long the pod may take to send a response's head; past it the client gets 504 with
    /// response flag `UT`.
    pub upstream_timeout: Duration,
    /// Longest pause the client may make inside a request body; past it the request is
    /// abandoned (408, response flag `SI`, when no response was sent yet).
    pub body_timeout: Duration,
}

impl Default for L7Limits {
    fn default() -> Self {
        Self {
            sniff_timeout: Duration::from_millis(200),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 200,
            upstream_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// One HTTP request as the proxy saw it: what metrics and flow-log lines are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP/1 or h2c.
    pub protocol: HttpProtocol,
    /// The method as sent.
    pub method: String,
    /// The request target as sent (query included), before normalization.
    pub path: String,
    /// `Host` / `:authority`; empty when absent.
    pub authority: String,
    /// The status answered downstream (the pod's, or the proxy's own 400/403/502/503); 0 when
    /// the client left before any answer.
    pub status: u16,
    /// The policy verdict.
    pub verdict: Verdict,
    /// The deciding policy, `namespace/name`, when one decided.
    pub policy: Option<String>,
    /// Why: a policy reason code (`allow_matched`, `no_allow_matched`, `invalid_path`, ...) or
    /// `bad_request` when the request was refused before policy.
    pub reason: &'static str,
    /// Envoy's response flags: `-`, `UF` (upstream connect failure), `UC` (upstream
    /// connection failed mid-request), `UPE` (the pod switched protocols unasked), `DC` (the
    /// client left before the response ended).
    pub response_flags: ResponseFlags,
    /// From the request head to the end of the response body (or its abandonment).
    pub duration: Duration,
}

/// Where a tunnel's decisions take their policies (and the destination's labels) from.
#[derive(Clone)]
pub enum PolicySource {
    /// One set, fixed when the tunnel opened; the destination as given.
    Fixed(Arc<PolicySet>),
    /// The proxy's state, read at each decision: a keep-alive connection's next request is
    /// decided against the policies and destination labels in force then. A destination that
    /// left the state is denied (and its connection closed by the open connections' recheck).
    Current(Arc<MeshStore>),
}

impl From<Arc<PolicySet>> for PolicySource {
    fn from(set: Arc<PolicySet>) -> Self {
        PolicySource::Fixed(set)
    }
}

/// One request's decision (owned: the snapshot it was made on is gone with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestDecision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding policy, `namespace/name`, when one decided.
    pub policy: Option<String>,
    /// How the forwarded path is normalized, under the same policies.
    pub path: PathOptions,
}

/// A tunnel's L4 decision (owned, like [`RequestDecision`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionDecision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding policy, `namespace/name`, when one decided.
    pub policy: Option<String>,
    /// Some applicable policy has L7 fields.
    pub needs_l7: bool,
}

/// Receives a [`RequestRecord`] once per request, when its response is finished.
pub type RequestSink = Arc<dyn Fn(RequestRecord) + Send + Sync>;

/// Everything the L7 server knows about one tunnel. Owned, so that a decision can borrow from
/// it ([`L7Context::connection`]) without allocating.
#[derive(Clone)]
pub struct L7Context {
    /// Where decisions take their policies from.
    pub policies: PolicySource,
    /// The destination pod.
    pub destination: L7Destination,
    /// The client.
    pub source: L7Source,
    /// Timeouts and size limits.
    pub limits: L7Limits,
    /// Called once per request.
    pub on_request: RequestSink,
}

impl L7Context {
    /// A context with default limits that reports requests nowhere.
    pub fn new(
        policies: impl Into<PolicySource>,
        destination: L7Destination,
        source: L7Source,
    ) -> Self {
        Self {
            policies: policies.into(),
            destination,
            source,
            limits: L7Limits::default(),
            on_request: Arc::new(|_| {}),
        }
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: L7Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the per-request callback.
    pub fn with_on_request(mut self, sink: impl Fn(RequestRecord) + Send + Sync + 'static) -> Self {
        self.on_request = Arc::new(sink);
        self
    }

    /// The connection as the policy engine sees it, borrowed from this context.
    pub fn connection(&self) -> Connection<'_> {
        self.connection_to(&self.destination.namespace, &self.destination.labels)
    }

    fn connection_to<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> Connection<'a> {
        Connection {
            source: Peer {
                principal: self.source.principal.as_ref().map(SpiffeId::as_str),
                namespace: None,
                ip: Some(self.source.ip),
            },
            destination: Destination {
                namespace,
                labels,
                ip: Some(self.destination.ip),
                port: self.destination.port,
            },
        }
    }

    /// Runs `decide` with the policies and the connection in force now; `None` when the
    /// destination left the state.
    fn with_current<T>(&self, decide: impl FnOnce(&PolicySet, &Connection<'_>) -> T) -> Option<T> {
        match &self.policies {
            PolicySource::Fixed(set) => Some(decide(set, &self.connection())),
            PolicySource::Current(store) => {
                let state: Arc<MeshState> = store.load();
                let dst = state.workload(self.destination.ip)?;
                let conn = self.connection_to(&dst.namespace, &dst.labels);
                Some(decide(state.policies(), &conn))
            }
        }
    }

    /// Decides one request against the policies in force now ([`PolicySource`]).
    pub fn decide_request(&self, request: &HttpRequest<'_>) -> RequestDecision {
        self.with_current(|set, conn| {
            let d = set.decide_request(conn, request);
            RequestDecision {
                verdict: d.verdict,
                reason: d.reason,
                policy: d.deciding_policy.map(ToString::to_string),
                path: set.options().path,
            }
        })
        .unwrap_or(RequestDecision {
            verdict: Verdict::Deny,
            reason: Reason::NoAllowMatched,
            policy: None,
            path: PathOptions::default(),
        })
    }

    /// The L4 decision for this tunnel, with the policies in force now: what stands when the
    /// stream is not HTTP (the engine takes L7 conditions as false in ALLOW rules and true in
    /// DENY rules).
    pub fn decide_connection(&self) -> ConnectionDecision {
        self.with_current(|set, conn| {
            let d = set.decide_connection(conn);
            ConnectionDecision {
                verdict: d.verdict,
                reason: d.reason,
                policy: d.deciding_policy.map(ToString::to_string),
                needs_l7: d.needs_l7,
            }
        })
        .unwrap_or(ConnectionDecision {
            verdict: Verdict::Deny,
            reason: Reason::NoAllowMatched,
            policy: None,
            needs_l7: false,
        })
    }
}

impl fmt::Debug for L7Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L7Context")
            .field("destination", &self.destination)
            .field("source", &self.source)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
