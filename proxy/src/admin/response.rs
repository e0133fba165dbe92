//! What an admin, metrics or readiness request is answered with.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// A response from a provider: status, content type and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl AdminResponse {
    /// A JSON response.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        AdminResponse {
            status,
            content_type: JSON,
            body: body.into(),
        }
    }

    /// A plain-text response.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        AdminResponse {
            status,
            content_type: TEXT,
            body: Bytes::from(body.into()),
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        response
    }
}
