//! The handle on the running admin servers: their addresses, their listening sockets (for an
//! upgrade), and stopping them.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// The running admin servers. Dropping it stops them (as does [`AdminHandle::shutdown`]).
pub struct AdminHandle {
    pub(super) admin_addr: SocketAddr,
    pub(super) metrics_addr: SocketAddr,
    pub(super) readiness_addr: SocketAddr,
    /// Copies of the three listening sockets (admin, metrics, readiness), to hand to the
    /// process that takes over.
    pub(super) fds: [OwnedFd; 3],
    pub(super) stop: watch::Sender<bool>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where `/healthz/ready` is served.
    pub fn readiness_addr(&self) -> SocketAddr {
        self.readiness_addr
    }

    /// The listening sockets with their addresses, named `admin`, `metrics` and `readiness`:
    /// what an upgrade hands to the new process. They stay open as long as this handle.
    pub fn listener_fds(&self) -> [(&'static str, SocketAddr, BorrowedFd<'_>); 3] {
        [
            ("admin", self.admin_addr, self.fds[0].as_fd()),
            ("metrics", self.metrics_addr, self.fds[1].as_fd()),
            ("readiness", self.readiness_addr, self.fds[2].as_fd()),
        ]
    }

    /// Stops the servers (open connections are closed) and waits for the admin thread to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("admin: the admin thread panicked");
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl fmt::Debug for AdminHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminHandle")
            .field("admin_addr", &self.admin_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("readiness_addr", &self.readiness_addr)
            .finish()
    }
}
