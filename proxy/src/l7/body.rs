//! Response bodies that report their request when they are done, and the idle tracker they
//! keep informed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use super::context::{RequestRecord, RequestSink};
use crate::observe::ResponseFlags;

/// Requests in flight on one downstream connection and since when it has had none.
pub(crate) struct Activity {
    base: Instant,
    active: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request in flight until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }

    /// Resolves once no request has been in flight for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let deadline = self.base + since + idle;
            if self.active.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(idle).await;
            } else if Instant::now() >= deadline {
                return;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// A request in flight.
pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let a = &self.0;
        // Store the time first: a watcher that sees zero in flight must see the new time.
        a.idle_since_ms.store(a.now_ms(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's record, reported when this drops (with the time since the request head
/// arrived): after the response body, or when the client went away first.
pub(crate) struct Finish {
    /// Filled in as the request proceeds.
    pub(crate) record: RequestRecord,
    started: Instant,
    sink: RequestSink,
    _active: ActiveGuard,
}

impl Finish {
    pub(crate) fn new(
        record: RequestRecord,
        started: Instant,
        sink: RequestSink,
        active: ActiveGuard,
    ) -> Self {
        Self {
            record,
            started,
            sink,
            _active: active,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let r = &mut self.record;
        let record = RequestRecord {
            method: std::mem::take(&mut r.method),
            path: std::mem::take(&mut r.path),
            authority: std::mem::take(&mut r.authority),
            policy: r.policy.take(),
            duration: self.started.elapsed(),
            ..*r
        };
        (self.sink)(record);
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// A response body: a local answer or the pod's, streamed.
pub(crate) struct L7Body {
    kind: Kind,
    ended: bool,
    finish: Finish,
}

impl L7Body {
    /// A body of fixed bytes (may be empty).
    pub(crate) fn full(bytes: Bytes, finish: Finish) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            ended: false,
            finish,
        }
    }

    /// The pod's body.
    pub(crate) fn upstream(body: Incoming, finish: Finish) -> Self {
        Self {
            kind: Kind::Upstream(body),
            ended: false,
            finish,
        }
    }
}

impl Drop for L7Body {
    fn drop(&mut self) {
        let unfinished = !self.ended && !self.is_end_stream();
        let flags = &mut self.finish.record.response_flags;
        if unfinished && *flags == ResponseFlags::None {
            // Dropped before its end: the client went away.
            *flags = ResponseFlags::DownstreamConnectionTermination;
        }
    }
}

impl Body for L7Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => {
                this.ended = true;
                this.finish.record.response_flags = ResponseFlags::UpstreamConnectionTermination;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}
