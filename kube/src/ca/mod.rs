//! The CA on Kubernetes: TokenReview authentication of projected ServiceAccount tokens, node
//! authorization from an index of running pods, the root kept in a Secret and the trust bundle
//! published in a ConfigMap.

mod authn;
mod placement;
mod root;

pub use authn::{CA_AUDIENCE, CallerRef, TokenReviewAuthenticator, decide};
pub use placement::{PodPlace, PodPlacement};
pub use root::{BUNDLE_CONFIGMAP, ROOT_SECRET, RootError, RootOrigin, RootStore};
