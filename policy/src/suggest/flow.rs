//! Flow-log lines as `policy suggest` reads them: the fields it needs of the proxy's JSON lines
//! (`proxy/src/observe/record.rs` documents the format), other fields ignored.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What happened to a flow, as the proxy logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    /// Allowed (by policy, or no policy applied).
    Allow,
    /// Denied by an authorization or network policy.
    Deny,
    /// Refused before policy (TLS failure, no endpoint, overload, ...).
    Refused,
    /// Plain TCP to a destination outside the mesh, let through.
    Passthrough,
}

/// One side of a flow; every field may be unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FlowEndpoint {
    /// Workload (pod) name.
    pub workload: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub identity: Option<String>,
    /// IP address.
    pub ip: Option<IpAddr>,
    /// Port (for the destination: the original destination port, never the mesh port).
    pub port: Option<u16>,
}

/// One flow-log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// When the connection (or request) started.
    pub time: OffsetDateTime,
    /// The client.
    pub src: FlowEndpoint,
    /// The server.
    pub dst: FlowEndpoint,
    /// What happened.
    pub verdict: FlowVerdict,
}

#[derive(Deserialize)]
struct Line {
    time: String,
    #[serde(default)]
    src: FlowEndpoint,
    #[serde(default)]
    dst: FlowEndpoint,
    verdict: FlowVerdict,
}

/// A flow-log line that could not be read: its 1-based number and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in its input.
    pub line: usize,
    /// Why the line was skipped.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

impl Flow {
    /// Parses one flow-log line; `Ok(None)` for a blank line. The error says what is wrong
    /// (JSON syntax with its column, a missing or bad field, a time that is not RFC 3339).
    pub fn parse_line(line: &str) -> Result<Option<Flow>, String> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let raw: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let time = parse_time(&raw.time).map_err(|e| format!("time: {e}"))?;
        Ok(Some(Flow {
            time,
            src: raw.src,
            dst: raw.dst,
            verdict: raw.verdict,
        }))
    }
}

/// Parses an RFC 3339 time such as `2025-01-02T03:04:05.678Z` or `2025-01-02T05:04:05+02:00`.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))
}

/// Formats a time as RFC 3339 in UTC, e.g. `2025-01-02T03:04:05Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Every flow of a whole flow log, and the lines that could not be read (blank lines are
/// neither).
pub fn parse_flow_log(text: &str) -> (Vec<Flow>, Vec<LineError>) {
    let mut flows = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match Flow::parse_line(line) {
            Ok(Some(flow)) => flows.push(flow),
            Ok(None) => {}
            Err(message) => errors.push(LineError {
                line: n + 1,
                message,
            }),
        }
    }
    (flows, errors)
}
