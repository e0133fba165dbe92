//! Publishes this node's WireGuard public key as the Node annotation
//! `nodemesh.io/wireguard-public-key`, where the other nodes' proxies read it.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::convert::WIREGUARD_KEY_ANNOTATION;

/// Sets the annotation on Node `node` to `public_key` (base64, as `wg pubkey` prints it). The
/// chart's ValidatingAdmissionPolicy lets a proxy change only this annotation of its own Node.
pub async fn publish_wireguard_key(
    client: kube::Client,
    node: &str,
    public_key: &str,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client);
    let patch = serde_json::json!({
        "metadata": {"annotations": {WIREGUARD_KEY_ANNOTATION: public_key}}
    });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(node, "WireGuard public key published on the Node");
    Ok(())
}
