//! `node-attach artifacts publish`: builds (or extends) a mirror folder from local files — a
//! kubelet, crictl, CNI plugins, image archives, a static containerd — with `manifest.json`
//! and its signature. Publishing again adds or replaces one release (a version and an
//! architecture) and keeps the others; the existing manifest must verify with the same key.
//!
//! Layout below the folder: `kubernetes/<version>/<arch>/{kubelet,crictl,cni/<plugin>}`,
//! `images/<arch>/<archive>`, `runtimes/containerd/<version>/<arch>/<binary>`.

use super::fetch::{MANIFEST, SIGNATURE};
use super::manifest::{self, Arch, FileRef, ImageArchive, Manifest, Release, RuntimeRelease};
use super::signature::SigningKey;
use crate::effects::fs::{Found, FsError, Root};
use crate::model::version::KubeVersion;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// An input is unusable.
    #[error("{0}")]
    Input(String),
}

/// One Kubernetes release to publish.
#[derive(Clone, Debug)]
pub struct ReleaseInput {
    /// The kubelet's version.
    pub version: KubeVersion,
    /// Its architecture.
    pub arch: Arch,
    /// The kubelet binary.
    pub kubelet: PathBuf,
    /// crictl, if any.
    pub crictl: Option<PathBuf>,
    /// CNI plugin binaries, or directories of them (each regular file in one is a plugin).
    pub cni: Vec<PathBuf>,
    /// Image archives and the references each holds.
    pub images: Vec<(PathBuf, Vec<String>)>,
}

/// A static containerd to publish.
#[derive(Clone, Debug)]
pub struct RuntimeInput {
    /// Its version.
    pub version: String,
    /// Its architecture.
    pub arch: Arch,
    /// The binaries (named as in [`manifest::RUNTIME_BINARIES`]).
    pub binaries: Vec<PathBuf>,
}

fn input(m: impl Into<String>) -> PublishError {
    PublishError::Input(m.into())
}

fn file_name(p: &Path) -> Result<String, PublishError> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| input(format!("{} has no file name", p.display())))
}

/// Copies `src` (an absolute path) into the mirror at `rel`; returns its manifest entry.
fn add_file(out: &Root, src: &Path, rel: &str) -> Result<FileRef, PublishError> {
    manifest::check_path("path", rel).map_err(|e| input(e.to_string()))?;
    let digest = match Root::new("/").digest(src)? {
        Found::File(d) => d,
        Found::Absent => return Err(input(format!("{} does not exist", src.display()))),
        Found::Other(what) => {
            return Err(input(format!(
                "{} is a {what}, not a regular file",
                src.display()
            )))
        }
    };
    let target = PathBuf::from("/").join(rel);
    if let Some(parent) = target.parent() {
        out.mkdir_all(parent, 0o755)?;
    }
    let unchanged = matches!(out.digest(&target)?, Found::File(d) if d.sha256 == digest.sha256);
    if !unchanged {
        out.copy_from(src, &target, 0o644)?;
    }
    Ok(FileRef {
        path: rel.to_owned(),
        sha256: digest.sha256,
        size: digest.size,
    })
}

/// The CNI plugins named by files and directories.
fn cni_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, PublishError> {
    let mut out = Vec::new();
    for p in inputs {
        match crate::effects::input::list_files(p).map_err(|e| input(e.to_string()))? {
            Some(names) => out.extend(names),
            None => out.push(p.clone()),
        }
    }
    Ok(out)
}

fn add_release(out: &Root, r: &ReleaseInput) -> Result<Release, PublishError> {
    let dir = format!("kubernetes/{}/{}", r.version, r.arch.as_str());
    let kubelet = add_file(out, &r.kubelet, &format!("{dir}/kubelet"))?;
    let crictl = match &r.crictl {
        Some(c) => Some(add_file(out, c, &format!("{dir}/crictl"))?),
        None => None,
    };
    let mut cni_plugins = BTreeMap::new();
    for p in cni_files(&r.cni)? {
        let name = file_name(&p)?;
        let entry = add_file(out, &p, &format!("{dir}/cni/{name}"))?;
        cni_plugins.insert(name, entry);
    }
    let mut images = Vec::new();
    for (p, refs) in &r.images {
        let name = file_name(p)?;
        let file = add_file(out, p, &format!("images/{}/{name}", r.arch.as_str()))?;
        images.push(ImageArchive {
            file,
            refs: refs.clone(),
        });
    }
    Ok(Release {
        kubernetes_version: r.version.to_string(),
        arch: r.arch,
        kubelet,
        crictl,
        cni_plugins,
        images,
    })
}

fn add_runtime(out: &Root, rt: &RuntimeInput) -> Result<RuntimeRelease, PublishError> {
    let dir = format!("runtimes/containerd/{}/{}", rt.version, rt.arch.as_str());
    let mut binaries = BTreeMap::new();
    for p in &rt.binaries {
        let name = file_name(p)?;
        binaries.insert(name.clone(), add_file(out, p, &format!("{dir}/{name}"))?);
    }
    Ok(RuntimeRelease {
        name: "containerd".into(),
        version: rt.version.clone(),
        arch: rt.arch,
        binaries,
    })
}

/// The folder's current manifest, when it has one signed by `key`.
fn existing(out: &Root, key: &SigningKey) -> Result<Option<Manifest>, PublishError> {
    let Some(bytes) = out.read(&Path::new("/").join(MANIFEST))? else {
        return Ok(None);
    };
    let sig = out
        .read(&Path::new("/").join(SIGNATURE))?
        .unwrap_or_default();
    key.public_key().verify(&bytes, &sig).map_err(|e| {
        input(format!(
            "the folder's {MANIFEST} does not verify with this key ({e}): publish into an empty folder, or with the key that signed it"
        ))
    })?;
    manifest::parse(&bytes)
        .map(Some)
        .map_err(|e| input(format!("the folder's {MANIFEST}: {e}")))
}

/// Adds `release` and `runtime` to the mirror folder `dir` and signs the manifest with `key`.
pub fn publish(
    dir: &Path,
    key: &SigningKey,
    release: Option<&ReleaseInput>,
    runtime: Option<&RuntimeInput>,
) -> Result<Manifest, PublishError> {
    let out = Root::new(dir);
    out.mkdir_all(Path::new("/"), 0o755)?;
    let mut m = existing(&out, key)?.unwrap_or(Manifest {
        api_version: manifest::API_VERSION.into(),
        kind: manifest::KIND.into(),
        releases: Vec::new(),
        runtimes: Vec::new(),
    });
    if let Some(r) = release {
        let new = add_release(&out, r)?;
        m.releases
            .retain(|old| !(old.version() == new.version() && old.arch == new.arch));
        m.releases.push(new);
        m.releases
            .sort_by_key(|r| (r.arch, r.version().minor_key(), r.version().patch));
    }
    if let Some(rt) = runtime {
        let new = add_runtime(&out, rt)?;
        m.runtimes
            .retain(|old| !(old.version == new.version && old.arch == new.arch));
        m.runtimes.push(new);
    }
    manifest::validate(&m).map_err(|e| input(e.to_string()))?;
    let mut bytes = serde_json::to_vec_pretty(&m).map_err(|e| input(e.to_string()))?;
    bytes.push(b'\n');
    out.write_atomic(&Path::new("/").join(MANIFEST), &bytes, 0o644)?;
    out.write_atomic(
        &Path::new("/").join(SIGNATURE),
        key.sign(&bytes).as_bytes(),
        0o644,
    )?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_signs_and_extends_a_mirror() {
        let src = tempfile::tempdir().expect("src");
        let kubelet = src.path().join("kubelet");
        std::fs::write(&kubelet, b"kubelet bytes").expect("kubelet");
        let cni = src.path().join("cni");
        std::fs::create_dir(&cni).expect("cni");
        for p in ["bridge", "host-local", "loopback"] {
            std::fs::write(cni.join(p), p.as_bytes()).expect("plugin");
        }
        let out = tempfile::tempdir().expect("out");
        let (key, _) = SigningKey::generate().expect("key");
        let r = ReleaseInput {
            version: "v1.20.2".parse().expect("v"),
            arch: Arch::Amd64,
            kubelet: kubelet.clone(),
            crictl: None,
            cni: vec![cni.clone()],
            images: Vec::new(),
        };
        let m = publish(out.path(), &key, Some(&r), None).expect("publish");
        assert_eq!(m.releases.len(), 1);
        assert_eq!(m.releases[0].cni_plugins.len(), 3);
        let bytes = std::fs::read(out.path().join(MANIFEST)).expect("manifest");
        let sig = std::fs::read(out.path().join(SIGNATURE)).expect("sig");
        key.public_key().verify(&bytes, &sig).expect("signed");
        assert_eq!(
            std::fs::read(out.path().join("kubernetes/v1.20.2/amd64/kubelet")).expect("copy"),
            b"kubelet bytes"
        );
        // A second release is added beside the first.
        let r2 = ReleaseInput {
            version: "v1.21.0".parse().expect("v"),
            ..r
        };
        let m = publish(out.path(), &key, Some(&r2), None).expect("again");
        assert_eq!(m.releases.len(), 2);
        // Another key may not extend it.
        let (other, _) = SigningKey::generate().expect("key");
        let err = publish(out.path(), &other, Some(&r2), None).expect_err("foreign key");
        assert!(err.to_string().contains("does not verify"), "{err}");
    }
}
