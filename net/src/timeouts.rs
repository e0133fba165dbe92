//! Deadlines shared by every TLS endpoint of the mesh.

use std::time::Duration;

/// How long a TLS handshake may take, on either end (HBONE client and server, the CA).
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// How long a TCP connect may take (HBONE to a peer proxy, plain TCP to a pod or outside the
/// mesh). A few seconds: a healthy peer answers in milliseconds, and a client should learn of
/// a dead node before its own timeout fires.
pub const CONNECT: Duration = Duration::from_secs(5);

/// How long an HTTP/2 peer may take, after TLS, to send its connection preface and SETTINGS.
pub const HTTP2_PREFACE: Duration = Duration::from_secs(10);
