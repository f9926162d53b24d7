//! A small Kubernetes API server for end-to-end tests, since there is no cluster on this
//! machine: Vigil's real Kubernetes clients (kube's watcher and reflector in the control
//! plane, the CNI plugin's pod GET) talk to it over plain HTTP, as behind `kubectl
//! proxy`. It keeps objects by resource and serves what those clients use:
//!
//! - GET of one object, LIST (with `labelSelector` and `fieldSelector` equality terms);
//! - WATCH from a `resourceVersion`: the objects added or changed since, as ADDED or
//!   MODIFIED events, then the stream ends after a second, as API servers end watches
//!   (the client watches again from where it got to);
//! - POST (create; 409 when the name is taken), PUT (replace) and JSON-patch PATCH;
//! - TokenReviews, answered from the tokens the test registers;
//! - `/version` and discovery of the Gateway API group when routes are served.
//!
//! Deliberately small: no deletes, no merge patches, no pagination. Every request is
//! logged, so a test can see what a client asked.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

/// A ServiceAccount token a TokenReview accepts, and whose it is.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
}

#[derive(Default)]
struct State {
    version: u64,
    /// By collection (`/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`), then
    /// `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    tokens: BTreeMap<String, TokenOwner>,
    requests: Vec<String>,
}

/// The server; it stops with the test process.
#[derive(Clone)]
pub struct FakeKube {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// The collection path of an object: `/api/v1/pods` for `v1` Pods.
fn collection(api_version: &str, kind: &str) -> String {
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        "VigilPolicy" => "vigilpolicies".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

fn list_kind(collection: &str) -> &'static str {
    match collection.rsplit('/').next().unwrap_or("") {
        "pods" => "PodList",
        "services" => "ServiceList",
        "endpointslices" => "EndpointSliceList",
        "serviceaccounts" => "ServiceAccountList",
        "secrets" => "SecretList",
        "configmaps" => "ConfigMapList",
        "vigilpolicies" => "VigilPolicyList",
        "httproutes" => "HTTPRouteList",
        "grpcroutes" => "GRPCRouteList",
        _ => "List",
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeKube {
    /// Serves on `listener` (bound wherever its clients can reach it).
    pub fn serve(listener: TcpListener) -> FakeKube {
        let address = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let kube = FakeKube {
            address,
            state: Arc::default(),
        };
        let server = kube.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.connection(stream));
            }
        });
        kube
    }

    /// Serves on a fresh loopback port.
    pub fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        FakeKube::serve(listener)
    }

    /// A kubeconfig that points a client here.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user:\n    token: control-plane-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\ncurrent-context: fake\n",
            self.address
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces an object (it must have apiVersion, kind and metadata.name); watchers
    /// see it as added or modified.
    pub fn put(&self, mut object: Value) {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let key = format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{version:012}"));
        }
        if object["metadata"]["creationTimestamp"].is_null() {
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        state
            .objects
            .entry(collection(&api_version, &kind))
            .or_default()
            .insert(key, object);
    }

    /// One object, as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.object(&collection(api_version, kind), namespace, name)
    }

    /// Registers a ServiceAccount token that TokenReviews accept for audience `vigil`.
    pub fn token(&self, token: &str, owner: TokenOwner) {
        self.lock().tokens.insert(token.to_string(), owner);
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn connection(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut writer = stream;
        // Keep-alive: one request after another until the client closes.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) {
                    return;
                }
                if header == "\r\n" || header == "\n" {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.lock().requests.push(format!("{method} {target}"));
            let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
            let query: BTreeMap<String, String> = form_pairs(query);
            if method == "GET"
                && matches!(query.get("watch").map(String::as_str), Some("true" | "1"))
            {
                self.watch(&mut writer, path, &query);
                return;
            }
            let (code, reply) = self.answer(&method, path, &query, body);
            let text = reply.to_string();
            let reason = match code {
                200 => "OK",
                201 => "Created",
                404 => "Not Found",
                409 => "Conflict",
                422 => "Unprocessable Entity",
                _ => "Error",
            };
            if write!(
                writer,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
            .is_err()
            {
                return;
            }
        }
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
        body: Value,
    ) -> (u16, Value) {
        if path == "/version" {
            return (
                200,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}),
            );
        }
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" && method == "POST" {
            return (201, self.review(body));
        }
        if path == "/apis/gateway.networking.k8s.io/v1" {
            let state = self.lock();
            let served = state.objects.keys().any(|c| c.starts_with(path));
            if !served {
                return (
                    404,
                    status(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                );
            }
            return (
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1",
                       "groupVersion": "gateway.networking.k8s.io/v1",
                       "resources": [
                           {"name": "httproutes", "singularName": "httproute", "namespaced": true,
                            "kind": "HTTPRoute", "verbs": ["get", "list", "watch"]},
                           {"name": "grpcroutes", "singularName": "grpcroute", "namespaced": true,
                            "kind": "GRPCRoute", "verbs": ["get", "list", "watch"]}]}),
            );
        }
        let Some(target) = Target::parse(path) else {
            return (
                404,
                status(404, "NotFound", &format!("no such path {path}")),
            );
        };
        match (method, &target.name) {
            ("GET", Some(name)) => match self.object(&target.collection, &target.namespace, name) {
                Some(o) => (200, o),
                None => (404, status(404, "NotFound", &format!("{name} not found"))),
            },
            ("GET", None) => (200, self.list(&target, query).1),
            ("POST", None) => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                if self
                    .object(&target.collection, &target.namespace, &name)
                    .is_some()
                {
                    return (
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                let mut object = body;
                object["metadata"]["namespace"] = json!(target.namespace);
                self.put(object.clone());
                let stored = self.object(&target.collection, &target.namespace, &name);
                (201, stored.unwrap_or(object))
            }
            ("PATCH", Some(name)) => {
                // JSON patches only (`application/json-patch+json`), as Vigil sends them.
                let Some(mut object) = self.object(&target.collection, &target.namespace, name)
                else {
                    return (404, status(404, "NotFound", &format!("{name} not found")));
                };
                let applied = serde_json::from_value::<json_patch::Patch>(body)
                    .map_err(|e| e.to_string())
                    .and_then(|p| json_patch::patch(&mut object, &p).map_err(|e| e.to_string()));
                if let Err(e) = applied {
                    return (422, status(422, "Invalid", &e));
                }
                self.put(object);
                (
                    200,
                    self.object(&target.collection, &target.namespace, name)
                        .unwrap_or(Value::Null),
                )
            }
            ("PUT", Some(name)) => {
                let mut object = body;
                object["metadata"]["namespace"] = json!(target.namespace);
                self.put(object);
                (
                    200,
                    self.object(&target.collection, &target.namespace, name)
                        .unwrap_or(Value::Null),
                )
            }
            _ => (
                405,
                status(405, "MethodNotAllowed", "not served by the test API server"),
            ),
        }
    }

    fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(collection)?
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// The matching objects and the list, at the current version.
    fn list(&self, target: &Target, query: &BTreeMap<String, String>) -> (Vec<Value>, Value) {
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .get(&target.collection)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|o| selected(o, target, query))
            .cloned()
            .collect();
        let api_version = target
            .collection
            .trim_start_matches("/apis/")
            .trim_start_matches("/api/")
            .rsplit_once('/')
            .map(|(v, _)| v.to_string())
            .unwrap_or_default();
        let list = json!({
            "apiVersion": api_version,
            "kind": list_kind(&target.collection),
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        });
        (items, list)
    }

    fn watch(&self, writer: &mut TcpStream, path: &str, query: &BTreeMap<String, String>) {
        let Some(target) = Target::parse(path) else {
            return;
        };
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err()
        {
            return;
        }
        let mut sent = since;
        // Events as they come for about a second, then the end of the stream.
        for _ in 0..10 {
            let (items, _) = self.list(&target, query);
            let mut newest = sent;
            for item in items {
                let version: u64 = item["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if version > sent {
                    newest = newest.max(version);
                    let line = format!("{}\n", json!({"type": "ADDED", "object": item}));
                    if write!(writer, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                        return;
                    }
                }
            }
            sent = newest;
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = write!(writer, "0\r\n\r\n");
    }

    fn review(&self, body: Value) -> Value {
        let token = body["spec"]["token"].as_str().unwrap_or("");
        let owner = self.lock().tokens.get(token).cloned();
        let status = match owner {
            Some(o) => json!({
                "authenticated": true,
                "audiences": body["spec"]["audiences"],
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", o.namespace, o.service_account),
                    "uid": format!("uid-{}", o.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", o.namespace), "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": [o.pod]},
                },
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "metadata": {"creationTimestamp": null}, "spec": body["spec"], "status": status})
    }
}

/// A request path: which collection, in which namespace, which object.
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let prefix = match *parts.first()? {
            "api" => 2,
            "apis" => 3,
            _ => return None,
        };
        let base = format!("/{}", parts.get(..prefix)?.join("/"));
        let rest = parts.get(prefix..)?;
        let (namespace, plural, name) = match rest {
            ["namespaces", ns, plural] => (ns.to_string(), *plural, None),
            ["namespaces", ns, plural, name] => (ns.to_string(), *plural, Some(name.to_string())),
            [plural] => (String::new(), *plural, None),
            [plural, name] => (String::new(), *plural, Some(name.to_string())),
            _ => return None,
        };
        Some(Target {
            collection: format!("{base}/{plural}"),
            namespace,
            name,
        })
    }
}

/// Whether `object` is in the request's namespace (all when none) and selectors.
fn selected(object: &Value, target: &Target, query: &BTreeMap<String, String>) -> bool {
    let meta = &object["metadata"];
    if !target.namespace.is_empty() && meta["namespace"].as_str() != Some(&target.namespace) {
        return false;
    }
    let labels_ok = query.get("labelSelector").is_none_or(|selector| {
        selector.split(',').filter(|t| !t.is_empty()).all(|term| {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            meta["labels"][k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('='))
        })
    });
    let fields_ok = query.get("fieldSelector").is_none_or(|selector| {
        selector
            .split(',')
            .filter(|t| !t.is_empty())
            .all(|term| match term.split_once('=') {
                Some(("metadata.name", v)) => {
                    meta["name"].as_str() == Some(v.trim_start_matches('='))
                }
                Some(("metadata.namespace", v)) => {
                    meta["namespace"].as_str() == Some(v.trim_start_matches('='))
                }
                _ => true,
            })
    });
    labels_ok && fields_ok
}

/// `a=b&c=d`, percent-decoded.
fn form_pairs(query: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}
