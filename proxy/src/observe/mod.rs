//! Observability and lifecycle: Prometheus metrics with Istio's names and labels, the JSON flow
//! log, and graceful drain.
//!
//! - [`Metrics`]: one per proxy (no global recorder), rendered for `/metrics`; its label
//!   vocabulary ([`labels`]) is shared by metrics and flow log.
//! - [`FlowLog`]: one JSON line ([`FlowRecord`]) per connection and per HTTP request; never
//!   blocks the data path.
//! - [`LogLimit`]: log lines an attacker can trigger, rate-limited with counts.
//! - [`drain`]: a trigger, watchers and guards for SIGTERM and `/quitquitquit`.

pub mod drain;
pub mod flowlog;
pub mod labels;
pub mod metrics;
pub mod ratelimit;
pub mod record;

pub use drain::{DrainGuard, DrainOutcome, DrainTrigger, DrainWatch};
pub use flowlog::{FlowLog, FlowLogError, FlowLogTarget};
pub use labels::{
    ConnectionLabels, RefusalReason, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy,
};
pub use metrics::{ConnectionMetrics, Metrics};
pub use ratelimit::LogLimit;
pub use record::{Direction, FlowEndpoint, FlowRecord, FlowVerdict, HttpFlow, rfc3339_millis};

/// An error with its sources, `a: b: c`, for one log field.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
