//! Handoff frames over a Unix stream, with descriptors passed as `SCM_RIGHTS`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::protocol::{self, MAX_SOCKETS, Message, ProtocolError};

/// Why a handoff could not go on.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The socket failed.
    #[error("handoff socket: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something this side cannot accept.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer closed the socket.
    #[error("the other process closed the handoff socket before its `{0}` message")]
    Closed(&'static str),
    /// More descriptors arrived than the control buffer holds, so some were lost.
    #[error("the handoff message carried more than {MAX_SOCKETS} descriptors")]
    DescriptorsTruncated,
    /// The peer runs as another, unprivileged user.
    #[error(
        "the handoff peer runs as uid {peer}, neither root nor this process's uid {ours}: refused"
    )]
    Peer {
        /// The peer's uid.
        peer: u32,
        /// This process's effective uid.
        ours: u32,
    },
    /// The other side called the handoff off.
    #[error("the other process aborted the handoff: {0}")]
    Aborted(String),
}

/// One end of a handoff conversation.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// Wraps a connected stream (blocking mode).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        Ok(Self { stream })
    }

    /// Connects to the handoff socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        Self::new(UnixStream::connect(path)?)
    }

    /// Bounds how long one read or write may block.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Refuses a peer that is neither root nor this process's own user: only such a process
    /// may hold the proxy's listening sockets.
    pub fn check_peer(&self) -> Result<u32, HandoffError> {
        let cred = rustix::net::sockopt::socket_peercred(&self.stream).map_err(io::Error::from)?;
        let peer = cred.uid.as_raw();
        let ours = rustix::process::geteuid().as_raw();
        if peer != 0 && peer != ours {
            return Err(HandoffError::Peer { peer, ours });
        }
        Ok(u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0))
    }

    /// Sends `message` alone.
    pub fn send(&mut self, message: &Message) -> Result<(), HandoffError> {
        self.stream.write_all(&protocol::encode(message))?;
        Ok(())
    }

    /// Sends `message` with `fds` attached to its first byte.
    pub fn send_with_fds(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoffError> {
        if fds.is_empty() {
            return self.send(message);
        }
        if fds.len() > MAX_SOCKETS {
            return Err(HandoffError::DescriptorsTruncated);
        }
        let frame = protocol::encode(message);
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(HandoffError::DescriptorsTruncated);
        }
        let sent = loop {
            match rustix::net::sendmsg(
                self.stream.as_fd(),
                &[IoSlice::new(&frame)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other.map_err(io::Error::from)?,
            }
        };
        // The descriptors went with the first byte; the rest is plain data.
        self.stream.write_all(&frame[sent..])?;
        Ok(())
    }

    /// Receives one message and any descriptors that came with it. `expecting` names the
    /// message due, for the error when the peer hangs up instead.
    pub fn recv(
        &mut self,
        expecting: &'static str,
    ) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
        let mut prefix = [0u8; 4];
        let mut filled = 0;
        let mut fds = Vec::new();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        while filled < prefix.len() {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = loop {
                match rustix::net::recvmsg(
                    self.stream.as_fd(),
                    &mut [IoSliceMut::new(&mut prefix[filled..])],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                ) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => break other.map_err(io::Error::from)?,
                }
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(HandoffError::DescriptorsTruncated);
            }
            if got.bytes == 0 {
                return Err(HandoffError::Closed(expecting));
            }
            filled += got.bytes;
        }
        let len = protocol::frame_len(prefix)?;
        let mut body = vec![0u8; len];
        let mut read = 0;
        while read < len {
            match self.stream.read(&mut body[read..]) {
                Ok(0) => {
                    return Err(ProtocolError::Truncated {
                        expected: len,
                        got: read,
                    }
                    .into());
                }
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((protocol::decode(&body)?, fds))
    }
}

/// Binds the handoff socket at `path`, readable and writable by its owner only. A socket file
/// left by a process that is gone is replaced; one a live process still serves is not (the
/// caller should have taken it over), and neither is anything that is not a socket.
pub fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or choose another --state-dir",
                    path.display()
                ),
            ));
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a running process serves {}", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::protocol::{Role, SocketInfo};
    use std::net::TcpListener;

    fn offer(n: usize) -> Message {
        Message::Offer {
            version: 1,
            sockets: (0..n)
                .map(|i| SocketInfo {
                    role: Role::Outbound,
                    address: format!("127.0.0.1:{i}"),
                })
                .collect(),
            pid: 1,
            binary: "test".into(),
        }
    }

    #[test]
    fn a_listening_socket_crosses_the_channel_and_still_accepts() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        a.send_with_fds(&offer(1), &[tcp.as_fd()]).unwrap();
        drop(tcp);
        let (message, fds) = b.recv("offer").unwrap();
        assert_eq!(message, offer(1));
        assert_eq!(fds.len(), 1);
        let inherited = TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(inherited.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        inherited.accept().unwrap();
    }

    #[test]
    fn messages_without_descriptors_follow_each_other() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        a.send(&Message::Accepting).unwrap();
        a.send(&Message::Released { connections: 3 }).unwrap();
        assert_eq!(b.recv("accepting").unwrap().0, Message::Accepting);
        assert_eq!(
            b.recv("released").unwrap().0,
            Message::Released { connections: 3 }
        );
        drop(a);
        assert!(matches!(
            b.recv("released"),
            Err(HandoffError::Closed("released"))
        ));
    }

    #[test]
    fn an_oversized_or_truncated_frame_is_an_error_not_a_hang() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut b = Channel::new(b).unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(
            b.recv("offer"),
            Err(HandoffError::Protocol(ProtocolError::TooLarge(_)))
        ));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut b = Channel::new(b).unwrap();
        a.write_all(&10u32.to_be_bytes()).unwrap();
        a.write_all(b"{\"ty").unwrap();
        drop(a);
        assert!(matches!(
            b.recv("offer"),
            Err(HandoffError::Protocol(ProtocolError::Truncated {
                expected: 10,
                got: 4
            }))
        ));
    }

    #[test]
    fn the_same_user_is_an_allowed_peer() {
        let (a, _b) = UnixStream::pair().unwrap();
        let a = Channel::new(a).unwrap();
        assert_eq!(a.check_peer().unwrap(), std::process::id());
    }

    #[test]
    fn the_socket_file_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        let first = bind_listener(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Live: refused.
        let err = bind_listener(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        // Stale (no one listens): replaced.
        bind_listener(&path).unwrap();
        // Not a socket: refused, untouched.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            bind_listener(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(file.exists());
    }
}
