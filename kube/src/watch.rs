//! One list/watch loop per kind: converts each object once and sends the change to the source.
//!
//! On any error the loop reports it, drops the stream, backs off and starts over with a full
//! relist; the relist ends with a [`Update::Reset`] that replaces the kind's map, so whatever
//! changed during an outage (deletions included) is applied when the API returns, and a
//! completed relist is the unambiguous sign that the view is fresh again.
//!
//! A kind whose resource may not exist (a CRD another project ships, [`Absent::Empty`]) counts
//! as listed and empty while the API answers 404 for it; the loop keeps re-checking with the
//! backoff, so installing the CRD later starts following it without a restart. A 404 while the
//! source still holds objects of the kind is an outage instead (an API server that is still
//! starting answers 404 for CRD resources; a CRD really deleted deletes its objects first,
//! which the watch delivers): the last state keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::mesh::{Kind, Object};

/// A change of one kind, as the source applies it.
#[derive(Debug)]
pub enum Update {
    /// A full list: replaces the kind's objects.
    Reset(Kind, BTreeMap<String, Object>),
    /// An object was added or changed (`None`: it left the proxy's view).
    Apply(Kind, String, Option<Object>),
    /// An object was deleted.
    Delete(Kind, String),
    /// The watch failed; the last state keeps serving.
    Failed(Kind, String),
}

/// Backoff between attempts after an error.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// What a watch loop makes of an API that does not serve the resource (404 on the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// An error like any other: the kind stays unsynced (and stale) until a list succeeds.
    Fail,
    /// The resource is optional (its CRD may not be installed): while the source holds none of
    /// its objects, a 404 lists the kind as empty, logs `warning` once per absence, and the
    /// list is retried with the backoff.
    Empty {
        /// Why nothing of the kind is enforced and how to change that.
        warning: &'static str,
    },
}

/// Whether a watcher error says the API does not serve the resource at all: a 404, as a JSON
/// `Status` or as the plain-text body the API server gives for a path it does not know
/// (kube-rs then keeps only the code: `Status::is_not_found` alone would miss it).
fn not_served(error: &watcher::Error) -> bool {
    let not_found = |s: &kube::core::Status| s.code == 404 || s.is_not_found();
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => not_found(status),
        watcher::Error::WatchError(status) => not_found(status),
        _ => false,
    }
}

/// Lists and watches `api` until `updates` closes, converting objects with `convert` (keyed by
/// `key`). A resource the API does not serve is an error ([`Absent::Fail`]).
pub async fn run<K>(
    api: Api<K>,
    kind: Kind,
    key: impl Fn(&K) -> String + Send,
    convert: impl Fn(&K) -> Option<Object> + Send,
    updates: mpsc::Sender<Update>,
    retry: Retry,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    run_with(api, kind, key, convert, updates, retry, Absent::Fail).await;
}

/// [`run`], with `absent` deciding what a 404 for the resource means.
pub async fn run_with<K>(
    api: Api<K>,
    kind: Kind,
    key: impl Fn(&K) -> String + Send,
    convert: impl Fn(&K) -> Option<Object> + Send,
    updates: mpsc::Sender<Update>,
    retry: Retry,
    absent: Absent,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut wait = retry.initial;
    // Whether the last attempt found the resource missing (and reported the kind empty).
    let mut missing = false;
    // For an optional resource: the keys the source holds (a 404 must not drop them).
    let mut held: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
        let mut listing: BTreeMap<String, Object> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            let update = match item {
                Ok(Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(Event::InitApply(obj)) => {
                    if let Some(o) = convert(&obj) {
                        listing.insert(key(&obj), o);
                    }
                    continue;
                }
                Ok(Event::InitDone) => {
                    wait = retry.initial;
                    if std::mem::take(&mut missing) {
                        tracing::info!(?kind, "the resource is served now; following it");
                    }
                    Update::Reset(kind, std::mem::take(&mut listing))
                }
                Ok(Event::Apply(obj)) => Update::Apply(kind, key(&obj), convert(&obj)),
                Ok(Event::Delete(obj)) => Update::Delete(kind, key(&obj)),
                Err(error) => {
                    let not_served = matches!(absent, Absent::Empty { .. }) && not_served(&error);
                    if let Absent::Empty { warning } = absent
                        && not_served
                        && held.is_empty()
                    {
                        if !missing {
                            missing = true;
                            tracing::warn!(?kind, %error, "{warning}");
                            // Listed, and empty: the kind is synced and nothing is enforced.
                            let reset = Update::Reset(kind, BTreeMap::new());
                            if updates.send(reset).await.is_err() {
                                return;
                            }
                        } else {
                            tracing::debug!(?kind, "the resource is still not served");
                        }
                        break;
                    }
                    if not_served {
                        tracing::warn!(
                            ?kind,
                            held = held.len(),
                            "the API answers 404 for a resource this proxy holds objects of (an API server still starting?); they keep serving until it lists them again"
                        );
                    }
                    if updates
                        .send(Update::Failed(kind, error.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    break;
                }
            };
            if absent != Absent::Fail {
                hold(&mut held, &update);
            }
            if updates.send(update).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(retry.max);
    }
}

/// Follows the keys the source holds after `update`.
fn hold(held: &mut BTreeSet<String>, update: &Update) {
    match update {
        Update::Reset(_, objects) => *held = objects.keys().cloned().collect(),
        Update::Apply(_, key, Some(_)) => {
            held.insert(key.clone());
        }
        Update::Apply(_, key, None) | Update::Delete(_, key) => {
            held.remove(key);
        }
        Update::Failed(..) => {}
    }
}
