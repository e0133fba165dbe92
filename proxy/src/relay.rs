//! Bidirectional byte relay: half-close passed on both ways, one pair of buffers per connection
//! reused for every chunk, large reads for throughput.

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer size per direction: large enough for TLS records and big TCP reads.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the downstream (client) side to the upstream side.
    pub downstream_to_upstream: u64,
    /// From the upstream side to the downstream side.
    pub upstream_to_downstream: u64,
}

/// Copies both ways until both directions are closed. When one side finishes writing, the other
/// side's write half is shut down (half-close), and the reverse direction keeps flowing.
pub async fn relay<D, U>(downstream: &mut D, upstream: &mut U) -> std::io::Result<Transferred>
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (down, up) =
        tokio::io::copy_bidirectional_with_sizes(downstream, upstream, RELAY_BUFFER, RELAY_BUFFER)
            .await?;
    Ok(Transferred {
        downstream_to_upstream: down,
        upstream_to_downstream: up,
    })
}

/// [`relay`], for callers that only count: a relay that ends with an error is logged and counts
/// as nothing moved.
pub async fn relay_logged<D, U>(downstream: &mut D, upstream: &mut U) -> Transferred
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay(downstream, upstream).await.unwrap_or_else(|error| {
        tracing::debug!(%error, "relay ended with an error");
        Transferred::default()
    })
}
