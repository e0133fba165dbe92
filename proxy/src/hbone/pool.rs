//! Which pooled connection a new stream takes and which connections go, decided without I/O.

use std::time::Duration;

use super::settings::{CLIENT_STREAMS_PER_CONNECTION, POOL_IDLE};

/// How the pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Streams one connection takes before a new connection is opened.
    pub streams_per_connection: usize,
    /// Idle connections are released after this.
    pub idle: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            streams_per_connection: CLIENT_STREAMS_PER_CONNECTION,
            idle: POOL_IDLE,
        }
    }
}

/// One pooled connection as the pool sees it at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnView {
    /// HTTP/2 has shut down.
    pub closed: bool,
    /// It can take a stream now (not mid-handshake, under the peer's stream limit).
    pub ready: bool,
    /// Open streams.
    pub streams: usize,
    /// Since the last stream opened or closed.
    pub idle: Duration,
    /// It was authenticated with the source's current certificate.
    pub current_cert: bool,
}

/// Whether the pool keeps a connection: closed ones go; so do idle ones past the idle limit and
/// idle ones authenticated with a replaced certificate. Busy ones stay until their streams end
/// (dropping them would not cut the streams, and keeping them lets the pool count them).
pub fn keep(conn: &ConnView, limits: &PoolLimits) -> bool {
    !conn.closed && (conn.streams > 0 || (conn.idle <= limits.idle && conn.current_cert))
}

/// The connection a new stream takes: the first one with the current certificate that is ready
/// and under the stream limit; `None` means open a new connection.
pub fn choose(conns: impl IntoIterator<Item = ConnView>, limits: &PoolLimits) -> Option<usize> {
    conns.into_iter().position(|c| {
        !c.closed && c.current_cert && c.ready && c.streams < limits.streams_per_connection
    })
}

/// How long after a dial starts new callers join it instead of dialing themselves.
pub const JOIN_WINDOW: Duration = Duration::from_secs(1);

/// Whether a caller that finds no usable connection waits for the dial under way, started
/// `age` ago, rather than dialing itself. Only a young dial is joined: one older than
/// [`JOIN_WINDOW`] has lost its first SYN (the kernel retransmits a second later, then ever
/// less often), so a caller arriving after the peer restarted would inherit a stale attempt and
/// fail with it at the deadline; it dials afresh instead.
pub fn joins(age: Duration) -> bool {
    age < JOIN_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PoolLimits = PoolLimits {
        streams_per_connection: 2,
        idle: Duration::from_secs(60),
    };

    fn conn() -> ConnView {
        ConnView {
            closed: false,
            ready: true,
            streams: 0,
            idle: Duration::ZERO,
            current_cert: true,
        }
    }

    #[test]
    fn only_a_young_dial_is_joined() {
        assert!(joins(Duration::ZERO));
        assert!(joins(Duration::from_millis(999)));
        assert!(!joins(JOIN_WINDOW));
        assert!(!joins(Duration::from_secs(4)));
    }

    #[test]
    fn a_ready_connection_under_the_limit_is_reused() {
        assert_eq!(choose([conn()], &LIMITS), Some(0));
        let full = ConnView {
            streams: 2,
            ..conn()
        };
        assert_eq!(choose([full, conn()], &LIMITS), Some(1));
        assert_eq!(choose([full, full], &LIMITS), None);
    }

    #[test]
    fn unready_closed_and_old_certificate_connections_take_no_stream() {
        let busy_handshake = ConnView {
            ready: false,
            ..conn()
        };
        let closed = ConnView {
            closed: true,
            ..conn()
        };
        let old_cert = ConnView {
            current_cert: false,
            ..conn()
        };
        assert_eq!(choose([busy_handshake, closed, old_cert], &LIMITS), None);
        assert_eq!(choose([], &LIMITS), None);
    }

    #[test]
    fn eviction_keeps_busy_connections_and_drops_closed_idle_or_replaced_ones() {
        assert!(keep(&conn(), &LIMITS));
        assert!(!keep(
            &ConnView {
                closed: true,
                ..conn()
            },
            &LIMITS
        ));
        let idle = ConnView {
            idle: Duration::from_secs(61),
            ..conn()
        };
        assert!(!keep(&idle, &LIMITS));
        assert!(keep(&ConnView { streams: 1, ..idle }, &LIMITS));
        let replaced = ConnView {
            current_cert: false,
            ..conn()
        };
        assert!(!keep(&replaced, &LIMITS));
        assert!(keep(
            &ConnView {
                streams: 3,
                ..replaced
            },
            &LIMITS
        ));
        let closed_busy = ConnView {
            closed: true,
            streams: 3,
            ..conn()
        };
        assert!(!keep(&closed_busy, &LIMITS));
    }
}
