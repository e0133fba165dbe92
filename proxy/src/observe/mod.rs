//! Observability and lifecycle: Prometheus metrics with Istio's names and labels, the JSON flow
//! log, the admin / metrics / readiness servers, and graceful drain.
//!
//! - [`Metrics`]: one per proxy (no global recorder), rendered for `/metrics`.
//! - [`FlowLog`]: one JSON line per connection and per HTTP request; never blocks the data path.
//! - [`AdminServer`]: admin (15000), metrics (15020) and readiness (15021) on their own thread and
//!   runtime, isolated from the data plane.
//! - [`drain`]: a trigger, watchers and guards for SIGTERM and `/quitquitquit`.

pub mod admin;
pub mod drain;
pub mod flowlog;
pub mod metrics;

pub use admin::{AdminError, AdminHandle, AdminResponse, AdminServer, AdminState, CertInfo};
pub use drain::{DrainGuard, DrainOutcome, DrainTrigger, DrainWatch};
pub use flowlog::{
    Direction, FlowEndpoint, FlowLog, FlowLogError, FlowLogTarget, FlowRecord, FlowVerdict,
    HttpFlow,
};
pub use metrics::{
    ConnectionLabels, ConnectionMetrics, Metrics, RefusalReason, Reporter, RequestProtocol,
    ResponseFlags, SecurityPolicy,
};
