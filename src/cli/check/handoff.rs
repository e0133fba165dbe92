//! Upgrade handoff: whether the running proxy serves its handoff socket, so that an upgrade or a
//! restart takes its listening sockets over without cutting a connection. Only the file is
//! looked at: connecting would ask the proxy for its sockets.

use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use super::report::Item;

/// The item's name.
pub const NAME: &str = "upgrade handoff";

/// What is at the handoff socket's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A Unix socket.
    Socket,
    /// Something that is not a socket.
    Other,
    /// Nothing.
    Missing,
}

/// Looks at `path`.
pub fn observe(path: &Path) -> Found {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Found::Socket,
        Ok(_) => Found::Other,
        Err(_) => Found::Missing,
    }
}

/// The item for what is at `path`.
pub fn evaluate(path: &Path, found: Found) -> Item {
    let shown = path.display();
    match found {
        Found::Socket => Item::ok(
            NAME,
            format!("{shown}: an upgrade takes the listening sockets over, no connection drops"),
        ),
        Found::Other => Item::warn(
            NAME,
            format!("{shown} is not a socket: an upgrade or restart will cut every connection"),
            "remove that file and restart the proxy once; it binds the socket at start",
        ),
        Found::Missing => Item::warn(
            NAME,
            format!(
                "no handoff socket at {shown}: an upgrade or restart will cut every connection"
            ),
            "give the proxy a writable --state-dir (the chart's hostPath /var/lib/nodemesh) and \
             restart it once; or it runs a version without the handoff",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    #[test]
    fn a_socket_is_ok_and_anything_else_warns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        assert_eq!(observe(&path), Found::Missing);
        let missing = evaluate(&path, observe(&path));
        assert_eq!(missing.status, Status::Warn);
        assert!(missing.hint.unwrap().contains("--state-dir"));
        std::fs::write(&path, "").unwrap();
        assert_eq!(evaluate(&path, observe(&path)).status, Status::Warn);
        std::fs::remove_file(&path).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(evaluate(&path, observe(&path)).status, Status::Ok);
    }
}
