//! Polling until something holds: [`eventually`] in async tests, [`eventually_blocking`] in
//! threads of their own. Both give up with a panic naming what never held.

use std::time::Duration;

/// How long a condition may take to hold.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How often it is checked.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it holds; panics with `what` after [`TIMEOUT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for code outside a runtime: tries `f` up to [`TIMEOUT`] / 20 ms times,
/// sleeping the thread between tries. The time `f` takes does not count, so a slow check (a
/// call that times out) gets as many tries as a fast one.
pub fn eventually_blocking(what: &str, mut f: impl FnMut() -> bool) {
    let tries = TIMEOUT.as_millis() / POLL.as_millis();
    for _ in 0..tries {
        if f() {
            return;
        }
        std::thread::sleep(POLL);
    }
    panic!("timed out waiting for: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_returns_once_it_holds() {
        let mut tries = 0;
        eventually_blocking("the third try", || {
            tries += 1;
            tries == 3
        });
        assert_eq!(tries, 3);
    }

    #[tokio::test]
    async fn async_returns_once_it_holds() {
        let mut tries = 0;
        eventually("the third try", || {
            tries += 1;
            tries == 3
        })
        .await;
        assert_eq!(tries, 3);
    }
}
