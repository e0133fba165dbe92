//! The inbound plaintext listener (15006): traffic to a local pod that did not come through
//! HBONE. STRICT namespaces refuse it; PERMISSIVE ones apply policy with no principal. A
//! refused connection is reset.

use tokio::net::TcpStream;

use super::Arrival;
use crate::addr::{ClientAddr, OrigDstAddr};
use crate::ctx::Ctx;

/// Serves one connection captured for `target` from `peer`.
pub(crate) async fn serve(ctx: &Ctx, stream: TcpStream, peer: ClientAddr, target: OrigDstAddr) {
    let arrival = Arrival {
        peer: None,
        src: peer,
        target,
    };
    if let Some(refused) = super::serve(ctx, ctx.store.load(), arrival, stream).await {
        crate::socket::reset(refused);
    }
}
