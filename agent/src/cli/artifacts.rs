//! `node-attach artifacts`: the mirror operator's side — a signing key, a mirror folder with a
//! signed manifest built from local files, detached signatures for other files (node-attach's
//! own binary, for `attach.sh`), and checking one.

use crate::artifacts::manifest::Arch;
use crate::artifacts::publish::{self, ReleaseInput, RuntimeInput};
use crate::artifacts::signature::{PublicKey, SigningKey};
use crate::effects::fs::Root;
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
use crate::report::Reporter;
use std::path::{Path, PathBuf};

/// Build and sign artifact mirrors.
#[derive(Clone, Debug, clap::Args)]
pub struct ArtifactsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The artifacts subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Action {
    /// Make an Ed25519 signing key (PKCS#8 PEM, 0600) and print its public key.
    Keygen {
        /// Where to write the private key (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of a signing key.
    PublicKey {
        /// The private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Add a release (and optionally a static containerd) to a mirror folder and sign its
    /// manifest.
    Publish(Box<PublishArgs>),
    /// Write FILE.sig, the Ed25519 signature of each FILE.
    Sign {
        /// The private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Files to sign.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check FILE against FILE.sig with a public key; exit 45 when it does not verify.
    Verify {
        /// The public key (ed25519:<base64>).
        #[arg(long, value_name = "KEY")]
        public_key: String,
        /// The file (its signature is FILE.sig).
        file: PathBuf,
    },
}

/// `artifacts publish`.
#[derive(Clone, Debug, clap::Args)]
pub struct PublishArgs {
    /// The mirror folder (created if missing; an existing manifest must be this key's).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The signing key.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The release's Kubernetes version (the kubelet's).
    #[arg(long, value_name = "VERSION", requires = "kubelet")]
    pub kubernetes_version: Option<String>,
    /// The architecture of the files.
    #[arg(long, value_name = "ARCH", default_value = "amd64")]
    pub arch: String,
    /// The kubelet binary.
    #[arg(long, value_name = "FILE", requires = "kubernetes_version")]
    pub kubelet: Option<PathBuf>,
    /// crictl.
    #[arg(long, value_name = "FILE")]
    pub crictl: Option<PathBuf>,
    /// A CNI plugin, or a directory of them (repeatable), e.g. /usr/lib/cni.
    #[arg(long, value_name = "PATH")]
    pub cni: Vec<PathBuf>,
    /// An image archive and the references it holds: FILE=REF[,REF] (repeatable).
    #[arg(long, value_name = "FILE=REFS")]
    pub image: Vec<String>,
    /// A static containerd's version (with --runtime-binary).
    #[arg(long, value_name = "VERSION", requires = "runtime_binary")]
    pub containerd_version: Option<String>,
    /// A static containerd's binaries: containerd, containerd-shim-runc-v2, runc, ctr.
    #[arg(long, value_name = "FILE", requires = "containerd_version")]
    pub runtime_binary: Vec<PathBuf>,
}

fn usage(m: impl Into<String>) -> Failure {
    Failure::new(Code::Usage, m)
}

/// A file the user named, as an absolute path with no symlinks.
fn local(p: &Path) -> Result<PathBuf, Failure> {
    crate::effects::input::canonical(p).map_err(|e| usage(e.to_string()))
}

/// The largest key file read.
const KEY_MAX: u64 = 64 << 10;
/// The largest file signed or verified (read whole: Ed25519 signs the message itself).
const SIGNED_MAX: u64 = 1 << 30;
/// The largest signature file read.
const SIG_MAX: u64 = 4 << 10;

/// A file to sign or verify, whole.
fn read_signed(p: &Path) -> Result<Vec<u8>, Failure> {
    Ok(crate::effects::input::read(p, SIGNED_MAX)
        .map_err(|e| usage(e.to_string()))?
        .bytes)
}

fn read_key(p: &Path) -> Result<SigningKey, Failure> {
    let bytes = crate::effects::input::read(p, KEY_MAX)
        .map_err(|e| usage(e.to_string()))?
        .bytes;
    SigningKey::from_pem(&bytes).map_err(|e| usage(format!("{}: {e}", p.display())))
}

/// Writes `bytes` at `path` (a path the user named) atomically with `mode`.
fn write_beside(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| usage(e.to_string()))?
            .join(path)
    };
    let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(usage(format!("{}: not a file path", path.display())));
    };
    let dir = local(dir)?;
    Root::new(&dir)
        .write_atomic(&Path::new("/").join(name), bytes, mode)
        .map_err(|e| Failure::new(Code::Filesystem, e.to_string()))
}

fn release(a: &PublishArgs, arch: Arch) -> Result<Option<ReleaseInput>, Failure> {
    let (Some(v), Some(kubelet)) = (&a.kubernetes_version, &a.kubelet) else {
        return Ok(None);
    };
    let version: KubeVersion = v
        .parse()
        .map_err(|e: crate::model::version::VersionError| usage(e.to_string()))?;
    let mut images = Vec::new();
    for spec in &a.image {
        let (file, refs) = spec
            .split_once('=')
            .ok_or_else(|| usage(format!("--image {spec:?}: expected FILE=REF[,REF]")))?;
        images.push((
            local(Path::new(file))?,
            refs.split(',').map(str::to_owned).collect(),
        ));
    }
    Ok(Some(ReleaseInput {
        version,
        arch,
        kubelet: local(kubelet)?,
        crictl: a.crictl.as_deref().map(local).transpose()?,
        cni: a.cni.iter().map(|p| local(p)).collect::<Result<_, _>>()?,
        images,
    }))
}

fn run_publish(a: &PublishArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let arch = Arch::parse(&a.arch)
        .ok_or_else(|| usage(format!("--arch {:?}: expected amd64 or arm64", a.arch)))?;
    let key = read_key(&a.key)?;
    let rel = release(a, arch)?;
    let rt = match &a.containerd_version {
        Some(v) => Some(RuntimeInput {
            version: v.clone(),
            arch,
            binaries: a
                .runtime_binary
                .iter()
                .map(|p| local(p))
                .collect::<Result<_, _>>()?,
        }),
        None => None,
    };
    if rel.is_none() && rt.is_none() {
        return Err(usage(
            "nothing to publish: pass --kubernetes-version and --kubelet, or --containerd-version and --runtime-binary",
        ));
    }
    crate::effects::input::create_dir_all(&a.dir).map_err(|e| usage(e.to_string()))?;
    let dir = local(&a.dir)?;
    let m = publish::publish(&dir, &key, rel.as_ref(), rt.as_ref()).map_err(|e| match e {
        publish::PublishError::Fs(e) => Failure::new(Code::Filesystem, e.to_string()),
        publish::PublishError::Input(m) => usage(m),
    })?;
    let text = format!(
        "{}: {} release(s), {} runtime(s); manifest.json signed by {}",
        dir.display(),
        m.releases.len(),
        m.runtimes.len(),
        key.public_key()
    );
    reporter.result(&m, &text);
    Ok(())
}

/// Runs `node-attach artifacts`.
pub fn run(args: ArtifactsArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    match args.action {
        Action::Keygen { out } => {
            if out.exists() {
                return Err(usage(format!(
                    "{} exists; refusing to overwrite a key",
                    out.display()
                )));
            }
            let (key, pem) = SigningKey::generate().map_err(|e| usage(e.to_string()))?;
            write_beside(&out, pem.as_bytes(), 0o600)?;
            let public = key.public_key();
            reporter.result(
                &serde_json::json!({"publicKey": public}),
                &format!("{public}\n(private key in {}, mode 0600)", out.display()),
            );
            Ok(())
        }
        Action::PublicKey { key } => {
            let public = read_key(&key)?.public_key();
            reporter.result(
                &serde_json::json!({"publicKey": public}),
                &public.to_string(),
            );
            Ok(())
        }
        Action::Publish(a) => run_publish(&a, reporter),
        Action::Sign { key, files } => {
            let key = read_key(&key)?;
            for f in &files {
                let bytes = read_signed(f)?;
                let mut sig = f.clone().into_os_string();
                sig.push(".sig");
                write_beside(Path::new(&sig), key.sign(&bytes).as_bytes(), 0o644)?;
            }
            reporter.result(
                &serde_json::json!({"signed": files, "publicKey": key.public_key()}),
                &format!("signed {} file(s) with {}", files.len(), key.public_key()),
            );
            Ok(())
        }
        Action::Verify { public_key, file } => {
            let key = PublicKey::parse(&public_key).map_err(|e| usage(e.to_string()))?;
            let bytes = read_signed(&file)?;
            let mut sig = file.clone().into_os_string();
            sig.push(".sig");
            let sig = crate::effects::input::read(Path::new(&sig), SIG_MAX)
                .map(|f| f.bytes)
                .unwrap_or_default();
            key.verify(&bytes, &sig).map_err(|e| {
                Failure::new(Code::ArtifactsSignature, format!("{}: {e}", file.display()))
            })?;
            reporter.result(
                &serde_json::json!({"verified": file}),
                &format!("{}: the signature verifies with {key}", file.display()),
            );
            Ok(())
        }
    }
}
