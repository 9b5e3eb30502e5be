//! The artifact manifest (`apiVersion: node-attach.io/v1`, `kind: ArtifactManifest`): what a
//! mirror offers, per Kubernetes version and architecture — the kubelet, crictl, the CNI
//! plugins and air-gap image archives — and optionally static container runtimes, each file
//! with its path below the mirror's base URL, its size and its SHA-256. `manifest.json` is
//! signed (`manifest.json.sig`, see [`super::signature`]); a file is used only when its bytes
//! match the size and digest the signed manifest names.
//!
//! Parsed strictly (bounded, duplicate keys and unknown fields refused) and validated whole
//! before anything is fetched.

use crate::model::version::KubeVersion;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The manifest's `apiVersion`.
pub const API_VERSION: &str = "node-attach.io/v1";
/// The manifest's `kind`.
pub const KIND: &str = "ArtifactManifest";
/// The largest single artifact accepted (1 GiB).
pub const MAX_FILE_SIZE: u64 = 1 << 30;
/// The runtime binaries a static runtime may carry, and where each is installed.
pub const RUNTIME_BINARIES: &[(&str, &str)] = &[
    ("containerd", "/usr/local/bin/containerd"),
    (
        "containerd-shim-runc-v2",
        "/usr/local/bin/containerd-shim-runc-v2",
    ),
    ("ctr", "/usr/local/bin/ctr"),
    ("runc", "/usr/local/sbin/runc"),
];

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ManifestError {
    /// The field, as a JSON path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A CPU architecture, as Kubernetes names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64.
    Amd64,
    /// aarch64.
    Arm64,
}

impl Arch {
    /// This machine's architecture, if Kubernetes runs on it.
    pub fn this() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// `amd64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Parses `amd64`/`x86_64` or `arm64`/`aarch64`.
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// One file of the mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Path below the mirror's base URL (`v1.20.2/amd64/kubelet`).
    pub path: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// An image archive (docker-archive or OCI tar) to import for air-gapped nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageArchive {
    /// The archive.
    #[serde(flatten)]
    pub file: FileRef,
    /// The image references it holds (checked present after the import).
    pub refs: Vec<String>,
}

/// What the mirror offers for one Kubernetes version on one architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// The kubelet's version (`v1.20.2`).
    pub kubernetes_version: String,
    /// The architecture.
    pub arch: Arch,
    /// The kubelet binary.
    pub kubelet: FileRef,
    /// crictl, when offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crictl: Option<FileRef>,
    /// CNI plugin name → binary (installed to `/opt/cni/bin/<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cni_plugins: BTreeMap<String, FileRef>,
    /// Image archives for air-gapped nodes (the sandbox image, at least).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageArchive>,
}

/// A static container runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeRelease {
    /// `containerd` (the only static runtime node-attach installs).
    pub name: String,
    /// Its version (`1.6.20`).
    pub version: String,
    /// The architecture.
    pub arch: Arch,
    /// Binary name (one of [`RUNTIME_BINARIES`]) → file.
    pub binaries: BTreeMap<String, FileRef>,
}

/// A manifest as signed and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`API_VERSION`].
    pub api_version: String,
    /// [`KIND`].
    pub kind: String,
    /// Kubernetes releases.
    #[serde(default)]
    pub releases: Vec<Release>,
    /// Static runtimes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeRelease>,
}

/// Whether `p` is a clean relative path of plain names (no `..`, no leading dot, no escapes).
pub fn check_path(field: &str, p: &str) -> Result<(), ManifestError> {
    let ok = !p.is_empty()
        && p.len() <= 1024
        && p.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.len() <= 255
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        });
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{p:?} is not a clean relative path of [A-Za-z0-9._+-] names"),
        ))
    }
}

fn check_file(field: &str, f: &FileRef) -> Result<(), ManifestError> {
    check_path(&format!("{field}.path"), &f.path)?;
    let hex = f.sha256.len() == 64
        && f.sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(bad(
            format!("{field}.sha256"),
            "expected 64 lowercase hex digits",
        ));
    }
    if f.size == 0 || f.size > MAX_FILE_SIZE {
        return Err(bad(
            format!("{field}.size"),
            format!("must be between 1 and {MAX_FILE_SIZE} bytes"),
        ));
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(field, format!("{name:?} is not a plain file name")))
    }
}

impl Release {
    /// The kubelet's version, parsed (validated at parse time).
    pub fn version(&self) -> KubeVersion {
        self.kubernetes_version
            .parse()
            .unwrap_or_else(|_| unreachable!("validated by parse"))
    }
}

/// Parses and validates a manifest's bytes (already signature-checked).
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let m: Manifest = crate::model::strict::json(bytes)
        .map_err(|e| bad("document", format!("not a valid {API_VERSION} {KIND}: {e}")))?;
    validate(&m)?;
    Ok(m)
}

/// Checks every field of a manifest.
pub fn validate(m: &Manifest) -> Result<(), ManifestError> {
    if m.api_version != API_VERSION {
        return Err(bad(
            "apiVersion",
            format!(
                "{:?} is not supported; expected {API_VERSION}",
                m.api_version
            ),
        ));
    }
    if m.kind != KIND {
        return Err(bad("kind", format!("expected {KIND}")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in m.releases.iter().enumerate() {
        let at = format!("releases[{i}]");
        let v: KubeVersion =
            r.kubernetes_version
                .parse()
                .map_err(|e: crate::model::version::VersionError| {
                    bad(format!("{at}.kubernetesVersion"), e.to_string())
                })?;
        if !seen.insert((v.to_string(), r.arch)) {
            return Err(bad(
                at,
                format!("{v} for {} is listed twice", r.arch.as_str()),
            ));
        }
        check_file(&format!("{at}.kubelet"), &r.kubelet)?;
        if let Some(c) = &r.crictl {
            check_file(&format!("{at}.crictl"), c)?;
        }
        for (name, f) in &r.cni_plugins {
            check_name(&format!("{at}.cniPlugins"), name)?;
            check_file(&format!("{at}.cniPlugins.{name}"), f)?;
        }
        for (j, img) in r.images.iter().enumerate() {
            check_file(&format!("{at}.images[{j}]"), &img.file)?;
            if img.refs.is_empty() {
                return Err(bad(format!("{at}.images[{j}].refs"), "names no image"));
            }
            for reference in &img.refs {
                crate::sources::values::check_image(&format!("{at}.images[{j}].refs"), reference)
                    .map_err(|e| bad(format!("{at}.images[{j}].refs"), e.to_string()))?;
            }
        }
    }
    for (i, rt) in m.runtimes.iter().enumerate() {
        let at = format!("runtimes[{i}]");
        if rt.name != "containerd" {
            return Err(bad(
                format!("{at}.name"),
                "only containerd is offered statically",
            ));
        }
        crate::sources::values::check_package_version(&format!("{at}.version"), &rt.version)
            .map_err(|e| bad(format!("{at}.version"), e.to_string()))?;
        for (name, f) in &rt.binaries {
            if !RUNTIME_BINARIES.iter().any(|(n, _)| n == name) {
                return Err(bad(
                    format!("{at}.binaries"),
                    format!(
                        "{name:?} is not one of {}",
                        RUNTIME_BINARIES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            check_file(&format!("{at}.binaries.{name}"), f)?;
        }
        for required in ["containerd", "containerd-shim-runc-v2", "runc"] {
            if !rt.binaries.contains_key(required) {
                return Err(bad(format!("{at}.binaries"), format!("lacks {required}")));
            }
        }
    }
    Ok(())
}

/// Why no release could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// The manifest has nothing for this architecture.
    #[error("the mirror offers no release for {arch} (it lists {listed})")]
    NoArch {
        /// The architecture.
        arch: &'static str,
        /// What it lists.
        listed: String,
    },
    /// The version asked for is not offered.
    #[error("the mirror offers no kubelet {wanted} for {arch} (it offers {listed})")]
    NotOffered {
        /// The version asked for.
        wanted: String,
        /// The architecture.
        arch: &'static str,
        /// What it offers.
        listed: String,
    },
    /// The version breaks the skew policy against the API server.
    #[error("{0}")]
    Skew(String),
}

/// Picks the release to install for an API server of version `server` (None: bake mode, no
/// cluster known): `wanted` when given (refused when the skew policy forbids it), else the
/// server's exact version, else the newest release the skew policy allows.
pub fn select<'m>(
    m: &'m Manifest,
    arch: Arch,
    server: Option<&KubeVersion>,
    wanted: Option<&KubeVersion>,
) -> Result<&'m Release, SelectError> {
    let mine: Vec<&Release> = m.releases.iter().filter(|r| r.arch == arch).collect();
    let listed = |rs: &[&Release]| {
        let v: Vec<String> = rs.iter().map(|r| r.version().to_string()).collect();
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    if mine.is_empty() {
        let all: Vec<String> = m
            .releases
            .iter()
            .map(|r| format!("{} {}", r.version(), r.arch.as_str()))
            .collect();
        return Err(SelectError::NoArch {
            arch: arch.as_str(),
            listed: if all.is_empty() {
                "nothing".into()
            } else {
                all.join(", ")
            },
        });
    }
    let skew = |r: &Release| match server {
        Some(s) => r.version().kubelet_skew_ok(s),
        None => Ok(()),
    };
    if let Some(w) = wanted {
        let found =
            mine.iter()
                .find(|r| r.version() == *w)
                .ok_or_else(|| SelectError::NotOffered {
                    wanted: w.to_string(),
                    arch: arch.as_str(),
                    listed: listed(&mine),
                })?;
        skew(found).map_err(|e| SelectError::Skew(skew_message(&e)))?;
        return Ok(found);
    }
    if let Some(s) = server {
        let same = |r: &&&Release| {
            let v = r.version();
            (v.major, v.minor, v.patch) == (s.major, s.minor, s.patch)
        };
        if let Some(exact) = mine.iter().find(same) {
            return Ok(exact);
        }
    }
    let mut allowed: Vec<&Release> = mine.iter().copied().filter(|r| skew(r).is_ok()).collect();
    allowed.sort_by_key(|r| {
        let v = r.version();
        (v.major, v.minor, v.patch)
    });
    match (allowed.last(), server) {
        (Some(r), Some(_)) => Ok(r),
        (Some(r), None) if mine.len() == 1 => Ok(r),
        (Some(_), None) => Err(SelectError::NotOffered {
            wanted: "(none named: pass --kubelet-version)".into(),
            arch: arch.as_str(),
            listed: listed(&mine),
        }),
        (None, Some(s)) => {
            let newest = mine
                .iter()
                .max_by_key(|r| {
                    let v = r.version();
                    (v.major, v.minor, v.patch)
                })
                .map(|r| skew(r).err().unwrap_or_default())
                .unwrap_or_default();
            Err(SelectError::Skew(skew_message(&format!(
                "none of the mirror's kubelets ({}) may talk to the API server {s} ({newest})",
                listed(&mine)
            ))))
        }
        (None, None) => unreachable!("without a server every release is allowed"),
    }
}

/// The skew refusal with the rule spelled out.
fn skew_message(detail: &str) -> String {
    format!(
        "{detail}. The Kubernetes version skew policy: a kubelet must not be newer than the API server, and may be up to two minor versions older (three from API server 1.28, but never older than 1.25)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn file(path: &str) -> FileRef {
        FileRef {
            path: path.into(),
            sha256: SHA.into(),
            size: 10,
        }
    }

    fn release(v: &str, arch: Arch) -> Release {
        Release {
            kubernetes_version: v.into(),
            arch,
            kubelet: file(&format!("{v}/kubelet")),
            crictl: None,
            cni_plugins: BTreeMap::from([("bridge".to_owned(), file("cni/bridge"))]),
            images: vec![ImageArchive {
                file: file("images/pause.tar"),
                refs: vec!["k8s.gcr.io/pause:3.2".into()],
            }],
        }
    }

    fn manifest(releases: Vec<Release>) -> Manifest {
        Manifest {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            releases,
            runtimes: Vec::new(),
        }
    }

    fn v(s: &str) -> KubeVersion {
        s.parse().expect("v")
    }

    #[test]
    fn round_trips_and_validates() {
        let m = manifest(vec![release("v1.20.2", Arch::Amd64)]);
        let bytes = serde_json::to_vec(&m).expect("json");
        assert_eq!(parse(&bytes).expect("valid"), m);
        let text = String::from_utf8(bytes).expect("utf8");
        assert!(text.contains("\"kubernetesVersion\":\"v1.20.2\""), "{text}");
        assert!(text.contains("\"cniPlugins\""), "{text}");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|m| m.kind = "Other".into()), "kind"),
            (
                Box::new(|m| m.releases[0].kubernetes_version = "one".into()),
                "kubernetesVersion",
            ),
            (
                Box::new(|m| m.releases[0].kubelet.path = "../etc/passwd".into()),
                "kubelet.path",
            ),
            (
                Box::new(|m| m.releases[0].kubelet.path = "/abs".into()),
                "kubelet.path",
            ),
            (
                Box::new(|m| m.releases[0].kubelet.sha256 = "ABC".into()),
                "kubelet.sha256",
            ),
            (Box::new(|m| m.releases[0].kubelet.size = 0), "kubelet.size"),
            (
                Box::new(|m| {
                    m.releases[0].cni_plugins.insert("../x".into(), file("x"));
                }),
                "cniPlugins",
            ),
            (
                Box::new(|m| m.releases[0].images[0].refs = vec!["a b".into()]),
                "refs",
            ),
            (
                Box::new(|m| m.releases.push(release("v1.20.2", Arch::Amd64))),
                "listed twice",
            ),
            (
                Box::new(|m| {
                    m.runtimes.push(RuntimeRelease {
                        name: "containerd".into(),
                        version: "1.6.20".into(),
                        arch: Arch::Amd64,
                        binaries: BTreeMap::from([("sh".to_owned(), file("sh"))]),
                    })
                }),
                "binaries",
            ),
        ];
        for (edit, named) in cases {
            let mut m = manifest(vec![release("v1.20.2", Arch::Amd64)]);
            edit(&mut m);
            let err = validate(&m).expect_err(named);
            assert!(err.to_string().contains(named), "{named}: {err}");
        }
        let mut doc: serde_json::Value =
            serde_json::to_value(manifest(vec![release("v1.20.2", Arch::Amd64)])).expect("json");
        doc["surprise"] = 1.into();
        assert!(
            parse(doc.to_string().as_bytes()).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn selection_follows_the_server_and_the_skew_policy() {
        let m = manifest(vec![
            release("v1.18.20", Arch::Amd64),
            release("v1.20.2", Arch::Amd64),
            release("v1.21.0", Arch::Amd64),
            release("v1.20.2", Arch::Arm64),
        ]);
        let pick = |server: &str, wanted: Option<&str>| {
            select(&m, Arch::Amd64, Some(&v(server)), wanted.map(v).as_ref())
                .map(|r| r.version().to_string())
        };
        assert_eq!(pick("v1.20.2", None).as_deref(), Ok("v1.20.2"));
        assert_eq!(
            pick("v1.20.5", None).as_deref(),
            Ok("v1.20.2"),
            "newest allowed"
        );
        assert_eq!(pick("v1.20.2", Some("v1.18.20")).as_deref(), Ok("v1.18.20"));
        let err = pick("v1.20.2", Some("v1.21.0")).expect_err("newer than the server");
        assert!(
            matches!(&err, SelectError::Skew(m) if m.contains("newer than the API server") && m.contains("skew policy")),
            "{err}"
        );
        assert!(matches!(
            pick("v1.20.2", Some("v1.19.0")),
            Err(SelectError::NotOffered { .. })
        ));
        let err = pick("v1.24.0", None).expect_err("all too old");
        assert!(matches!(err, SelectError::Skew(_)), "{err}");
        assert!(matches!(
            select(
                &manifest(vec![release("v1.20.2", Arch::Arm64)]),
                Arch::Amd64,
                None,
                None
            ),
            Err(SelectError::NoArch { .. })
        ));
        // Bake mode: with one release it is the one; with several, one must be named.
        let one = manifest(vec![release("v1.20.2", Arch::Amd64)]);
        assert!(select(&one, Arch::Amd64, None, None).is_ok());
        assert!(select(&m, Arch::Amd64, None, None).is_err());
        assert!(select(&m, Arch::Amd64, None, Some(&v("v1.21.0"))).is_ok());
    }
}
