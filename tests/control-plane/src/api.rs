//! Request handling: routing, authorization, admission (NodeRestriction, CSR validation) and the
//! API's answers, including `Status` errors, watches and kubectl's `Table` form.

use crate::auth::{authorize, decide, node_may_set_label, Attributes, User};
use crate::controllers::{detached_jws, kubelet_client_error, pem_to_der, KUBELET_CLIENT_SIGNER};
use crate::store::{merge_patch, record_manager, Key, Kind, StoreError};
use crate::{ClusterInfoFault, RequestRecord, Shared};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The signer name of CSRs no signer in particular handles (v1beta1 only).
const LEGACY_UNKNOWN_SIGNER: &str = "kubernetes.io/legacy-unknown";

/// A parsed request.
#[derive(Debug)]
pub struct Req {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Accept header.
    pub accept: String,
    /// Content-Type header.
    pub content_type: String,
    /// User-Agent header.
    pub user_agent: String,
    /// Body.
    pub body: Bytes,
    /// Authenticated user.
    pub user: User,
    /// A bearer token was presented and no authenticator accepted it.
    pub bad_credentials: bool,
}

/// An answer.
pub enum Reply {
    /// A complete body.
    Full {
        /// Status.
        status: u16,
        /// Content type.
        content_type: &'static str,
        /// Extra headers.
        headers: Vec<(&'static str, String)>,
        /// Body.
        body: Bytes,
    },
    /// A watch stream of JSON lines.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply::Full {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from(v.to_string()),
        }
    }

    fn text(status: u16, t: impl Into<String>) -> Reply {
        Reply::Full {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(t.into()),
        }
    }

    /// The status code (for the request log).
    pub fn status(&self) -> u16 {
        match self {
            Reply::Full { status, .. } => *status,
            Reply::Stream(_) => 200,
        }
    }
}

/// The API server's answer for a path it does not serve.
fn route_not_found() -> Reply {
    status_error(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

/// A Kubernetes `Status` error.
pub fn status_error(code: u16, reason: &str, message: &str, details: Option<Value>) -> Reply {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    Reply::json(code, &v)
}

/// A Status error's `details` for an object: name (when there is one), group (when not core)
/// and kind (the resource's plural), as `errors.NewNotFound`/`NewForbidden` write them.
fn object_details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = json!({"kind": plural});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn not_found(kind: Kind, name: &str) -> Reply {
    let resource = if kind.group().is_empty() {
        kind.plural().to_owned()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    };
    status_error(
        404,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        Some(object_details(kind.group(), kind.plural(), name)),
    )
}

fn forbidden(user: &User, a: &Attributes) -> Reply {
    let what = if let Some(p) = &a.path {
        format!(
            "forbidden: User \"{}\" cannot {} path \"{p}\"",
            user.name, a.verb
        )
    } else {
        let res = if a.group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        let res = if a.subresource.is_empty() {
            res
        } else {
            format!("{res}/{}", a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", a.namespace)
        };
        let named = if a.name.is_empty() {
            String::new()
        } else {
            format!(" \"{}\"", a.name)
        };
        format!(
            "{}{named} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            res, user.name, a.verb, a.resource, a.group
        )
    };
    let details = match &a.path {
        Some(_) => json!({}),
        None => object_details(&a.group, &a.resource, &a.name),
    };
    status_error(403, "Forbidden", &what, Some(details))
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Handles one request and logs it (with both bodies; a watch's response is not kept).
pub fn handle(shared: &Arc<Shared>, req: Req) -> Reply {
    let reply = route(shared, &req);
    let response = match &reply {
        Reply::Full { body, .. } => String::from_utf8_lossy(body).into_owned(),
        Reply::Stream(_) => String::new(),
    };
    shared.lock().requests.push(RequestRecord {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        user: req.user.name.clone(),
        status: reply.status(),
        user_agent: req.user_agent.clone(),
        content_type: req.content_type.clone(),
        body: String::from_utf8_lossy(&req.body).into_owned(),
        response,
    });
    reply
}

fn route(shared: &Arc<Shared>, req: &Req) -> Reply {
    let segs: Vec<&str> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // The values service (anonymous; the openapi token is the key).
    match segs.as_slice() {
        ["v1", "values", token] if req.method == "GET" => return values_json(shared, token),
        ["token", token, "instance", _, "node_info"] if req.method == "GET" => {
            return values_ack(shared, token)
        }
        ["files", rest @ ..] if req.method == "GET" && !rest.is_empty() => {
            return static_file(shared, rest)
        }
        ["callback", ..] if req.method == "POST" => {
            shared.lock().callbacks.push(crate::Callback {
                path: req.path.clone(),
                body: String::from_utf8_lossy(&req.body).into_owned(),
            });
            return Reply::json(200, &json!({"ok": true}));
        }
        _ => {}
    }
    if req.bad_credentials {
        return status_error(401, "Unauthorized", "Unauthorized", None);
    }
    let non_resource = matches!(
        segs.as_slice(),
        [] | ["version"]
            | ["healthz"]
            | ["livez"]
            | ["readyz"]
            | ["api"]
            | ["apis"]
            | ["api", "v1"]
            | ["apis", _]
            | ["apis", _, _]
            | ["openapi", ..]
    );
    if non_resource {
        let a = Attributes {
            verb: "get".into(),
            path: Some(req.path.clone()),
            ..Attributes::default()
        };
        if req.method != "GET" {
            return status_error(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            );
        }
        if !authorize(&shared.lock().store, &req.user, &a) {
            return forbidden(&req.user, &a);
        }
        return discovery(shared, &segs);
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return route_not_found(),
    };
    if !served(shared, group, version) {
        return route_not_found();
    }
    if (group, rest) == ("authorization.k8s.io", &["selfsubjectaccessreviews"][..]) {
        return self_subject_access_review(shared, req);
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns.to_string(), tail),
        _ => (String::new(), rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, "", ""),
        [p, n] => (*p, *n, ""),
        [p, n, s] => (*p, *n, *s),
        _ => return route_not_found(),
    };
    let Some(kind) = Kind::from_plural(group, plural) else {
        return route_not_found();
    };
    if kind.namespaced() && namespace.is_empty() && !(req.method == "GET" && name.is_empty()) {
        return route_not_found();
    }
    let query = query_map(&req.query);
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (req.method.as_str(), name.is_empty()) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", true) => "create",
        ("PUT", false) => "update",
        ("PATCH", false) => "patch",
        ("DELETE", false) => "delete",
        ("POST", false) if sub == "eviction" => "create",
        _ => {
            return status_error(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            )
        }
    };
    let attrs = Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: plural.into(),
        subresource: sub.into(),
        namespace: namespace.clone(),
        name: name.into(),
        path: None,
    };
    if !authorize(&shared.lock().store, &req.user, &attrs) {
        return forbidden(&req.user, &attrs);
    }
    let ctx = Ctx {
        shared,
        req,
        kind,
        version,
        namespace,
        name: name.to_owned(),
        sub: sub.to_owned(),
        query,
    };
    match verb {
        "get" => ctx.get(),
        "list" => ctx.list(),
        "watch" => ctx.watch(),
        "create" if ctx.sub == "eviction" => ctx.evict(),
        "create" => ctx.create(),
        "update" => ctx.update(),
        "patch" => ctx.patch(),
        "delete" => ctx.delete(),
        _ => unreachable!("verbs above"),
    }
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: what any authenticated
/// user may ask of its own permissions (kube-apiserver `pkg/registry/authorization/
/// selfsubjectaccessreview`), answered by the same authorizer as every request; the review
/// comes back with `status.allowed` (and `denied`/`reason` left out, as RBAC leaves them).
fn self_subject_access_review(shared: &Shared, req: &Req) -> Reply {
    if req.method != "POST" {
        return status_error(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        );
    }
    let Ok(mut review) = serde_json::from_slice::<Value>(&req.body) else {
        return status_error(
            400,
            "BadRequest",
            "the body is not a SelfSubjectAccessReview",
            None,
        );
    };
    let ra = &review["spec"]["resourceAttributes"];
    let field = |k: &str| ra[k].as_str().unwrap_or_default().to_owned();
    let attrs = Attributes {
        verb: field("verb"),
        group: field("group"),
        resource: field("resource"),
        subresource: field("subresource"),
        namespace: field("namespace"),
        name: field("name"),
        path: review["spec"]["nonResourceAttributes"]["path"]
            .as_str()
            .map(str::to_owned),
    };
    let decision = decide(&shared.lock().store, &req.user, &attrs);
    review["status"] = json!({"allowed": decision.is_some()});
    if let Some(reason) = decision.filter(|r| !r.is_empty()) {
        review["status"]["reason"] = json!(reason);
    }
    review["metadata"] = json!({"creationTimestamp": null});
    let api_version = review["apiVersion"].as_str().unwrap_or_default().to_owned();
    record_manager(&mut review, &manager(req), &api_version);
    Reply::json(201, &review)
}

/// Whether the release played serves `group/version` (see [`crate::version::Release`]).
fn served(shared: &Shared, group: &str, version: &str) -> bool {
    (group, version) == ("", "v1")
        || groups(shared)
            .iter()
            .any(|(g, vs)| *g == group && vs.contains(&version))
}

/// The API groups the stand-in serves, each with the versions the release played serves,
/// preferred first (as `/apis` lists them).
fn groups(shared: &Shared) -> Vec<(&'static str, &'static [&'static str])> {
    let r = shared.release;
    vec![
        ("authorization.k8s.io", r.rbac_versions()),
        ("certificates.k8s.io", r.csr_versions()),
        ("policy", r.policy_versions()),
        ("rbac.authorization.k8s.io", r.rbac_versions()),
    ]
}

/// One resource of an `APIResourceList`, shaped as kube-apiserver writes it (v1.20.2:
/// `shortNames`/`categories` only when there are some, `storageVersionHash` on stored
/// resources).
fn resource_entry(kind: Kind) -> Value {
    let mut entry = json!({
        "name": kind.plural(), "singularName": "", "namespaced": kind.namespaced(),
        "kind": kind.name(),
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "storageVersionHash": URL_SAFE_NO_PAD.encode(kind.plural()).chars().take(11).collect::<String>() + "=",
    });
    if !kind.short_names().is_empty() {
        entry["shortNames"] = json!(kind.short_names());
    }
    if kind == Kind::Pod {
        entry["categories"] = json!(["all"]);
    }
    entry
}

/// Subresource entries: `status`/`approval`, and `pods/eviction` with the group and version
/// the release serves Evictions as.
fn subresource_entries(shared: &Shared, kind: Kind) -> Vec<Value> {
    let subs: &[&str] = match kind {
        Kind::Node | Kind::Pod | Kind::Pdb => &["status"],
        Kind::Csr => &["approval", "status"],
        _ => &[],
    };
    let mut out: Vec<Value> = subs
        .iter()
        .map(|s| {
            json!({
                "name": format!("{}/{s}", kind.plural()), "singularName": "",
                "namespaced": kind.namespaced(), "kind": kind.name(),
                "verbs": ["get", "patch", "update"],
            })
        })
        .collect();
    if kind == Kind::Pod {
        out.insert(0, json!({
            "name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
            "version": shared.release.eviction_version(), "kind": "Eviction", "verbs": ["create"],
        }));
    }
    out
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        resources.push(resource_entry(kind));
        resources.extend(subresource_entries(shared, kind));
    }
    if group == "authorization.k8s.io" {
        resources.push(json!({
            "name": "selfsubjectaccessreviews", "singularName": "", "namespaced": false,
            "kind": "SelfSubjectAccessReview", "verbs": ["create"],
        }));
    }
    if group.is_empty() {
        // The core list has no apiVersion (v1.20.2 `/api/v1`).
        return json!({"kind": "APIResourceList", "groupVersion": version, "resources": resources});
    }
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    })
}

fn discovery(shared: &Arc<Shared>, segs: &[&str]) -> Reply {
    let host = shared.url.trim_start_matches("https://").to_owned();
    match segs {
        ["version"] => Reply::json(200, &version_info(shared)),
        ["healthz"] | ["livez"] | ["readyz"] => Reply::text(200, "ok"),
        ["api"] => Reply::json(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }),
        ),
        ["apis"] => {
            let list: Vec<Value> = groups(shared)
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions.clone(), "preferredVersion": versions[0]})
                })
                .collect();
            Reply::json(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}),
            )
        }
        ["api", "v1"] => Reply::json(200, &resource_list(shared, "", "v1")),
        ["apis", g] => match groups(shared).into_iter().find(|(name, _)| name == g) {
            Some((g, vs)) => {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                Reply::json(
                    200,
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": g,
                    "versions": versions.clone(), "preferredVersion": versions[0]}),
                )
            }
            None => route_not_found(),
        },
        ["apis", g, v] if served(shared, g, v) && groups(shared).iter().any(|(n, _)| n == g) => {
            Reply::json(200, &resource_list(shared, g, v))
        }
        _ => route_not_found(),
    }
}

/// `/version` (apimachinery `pkg/version` `Info`): from 1.33 also the emulation and minimum
/// compatibility versions, equal to the binary's and one minor below without
/// `--emulated-version` (kubernetes#130019).
fn version_info(shared: &Shared) -> Value {
    let r = shared.release;
    let mut v = json!({
        "major": r.major.to_string(), "minor": r.minor.to_string(),
        "gitVersion": shared.options.kubernetes_version,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
        "platform": "linux/amd64",
    });
    if r.version_reports_emulation() {
        v["emulationMajor"] = json!(r.major.to_string());
        v["emulationMinor"] = json!(r.minor.to_string());
        v["minCompatibilityMajor"] = json!(r.major.to_string());
        v["minCompatibilityMinor"] = json!(r.minor.saturating_sub(1).to_string());
    }
    v
}

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    req: &'a Req,
    kind: Kind,
    version: &'a str,
    namespace: String,
    name: String,
    sub: String,
    query: BTreeMap<String, String>,
}

fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj["metadata"]["creationTimestamp"].as_str() else {
        return "<unknown>".into();
    };
    let Ok(t) = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn csr_condition(obj: &Value) -> String {
    let conds: Vec<String> = obj["status"]["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut text = if conds.is_empty() {
        "Pending".to_owned()
    } else {
        conds.join(",")
    };
    if !obj["status"]["certificate"].is_null() && !conds.is_empty() {
        text.push_str(",Issued");
    }
    text
}

fn table(kind: Kind, objects: &[Value], rv: u64) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let extra: Vec<&str> = match kind {
        Kind::Csr => vec!["Age", "SignerName", "Requestor", "Condition"],
        Kind::Node => vec!["Status", "Age"],
        Kind::Secret => vec!["Type", "Data", "Age"],
        Kind::ConfigMap => vec!["Data", "Age"],
        _ => vec!["Age"],
    };
    for c in &extra {
        columns.push(
            json!({"name": c, "type": "string", "format": "", "description": c, "priority": 0}),
        );
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &extra {
                cells.push(match *c {
                    "Age" => json!(age(o)),
                    "SignerName" => o["spec"]["signerName"].clone(),
                    "Requestor" => o["spec"]["username"].clone(),
                    "Condition" => json!(csr_condition(o)),
                    "Type" => o["type"].clone(),
                    "Data" => json!(o["data"].as_object().map(|m| m.len()).unwrap_or(0)),
                    "Status" => {
                        let ready = o["status"]["conditions"].as_array().is_some_and(|a| {
                            a.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                        });
                        json!(if ready { "Ready" } else { "NotReady" })
                    }
                    _ => Value::Null,
                });
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": columns, "rows": rows})
}

fn label_selector_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let labels = &obj["metadata"]["labels"];
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim().trim_end_matches('=')].as_str()
                == Some(v.trim().trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn field_selector_name(q: &BTreeMap<String, String>) -> Option<String> {
    q.get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned))
}

fn field_selector_node(q: &BTreeMap<String, String>) -> Option<String> {
    q.get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned))
}

impl Ctx<'_> {
    fn key(&self) -> Key {
        Key::new(self.kind, &self.namespace, &self.name)
    }

    /// The object as served: apiVersion of the requested version, faults applied.
    fn present(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(self.kind.api_version(self.version));
        obj
    }

    fn answer(&self, obj: Value) -> Reply {
        if wants_table(&self.req.accept) {
            let rv = self.shared.lock().store.resource_version();
            return Reply::json(200, &table(self.kind, &[obj], rv));
        }
        Reply::json(200, &self.present(obj))
    }

    fn get(&self) -> Reply {
        let obj = self.shared.lock().store.get(&self.key()).cloned();
        let Some(obj) = obj else {
            return not_found(self.kind, &self.name);
        };
        if self.kind == Kind::ConfigMap
            && self.namespace == "kube-public"
            && self.name == "cluster-info"
        {
            let fault = self.shared.lock().faults.cluster_info.clone();
            if let Some(r) = cluster_info_fault(fault, obj.clone()) {
                return r;
            }
        }
        if !self.sub.is_empty() && !matches!(self.sub.as_str(), "status" | "approval") {
            return route_not_found();
        }
        self.answer(obj)
    }

    fn list(&self) -> Reply {
        let state = self.shared.lock();
        let ns = (!self.namespace.is_empty()).then_some(self.namespace.as_str());
        let name = field_selector_name(&self.query);
        let node = field_selector_node(&self.query);
        let selector = self.query.get("labelSelector").cloned().unwrap_or_default();
        let items: Vec<Value> = state
            .store
            .list(self.kind, ns)
            .into_iter()
            .filter(|o| name.as_deref().is_none_or(|n| o["metadata"]["name"] == n))
            .filter(|o| node.as_deref().is_none_or(|n| o["spec"]["nodeName"] == n))
            .filter(|o| label_selector_matches(&selector, o))
            .map(|o| list_item(o.clone()))
            .collect();
        let rv = state.store.resource_version();
        drop(state);
        if wants_table(&self.req.accept) {
            return Reply::json(200, &table(self.kind, &items, rv));
        }
        Reply::json(
            200,
            &json!({
                "kind": format!("{}List", self.kind.name()),
                "apiVersion": self.kind.api_version(self.version),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(&self) -> Reply {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let state = self.shared.lock();
        let mut events = state.store.subscribe();
        let name = field_selector_name(&self.query);
        let ns = self.namespace.clone();
        let kind = self.kind;
        let matches = move |key: &Key| {
            key.kind == kind
                && (ns.is_empty() || key.namespace == ns)
                && name.as_deref().is_none_or(|n| key.name == n)
        };
        let since: u64 = self
            .query
            .get("resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let mut initial = Vec::new();
        let mut replayed = since;
        let mut expired = false;
        if since == 0 {
            for key in state.store.keys(kind) {
                if matches(&key) {
                    if let Some(o) = state.store.get(&key) {
                        initial.push(json!({"type": "ADDED", "object": self.present(o.clone())}));
                    }
                }
            }
            replayed = state.store.resource_version();
        } else {
            // As the watch cache does: what changed after `since`, then live events.
            match state.store.events_since(since) {
                Ok(missed) => {
                    for e in missed.into_iter().filter(|e| matches(&e.key)) {
                        let mut obj = e.object;
                        obj["apiVersion"] = json!(self.kind.api_version(self.version));
                        initial.push(json!({"type": e.kind, "object": obj}));
                    }
                    replayed = state.store.resource_version();
                }
                Err(crate::store::TooOld) => {
                    // The real API server sends this one event and ends the stream.
                    expired = true;
                    initial.push(json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {since}"),
                        "reason": "Expired", "code": 410}}));
                }
            }
        }
        drop(state);
        let timeout = self
            .query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let version = self.kind.api_version(self.version);
        tokio::spawn(async move {
            for e in initial {
                if tx.send(Bytes::from(format!("{e}\n"))).await.is_err() {
                    return;
                }
            }
            if expired {
                return;
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let next = tokio::time::timeout_at(deadline, events.recv()).await;
                let event = match next {
                    Err(_) => return,
                    // A watcher that fell behind is ended, not skipped ahead: the real watch
                    // cache closes a watcher whose buffer stays full past its dispatch budget
                    // (apiserver `storage/cacher/cacher.go`, `dispatchEvent` ->
                    // `stopWatcherThreadUnsafe`), and the client reopens from the last
                    // resourceVersion it saw, so no event is lost.
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => return,
                    Ok(Err(_)) => return,
                    Ok(Ok(e)) => e,
                };
                if !matches(&event.key) || event.rv <= replayed {
                    continue;
                }
                let mut obj = event.object.clone();
                obj["apiVersion"] = json!(version);
                let line = json!({"type": event.kind, "object": obj});
                if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                    return;
                }
            }
        });
        Reply::Stream(rx)
    }

    fn body_json(&self) -> Result<Value, Reply> {
        serde_json::from_slice(&self.req.body).map_err(|e| {
            status_error(
                400,
                "BadRequest",
                &format!("the body is not JSON: {e}"),
                None,
            )
        })
    }

    /// A 422 for one field (`"spec.x: Required value: ..."`), shaped as `errors.NewInvalid`
    /// writes it: the qualified kind in the message, and one cause with its reason and field.
    fn invalid(&self, message: &str) -> Reply {
        let group = self.kind.group();
        let qualified = if group.is_empty() {
            self.kind.name().to_owned()
        } else {
            format!("{}.{group}", self.kind.name())
        };
        let (field, detail) = message.split_once(": ").unwrap_or(("", message));
        let reason = match detail.split(':').next().unwrap_or_default() {
            "Required value" => "FieldValueRequired",
            "Unsupported value" => "FieldValueNotSupported",
            _ => "FieldValueInvalid",
        };
        let mut details = object_details(group, self.kind.name(), &self.name);
        details["causes"] = json!([{"reason": reason, "message": detail, "field": field}]);
        status_error(
            422,
            "Invalid",
            &format!("{qualified} \"{}\" is invalid: {message}", self.name),
            Some(details),
        )
    }

    fn create(&self) -> Reply {
        let mut obj = match self.body_json() {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
                let mut b = [0u8; 4];
                getrandom::fill(&mut b).expect("random");
                name = format!(
                    "{prefix}{}",
                    URL_SAFE_NO_PAD
                        .encode(b)
                        .to_lowercase()
                        .replace(['-', '_'], "x")
                );
            }
        }
        if name.is_empty() {
            return status_error(422, "Invalid", "metadata.name: Required value", None);
        }
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            if !self.namespace.is_empty() && ns != self.namespace {
                return status_error(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request", None);
            }
        }
        let ctx = Ctx {
            name: name.clone(),
            ..self.clone_ctx()
        };
        match self.kind {
            Kind::Csr => {
                if let Err(r) = ctx.admit_csr(&mut obj) {
                    return r;
                }
            }
            Kind::Node => {
                if let Some(node) = self.req.user.node_name() {
                    if node != name {
                        return status_error(403, "Forbidden", &format!("nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""), Some(object_details("", "nodes", &name)));
                    }
                    let bad = forbidden_labels(&obj, &Value::Null);
                    if !bad.is_empty() {
                        return status_error(403, "Forbidden", &format!("nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to set the following labels: {}", bad.join(", ")), Some(object_details("", "nodes", &name)));
                    }
                }
            }
            Kind::Secret => fold_string_data(&mut obj),
            Kind::Pod => pod_defaults(&mut obj),
            _ => {}
        }
        if self.kind == Kind::Node {
            node_defaults(&mut obj);
        }
        self.record_write(&mut obj);
        let result = self.shared.lock().store.create(ctx.key(), obj);
        match result {
            Ok(o) => Reply::json(201, &self.present(o)),
            Err(StoreError::AlreadyExists) => status_error(
                409,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", self.kind.plural()),
                Some(json!({"name": name, "kind": self.kind.plural(), "group": self.kind.group()})),
            ),
            Err(_) => status_error(500, "InternalError", "store failure", None),
        }
    }

    fn clone_ctx(&self) -> Ctx<'_> {
        Ctx {
            shared: self.shared,
            req: self.req,
            kind: self.kind,
            version: self.version,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            sub: self.sub.clone(),
            query: self.query.clone(),
        }
    }

    /// The API server's CSR defaulting and validation, and the requester fields it fills in
    /// (v1.20.2 `pkg/apis/certificates/v1beta1/defaults.go`, `pkg/apis/certificates/
    /// validation/validation.go`, `pkg/registry/certificates/certificates/strategy.go`
    /// `PrepareForCreate`). The signer's own rules are not checked here: a kubelet client CSR
    /// with the wrong usages is created, and left to the controllers.
    fn admit_csr(&self, obj: &mut Value) -> Result<(), Reply> {
        let request = obj["spec"]["request"].as_str().unwrap_or_default();
        let der = STANDARD
            .decode(request)
            .ok()
            .and_then(|pem| pem_to_der(&pem))
            .ok_or_else(|| {
                self.invalid(
                    "spec.request: Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST",
                )
            })?;
        crate::pki::csr_subject(&der)
            .map_err(|e| self.invalid(&format!("spec.request: Invalid value: {e}")))?;
        if self.version == "v1beta1" && obj["spec"]["usages"].is_null() {
            obj["spec"]["usages"] = json!(["digital signature", "key encipherment"]);
        }
        if obj["spec"]["usages"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        {
            return Err(self.invalid("spec.usages: Required value: usages must be provided"));
        }
        self.admit_signer_name(obj)?;
        let user = &self.req.user;
        obj["spec"]["username"] = json!(user.name);
        obj["spec"]["groups"] = json!(user.groups);
        if let Some(spec) = obj["spec"].as_object_mut() {
            // No UID or extra for the users this stand-in authenticates (omitempty).
            spec.remove("uid");
            spec.remove("extra");
        }
        obj["status"] = json!({});
        Ok(())
    }

    /// `spec.signerName`: dropped before 1.18 (an unknown field); required in v1, where
    /// `kubernetes.io/legacy-unknown` is refused; defaulted from the request's content in
    /// v1beta1 (`DefaultSignerNameFromSpec`: kubelet client shape, else legacy-unknown).
    fn admit_signer_name(&self, obj: &mut Value) -> Result<(), Reply> {
        let release = self.shared.release;
        if !release.csr_signer_name() {
            if let Some(spec) = obj["spec"].as_object_mut() {
                spec.remove("signerName");
            }
            return Ok(());
        }
        let given = obj["spec"]["signerName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match (self.version, given.as_str()) {
            ("v1", "") => Err(self.invalid(
                "spec.signerName: Required value: signerName must be provided",
            )),
            ("v1", LEGACY_UNKNOWN_SIGNER) => Err(self.invalid(&format!(
                "spec.signerName: Invalid value: \"{LEGACY_UNKNOWN_SIGNER}\": the legacy signerName is not allowed via this API version"
            ))),
            (_, "") => {
                let kubelet = kubelet_client_error(obj, release).is_none();
                obj["spec"]["signerName"] = json!(if kubelet {
                    KUBELET_CLIENT_SIGNER
                } else {
                    LEGACY_UNKNOWN_SIGNER
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// CSR conditions written through `/approval`, as the API server takes them from 1.19:
    /// v1beta1 defaults `status` to `True` (`SetDefaults_CertificateSigningRequestCondition`),
    /// v1 requires it (`validateConditions`), and missing timestamps are filled in
    /// (`strategy.go` `populateConditionTimestamps`).
    fn prepare_conditions(&self, csr: &mut Value) -> Result<(), Reply> {
        let release = self.shared.release;
        let now = crate::store::now_rfc3339();
        let Some(conditions) = csr["status"]["conditions"].as_array_mut() else {
            return Ok(());
        };
        for (i, c) in conditions.iter_mut().enumerate() {
            if c["lastUpdateTime"].is_null() {
                c["lastUpdateTime"] = json!(now);
            }
            if !release.csr_condition_status() {
                // Fields of 1.19 and later, unknown before.
                if let Some(m) = c.as_object_mut() {
                    m.remove("status");
                    m.remove("lastTransitionTime");
                }
                continue;
            }
            if c["status"].is_null() && self.version == "v1beta1" {
                c["status"] = json!("True");
            }
            if c["status"].is_null() {
                return Err(self.invalid(&format!("status.conditions[{i}].status: Required value")));
            }
            if c["lastTransitionTime"].is_null() {
                c["lastTransitionTime"] = json!(now);
            }
        }
        Ok(())
    }

    fn existing(&self) -> Result<Value, Reply> {
        self.shared
            .lock()
            .store
            .get(&self.key())
            .cloned()
            .ok_or_else(|| not_found(self.kind, &self.name))
    }

    fn node_restriction(&self, old: &Value, new: &Value) -> Result<(), Reply> {
        let Some(node) = self.req.user.node_name() else {
            return Ok(());
        };
        if node != self.name {
            return Err(status_error(403, "Forbidden", &format!("nodes \"{}\" is forbidden: node \"{node}\" is not allowed to modify node \"{}\"", self.name, self.name), Some(object_details("", "nodes", &self.name))));
        }
        let bad = forbidden_labels(new, old);
        if !bad.is_empty() {
            return Err(status_error(403, "Forbidden", &format!("nodes \"{}\" is forbidden: node \"{node}\" is not allowed to modify labels: {}", self.name, bad.join(", ")), Some(object_details("", "nodes", &self.name))));
        }
        if new["spec"]["taints"] != old["spec"]["taints"] {
            return Err(status_error(
                403,
                "Forbidden",
                &format!("node \"{node}\" is not allowed to modify taints"),
                None,
            ));
        }
        Ok(())
    }

    /// What every write stores besides the object: the field manager's entry for this
    /// request's writer (the User-Agent's product name), and unset condition times as the
    /// API server serializes them.
    fn record_write(&self, obj: &mut Value) {
        record_manager(
            obj,
            &manager(self.req),
            &self.kind.api_version(self.version),
        );
        zero_condition_times(self.kind, obj);
    }

    fn store_update(&self, mut obj: Value) -> Reply {
        self.record_write(&mut obj);
        let result = self.shared.lock().store.update(self.key(), obj);
        match result {
            Ok(o) => self.answer(o),
            Err(StoreError::Conflict) => status_error(409, "Conflict", &format!("Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again", self.kind.plural(), self.name), None),
            Err(_) => not_found(self.kind, &self.name),
        }
    }

    fn update(&self) -> Reply {
        let old = match self.existing() {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut new = match self.body_json() {
            Ok(o) => o,
            Err(r) => return r,
        };
        match (self.kind, self.sub.as_str()) {
            (Kind::Csr, "approval") => {
                let mut merged = old.clone();
                merged["status"]["conditions"] = new["status"]["conditions"].clone();
                merged["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
                if let Err(r) = self.prepare_conditions(&mut merged) {
                    return r;
                }
                new = merged;
            }
            (Kind::Csr, "status") | (Kind::Node, "status") => {
                let mut merged = old.clone();
                merged["status"] = new["status"].clone();
                merged["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
                new = merged;
            }
            (_, "") => {}
            _ => return route_not_found(),
        }
        if self.kind == Kind::Node {
            if let Err(r) = self.node_restriction(&old, &new) {
                return r;
            }
        }
        if self.kind == Kind::Secret {
            fold_string_data(&mut new);
        }
        self.store_update(new)
    }

    fn patch(&self) -> Reply {
        let old = match self.existing() {
            Ok(o) => o,
            Err(r) => return r,
        };
        let ct = self.req.content_type.as_str();
        let json_patch = ct.starts_with("application/json-patch+json");
        if !(json_patch
            || ct.starts_with("application/merge-patch+json")
            || ct.starts_with("application/strategic-merge-patch+json"))
        {
            return status_error(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format ({ct}); accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"), None);
        }
        let patch = match self.body_json() {
            Ok(p) => p,
            Err(r) => return r,
        };
        let mut new = old.clone();
        if json_patch {
            // A failed operation (a `test` that does not hold, a missing path) is a 422 and
            // changes nothing (v1.20.2 `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
            // patch.go` `jsonPatcher`).
            if let Err(e) = crate::store::json_patch(&mut new, &patch) {
                return status_error(
                    422,
                    "Invalid",
                    &format!("the server rejected our request due to an error in our request: {e}"),
                    None,
                );
            }
        } else {
            merge_patch(&mut new, &patch);
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            if patch["metadata"]["resourceVersion"].is_null() {
                m.remove("resourceVersion");
            }
        }
        if self.kind == Kind::Node {
            if let Err(r) = self.node_restriction(&old, &new) {
                return r;
            }
        }
        self.store_update(new)
    }

    /// The Eviction body is decoded before anything else: one of a version the release does not
    /// know is a 400 (see [`crate::version::Release::eviction_body_ok`]).
    fn eviction_body(&self) -> Result<(), Reply> {
        let body = self.body_json()?;
        let api_version = body["apiVersion"].as_str().unwrap_or_default();
        if self.shared.release.eviction_body_ok(api_version) {
            return Ok(());
        }
        let version = api_version.rsplit('/').next().unwrap_or_default();
        Err(status_error(
            400,
            "BadRequest",
            &format!("Eviction in version \"{version}\" cannot be handled as a Eviction: no kind \"Eviction\" is registered for version \"{api_version}\" in scheme \"k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30\""),
            None,
        ))
    }

    /// The eviction subresource (v1.20.2 `pkg/registry/core/pod/storage/eviction.go`): a pod
    /// that may ignore its budgets (see [`can_ignore_pdb`]) goes at once; otherwise a matching
    /// PodDisruptionBudget that allows no disruption answers 429, one that does is charged.
    fn evict(&self) -> Reply {
        if self.kind != Kind::Pod {
            return route_not_found();
        }
        if let Err(r) = self.eviction_body() {
            return r;
        }
        let mut state = self.shared.lock();
        let Some(pod) = state.store.get(&self.key()).cloned() else {
            return not_found(self.kind, &self.name);
        };
        if !can_ignore_pdb(&pod, self.shared.release) {
            if let Err(r) = self.charge_budget(&mut state, &pod) {
                return r;
            }
        }
        let grace = self.requested_grace(&self.req.body);
        let _ = self.delete_pod(&mut state, grace);
        Reply::json(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// The budget of the pod's one matching PDB: an unready pod of a healthy budget is not
    /// charged (v1.20.2 `eviction.go`: "If the pod is not ready, it doesn't count towards
    /// healthy"), no disruption allowed is a 429 (`checkAndDecrement`), else one is used up.
    fn charge_budget(&self, state: &mut crate::State, pod: &Value) -> Result<(), Reply> {
        let labels = &pod["metadata"]["labels"];
        let pdb = state
            .store
            .list(Kind::Pdb, Some(&self.namespace))
            .into_iter()
            .find(|pdb| {
                let wanted = pdb["spec"]["selector"]["matchLabels"].as_object();
                wanted.is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| labels[k] == *v))
            })
            .cloned();
        let Some(mut pdb) = pdb else {
            return Ok(());
        };
        let status = &pdb["status"];
        let (current, desired) = (
            status["currentHealthy"].as_i64().unwrap_or(0),
            status["desiredHealthy"].as_i64().unwrap_or(0),
        );
        if !pod_ready(pod) && current >= desired && desired > 0 {
            return Ok(());
        }
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        let name = pdb["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if allowed <= 0 {
            let cause = format!("The disruption budget {name} needs {desired} healthy pods and has {current} currently");
            return Err(status_error(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]})),
            ));
        }
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if let Some(m) = pdb["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let _ = state
            .store
            .update(Key::new(Kind::Pdb, &self.namespace, &name), pdb);
        Ok(())
    }

    fn delete(&self) -> Reply {
        if self.kind == Kind::Node {
            if let Some(node) = self.req.user.node_name() {
                if node != self.name {
                    return status_error(403, "Forbidden", &format!("nodes \"{}\" is forbidden: node \"{node}\" is not allowed to delete node \"{}\"", self.name, self.name), Some(object_details("", "nodes", &self.name)));
                }
            }
        }
        if self.kind == Kind::Pod {
            let grace = self.requested_grace(&self.req.body);
            let mut state = self.shared.lock();
            return match self.delete_pod(&mut state, grace) {
                Some(pod) => Reply::json(200, &self.present(pod)),
                None => not_found(self.kind, &self.name),
            };
        }
        let result = self.shared.lock().store.delete(&self.key());
        match result {
            Ok(o) => Reply::json(200, &self.present(o)),
            Err(_) => not_found(self.kind, &self.name),
        }
    }

    /// `gracePeriodSeconds` of the request's DeleteOptions (query, then body; an Eviction's
    /// under `deleteOptions`).
    fn requested_grace(&self, body: &[u8]) -> Option<i64> {
        if let Some(g) = self.query.get("gracePeriodSeconds") {
            return g.parse().ok();
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| body["deleteOptions"]["gracePeriodSeconds"].as_i64())
    }

    /// Deletes a pod as the pod strategy does (v1.20.2 `pkg/registry/core/pod/strategy.go`
    /// `CheckGracefulDelete`): a scheduled pod that has not finished is only marked
    /// (`deletionTimestamp`, `deletionGracePeriodSeconds`: the requested grace, else its
    /// `terminationGracePeriodSeconds`, 30 by default) for its kubelet to finish; an unscheduled
    /// or finished one, or a grace of 0, goes at once. Returns the pod as it then is.
    fn delete_pod(&self, state: &mut crate::State, grace: Option<i64>) -> Option<Value> {
        let mut pod = state.store.get(&self.key()).cloned()?;
        let default = pod["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let mut period = grace.unwrap_or(default);
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        let unscheduled = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .is_empty();
        if unscheduled || matches!(phase, "Succeeded" | "Failed") {
            period = 0;
        }
        if period <= 0 {
            return state.store.delete(&self.key()).ok();
        }
        if pod["metadata"]["deletionTimestamp"].is_null() {
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(period);
            let at = at.replace_nanosecond(0).ok().and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
            pod["metadata"]["deletionTimestamp"] = json!(at);
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(period);
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            self.record_write(&mut pod);
            pod = state.store.update(self.key(), pod).ok()?;
        }
        Some(pod)
    }
}

/// Pod and Node conditions' timestamps are `metav1.Time` values, not pointers, so the API
/// server writes an unset one as `null` (`PodCondition.lastProbeTime`/`lastTransitionTime`,
/// `NodeCondition.lastHeartbeatTime`/`lastTransitionTime`, k8s.io/api `core/v1/types.go`).
fn zero_condition_times(kind: Kind, obj: &mut Value) {
    let fields: &[&str] = match kind {
        Kind::Pod => &["lastProbeTime", "lastTransitionTime"],
        Kind::Node => &["lastHeartbeatTime", "lastTransitionTime"],
        _ => return,
    };
    let conditions = obj
        .get_mut("status")
        .and_then(|s| s.get_mut("conditions"))
        .and_then(Value::as_array_mut);
    for c in conditions.into_iter().flatten() {
        for f in fields {
            if c.get(*f).is_none() {
                c[*f] = Value::Null;
            }
        }
    }
}

/// The field manager name of a request: its User-Agent up to the first `/`.
fn manager(req: &Req) -> String {
    let ua = req.user_agent.split('/').next().unwrap_or_default();
    if ua.is_empty() {
        "unknown".into()
    } else {
        ua.to_owned()
    }
}

/// A list's item: list items carry no `kind` or `apiVersion` (the list does).
fn list_item(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

/// A new Node as the API server stores it (v1.20.2): the `TaintNodesByCondition` admission
/// plugin's not-ready NoSchedule taint (`plugin/pkg/admission/nodetaint/admission.go`), and the
/// defaulted empty `nodeInfo` fields and kubelet endpoint (`pkg/apis/core/v1` defaults).
fn node_defaults(node: &mut Value) {
    let not_ready = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
    let mut taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !taints
        .iter()
        .any(|t| t["key"] == not_ready["key"] && t["effect"] == not_ready["effect"])
    {
        taints.push(not_ready);
    }
    node["spec"]["taints"] = Value::Array(taints);
    let status = &mut node["status"];
    if status["daemonEndpoints"].is_null() {
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 0}});
    }
    for field in [
        "machineID",
        "systemUUID",
        "bootID",
        "kernelVersion",
        "osImage",
        "containerRuntimeVersion",
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
    ] {
        if status["nodeInfo"][field].is_null() {
            status["nodeInfo"][field] = json!("");
        }
    }
}

/// Whether an eviction may skip the pod's budgets (v1.20.2 `eviction.go` `canIgnorePDB`):
/// Succeeded or Failed pods; Pending ones from 1.17 (kubernetes#83906); ones already being
/// deleted from 1.19 (kubernetes#91342). A pod put into the store without a status (tests do)
/// counts as running; one created through the API starts Pending.
fn can_ignore_pdb(pod: &Value, release: crate::version::Release) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Running");
    matches!(phase, "Succeeded" | "Failed")
        || (phase == "Pending" && release.eviction_ignores_pending_pods())
        || (!pod["metadata"]["deletionTimestamp"].is_null()
            && release.eviction_ignores_deleting_pods())
}

/// Whether the pod's Ready condition is True.
fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A new Pod as a 1.20.2 API server stores it: `pkg/apis/core/v1/defaults.go` (`SetDefaults_PodSpec`,
/// `SetDefaults_Container`), the ServiceAccount admission plugin's `default` account and token
/// volume, DefaultTolerationSeconds' not-ready/unreachable tolerations, the Priority plugin's
/// priority 0, and the strategy's `Pending` phase and QoS class (`PrepareForCreate`).
fn pod_defaults(pod: &mut Value) {
    let spec = &mut pod["spec"];
    for (field, value) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("serviceAccountName", json!("default")),
        ("terminationGracePeriodSeconds", json!(30)),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    spec["serviceAccount"] = spec["serviceAccountName"].clone();
    default_tolerations(spec);
    let token = "default-token-stand";
    if spec["automountServiceAccountToken"] != false {
        let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        volumes.push(json!({"name": token, "secret": {"defaultMode": 420, "secretName": token}}));
        spec["volumes"] = Value::Array(volumes);
    }
    let mut best_effort = true;
    for c in spec["containers"].as_array_mut().into_iter().flatten() {
        container_defaults(c, token);
        best_effort &= c["resources"].as_object().is_none_or(|r| r.is_empty());
    }
    if pod["status"]["phase"].is_null() {
        pod["status"]["phase"] = json!("Pending");
    }
    pod["status"]["qosClass"] = json!(if best_effort {
        "BestEffort"
    } else {
        "Burstable"
    });
}

/// DefaultTolerationSeconds: tolerate not-ready and unreachable nodes for 300 s.
fn default_tolerations(spec: &mut Value) {
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerations.iter().any(|t| t["key"] == key) {
            tolerations.push(json!({"effect": "NoExecute", "key": key, "operator": "Exists", "tolerationSeconds": 300}));
        }
    }
    spec["tolerations"] = Value::Array(tolerations);
}

fn container_defaults(c: &mut Value, token: &str) {
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let latest = !tag.contains(':') || tag.ends_with(":latest");
    for (field, value) in [
        (
            "imagePullPolicy",
            json!(if latest { "Always" } else { "IfNotPresent" }),
        ),
        ("resources", json!({})),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
    ] {
        if c[field].is_null() {
            c[field] = value;
        }
    }
    let mut mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    mounts.push(json!({"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": token, "readOnly": true}));
    c["volumeMounts"] = Value::Array(mounts);
}

/// Labels in `new` that differ from `old` and that a node may not set.
fn forbidden_labels(new: &Value, old: &Value) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for side in [new, old] {
        if let Some(m) = side["metadata"]["labels"].as_object() {
            keys.extend(m.keys().cloned());
        }
    }
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            new["metadata"]["labels"][k] != old["metadata"]["labels"][k] && !node_may_set_label(k)
        })
        .collect()
}

fn fold_string_data(obj: &mut Value) {
    if let Some(sd) = obj["stringData"].as_object().cloned() {
        for (k, v) in sd {
            obj["data"][k] = json!(STANDARD.encode(v.as_str().unwrap_or_default()));
        }
        if let Some(m) = obj.as_object_mut() {
            m.remove("stringData");
        }
    }
}

fn cluster_info_fault(fault: ClusterInfoFault, mut obj: Value) -> Option<Reply> {
    let kubeconfig = obj["data"]["kubeconfig"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sig_keys: Vec<String> = obj["data"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| k.starts_with("jws-kubeconfig-"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    match fault {
        ClusterInfoFault::None => return None,
        ClusterInfoFault::Tamper => {
            obj["data"]["kubeconfig"] =
                json!(kubeconfig.replace("server: https://", "server: https://attacker."));
        }
        ClusterInfoFault::Reserialize => {
            obj["data"]["kubeconfig"] =
                json!(kubeconfig.replace("kind: Config\n", "kind: Config\npreferences: {}\n"));
        }
        ClusterInfoFault::WrongKid => {
            for k in sig_keys {
                obj["data"][k] = json!(detached_jws(&kubeconfig, "zzzzzz", "0123456789abcdef"));
            }
        }
        ClusterInfoFault::AlgNone => {
            for k in sig_keys {
                let id = k.trim_start_matches("jws-kubeconfig-");
                let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{id}"}}"#));
                obj["data"][k] = json!(format!("{header}.."));
            }
        }
        ClusterInfoFault::Oversized => {
            obj["data"]["padding"] = json!("x".repeat(2 * 1024 * 1024 + 10));
        }
        ClusterInfoFault::Redirect(to) => {
            return Some(Reply::Full {
                status: 302,
                content_type: "text/plain",
                headers: vec![("location", to)],
                body: Bytes::from_static(b"moved"),
            })
        }
    }
    Some(Reply::json(200, &obj))
}

fn scripted(shared: &Shared) -> Option<Reply> {
    let mut state = shared.lock();
    if let Some(to) = state.faults.values_redirect.clone() {
        return Some(Reply::Full {
            status: 302,
            content_type: "text/plain",
            headers: vec![("location", to)],
            body: Bytes::new(),
        });
    }
    let s = state.faults.values_script.pop_front()?;
    let mut headers = Vec::new();
    if let Some(r) = s.retry_after {
        headers.push(("retry-after", r));
    }
    Some(Reply::Full {
        status: s.status,
        content_type: "text/plain",
        headers,
        body: Bytes::from(s.body),
    })
}

fn values_json(shared: &Shared, token: &str) -> Reply {
    if let Some(r) = scripted(shared) {
        return r;
    }
    match shared.lock().values.get(token) {
        Some(e) => Reply::json(200, &e.json),
        None => status_error(404, "NotFound", "unknown or expired openapi token", None),
    }
}

fn values_ack(shared: &Shared, token: &str) -> Reply {
    if let Some(r) = scripted(shared) {
        return r;
    }
    match shared.lock().values.get(token) {
        Some(e) => Reply::text(200, e.ack_text.clone()),
        None => Reply::text(404, "token not found"),
    }
}

/// A file from the served directory or below (anonymous, read-only; no component may start
/// with a dot, so nothing climbs out).
fn static_file(shared: &Shared, parts: &[&str]) -> Reply {
    let Some(dir) = &shared.options.files_dir else {
        return Reply::text(404, "no files are served");
    };
    if parts
        .iter()
        .any(|p| p.starts_with('.') || p.contains('\\') || p.contains('%'))
    {
        return Reply::text(404, "not found");
    }
    let path = parts.iter().fold(dir.clone(), |p, c| p.join(c));
    if !path.is_file() {
        return Reply::text(404, "not found");
    }
    match std::fs::read(path) {
        Ok(bytes) => Reply::Full {
            status: 200,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body: Bytes::from(bytes),
        },
        Err(_) => Reply::text(404, "not found"),
    }
}
