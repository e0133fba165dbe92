//! The destination side's open connections and what each was admitted on, so that policy
//! reaches them: every change of the state re-decides them, and those no longer allowed are
//! revoked (ztunnel's connection manager, linkerd's `policy.changed()`).
//!
//! One task owns the table ([`Table::run`]); connections join it with [`Conns::open`] and leave
//! it when their [`Open`] drops, both by message, so nothing takes a lock. A revocation reaches
//! its connection through a oneshot that [`Open::run`] polls next to the connection's work:
//! an atomic load per wake-up on the data path.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nodemesh_identity::SpiffeId;
use nodemesh_state::{MeshState, MeshStore};
use tokio::sync::{mpsc, oneshot};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::flow::Refused;
use crate::observe::RefusalReason;

/// A connection arriving for a local pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The verified peer identity (HBONE, or a same-node mesh client); `None` for plaintext.
    pub peer: Option<SpiffeId>,
    /// The client's address.
    pub src: ClientAddr,
    /// The pod address and port asked for.
    pub target: OrigDstAddr,
}

/// What an open connection carries, which decides what "still allowed" means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Bytes as they are (an L4 tunnel, or a stream to an L7 destination that is not HTTP):
    /// under a destination that needs L7, the L4 decision for non-HTTP streams must allow it.
    Opaque,
    /// HTTP requests, each decided against the policies in force when it arrives: the
    /// connection itself must stay admissible.
    Http,
}

/// What an open connection was admitted on: the admission's inputs and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedOn {
    /// The arrival as decided.
    pub arrival: Arrival,
    /// The destination workload's identity it was admitted to (its certificate answered).
    pub destination: SpiffeId,
    /// The source address was a workload of the peer's identity in the state (a believed
    /// `forwarded`, or a same-node client): it must stay one.
    pub source_vouched: bool,
    /// What it carries.
    pub carried: Carried,
}

enum Command {
    Open {
        id: u64,
        on: AdmittedOn,
        /// The snapshot it was decided on: another one means a change it has not seen.
        decided_on: Arc<MeshState>,
        revoke: oneshot::Sender<Refused>,
    },
    Close(u64),
}

/// The proxy's handle on its open connections (in the proxy context). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Conns {
    tx: mpsc::UnboundedSender<Command>,
    next: Arc<AtomicU64>,
}

impl Conns {
    /// A handle and the table its task runs ([`Table::run`]).
    pub fn new() -> (Self, Table) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conns = Self {
            tx,
            next: Arc::new(AtomicU64::new(0)),
        };
        (conns, Table { rx })
    }

    /// Registers a connection admitted on `on` against `decided_on`; it stays registered
    /// until the returned [`Open`] drops.
    pub fn open(&self, decided_on: &Arc<MeshState>, on: AdmittedOn) -> Open {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = oneshot::channel();
        // Without the table (the proxy is stopping) nothing is revoked: the work runs on.
        let _ = self.tx.send(Command::Open {
            id,
            on,
            decided_on: Arc::clone(decided_on),
            revoke,
        });
        Open {
            id,
            tx: self.tx.clone(),
            revoked,
        }
    }
}

/// One registered connection.
#[derive(Debug)]
#[must_use = "dropping it unregisters the connection"]
pub struct Open {
    id: u64,
    tx: mpsc::UnboundedSender<Command>,
    revoked: oneshot::Receiver<Refused>,
}

impl Open {
    /// Runs the connection's `work` until it ends, or until a change no longer allows the
    /// connection: then `work` is dropped (its sockets close) and the refusal
    /// ([`RefusalReason::PolicyChanged`]) is returned.
    pub async fn run<F: Future>(mut self, work: F) -> Result<F::Output, Refused> {
        let revoked = async {
            match (&mut self.revoked).await {
                Ok(refused) => refused,
                // The table is gone (the proxy stops): nothing revokes any more.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            output = work => Ok(output),
            refused = revoked => Err(refused),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Close(self.id));
    }
}

struct Entry {
    on: AdmittedOn,
    revoke: oneshot::Sender<Refused>,
}

/// The table of open connections, owned by one task.
#[derive(Debug)]
pub struct Table {
    rx: mpsc::UnboundedReceiver<Command>,
}

impl Table {
    /// Keeps the table until every [`Conns`] handle is gone: on each change of `store`, and for
    /// a connection registered on an older snapshot, `check` decides again (pure, like the
    /// admission); a refusal revokes the connection with reason `policy_changed` and the
    /// refusing policy, if one refused.
    pub async fn run<C>(mut self, store: Arc<MeshStore>, check: C)
    where
        C: Fn(&MeshState, &AdmittedOn) -> Result<(), Refused>,
    {
        let mut entries: HashMap<u64, Entry> = HashMap::new();
        let mut changes = store.subscribe();
        let mut watching = true;
        loop {
            tokio::select! {
                command = self.rx.recv() => match command {
                    None => return,
                    Some(Command::Close(id)) => {
                        entries.remove(&id);
                    }
                    Some(Command::Open { id, on, decided_on, revoke }) => {
                        let entry = Entry { on, revoke };
                        let now = store.load();
                        if Arc::ptr_eq(&now, &decided_on) {
                            entries.insert(id, entry);
                        } else if let Some(entry) = recheck(&now, entry, &check) {
                            entries.insert(id, entry);
                        }
                    }
                },
                changed = changes.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let now = store.load();
                    entries = entries
                        .into_iter()
                        .filter_map(|(id, e)| recheck(&now, e, &check).map(|e| (id, e)))
                        .collect();
                }
            }
        }
    }
}

/// The entry back if `state` still allows it; else the connection is revoked.
fn recheck<C>(state: &MeshState, entry: Entry, check: &C) -> Option<Entry>
where
    C: Fn(&MeshState, &AdmittedOn) -> Result<(), Refused>,
{
    let Err(refused) = check(state, &entry.on) else {
        return Some(entry);
    };
    tracing::info!(
        src = %entry.on.arrival.src,
        dst = %entry.on.arrival.target,
        because = refused.reason.as_str(),
        policy = refused.policy.as_deref(),
        "open connection no longer allowed: closed"
    );
    let _ = entry.revoke.send(Refused {
        reason: RefusalReason::PolicyChanged,
        policy: refused.policy,
    });
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use nodemesh_config::Config;

    use super::*;

    fn state() -> MeshState {
        let yaml = "nodes: [{name: node-a, address: 10.0.0.1}]\nworkloads: []\n";
        MeshState::new(Config::from_yaml_str(yaml, "/").unwrap(), "node-a").unwrap()
    }

    fn on() -> AdmittedOn {
        AdmittedOn {
            arrival: Arrival {
                peer: None,
                src: ClientAddr("10.0.0.2:1".parse().unwrap()),
                target: OrigDstAddr("10.0.0.3:80".parse().unwrap()),
            },
            destination: SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap(),
            source_vouched: false,
            carried: Carried::Opaque,
        }
    }

    #[tokio::test]
    async fn connections_are_revoked_on_a_change_or_when_registered_on_an_old_snapshot() {
        let store = Arc::new(MeshStore::new(state()));
        let (conns, table) = Conns::new();
        // Everything is refused once the state is no longer the first one.
        let first = store.load();
        let initial = Arc::clone(&first);
        let check = move |s: &MeshState, _: &AdmittedOn| {
            if std::ptr::eq(s, &*initial) {
                Ok(())
            } else {
                Err(Refused::by_policy(Some("ns/deny".into())))
            }
        };
        tokio::spawn(table.run(Arc::clone(&store), check));
        let open = conns.open(&first, on());
        let held = tokio::spawn(open.run(std::future::pending::<()>()));
        store.publish(state());
        let refused = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::PolicyChanged);
        assert_eq!(refused.policy.as_deref(), Some("ns/deny"));
        // Registered after the change, on the snapshot before it: decided again at once.
        let late = conns.open(&first, on()).run(std::future::pending::<()>());
        let refused = tokio::time::timeout(Duration::from_secs(10), late)
            .await
            .unwrap();
        assert_eq!(refused.unwrap_err().reason, RefusalReason::PolicyChanged);
        // Work that ends first is its own answer.
        assert_eq!(
            conns.open(&store.load(), on()).run(async { 7 }).await,
            Ok(7)
        );
    }
}
