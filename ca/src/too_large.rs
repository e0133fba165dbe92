//! A request over [`MAX_MESSAGE_LEN`](crate::server::MAX_MESSAGE_LEN) is answered
//! `ResourceExhausted`, as gRPC specifies for a message larger than the receiver accepts. tonic
//! refuses it while decoding, before our handler runs, with `OutOfRange`; this wrapper rewrites
//! that one answer.

use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

/// `grpc-status` of tonic's refusal (`OutOfRange`) and of ours (`ResourceExhausted`).
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Wraps a tonic service; see the module docs.
#[derive(Debug, Clone)]
pub struct TooLargeIsExhausted<S>(pub S);

impl<S: NamedService> NamedService for TooLargeIsExhausted<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether `headers` carry tonic's "decoded message length too large" refusal.
fn is_too_large(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|s| s == OUT_OF_RANGE)
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.windows(9).any(|w| w == b"too large") || m.windows(11).any(|w| w == b"too%20large")
        })
}

impl<S, B, R> Service<http::Request<B>> for TooLargeIsExhausted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.0.call(req);
        Box::pin(async move {
            let mut response = call.await?;
            let headers = response.headers_mut();
            if is_too_large(headers) {
                headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_size_refusal_is_rewritten() {
        let headers = |status: &'static str, message: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(status));
            h.insert("grpc-message", HeaderValue::from_static(message));
            h
        };
        assert!(is_too_large(&headers(
            "11",
            "Error,%20decoded%20message%20length%20too%20large"
        )));
        assert!(!is_too_large(&headers("11", "other")));
        assert!(!is_too_large(&headers("3", "too large")));
    }
}
