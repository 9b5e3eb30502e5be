//! containerd's `config.toml`, merged into what the machine had rather than replaced: a GPU
//! image's `nvidia` runtime, a distribution's CNI `bin_dir`, proxies, snapshotters and registry
//! settings stay; only the keys the kubelet depends on are set (the sandbox image, the runc
//! runtime with the systemd cgroup driver, where registry hosts are configured).
//!
//! The schema follows the file and the installed containerd: `version = 2`
//! (`io.containerd.grpc.v1.cri`) for containerd 1.x, and kept on 2.x (which migrates it when it
//! loads); `version = 3` (`io.containerd.cri.v1.*`) for new files on 2.x. containerd before 1.5
//! ignores `config_path`, so its mirrors go inline (`registry.mirrors`), as they must too when
//! the file already uses inline mirrors (containerd refuses both at once). A file in the
//! version 1 format, or one that does not parse, is replaced and a notice says so; the journal
//! keeps its bytes for reset either way.

use crate::sources::values::RuntimeValues;
use toml_edit::{value, Array, DocumentMut, Item, Table};

/// The installed containerd's version (major, minor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerdVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

/// Where registry hosts are configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registries {
    /// `hosts.toml` files under this directory (`config_path`).
    HostsDir(String),
    /// Inline in config.toml (containerd < 1.5, or a file that already does so).
    Inline,
}

/// The merged file and what the caller must know.
#[derive(Clone, Debug)]
pub struct Merged {
    /// The new config.toml.
    pub bytes: Vec<u8>,
    /// Where mirrors go.
    pub registries: Registries,
    /// Why the original was replaced, when it was.
    pub notice: Option<String>,
}

/// The default hosts directory.
pub const CERTS_D: &str = "/etc/containerd/certs.d";

/// The CNI plugin directory a config file names (None: unset, or not a usable file).
pub fn cni_bin_dir(original: Option<&[u8]>) -> Option<String> {
    let doc = parse(original?).ok()??;
    let plugins = doc.get("plugins")?;
    let cni = plugins
        .get("io.containerd.grpc.v1.cri")
        .or_else(|| plugins.get("io.containerd.cri.v1.runtime"))?
        .get("cni")?;
    cni.get("bin_dir")?.as_str().map(str::to_owned)
}

/// Merges node-attach's settings into `original` (None: no file yet). `cni_bin_dir`, when
/// given, replaces the CNI plugin directory (node-attach installed the plugins there and the
/// configured one has none).
pub fn merge(
    original: Option<&[u8]>,
    values: &RuntimeValues,
    pause: &str,
    installed: ContainerdVersion,
    cni_bin_dir: Option<&str>,
) -> Merged {
    let (mut doc, notice) = match original.map(parse) {
        None | Some(Ok(None)) => (fresh(installed), None),
        Some(Ok(Some(doc))) => (doc, None),
        Some(Err(why)) => (
            fresh(installed),
            Some(format!(
                "/etc/containerd/config.toml was replaced ({why}); its bytes are kept in the journal and reset restores them"
            )),
        ),
    };
    let schema = doc.get("version").and_then(Item::as_integer).unwrap_or(2);
    let registries = if schema >= 3 {
        set_v3(&mut doc, values, pause)
    } else {
        set_v2(&mut doc, values, pause, installed)
    };
    if let Some(dir) = cni_bin_dir {
        let cri = if schema >= 3 {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        table(&mut doc, &["plugins", cri, "cni"])["bin_dir"] = value(dir);
    }
    let mut text = doc.to_string();
    if !text.starts_with("# Written by node-attach") && original.is_none() {
        text.insert_str(
            0,
            "# Written by node-attach for the kubelet; restored by node-attach reset.\n",
        );
    }
    Merged {
        bytes: text.into_bytes(),
        registries,
        notice,
    }
}

/// The file as a document: `Ok(None)` when it holds nothing but comments.
fn parse(bytes: &[u8]) -> Result<Option<DocumentMut>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8".to_owned())?;
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("it is not valid TOML: {}", e.message()))?;
    if doc.as_table().is_empty() {
        return Ok(None);
    }
    match doc.get("version").and_then(Item::as_integer) {
        Some(2 | 3) => Ok(Some(doc)),
        Some(v) => Err(format!("it is in containerd's version {v} format")),
        None => Err("it has no version key: containerd's version 1 format".into()),
    }
}

fn fresh(installed: ContainerdVersion) -> DocumentMut {
    let mut doc = DocumentMut::new();
    doc["version"] = value(if installed.major >= 2 { 3 } else { 2 });
    doc
}

/// The table at `path`, made (as a standard table, its ancestors implicit) when missing.
fn table<'d>(doc: &'d mut DocumentMut, path: &[&str]) -> &'d mut Table {
    let mut cur = doc.as_table_mut();
    for (i, key) in path.iter().enumerate() {
        let entry = cur.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(i + 1 < path.len());
            Item::Table(t)
        });
        if let Some(inline) = entry.as_inline_table().cloned() {
            *entry = Item::Table(inline.into_table());
        }
        if !entry.is_table() {
            *entry = Item::Table(Table::new());
        }
        cur = entry.as_table_mut().expect("made a table above");
    }
    cur
}

/// SystemdCgroup on runc and on every runtime of runc's type (nvidia's wraps runc).
fn systemd_cgroups(doc: &mut DocumentMut, runtimes: &[&str]) {
    let runc = table(doc, &[runtimes, &["runc"]].concat());
    runc["runtime_type"] = value("io.containerd.runc.v2");
    let names: Vec<String> = table(doc, runtimes)
        .iter()
        .filter(|(_, rt)| {
            rt.get("runtime_type").and_then(Item::as_str) == Some("io.containerd.runc.v2")
        })
        .map(|(k, _)| k.to_owned())
        .collect();
    for name in names {
        let options = table(doc, &[runtimes, &[name.as_str(), "options"]].concat());
        options["SystemdCgroup"] = value(true);
    }
}

fn set_v2(
    doc: &mut DocumentMut,
    values: &RuntimeValues,
    pause: &str,
    installed: ContainerdVersion,
) -> Registries {
    const CRI: &str = "io.containerd.grpc.v1.cri";
    if let Some(root) = &values.data_root {
        doc["root"] = value(root.as_str());
    }
    table(doc, &["plugins", CRI])["sandbox_image"] = value(pause);
    systemd_cgroups(doc, &["plugins", CRI, "containerd", "runtimes"]);
    let registry = table(doc, &["plugins", CRI, "registry"]);
    let inline_already = registry.contains_key("mirrors") || registry.contains_key("configs");
    if installed.major == 1 && installed.minor < 5 || inline_already {
        inline_registries(doc, &["plugins", CRI, "registry"], values);
        return Registries::Inline;
    }
    hosts_dir(registry)
}

fn set_v3(doc: &mut DocumentMut, values: &RuntimeValues, pause: &str) -> Registries {
    const IMAGES: &str = "io.containerd.cri.v1.images";
    const RUNTIME: &str = "io.containerd.cri.v1.runtime";
    if let Some(root) = &values.data_root {
        doc["root"] = value(root.as_str());
    }
    table(doc, &["plugins", IMAGES, "pinned_images"])["sandbox"] = value(pause);
    systemd_cgroups(doc, &["plugins", RUNTIME, "containerd", "runtimes"]);
    hosts_dir(table(doc, &["plugins", IMAGES, "registry"]))
}

/// Keeps a `config_path` the file names, or sets the default one.
fn hosts_dir(registry: &mut Table) -> Registries {
    match registry.get("config_path").and_then(Item::as_str) {
        Some(dir) if !dir.is_empty() => Registries::HostsDir(dir.to_owned()),
        _ => {
            registry["config_path"] = value(CERTS_D);
            Registries::HostsDir(CERTS_D.into())
        }
    }
}

/// Mirrors and plain-http registries in the pre-1.5 form, added to what is there.
fn inline_registries(doc: &mut DocumentMut, registry: &[&str], values: &RuntimeValues) {
    for (host, mirrors) in &values.registry_mirrors {
        let mirror = table(doc, &[registry, &["mirrors", host.as_str()]].concat());
        let mut endpoints: Vec<String> = mirror
            .get("endpoint")
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for m in mirrors {
            if !endpoints.contains(m) {
                endpoints.push(m.clone());
            }
        }
        mirror["endpoint"] = value(endpoints.iter().collect::<Array>());
    }
    for host in &values.insecure_registries {
        let mirror = table(doc, &[registry, &["mirrors", host.as_str()]].concat());
        if mirror.get("endpoint").is_none() {
            mirror["endpoint"] = value(Array::from_iter([format!("http://{host}")]));
        }
        let tls = table(
            doc,
            &[registry, &["configs", host.as_str(), "tls"]].concat(),
        );
        tls["insecure_skip_verify"] = value(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: ContainerdVersion = ContainerdVersion { major: 1, minor: 6 };

    fn text(m: &Merged) -> String {
        String::from_utf8(m.bytes.clone()).expect("utf8")
    }

    fn reparse(m: &Merged) -> DocumentMut {
        text(m).parse().expect("valid TOML")
    }

    #[test]
    fn debians_file_keeps_its_cni_bin_dir() {
        let debian = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n";
        let m = merge(
            Some(debian.as_bytes()),
            &RuntimeValues::default(),
            "k8s.gcr.io/pause:3.2",
            V16,
            None,
        );
        let doc = reparse(&m);
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
        assert_eq!(cri["sandbox_image"].as_str(), Some("k8s.gcr.io/pause:3.2"));
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(m.registries, Registries::HostsDir(CERTS_D.into()));
        assert!(m.notice.is_none());
        // Merging again changes nothing.
        let again = merge(
            Some(&m.bytes),
            &RuntimeValues::default(),
            "k8s.gcr.io/pause:3.2",
            V16,
            None,
        );
        assert_eq!(text(&again), text(&m));
    }

    #[test]
    fn the_cni_directory_follows_the_plugins_node_attach_installed() {
        let debian = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n";
        assert_eq!(
            cni_bin_dir(Some(debian.as_bytes())).as_deref(),
            Some("/usr/lib/cni")
        );
        assert_eq!(cni_bin_dir(None), None);
        let m = merge(
            Some(debian.as_bytes()),
            &RuntimeValues::default(),
            "p:1",
            V16,
            Some("/opt/cni/bin"),
        );
        assert_eq!(
            reparse(&m)["plugins"]["io.containerd.grpc.v1.cri"]["cni"]["bin_dir"].as_str(),
            Some("/opt/cni/bin")
        );
    }

    #[test]
    fn a_gpu_runtime_stays_and_gets_the_systemd_driver() {
        let gpu = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"nvidia\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\n  runtime_type = \"io.containerd.runc.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia.options]\n  BinaryName = \"/usr/bin/nvidia-container-runtime\"\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n";
        let doc = reparse(&merge(
            Some(gpu.as_bytes()),
            &RuntimeValues::default(),
            "p:1",
            V16,
            None,
        ));
        let c = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"];
        assert_eq!(c["default_runtime_name"].as_str(), Some("nvidia"));
        let nvidia = &c["runtimes"]["nvidia"]["options"];
        assert_eq!(
            nvidia["BinaryName"].as_str(),
            Some("/usr/bin/nvidia-container-runtime")
        );
        assert_eq!(nvidia["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(
            doc["proxy_plugins"]["stargz"]["type"].as_str(),
            Some("snapshot")
        );
    }

    #[test]
    fn old_containerd_and_inline_files_get_inline_mirrors() {
        let mut v = RuntimeValues::default();
        v.registry_mirrors
            .insert("docker.io".into(), vec!["https://mirror.example".into()]);
        v.insecure_registries.push("10.0.0.5:5000".into());
        let m = merge(
            None,
            &v,
            "p:1",
            ContainerdVersion { major: 1, minor: 4 },
            None,
        );
        assert_eq!(m.registries, Registries::Inline);
        let doc = reparse(&m);
        let reg = &doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"];
        assert_eq!(
            reg["mirrors"]["docker.io"]["endpoint"][0].as_str(),
            Some("https://mirror.example")
        );
        assert_eq!(
            reg["configs"]["10.0.0.5:5000"]["tls"]["insecure_skip_verify"].as_bool(),
            Some(true)
        );
        assert!(reg.get("config_path").is_none());
    }

    #[test]
    fn containerd_2_gets_version_3_and_keeps_a_version_2_file() {
        let v2 = ContainerdVersion { major: 2, minor: 0 };
        let doc = reparse(&merge(None, &RuntimeValues::default(), "p:1", v2, None));
        assert_eq!(doc["version"].as_integer(), Some(3));
        assert_eq!(
            doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("p:1")
        );
        let kept = reparse(&merge(
            Some(b"version = 2\n"),
            &RuntimeValues::default(),
            "p:1",
            v2,
            None,
        ));
        assert_eq!(kept["version"].as_integer(), Some(2));
        assert!(kept["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].is_str());
    }

    #[test]
    fn unusable_files_are_replaced_with_a_notice() {
        for (bytes, why) in [
            (&b"[plugins.cri]\nsandbox_image = \"x\"\n"[..], "version 1"),
            (b"version = 2\n[plugins\n", "not valid TOML"),
            (b"version = 1\n", "version 1 format"),
        ] {
            let m = merge(Some(bytes), &RuntimeValues::default(), "p:1", V16, None);
            assert!(
                m.notice.as_deref().is_some_and(|n| n.contains(why)),
                "{:?}",
                m.notice
            );
            assert_eq!(reparse(&m)["version"].as_integer(), Some(2));
        }
        let m = merge(
            Some(b"# nothing yet\n"),
            &RuntimeValues::default(),
            "p:1",
            V16,
            None,
        );
        assert!(m.notice.is_none());
    }
}
