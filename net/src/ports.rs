//! Well-known ports (DESIGN.md "Ports"); every listener also has a flag to move it.

/// Admin API, `127.0.0.1` only (`/config_dump`, `/certs`, `/policy/explain`, `/quitquitquit`).
pub const ADMIN: u16 = 15000;
/// Outbound capture listener: TCP from local mesh pods, delivered by TPROXY.
pub const OUTBOUND: u16 = 15001;
/// Inbound plaintext capture listener: TCP to local mesh pods that did not come over HBONE.
pub const INBOUND_PLAINTEXT: u16 = 15006;
/// HBONE (HTTP/2 CONNECT over mutual TLS) on every mesh pod IP.
pub const HBONE: u16 = 15008;
/// The CA's gRPC API (Istio's `IstioCertificateService`).
pub const CA_GRPC: u16 = 15012;
/// The CA's plain HTTP (`/trust-bundle`, `/healthz/ready`).
pub const CA_HTTP: u16 = 15014;
/// Prometheus metrics.
pub const METRICS: u16 = 15020;
/// Readiness (`/healthz/ready`).
pub const READINESS: u16 = 15021;
/// WireGuard (UDP).
pub const WIREGUARD: u16 = 51820;
