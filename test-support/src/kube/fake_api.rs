//! A fake Kubernetes API server on 127.0.0.1 speaking the list/watch JSON protocol, driven by the
//! real kube-rs client.
//!
//! Why an in-repo fake rather than the PyPI `kmock` emulator: it needs no Python at `cargo test`
//! time, it sets `resourceVersion` on lists, objects and watch events (kmock sets none, and
//! kube-runtime's watcher refuses a list without one, so resumed watches could not be tested),
//! and it can simulate an outage (every request answers 503 and open watches end) and serve
//! TokenReview, Secrets and ConfigMaps for the CA, and stop serving a collection (as the real
//! server does for a CRD that is not installed: 404 with a plain-text body). What it does not do: field/label selectors,
//! pagination (`limit` is ignored, one page), bookmarks, 410 Gone on stale resource versions,
//! admission or schema validation.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

/// Object key: collection (`v1/pods`, `security.nodemesh.io/v1/authorizationpolicies`),
/// namespace (empty for cluster-scoped), name.
type Key = (String, String, String);

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, collection, event type, object)
    log: Vec<(u64, String, &'static str, Value)>,
    down: bool,
    /// Collections answered with 404, as resources the server does not serve.
    unserved: BTreeSet<String>,
    /// Scripted TokenReview statuses by token.
    reviews: BTreeMap<String, Value>,
}

/// The fake server; cheap to clone.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<RwLock<Inner>>,
    /// Bumped on every change and outage flip; open watches follow it.
    changed: watch::Sender<u64>,
    /// Where it listens.
    pub addr: SocketAddr,
}

fn response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A parsed request path.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let t = |res: &str, ns: Option<&str>, name: Option<&str>, status: bool| Target {
        collection: format!("{gv}/{res}"),
        namespace: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    };
    Some(match rest {
        [res] => t(res, None, None, false),
        ["namespaces", ns, res] => t(res, Some(ns), None, false),
        ["namespaces", ns, res, name] => t(res, Some(ns), Some(name), false),
        ["namespaces", ns, res, name, "status"] => t(res, Some(ns), Some(name), true),
        [res, name] => t(res, None, Some(name), false),
        [res, name, "status"] => t(res, None, Some(name), true),
        _ => return None,
    })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn kind_of(collection: &str) -> (&'static str, &'static str) {
    match collection {
        "v1/pods" => ("v1", "Pod"),
        "v1/namespaces" => ("v1", "Namespace"),
        "v1/nodes" => ("v1", "Node"),
        "v1/services" => ("v1", "Service"),
        "v1/secrets" => ("v1", "Secret"),
        "v1/configmaps" => ("v1", "ConfigMap"),
        "discovery.k8s.io/v1/endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        "security.nodemesh.io/v1/authorizationpolicies" => {
            ("security.nodemesh.io/v1", "AuthorizationPolicy")
        }
        "security.istio.io/v1/authorizationpolicies" => {
            ("security.istio.io/v1", "AuthorizationPolicy")
        }
        "security.istio.io/v1beta1/authorizationpolicies" => {
            ("security.istio.io/v1beta1", "AuthorizationPolicy")
        }
        "networking.k8s.io/v1/networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        "policy.networking.k8s.io/v1alpha2/clusternetworkpolicies" => {
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy")
        }
        _ => ("v1", "Unknown"),
    }
}

impl FakeApi {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the server on `addr` (e.g. a testbed node's underlay address).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = FakeApi {
            inner: Arc::new(RwLock::new(Inner::default())),
            changed: watch::Sender::new(0),
            addr,
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let api = api.clone();
                        async move {
                            if api.inner.read().unwrap().down {
                                // An outage looks like a dead server: the connection drops.
                                return Err(std::io::Error::other("the fake API is down"));
                            }
                            Ok(api.handle(req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    /// Writes a kubeconfig pointing at this server (for processes under test).
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
                self.addr
            ),
        )
        .unwrap();
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> ::kube::Client {
        let url: http::Uri = format!("http://{}", self.addr).parse().unwrap();
        ::kube::Client::try_from(::kube::Config::new(url)).unwrap()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Creates or replaces an object of `collection` (its namespace and name from metadata).
    pub fn put(&self, collection: &str, object: Value) {
        self.store(collection, object, true);
    }

    /// A status write: bumps resourceVersion but not generation.
    fn put_status(&self, collection: &str, object: Value) {
        self.store(collection, object, false);
    }

    fn store(&self, collection: &str, mut object: Value, spec_change: bool) {
        let mut inner = self.inner.write().unwrap();
        let (api_version, kind) = kind_of(collection);
        object["apiVersion"] = api_version.into();
        object["kind"] = kind.into();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let key = (collection.to_owned(), ns, name.clone());
        inner.rv += 1;
        let rv = inner.rv;
        let (kind, generation) = match inner.objects.get(&key) {
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                ("MODIFIED", if spec_change { g + 1 } else { g })
            }
            None => ("ADDED", 1),
        };
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = format!("uid-{name}-{rv}").into();
        }
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        object["metadata"]["generation"] = generation.into();
        inner.objects.insert(key, object.clone());
        inner.log.push((rv, collection.to_owned(), kind, object));
        drop(inner);
        self.bump();
    }

    /// Deletes an object.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let mut inner = self.inner.write().unwrap();
        let key = (collection.to_owned(), namespace.to_owned(), name.to_owned());
        if let Some(mut object) = inner.objects.remove(&key) {
            inner.rv += 1;
            let rv = inner.rv;
            object["metadata"]["resourceVersion"] = rv.to_string().into();
            inner
                .log
                .push((rv, collection.to_owned(), "DELETED", object));
        }
        drop(inner);
        self.bump();
    }

    /// The object, if present.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (collection.to_owned(), namespace.to_owned(), name.to_owned());
        self.inner.read().unwrap().objects.get(&key).cloned()
    }

    /// Takes the API down (connections drop, open watches end) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner.write().unwrap().down = down;
        self.bump();
    }

    /// Stops (`false`) or resumes serving `collection`: while unserved, every request for it
    /// answers 404 with the real server's plain-text body for a path it does not know (a CRD
    /// not installed), and open watches of it end. Objects stored meanwhile are kept.
    pub fn set_served(&self, collection: &str, served: bool) {
        let mut inner = self.inner.write().unwrap();
        if served {
            inner.unserved.remove(collection);
        } else {
            inner.unserved.insert(collection.to_owned());
        }
        drop(inner);
        self.bump();
    }

    /// Scripts the TokenReview status returned for `token`.
    pub fn review(&self, token: &str, status: Value) {
        self.inner
            .write()
            .unwrap()
            .reviews
            .insert(token.to_owned(), status);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(target) = parse_path(req.uri().path()) else {
            return status(404, "NotFound", "no such path");
        };
        if self
            .inner
            .read()
            .unwrap()
            .unserved
            .contains(&target.collection)
        {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"404 page not found\n")).boxed())
                .unwrap();
        }
        let q = query(req.uri());
        let method = req.method().clone();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let body: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        match (method, &target.name) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                let from: u64 = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watch(target, from)
            }
            (Method::GET, None) => self.list(&target),
            (Method::GET, Some(name)) => {
                let ns = target.namespace.clone().unwrap_or_default();
                match self.get(&target.collection, &ns, name) {
                    Some(o) => response(StatusCode::OK, &o),
                    None => status(404, "NotFound", &format!("{name} not found")),
                }
            }
            (Method::POST, None)
                if target.collection == "authentication.k8s.io/v1/tokenreviews" =>
            {
                let token = body["spec"]["token"].as_str().unwrap_or_default();
                let review = self.inner.read().unwrap().reviews.get(token).cloned();
                let st = review.unwrap_or_else(
                    || json!({"authenticated": false, "error": "invalid bearer token"}),
                );
                response(
                    StatusCode::CREATED,
                    &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                            "metadata": {}, "spec": body["spec"], "status": st}),
                )
            }
            (Method::POST, None) => {
                let ns = target.namespace.clone().unwrap_or_default();
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if self.get(&target.collection, &ns, &name).is_some() {
                    return status(409, "AlreadyExists", &format!("{name} already exists"));
                }
                let mut object = body;
                object["metadata"]["namespace"] = ns.clone().into();
                self.put(&target.collection, object);
                response(
                    StatusCode::CREATED,
                    &self.get(&target.collection, &ns, &name).unwrap(),
                )
            }
            (Method::PATCH, Some(name)) => {
                let ns = target.namespace.clone().unwrap_or_default();
                let mut object = match self.get(&target.collection, &ns, name) {
                    Some(o) => o,
                    // Server-side apply creates.
                    None if q.contains_key("fieldManager") => {
                        json!({"metadata": {"name": name, "namespace": ns}})
                    }
                    None => return status(404, "NotFound", &format!("{name} not found")),
                };
                if target.status {
                    merge(&mut object["status"], &body["status"]);
                    self.put_status(&target.collection, object);
                } else {
                    merge(&mut object, &body);
                    if ns.is_empty()
                        && let Some(m) = object["metadata"].as_object_mut()
                    {
                        m.remove("namespace");
                    }
                    self.put(&target.collection, object);
                }
                response(
                    StatusCode::OK,
                    &self.get(&target.collection, &ns, name).unwrap(),
                )
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn matching(target: &Target, collection: &str, object: &Value) -> bool {
        collection == target.collection
            && target
                .namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
    }

    fn list(&self, target: &Target) -> Response<Body> {
        let inner = self.inner.read().unwrap();
        let items: Vec<&Value> = inner
            .objects
            .iter()
            .filter(|((c, _, _), o)| Self::matching(target, c, o))
            .map(|(_, o)| o)
            .collect();
        let (api_version, kind) = kind_of(&target.collection);
        response(
            StatusCode::OK,
            &json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                    "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, target: Target, from: u64) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let api = self.clone();
        let mut changes = self.changed.subscribe();
        tokio::spawn(async move {
            let mut sent = from;
            loop {
                let batch: Vec<(u64, Value)> = {
                    let inner = api.inner.read().unwrap();
                    if inner.down || inner.unserved.contains(&target.collection) {
                        return; // ends the response: the client sees the watch close
                    }
                    inner
                        .log
                        .iter()
                        .filter(|(rv, c, _, o)| *rv > sent && Self::matching(&target, c, o))
                        .map(|(rv, _, t, o)| (*rv, json!({"type": t, "object": o})))
                        .collect()
                };
                for (rv, event) in batch {
                    sent = rv;
                    let mut line = event.to_string();
                    line.push('\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap()
    }
}
