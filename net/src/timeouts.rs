//! Deadlines shared by every TLS endpoint of the mesh.

use std::time::Duration;

/// How long a TLS handshake may take, on either end (HBONE client and server, the CA).
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
