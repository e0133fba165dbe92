//! The nodemesh node proxy: pod-to-pod TCP inside HBONE (HTTP/2 CONNECT over mutual TLS), with
//! inline L4/L7 authorization, metrics, flow logs, an admin API and graceful drain.

pub mod l7;
pub mod observe;
