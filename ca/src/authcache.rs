//! External authentication (TokenReview) without a review per request: results are cached
//! briefly, and each caller address has a small budget of refused reviews, so a flood of bad
//! tokens costs the API server a few reviews, not one per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::callers::{AuthError, Authenticator};

/// How long an accepted token is believed without a new review.
pub const ACCEPTED_TTL: Duration = Duration::from_secs(30);
/// How long a refused token stays refused without a new review.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Refused reviews an address may cause in a burst.
pub const REFUSED_BURST: u32 = 10;
/// One refused review of an address is forgiven per this interval.
pub const REFUSED_REFILL: Duration = Duration::from_secs(1);
/// Entries kept per map (tokens, addresses); past it, expired ones are dropped, then all.
const MAX_ENTRIES: usize = 4096;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachedRefusal {
    /// The authenticator refused it (now or recently).
    Refused(AuthError),
    /// The caller's address has used its budget of refused reviews.
    Throttled {
        /// When another review is possible.
        retry_after: Duration,
    },
}

struct Entry {
    result: Result<String, AuthError>,
    until: SystemTime,
}

/// A budget of refused reviews: `spent` of [`REFUSED_BURST`], as of `at`.
#[derive(Clone, Copy)]
struct Budget {
    spent: u32,
    at: SystemTime,
}

impl Budget {
    /// The budget at `now`, forgiving one review per [`REFUSED_REFILL`] since `at`.
    fn at(self, now: SystemTime) -> Budget {
        let elapsed = now.duration_since(self.at).unwrap_or_default();
        let forgiven =
            u32::try_from(elapsed.as_secs() / REFUSED_REFILL.as_secs().max(1)).unwrap_or(u32::MAX);
        if forgiven == 0 {
            return self;
        }
        Budget {
            spent: self.spent.saturating_sub(forgiven),
            at: now,
        }
    }
}

#[derive(Default)]
struct Inner {
    results: HashMap<String, Entry>,
    budgets: HashMap<Option<IpAddr>, Budget>,
}

/// The cache in front of an [`Authenticator`]. The lock is held for map updates only, never
/// across a review.
#[derive(Default)]
pub(crate) struct AuthCache {
    inner: tokio::sync::Mutex<Inner>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache").finish_non_exhaustive()
    }
}

fn bound<K, V>(map: &mut HashMap<K, V>, expired: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, v| !expired(v));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
}

impl AuthCache {
    /// The node of the caller presenting `token` from `peer` at `now`: from the cache, else
    /// from `auth` when `peer`'s budget of refused reviews allows one.
    pub(crate) async fn authenticate(
        &self,
        auth: &dyn Authenticator,
        token: &str,
        peer: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<String, CachedRefusal> {
        {
            let mut inner = self.inner.lock().await;
            if let Some(e) = inner.results.get(token).filter(|e| e.until > now) {
                return e.result.clone().map_err(CachedRefusal::Refused);
            }
            let budget = inner
                .budgets
                .get(&peer)
                .map_or(Budget { spent: 0, at: now }, |b| b.at(now));
            if budget.spent >= REFUSED_BURST {
                return Err(CachedRefusal::Throttled {
                    retry_after: REFUSED_REFILL,
                });
            }
            // Reserved now (concurrent bad tokens count too), given back if accepted.
            bound(&mut inner.budgets, |b| b.at(now).spent == 0);
            inner.budgets.insert(
                peer,
                Budget {
                    spent: budget.spent + 1,
                    at: budget.at,
                },
            );
        }
        let result = auth.authenticate(token).await;
        let mut inner = self.inner.lock().await;
        let ttl = if result.is_ok() {
            if let Some(b) = inner.budgets.get_mut(&peer) {
                b.spent = b.spent.saturating_sub(1);
            }
            ACCEPTED_TTL
        } else {
            REFUSED_TTL
        };
        bound(&mut inner.results, |e| e.until <= now);
        inner.results.insert(
            token.to_owned(),
            Entry {
                result: result.clone(),
                until: now + ttl,
            },
        );
        result.map_err(CachedRefusal::Refused)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use nodemesh_identity::SpiffeId;

    use super::*;
    use crate::callers::AuthFuture;

    /// Accepts `good` (node-a), refuses everything else; counts reviews.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Authenticator for Counting {
        fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if token == "good" {
                    Ok("node-a".to_owned())
                } else {
                    Err(AuthError::new("token rejected by TokenReview"))
                }
            })
        }
        fn runs_on(&self, _: &str, _: &SpiffeId) -> bool {
            true
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[tokio::test]
    async fn results_are_cached_until_they_expire() {
        let (auth, cache) = (Counting::default(), AuthCache::default());
        let ip = Some("10.0.0.1".parse().unwrap());
        for s in 0..30 {
            let now = T0 + Duration::from_secs(s);
            assert_eq!(
                cache.authenticate(&auth, "good", ip, now).await.unwrap(),
                "node-a"
            );
        }
        assert_eq!(auth.0.load(Ordering::SeqCst), 1, "one review in 30 s");
        cache
            .authenticate(&auth, "good", ip, T0 + ACCEPTED_TTL)
            .await
            .unwrap();
        assert_eq!(
            auth.0.load(Ordering::SeqCst),
            2,
            "reviewed again once expired"
        );
        for _ in 0..5 {
            let err = cache.authenticate(&auth, "bad", ip, T0).await.unwrap_err();
            assert!(matches!(err, CachedRefusal::Refused(_)), "{err:?}");
        }
        assert_eq!(auth.0.load(Ordering::SeqCst), 3, "a refusal is cached too");
    }

    #[tokio::test]
    async fn refused_reviews_are_budgeted_per_address() {
        let (auth, cache) = (Counting::default(), AuthCache::default());
        let bad_ip = Some("192.0.2.1".parse().unwrap());
        let good_ip = Some("10.0.0.1".parse().unwrap());
        for i in 0..50 {
            let _ = cache
                .authenticate(&auth, &format!("bad-{i}"), bad_ip, T0)
                .await;
        }
        assert_eq!(auth.0.load(Ordering::SeqCst), REFUSED_BURST as usize);
        let err = cache
            .authenticate(&auth, "bad-x", bad_ip, T0)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CachedRefusal::Throttled {
                retry_after: REFUSED_REFILL
            }
        );
        // Another address is not held up; one review is forgiven per second.
        assert!(cache.authenticate(&auth, "good", good_ip, T0).await.is_ok());
        let later = T0 + REFUSED_REFILL;
        let _ = cache.authenticate(&auth, "bad-y", bad_ip, later).await;
        assert_eq!(auth.0.load(Ordering::SeqCst), REFUSED_BURST as usize + 2);
        let err = cache
            .authenticate(&auth, "bad-z", bad_ip, later)
            .await
            .unwrap_err();
        assert!(matches!(err, CachedRefusal::Throttled { .. }), "{err:?}");
    }
}
