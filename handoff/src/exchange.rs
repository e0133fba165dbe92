//! The handoff sequence, for each side, over a [`Channel`].

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::channel::{Channel, HandoffError};
use crate::protocol::{self, Message, ProtocolError, SocketInfo, VERSIONS};

/// What asking the running process for its sockets gave.
#[derive(Debug)]
pub enum Request {
    /// No process serves the handoff socket: bind afresh.
    Nobody,
    /// The running process speaks no version this binary does: replace it the classic way.
    Unsupported {
        /// The versions it speaks.
        versions: Vec<u32>,
    },
    /// The running process offered its sockets.
    Offered(Takeover),
}

/// Sockets received from the running process, not yet accepted on.
#[derive(Debug)]
pub struct Takeover {
    channel: Channel,
    /// The offered sockets with their descriptors.
    pub sockets: Vec<(SocketInfo, OwnedFd)>,
    /// The running process's pid.
    pub pid: u32,
    /// The running binary's version.
    pub binary: String,
}

impl Takeover {
    /// Tells the running process this one accepts on every socket, and waits until it has
    /// stopped accepting. Returns how many connections it still relays.
    pub fn accepting(mut self, timeout: Duration) -> Result<usize, HandoffError> {
        self.channel.set_timeout(Some(timeout))?;
        self.channel.send(&Message::Accepting)?;
        match self.channel.recv("released")?.0 {
            Message::Released { connections } => Ok(connections),
            Message::Abort { reason } => Err(HandoffError::Aborted(reason)),
            other => Err(ProtocolError::Unexpected {
                expected: "released",
                got: other.kind(),
            }
            .into()),
        }
    }

    /// Calls the handoff off; the running process keeps serving.
    pub fn abort(mut self, reason: &str) {
        // Best effort: if the running process is gone there is no one to tell.
        let _ = self.channel.send(&Message::Abort {
            reason: reason.to_owned(),
        });
    }
}

/// Asks the process serving `path` for its sockets. `binary` is this build's version, for the
/// other side's logs; `timeout` bounds each step.
pub fn request(path: &Path, binary: &str, timeout: Duration) -> Result<Request, HandoffError> {
    let mut channel = match Channel::connect(path) {
        Ok(channel) => channel,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Request::Nobody);
        }
        Err(e) => return Err(e.into()),
    };
    channel.set_timeout(Some(timeout))?;
    channel.check_peer()?;
    channel.send(&Message::Hello {
        versions: VERSIONS.to_vec(),
        pid: std::process::id(),
        binary: binary.to_owned(),
    })?;
    let (message, fds) = channel.recv("offer")?;
    match message {
        Message::Unsupported { versions } => Ok(Request::Unsupported { versions }),
        Message::Abort { reason } => Err(HandoffError::Aborted(reason)),
        Message::Offer {
            sockets,
            pid,
            binary,
            ..
        } => {
            protocol::check_offer(
                &Message::Offer {
                    version: VERSIONS[0],
                    sockets: sockets.clone(),
                    pid,
                    binary: binary.clone(),
                },
                fds.len(),
            )?;
            Ok(Request::Offered(Takeover {
                channel,
                sockets: sockets.into_iter().zip(fds).collect(),
                pid,
                binary,
            }))
        }
        other => Err(ProtocolError::Unexpected {
            expected: "offer",
            got: other.kind(),
        }
        .into()),
    }
}

/// The running process's side once its sockets are out: the new process holds them.
#[derive(Debug)]
pub struct Offered {
    channel: Channel,
    /// The new process's pid.
    pub pid: u32,
    /// The new binary's version.
    pub binary: String,
}

impl Offered {
    /// Waits until the new process accepts on the sockets (or calls it off).
    pub fn wait_accepting(mut self, timeout: Duration) -> Result<Accepted, HandoffError> {
        self.channel.set_timeout(Some(timeout))?;
        match self.channel.recv("accepting")?.0 {
            Message::Accepting => Ok(Accepted {
                channel: self.channel,
            }),
            Message::Abort { reason } => Err(HandoffError::Aborted(reason)),
            other => Err(ProtocolError::Unexpected {
                expected: "accepting",
                got: other.kind(),
            }
            .into()),
        }
    }
}

/// The new process accepts; the running one owes it a [`Message::Released`].
#[derive(Debug)]
pub struct Accepted {
    channel: Channel,
}

impl Accepted {
    /// Says the running process no longer accepts and still relays `connections`.
    pub fn released(mut self, connections: usize) -> Result<(), HandoffError> {
        self.channel.send(&Message::Released { connections })
    }
}

/// The running process's side: reads the new process's hello on `channel` and offers
/// `sockets`. With no version in common it answers [`Message::Unsupported`] and returns
/// [`ProtocolError::Version`].
pub fn offer(
    mut channel: Channel,
    sockets: &[(SocketInfo, BorrowedFd<'_>)],
    binary: &str,
    timeout: Duration,
) -> Result<Offered, HandoffError> {
    channel.set_timeout(Some(timeout))?;
    channel.check_peer()?;
    let (pid, peer_binary, version) = match channel.recv("hello")?.0 {
        Message::Hello {
            versions,
            pid,
            binary,
        } => match protocol::negotiate(VERSIONS, &versions) {
            Some(version) => (pid, binary, version),
            None => {
                channel.send(&Message::Unsupported {
                    versions: VERSIONS.to_vec(),
                })?;
                return Err(ProtocolError::Version(versions.first().copied().unwrap_or(0)).into());
            }
        },
        other => {
            return Err(ProtocolError::Unexpected {
                expected: "hello",
                got: other.kind(),
            }
            .into());
        }
    };
    let infos = sockets.iter().map(|(info, _)| info.clone()).collect();
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    channel.send_with_fds(
        &Message::Offer {
            version,
            sockets: infos,
            pid: std::process::id(),
            binary: binary.to_owned(),
        },
        &fds,
    )?;
    Ok(Offered {
        channel,
        pid,
        binary: peer_binary,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::channel::bind_listener;
    use crate::protocol::Role;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    const STEP: Duration = Duration::from_secs(5);

    #[test]
    fn nobody_serving_the_path_means_bind_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        assert!(matches!(
            request(&path, "new", STEP).unwrap(),
            Request::Nobody
        ));
        // A stale socket file (its process is gone) is the same.
        drop(bind_listener(&path).unwrap());
        assert!(matches!(
            request(&path, "new", STEP).unwrap(),
            Request::Nobody
        ));
    }

    #[test]
    fn the_whole_sequence_moves_the_sockets_and_reports_the_connections_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        let listener = bind_listener(&path).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let old = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let info = SocketInfo {
                role: Role::Hbone,
                address: addr.to_string(),
            };
            let offered = offer(
                Channel::new(stream).unwrap(),
                &[(info, tcp.as_fd())],
                "old",
                STEP,
            )
            .unwrap();
            assert_eq!(offered.binary, "new");
            offered.wait_accepting(STEP).unwrap().released(4).unwrap();
        });
        let Request::Offered(takeover) = request(&path, "new", STEP).unwrap() else {
            panic!("expected an offer");
        };
        assert_eq!(takeover.binary, "old");
        assert_eq!(takeover.sockets.len(), 1);
        assert_eq!(takeover.sockets[0].0.role, Role::Hbone);
        let inherited = TcpListener::from(takeover.sockets[0].1.try_clone().unwrap());
        assert_eq!(inherited.local_addr().unwrap(), addr);
        assert_eq!(takeover.accepting(STEP).unwrap(), 4);
        old.join().unwrap();
    }

    #[test]
    fn an_abort_from_the_new_process_reaches_the_old_one() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let old = std::thread::spawn(move || {
            let offered = offer(Channel::new(a).unwrap(), &[], "old", STEP).unwrap();
            offered.wait_accepting(STEP).unwrap_err()
        });
        let mut new = Channel::new(b).unwrap();
        new.send(&Message::Hello {
            versions: vec![1],
            pid: 1,
            binary: "new".into(),
        })
        .unwrap();
        assert!(matches!(
            new.recv("offer").unwrap().0,
            Message::Offer { .. }
        ));
        new.send(&Message::Abort {
            reason: "addresses differ".into(),
        })
        .unwrap();
        let err = old.join().unwrap();
        assert!(
            matches!(&err, HandoffError::Aborted(r) if r == "addresses differ"),
            "{err}"
        );
    }

    #[test]
    fn a_future_only_client_is_told_the_versions_the_old_process_speaks() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let old = std::thread::spawn(move || {
            offer(Channel::new(a).unwrap(), &[], "old", STEP).unwrap_err()
        });
        let mut new = Channel::new(b).unwrap();
        new.send(&Message::Hello {
            versions: vec![7],
            pid: 1,
            binary: "future".into(),
        })
        .unwrap();
        assert_eq!(
            new.recv("offer").unwrap().0,
            Message::Unsupported {
                versions: VERSIONS.to_vec()
            }
        );
        assert!(matches!(
            old.join().unwrap(),
            HandoffError::Protocol(ProtocolError::Version(7))
        ));
    }
}
