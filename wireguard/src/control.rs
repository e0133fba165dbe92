//! The control socket: a unix socket in the state directory speaking WireGuard's configuration
//! protocol (what `wg` speaks to `/var/run/wireguard/<if>.sock`), served by the device and read
//! by `nodemesh wireguard status`. Mode 0600 in a 0700 directory: root only.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gotatun::device::uapi::UapiServer;
use gotatun::x25519;
use nodemesh_config::WireguardPublicKey;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::error::WireguardError;
use crate::status::DeviceStatus;

/// The control socket's name in the state directory.
pub const SOCKET_FILE: &str = "wireguard.sock";

/// A listening control socket; removed when stopped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    accept: JoinHandle<()>,
}

impl ControlSocket {
    /// Listens on `path` (replacing a stale socket) and returns the server end for the device.
    pub fn bind(path: &Path) -> Result<(Self, UapiServer), WireguardError> {
        let err = |action| {
            let path = path.to_owned();
            move |source| WireguardError::Control {
                path,
                action,
                error: source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err("create its directory"))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(err("listen"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(err("restrict it to its owner"))?;
        let (client, server) = UapiServer::new();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // One thread per connection runs the text protocol (gotatun's blocking reader).
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                if stream.set_nonblocking(false).is_ok() {
                    client.clone().wrap_read_write(stream);
                }
            }
        });
        Ok((
            Self {
                path: path.to_owned(),
                accept,
            },
            server,
        ))
    }

    /// Stops listening and removes the socket file.
    pub fn close(self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the device behind the control socket `path` for its status.
pub fn query(path: &Path) -> Result<DeviceStatus, WireguardError> {
    let err = |action| {
        let path = path.to_owned();
        move |source| WireguardError::Control {
            path,
            action,
            error: source,
        }
    };
    let mut stream =
        UnixStream::connect(path).map_err(err("connect (is `nodemesh wireguard up` running?)"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err("set a timeout"))?;
    stream
        .write_all(b"get=1\n\n")
        .map_err(err("send the request"))?;
    let mut answer = String::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(err("read the answer"))?;
        let done = line.starts_with("errno=");
        answer.push_str(&line);
        answer.push('\n');
        if done {
            break;
        }
    }
    DeviceStatus::parse(&answer, public_of).map_err(|reason| WireguardError::ControlAnswer {
        path: path.to_owned(),
        reason,
    })
}

fn public_of(private: &WireguardPublicKey) -> WireguardPublicKey {
    let secret = x25519::StaticSecret::from(*private.as_bytes());
    WireguardPublicKey::from_bytes(x25519::PublicKey::from(&secret).to_bytes())
}
