//! One list/watch loop per kind: converts each object once and sends the change to the source.
//!
//! On any error the loop reports it, drops the stream, backs off and starts over with a full
//! relist; the relist ends with a [`Update::Reset`] that replaces the kind's map, so whatever
//! changed during an outage (deletions included) is applied when the API returns, and a
//! completed relist is the unambiguous sign that the view is fresh again.

use std::collections::BTreeMap;
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

/// Lists and watches `api` until `updates` closes, converting objects with `convert` (keyed by
/// `key`).
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
    let mut wait = retry.initial;
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
                    Update::Reset(kind, std::mem::take(&mut listing))
                }
                Ok(Event::Apply(obj)) => Update::Apply(kind, key(&obj), convert(&obj)),
                Ok(Event::Delete(obj)) => Update::Delete(kind, key(&obj)),
                Err(error) => {
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
            if updates.send(update).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(retry.max);
    }
}
