//! Upgrades and restarts without a dropped connection: a new `nodemesh proxy` takes the
//! listening sockets of the running one over `<state-dir>/handoff.sock` (the
//! `nodemesh-handoff` crate), and the running one stops accepting, drains and exits. A running
//! process that cannot hand off is replaced the classic way: it drains, then the new one binds.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nodemesh_handoff::{Accepted, Channel, Request, Role, SocketInfo, Takeover};
use nodemesh_proxy::admin::{AdminListeners, ProxyAdmin};
use nodemesh_proxy::bounds::Listener;
use nodemesh_proxy::{InheritedListeners, ProxyHandle};

/// The handoff socket's name in the state directory.
pub const SOCKET: &str = "handoff.sock";
/// How long one step of the exchange (a message each way) may take.
const STEP: Duration = Duration::from_secs(10);
/// How long a new process may take to load every local certificate before it gives up and
/// leaves the running one in place.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the running process waits for the new one to accept (it keeps serving meanwhile).
const ACCEPT_WAIT: Duration = Duration::from_secs(150);

/// This binary's version, for the other side's logs.
fn binary() -> String {
    format!("nodemesh {}", env!("CARGO_PKG_VERSION"))
}

/// The addresses this process would listen on, by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(pub BTreeMap<Role, Vec<SocketAddr>>);

/// How the new process starts.
#[derive(Debug)]
pub enum Start {
    /// Nobody runs: bind everything, serve the handoff socket.
    Fresh,
    /// A running process handed its sockets over.
    Takeover(Box<Taken>),
    /// A running process cannot hand off: replace it the classic way.
    Classic(String),
}

/// The sockets taken from the running process, not yet accepted on.
#[derive(Debug)]
pub struct Taken {
    /// The capture and HBONE listeners.
    pub proxy: InheritedListeners,
    /// The admin, metrics and readiness listeners.
    pub admin: AdminListeners,
    /// What is left to say to the running process.
    pub pending: Pending,
}

/// A takeover not yet accepted: the running process still accepts on every socket.
#[derive(Debug)]
pub struct Pending {
    takeover: Takeover,
    handoff: StdUnixListener,
}

impl Pending {
    /// The running process's pid and binary.
    pub fn from(&self) -> (u32, String) {
        (self.takeover.pid, self.takeover.binary.clone())
    }

    /// Tells the running process this one accepts; it stops accepting and reports how many
    /// connections it still relays (`None`: it died or did not answer; the sockets are this
    /// process's either way). Returns that and the handoff socket, for the next upgrade.
    pub async fn accepting(self) -> (Option<usize>, StdUnixListener) {
        let Pending { takeover, handoff } = self;
        let pid = takeover.pid;
        let connections = match tokio::task::spawn_blocking(move || takeover.accepting(STEP)).await
        {
            Ok(Ok(connections)) => Some(connections),
            Ok(Err(error)) => {
                tracing::warn!(pid, %error, "handoff: the running proxy did not confirm it stopped accepting (it may have died); carrying on with its sockets");
                None
            }
            Err(error) => {
                tracing::error!(%error, "handoff task failed; carrying on with the sockets");
                None
            }
        };
        (connections, handoff)
    }

    /// Calls the handoff off: the running process keeps serving.
    pub fn abort(self, reason: &str) {
        self.takeover.abort(reason);
    }
}

/// Asks the process serving `<state_dir>/handoff.sock` for its sockets and checks they are the
/// ones this process would bind.
pub async fn prepare(state_dir: &Path, wanted: &Addresses) -> Start {
    let path = state_dir.join(SOCKET);
    let request = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || nodemesh_handoff::request(&path, &binary(), STEP)).await
    };
    let takeover = match request {
        Ok(Ok(Request::Nobody)) => return Start::Fresh,
        Ok(Ok(Request::Unsupported { versions })) => {
            return Start::Classic(format!(
                "it speaks handoff versions {versions:?}, this binary {:?}",
                nodemesh_handoff::protocol::VERSIONS
            ));
        }
        Ok(Ok(Request::Offered(takeover))) => takeover,
        Ok(Err(error)) => return Start::Classic(format!("the handoff failed: {error}")),
        Err(error) => return Start::Classic(format!("the handoff task failed: {error}")),
    };
    match adopt(takeover, wanted) {
        Ok(taken) => Start::Takeover(Box::new(taken)),
        Err((takeover, why)) => {
            takeover.abort(&why);
            Start::Classic(why)
        }
    }
}

/// Sorts the offered sockets by role, refusing an offer that differs from `wanted`.
fn adopt(mut takeover: Takeover, wanted: &Addresses) -> Result<Taken, (Takeover, String)> {
    let mut offered: BTreeMap<Role, Vec<(SocketAddr, OwnedFd)>> = BTreeMap::new();
    let mut handoff = None;
    for (info, fd) in std::mem::take(&mut takeover.sockets) {
        if info.role == Role::Handoff {
            handoff = Some(StdUnixListener::from(fd));
            continue;
        }
        let Ok(addr) = info.address.parse::<SocketAddr>() else {
            let why = format!("it offered {} on {:?}", info.role.name(), info.address);
            return Err((takeover, why));
        };
        offered.entry(info.role).or_default().push((addr, fd));
    }
    let offered_addrs: BTreeMap<Role, Vec<SocketAddr>> = offered
        .iter()
        .map(|(role, socks)| (*role, sorted(socks.iter().map(|(a, _)| *a))))
        .collect();
    if let Some(why) = mismatch(wanted, &offered_addrs) {
        return Err((takeover, why));
    }
    let Some(handoff) = handoff else {
        return Err((takeover, "it offered no handoff socket".into()));
    };
    let mut take = |role| -> Vec<StdTcpListener> {
        offered
            .remove(&role)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, fd)| StdTcpListener::from(fd))
            .collect()
    };
    let (Some(outbound), Some(admin), Some(metrics), Some(readiness)) = (
        take(Role::Outbound).pop(),
        take(Role::Admin).pop(),
        take(Role::Metrics).pop(),
        take(Role::Readiness).pop(),
    ) else {
        return Err((takeover, "it offered an incomplete set of sockets".into()));
    };
    Ok(Taken {
        proxy: InheritedListeners {
            outbound,
            hbone: take(Role::Hbone),
            plaintext: take(Role::Plaintext),
        },
        admin: AdminListeners {
            admin,
            metrics,
            readiness,
        },
        pending: Pending { takeover, handoff },
    })
}

fn sorted(addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut v: Vec<_> = addrs.collect();
    v.sort();
    v
}

/// Why the offered addresses are not the wanted ones, if they are not. A wanted port 0 (pick
/// any) matches any port on the same IP.
pub fn mismatch(wanted: &Addresses, offered: &BTreeMap<Role, Vec<SocketAddr>>) -> Option<String> {
    for (role, want) in &wanted.0 {
        let got = offered.get(role).cloned().unwrap_or_default();
        let same = want.len() == got.len()
            && sorted(want.iter().copied())
                .iter()
                .zip(&got)
                .all(|(w, g)| w.ip() == g.ip() && (w.port() == 0 || w.port() == g.port()));
        if !same {
            return Some(format!(
                "it listens for {} on {got:?}, this process is configured for {want:?}",
                role.name()
            ));
        }
    }
    offered
        .keys()
        .find(|role| !wanted.0.contains_key(role))
        .map(|role| {
            format!(
                "it offered a {} socket this process has no use for",
                role.name()
            )
        })
}

/// Replaces a running process that cannot hand off: asks it to drain (`POST /quitquitquit`
/// on its admin API) and waits until it is gone, up to `patience`.
pub async fn replace_classically(admin: SocketAddr, why: &str, patience: Duration) -> Result<()> {
    tracing::warn!(
        "a running proxy cannot hand over its sockets ({why}); replacing it the classic way: it drains (its connections end), then this one starts"
    );
    eprintln!(
        "nodemesh proxy: replacing the running proxy the classic way ({why}): it drains, then this one starts"
    );
    tokio::task::spawn_blocking(move || {
        if let Err(error) = quit(admin) {
            tracing::warn!(%admin, %error, "could not ask the running proxy to drain; waiting for it to stop");
        }
        let start = Instant::now();
        while TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok() {
            if start.elapsed() > patience {
                anyhow::bail!(
                    "the running proxy still serves its admin API on {admin} after {patience:?}; stop it, then start this one"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
    .await
    .context("the wait for the running proxy")?
}

/// Whether a process serves the admin API at `admin` (a running proxy that did not answer on
/// the handoff socket).
pub fn admin_in_use(admin: SocketAddr) -> bool {
    admin.port() != 0 && TcpStream::connect_timeout(&admin, Duration::from_millis(500)).is_ok()
}

fn quit(admin: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&admin, STEP)?;
    stream.set_read_timeout(Some(STEP))?;
    stream.write_all(
        b"POST /quitquitquit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply)?;
    if !reply.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "it answered {:?}",
            String::from_utf8_lossy(&reply)
        )));
    }
    Ok(())
}

/// The running process's side: serves the handoff socket until a new process accepts.
pub struct HandoffServer {
    /// `None`: no handoff socket could be bound; a new process replaces this one the classic way.
    listener: Option<tokio::net::UnixListener>,
    sockets: Vec<(SocketInfo, OwnedFd)>,
}

impl HandoffServer {
    /// Serves `listener` (bound at `path`, or inherited), offering `proxy`'s and `admin`'s
    /// sockets and the handoff socket itself; without a listener it never hands over.
    pub fn new(
        listener: Option<StdUnixListener>,
        path: &Path,
        proxy: &ProxyHandle,
        admin: &ProxyAdmin,
    ) -> Result<Self> {
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().context("copying a socket");
        let mut sockets = Vec::new();
        for (side, addr, fd) in proxy.listener_fds() {
            let role = match side {
                Listener::Outbound => Role::Outbound,
                Listener::Hbone => Role::Hbone,
                Listener::Plaintext => Role::Plaintext,
            };
            sockets.push((info(role, addr.to_string()), dup(fd)?));
        }
        for (name, addr, fd) in admin.listener_fds() {
            let role = match name {
                "admin" => Role::Admin,
                "metrics" => Role::Metrics,
                _ => Role::Readiness,
            };
            sockets.push((info(role, addr.to_string()), dup(fd)?));
        }
        let Some(listener) = listener else {
            return Ok(Self {
                listener: None,
                sockets,
            });
        };
        sockets.push((
            info(Role::Handoff, path.display().to_string()),
            dup(listener.as_fd())?,
        ));
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: Some(tokio::net::UnixListener::from_std(listener)?),
            sockets,
        })
    }

    /// Offers the sockets to each process that asks, until one accepts; readiness is held
    /// (not ready) from the offer on, and released again if the handoff is called off.
    pub async fn next_accepted(&mut self, proxy: &ProxyHandle) -> Accepted {
        let Some(listener) = &self.listener else {
            return std::future::pending().await;
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "handoff: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let offer = match self.offer(stream) {
                Ok(offer) => offer,
                Err(error) => {
                    tracing::warn!(%error, "handoff: cannot offer the sockets");
                    continue;
                }
            };
            let offered = match tokio::task::spawn_blocking(offer).await {
                Ok(Ok(offered)) => offered,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "handoff refused; serving on");
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "handoff task failed; serving on");
                    continue;
                }
            };
            proxy.hold_readiness(true);
            let (pid, binary) = (offered.pid, offered.binary.clone());
            tracing::info!(pid, %binary, "handoff: sockets offered to a new process; waiting until it accepts");
            match tokio::task::spawn_blocking(move || offered.wait_accepting(ACCEPT_WAIT)).await {
                Ok(Ok(accepted)) => return accepted,
                Ok(Err(error)) => {
                    tracing::warn!(pid, %error, "handoff called off; serving on")
                }
                Err(error) => tracing::error!(%error, "handoff task failed; serving on"),
            }
            proxy.hold_readiness(false);
        }
    }

    /// The blocking offer to the process on `stream`.
    fn offer(
        &self,
        stream: tokio::net::UnixStream,
    ) -> Result<
        impl FnOnce() -> Result<nodemesh_handoff::Offered, nodemesh_handoff::HandoffError>
        + Send
        + use<>,
    > {
        let channel = Channel::new(stream.into_std()?)?;
        let sockets = self
            .sockets
            .iter()
            .map(|(info, fd)| Ok((info.clone(), fd.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(move || {
            let borrowed: Vec<_> = sockets
                .iter()
                .map(|(info, fd)| (info.clone(), fd.as_fd()))
                .collect();
            nodemesh_handoff::offer(channel, &borrowed, &binary(), STEP)
        })
    }
}

fn info(role: Role, address: String) -> SocketInfo {
    SocketInfo { role, address }
}

/// Waits until `proxy` is ready (every local certificate loaded), logging progress, for up to
/// [`READY_TIMEOUT`].
pub async fn await_ready(proxy: &ProxyHandle) -> Result<()> {
    let mut ready = proxy.ready();
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(_)) => anyhow::bail!("the proxy stopped before it was ready"),
            Err(_) => {
                let certs = proxy.certs().all();
                let (loaded, all) = (
                    certs.iter().filter(|(_, c)| c.is_some()).count(),
                    certs.len(),
                );
                if start.elapsed() > READY_TIMEOUT {
                    anyhow::bail!(
                        "only {loaded} of {all} certificates loaded after {READY_TIMEOUT:?}; is the CA reachable? (`nodemesh check`)"
                    );
                }
                tracing::info!(
                    loaded,
                    all,
                    "handoff: waiting for certificates before taking over"
                );
            }
        }
    }
}

/// Binds the handoff socket at `path`, creating its directory (mode 0700) if need be. Without
/// it the proxy still serves, and says that an upgrade will replace it the classic way.
pub fn bind_handoff(path: &Path) -> Option<StdUnixListener> {
    let bound = path
        .parent()
        .map_or(Ok(()), |dir| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        })
        .and_then(|()| nodemesh_handoff::bind_listener(path).map_err(std::io::Error::other));
    match bound {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no handoff socket: an upgrade will replace this proxy the classic way (connections cut); give it a writable --state-dir");
            None
        }
    }
}

/// The handoff socket's path in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[(Role, &[&str])]) -> BTreeMap<Role, Vec<SocketAddr>> {
        list.iter()
            .map(|(r, a)| (*r, a.iter().map(|s| s.parse().unwrap()).collect()))
            .collect()
    }

    #[test]
    fn offered_addresses_must_be_the_configured_ones() {
        let wanted = Addresses(addrs(&[
            (Role::Outbound, &["127.0.0.1:15001"]),
            (Role::Hbone, &["10.0.0.2:15008", "10.0.0.1:15008"]),
        ]));
        let same = addrs(&[
            (Role::Outbound, &["127.0.0.1:15001"]),
            (Role::Hbone, &["10.0.0.1:15008", "10.0.0.2:15008"]),
        ]);
        assert_eq!(mismatch(&wanted, &same), None);
        let moved = addrs(&[
            (Role::Outbound, &["127.0.0.1:15002"]),
            (Role::Hbone, &["10.0.0.1:15008", "10.0.0.2:15008"]),
        ]);
        let why = mismatch(&wanted, &moved).unwrap();
        assert!(why.contains("outbound"), "{why}");
        let fewer = addrs(&[
            (Role::Outbound, &["127.0.0.1:15001"]),
            (Role::Hbone, &["10.0.0.1:15008"]),
        ]);
        assert!(mismatch(&wanted, &fewer).unwrap().contains("hbone"));
        let extra = addrs(&[
            (Role::Outbound, &["127.0.0.1:15001"]),
            (Role::Hbone, &["10.0.0.1:15008", "10.0.0.2:15008"]),
            (Role::Plaintext, &["127.0.0.1:15006"]),
        ]);
        assert!(mismatch(&wanted, &extra).unwrap().contains("plaintext"));
    }

    #[test]
    fn a_wanted_port_zero_matches_any_port_on_the_same_ip() {
        let wanted = Addresses(addrs(&[(Role::Admin, &["127.0.0.1:0"])]));
        assert_eq!(
            mismatch(&wanted, &addrs(&[(Role::Admin, &["127.0.0.1:41234"])])),
            None
        );
        assert!(mismatch(&wanted, &addrs(&[(Role::Admin, &["127.0.0.2:41234"])])).is_some());
    }
}
