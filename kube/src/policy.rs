//! AuthorizationPolicy objects (ours and Istio's) to compiled policies, once per watch event.
//!
//! Objects are watched untyped ([`DynamicObject`]) and parsed one by one, so an object that does
//! not fit the schema fails closed on its own instead of failing the whole watch.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use nodemesh_config::RawPolicy;
use nodemesh_policy::status::{ACCEPTED, PolicyCondition};
use nodemesh_policy::{Policy, PolicyDocument, PolicyRef};
use nodemesh_state::PolicyProblem;

/// Which AuthorizationPolicy API a watcher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyApi {
    /// `security.nodemesh.io/v1` (ours; status is written).
    Nodemesh,
    /// `security.istio.io/v1`.
    IstioV1,
    /// `security.istio.io/v1beta1`.
    IstioV1beta1,
}

impl PolicyApi {
    /// `group/version`.
    pub fn api_version(self) -> &'static str {
        match self {
            PolicyApi::Nodemesh => "security.nodemesh.io/v1",
            PolicyApi::IstioV1 => "security.istio.io/v1",
            PolicyApi::IstioV1beta1 => "security.istio.io/v1beta1",
        }
    }

    /// The API resource to list and watch.
    pub fn resource(self) -> ApiResource {
        let (group, version) = self
            .api_version()
            .split_once('/')
            .unwrap_or(("security.nodemesh.io", "v1"));
        let gvk = GroupVersionKind::gvk(group, version, nodemesh_policy::model::KIND);
        ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies")
    }
}

/// One policy object, compiled.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// The compiled policy (fail-closed when it did not compile).
    pub policy: Policy,
    /// Its compile errors, if any.
    pub problem: Option<PolicyProblem>,
    /// The document, for `/config_dump`.
    pub raw: RawPolicy,
    /// The `Accepted` condition to write, when ours and the object does not carry it yet.
    pub status_update: Option<StatusUpdate>,
}

/// A status condition to write on one of our policy objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The condition.
    pub condition: PolicyCondition,
}

/// Compiles one object; `None` when it has no namespace or name.
pub fn compile(api: PolicyApi, obj: &DynamicObject) -> Option<PolicyEntry> {
    let namespace = obj.metadata.namespace.clone()?;
    let name = obj.metadata.name.clone()?;
    let id = PolicyRef::new(namespace.as_str(), name.as_str());
    let mut value = serde_json::to_value(obj).ok()?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), api.api_version().into());
        map.insert("kind".into(), nodemesh_policy::model::KIND.into());
        // Server-set fields the file schema does not list.
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            retain_document_metadata(meta);
        }
    }
    let (policy, errors) = match PolicyDocument::from_json_value(value.clone()) {
        Ok(doc) => {
            let (policy, errors) = nodemesh_policy::compile_fail_closed(
                id.clone(),
                &doc.metadata.annotations,
                &doc.spec,
            );
            let errors = errors.map(|e| {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.field, e.kind))
                    .collect::<Vec<_>>()
            });
            (policy, errors)
        }
        Err(error) => {
            let reason = error.to_string();
            let spec = value.get("spec").cloned().unwrap_or_default();
            let policy = nodemesh_policy::fail_closed_unparsable(id.clone(), &spec, reason.clone());
            (policy, Some(vec![reason]))
        }
    };
    let generation = obj.metadata.generation;
    let condition = accepted_condition(errors.as_deref(), generation);
    let status_update =
        (api == PolicyApi::Nodemesh && !carries(obj, &condition)).then(|| StatusUpdate {
            namespace: namespace.clone(),
            name: name.clone(),
            condition,
        });
    Some(PolicyEntry {
        policy,
        problem: errors.map(|errors| PolicyProblem {
            policy: id.to_string(),
            errors,
        }),
        raw: RawPolicy::new(value),
        status_update,
    })
}

/// Keeps the `metadata` fields a policy document shows (name, namespace, labels, annotations,
/// uid, resourceVersion, generation, creationTimestamp); drops the rest of the server's
/// bookkeeping (`managedFields` above all).
pub(crate) fn retain_document_metadata(meta: &mut serde_json::Map<String, serde_json::Value>) {
    meta.retain(|k, _| {
        matches!(
            k.as_str(),
            "name"
                | "namespace"
                | "labels"
                | "annotations"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
        )
    });
}

/// The `Accepted` condition for a policy with `errors` (none: accepted).
pub fn accepted_condition(errors: Option<&[String]>, generation: Option<i64>) -> PolicyCondition {
    match errors {
        None => PolicyCondition {
            type_: ACCEPTED.into(),
            status: "True".into(),
            reason: "Compiled".into(),
            message: "the policy compiled and is enforced".into(),
            observed_generation: generation,
            last_transition_time: None,
        },
        Some(errors) => PolicyCondition {
            type_: ACCEPTED.into(),
            status: "False".into(),
            reason: "Invalid".into(),
            message: format!("the policy fails closed: {}", errors.join("; ")),
            observed_generation: generation,
            last_transition_time: None,
        },
    }
}

/// Whether the object's status already has `condition` (ignoring the transition time).
fn carries(obj: &DynamicObject, condition: &PolicyCondition) -> bool {
    let Some(conditions) = obj
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
    else {
        return false;
    };
    conditions.iter().any(|c| {
        serde_json::from_value::<PolicyCondition>(c.clone()).is_ok_and(|c| {
            c.type_ == condition.type_
                && c.status == condition.status
                && c.message == condition.message
                && c.observed_generation == condition.observed_generation
        })
    })
}
