//! Writes the `Accepted` condition of our AuthorizationPolicy objects through the status
//! subresource. Every node's proxy computes the same condition; only a proxy that sees the
//! object without it writes, so the writes stop once the first lands.

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use tokio::sync::mpsc;

use crate::policy::{PolicyApi, StatusUpdate};

/// Writes status updates until the channel closes; failures are logged (the next event of the
/// object asks again).
pub async fn write(client: kube::Client, mut updates: mpsc::Receiver<StatusUpdate>) {
    let resource = PolicyApi::Nodemesh.resource();
    while let Some(update) = updates.recv().await {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &update.namespace, &resource);
        let patch = serde_json::json!({"status": {"conditions": [update.condition]}});
        match api
            .patch_status(&update.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(
                policy = %format!("{}/{}", update.namespace, update.name),
                accepted = %update.condition.status,
                "policy status written"
            ),
            Err(error) => tracing::warn!(
                policy = %format!("{}/{}", update.namespace, update.name),
                %error,
                "cannot write the policy status"
            ),
        }
    }
}
