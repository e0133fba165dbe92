//! Test support: an in-repo fake of the Kubernetes API.

#![allow(dead_code, missing_docs)]

pub mod fake_api;
pub mod kube_ca;
pub mod objects;

use std::time::Duration;

/// Polls `f` every 20 ms until it holds, failing after 10 s with `what`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
