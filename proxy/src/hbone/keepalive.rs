//! HTTP/2 keep-alive: a PING every [`KEEPALIVE`] on an HBONE connection, busy or idle; a peer that
//! does not answer within [`KEEPALIVE_TIMEOUT`] is gone, and its connection is closed (its
//! streams end with an error instead of hanging on a dead peer).

use h2::{Ping, PingPong};

use super::settings::{KEEPALIVE, KEEPALIVE_TIMEOUT};

/// Pings the peer until it fails to answer in time or the connection ends; returns then (never,
/// without a `PingPong`: h2 hands it out once per connection). The connection must be driven
/// meanwhile (pings travel with it).
pub(crate) async fn until_unanswered(ping: Option<PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "HBONE keep-alive PING failed");
                return;
            }
            Err(_) => {
                tracing::debug!(after = ?KEEPALIVE_TIMEOUT, "HBONE peer did not answer a PING; closing");
                return;
            }
        }
    }
}
