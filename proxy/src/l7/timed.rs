//! Request bodies with a deadline between chunks: a client that starts a body and then stalls
//! does not hold the pod's connection (and its request slot) forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a timed body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's body failed.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// The client sent nothing for the body timeout.
    #[error("the client sent no request body data for {0:?}")]
    Stalled(Duration),
}

/// A request body on its way to the pod that fails with [`BodyError::Stalled`] when the client
/// pauses longer than `idle` between frames. `stalled` is set when that happens, so the
/// request's answer can say so.
pub(crate) struct TimedBody {
    inner: Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    stalled: Arc<AtomicBool>,
}

impl TimedBody {
    /// Wraps `inner`; the first frame is due `idle` from now.
    pub(crate) fn new(inner: Incoming, idle: Duration, stalled: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            stalled,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            let next = Instant::now() + this.idle;
            this.deadline.as_mut().reset(next);
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        ready!(this.deadline.as_mut().poll(cx));
        this.stalled.store(true, Ordering::Release);
        Poll::Ready(Some(Err(BodyError::Stalled(this.idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
