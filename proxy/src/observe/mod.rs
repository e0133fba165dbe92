//! Metrics, flow log, admin (in progress).
