//! Inline L7 enforcement on the inbound side: HTTP requests inside an authenticated tunnel are
//! authorized one by one.
//!
//! When the policy engine says a destination needs L7 decisions, the inbound handler passes the
//! tunnelled stream to [`serve_l7`]:
//!
//! ```text
//! stream --sniff--> HTTP/1 or h2c --> hyper server: each request --decide_request-->
//!     deny: 403 "RBAC: access denied" | invalid path: 400 | allow: forward to the pod
//!       (one reused connection per tunnel; an allowed WebSocket upgrade is relayed raw)
//!        --> anything else (or silence: a server-first protocol) --> L7Outcome::NotHttp:
//!            the caller decides at L4 (NotHttp::decide) and relays if allowed
//! ```
//!
//! Each request is reported as a [`RequestRecord`] through [`L7Context::on_request`], from
//! which the proxy makes metrics and flow-log lines. The classifier ([`classify`]) is a pure
//! function; the rest needs a runtime but no listening socket of its own.

mod body;
mod context;
mod headers;
mod server;
mod sniff;
mod timed;
mod upstream;

pub use context::{
    ConnectionDecision, L7Context, L7Destination, L7Limits, L7Source, PolicySource,
    RequestDecision, RequestRecord, RequestSink,
};
pub use server::{
    DENIED_BODY, L7Error, L7Outcome, L7Summary, NotHttp, UpgradedBytes, serve_http, serve_l7,
};
pub use sniff::{H2_PREFACE, HttpProtocol, MAX_METHOD_LEN, Rewind, Sniffed, classify, sniff};
pub use upstream::ConnectFuture;

/// The request path's pure steps, for the fuzz targets in `fuzz/` only: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::headers::{
        is_websocket_upgrade, raw_path, request_authority, strip_hop_by_hop, to_upstream,
    };
}
