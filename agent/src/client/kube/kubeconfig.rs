//! Admin kubeconfigs (for `token`, `serve`, `reset --drain/--delete-node`), read from disk the
//! way kubectl reads them: `--kubeconfig FILE` alone when given, else every file of
//! `KUBECONFIG` merged ([`crate::model::kubeconfig::merge`]: missing files skipped, the first
//! file to name an entry wins, `current-context` from the first that sets it), else the default
//! file. `certificate-authority`, `client-certificate`, `client-key` and `tokenFile` are files
//! relative to the directory of the kubeconfig that names them; `tokenFile` is read again while
//! the client runs, as client-go does. What kubectl would do but node-attach will not
//! (`insecure-skip-tls-verify`, exec plugins, …) is refused with the reason.

use crate::model::kubeconfig::{self, Kubeconfig, KubeconfigError, Selected};
use crate::model::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The largest kubeconfig, CA, certificate, key or token file read.
pub const MAX_FILE: u64 = 1024 * 1024;

/// Where the default admin kubeconfig is (kubeadm's).
pub const DEFAULT_ADMIN: &str = "/etc/kubernetes/admin.conf";

/// Why an admin kubeconfig cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    /// A file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Read {
        /// What the file is (`--kubeconfig`, `certificate-authority`, …).
        what: String,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_FILE`].
    #[error("{what} {}: larger than {MAX_FILE} bytes", path.display())]
    TooLarge {
        /// What the file is.
        what: String,
        /// Its path.
        path: PathBuf,
    },
    /// A kubeconfig file does not parse, or lists a name twice.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// `KUBECONFIG` names no file that exists.
    #[error("KUBECONFIG names no file that exists ({0})")]
    NoneExist(String),
    /// The merged kubeconfig cannot be used.
    #[error("{files}: {source}")]
    Unusable {
        /// The files read, `:`-separated.
        files: String,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// Inline data is not base64, or a file holds no PEM of the right kind.
    #[error("{files}: {what} of {whose:?} {reason}")]
    Data {
        /// The files read.
        files: String,
        /// The field.
        what: &'static str,
        /// The cluster or user.
        whose: String,
        /// What is wrong.
        reason: String,
    },
}

/// An admin kubeconfig resolved to what a client needs: the files already read.
#[derive(Clone, Debug)]
pub struct AdminKubeconfig {
    /// The kubeconfig files read, in precedence order.
    pub files: Vec<PathBuf>,
    /// The context in use.
    pub context: String,
    /// Its cluster's name.
    pub cluster: String,
    /// Its user's name.
    pub user: String,
    /// The API server URL.
    pub server: String,
    /// The cluster CA bundle, PEM.
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and key, PEM, one after the other.
    pub client_pair: Option<Secret>,
    /// The bearer token (inline, or the token file's content when read).
    pub token: Option<Secret>,
    /// The token file, read again while the client runs.
    pub token_file: Option<PathBuf>,
}

impl AdminKubeconfig {
    /// The files read, `:`-separated, for messages.
    pub fn files_shown(&self) -> String {
        shown(&self.files)
    }

    /// One line saying which context, cluster, server and user this is, and from which files.
    pub fn describe(&self) -> String {
        let how = match (&self.client_pair, &self.token_file, &self.token) {
            (Some(_), _, _) => "a client certificate",
            (None, Some(_), _) => "a token file",
            _ => "a token",
        };
        format!(
            "context {:?} (cluster {:?} at {}, user {:?} with {how}) from {}",
            self.context,
            self.cluster,
            self.server,
            self.user,
            self.files_shown()
        )
    }
}

fn shown(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads a regular file of at most [`MAX_FILE`] bytes (through [`crate::effects::input`]).
pub fn read_capped(what: &str, path: &Path) -> Result<Vec<u8>, AdminConfigError> {
    use crate::effects::input::{self, InputError};
    match input::read(path, MAX_FILE) {
        Ok(f) => Ok(f.bytes),
        Err(InputError::Io { source, .. }) => Err(AdminConfigError::Read {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        }),
        Err(InputError::TooLarge { .. }) => Err(AdminConfigError::TooLarge {
            what: what.to_owned(),
            path: path.to_owned(),
        }),
        Err(e) => Err(AdminConfigError::Read {
            what: what.to_owned(),
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        }),
    }
}

fn parse_file(path: &Path, what: &str) -> Result<Kubeconfig, AdminConfigError> {
    let bytes = read_capped(what, path)?;
    let parse = |source| AdminConfigError::Parse {
        path: path.to_owned(),
        source,
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| parse(KubeconfigError::Parse("it is not UTF-8".into())))?;
    // An empty file is an empty config, as in client-go.
    let mut cfg = if text.trim().is_empty() {
        Kubeconfig::default()
    } else {
        Kubeconfig::parse(&text).map_err(parse)?
    };
    cfg.check_unique_names().map_err(parse)?;
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    cfg.resolve_paths(&dir);
    Ok(cfg)
}

/// The kubeconfig files in precedence order and the merged config, as kubectl picks them:
/// `flag` alone (it must exist), else `KUBECONFIG`'s list (`env`; empty entries and missing
/// files skipped, repeats read once), else `default`.
pub fn read_merged(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    default: &Path,
) -> Result<(Vec<PathBuf>, Kubeconfig), AdminConfigError> {
    if let Some(path) = flag {
        return Ok((vec![path.to_owned()], parse_file(path, "--kubeconfig")?));
    }
    let Some(list) = env.filter(|e| !e.is_empty()) else {
        return Ok((vec![default.to_owned()], parse_file(default, "kubeconfig")?));
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for p in std::env::split_paths(list) {
        if !p.as_os_str().is_empty() && !files.contains(&p) {
            files.push(p);
        }
    }
    let (mut read, mut configs) = (Vec::new(), Vec::new());
    for p in &files {
        match parse_file(p, "KUBECONFIG file") {
            Ok(c) => {
                read.push(p.clone());
                configs.push(c);
            }
            Err(AdminConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::debug!(path = %p.display(), "KUBECONFIG: no such file, skipped");
            }
            Err(e) => return Err(e),
        }
    }
    if configs.is_empty() {
        return Err(AdminConfigError::NoneExist(shown(&files)));
    }
    Ok((read, kubeconfig::merge(configs)))
}

/// Loads the admin kubeconfig: `flag`, else `$KUBECONFIG`, else [`DEFAULT_ADMIN`].
pub fn load(flag: Option<&Path>) -> Result<AdminKubeconfig, AdminConfigError> {
    let env = std::env::var_os("KUBECONFIG");
    load_from(flag, env.as_deref(), Path::new(DEFAULT_ADMIN))
}

/// [`load`] with the environment and the default given.
pub fn load_from(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    default: &Path,
) -> Result<AdminKubeconfig, AdminConfigError> {
    let (files, merged) = read_merged(flag, env, default)?;
    let files_text = shown(&files);
    let sel = merged
        .select()
        .map_err(|source| AdminConfigError::Unusable {
            files: files_text.clone(),
            source,
        })?;
    if !sel.cluster.server.starts_with("https://") {
        return Err(AdminConfigError::Unusable {
            files: files_text,
            source: KubeconfigError::BadServer(sel.cluster.server.clone()),
        });
    }
    let resolved = Resolver {
        files: &files_text,
        sel: &sel,
    };
    let ca_pem = resolved.ca()?;
    let client_pair = resolved.client_pair()?;
    let (token, token_file) = resolved.token()?;
    Ok(AdminKubeconfig {
        context: sel.context.to_owned(),
        cluster: sel.cluster_name.to_owned(),
        user: sel.user_name.to_owned(),
        server: sel.cluster.server.trim_end_matches('/').to_owned(),
        ca_pem,
        client_pair,
        token,
        token_file,
        files,
    })
}

struct Resolver<'a> {
    files: &'a str,
    sel: &'a Selected<'a>,
}

impl Resolver<'_> {
    fn data(&self, what: &'static str, whose: &str, reason: impl Into<String>) -> AdminConfigError {
        AdminConfigError::Data {
            files: self.files.to_owned(),
            what,
            whose: whose.to_owned(),
            reason: reason.into(),
        }
    }

    /// Inline base64 data, or the named file's bytes.
    fn bytes(
        &self,
        what: &'static str,
        whose: &str,
        file: &Option<String>,
        data: &Option<String>,
    ) -> Result<Option<Vec<u8>>, AdminConfigError> {
        if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
            return STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|_| self.data(what, whose, "is not valid base64"));
        }
        match file.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => read_capped(what, Path::new(f)).map(Some),
            None => Ok(None),
        }
    }

    fn ca(&self) -> Result<Vec<u8>, AdminConfigError> {
        let c = self.sel.cluster;
        let name = self.sel.cluster_name;
        let pem = self
            .bytes(
                "certificate-authority",
                name,
                &c.certificate_authority,
                &c.certificate_authority_data,
            )?
            .unwrap_or_default();
        match crate::trust::pin::certificates_from_pem(&pem) {
            Ok(certs) if !certs.is_empty() => Ok(pem),
            _ => Err(self.data("certificate-authority", name, "holds no PEM certificate")),
        }
    }

    fn client_pair(&self) -> Result<Option<Secret>, AdminConfigError> {
        let u = self.sel.user;
        let name = self.sel.user_name;
        let Some(cert) = self.bytes(
            "client-certificate",
            name,
            &u.client_certificate,
            &u.client_certificate_data,
        )?
        else {
            return Ok(None);
        };
        let key = self
            .bytes("client-key", name, &u.client_key, &u.client_key_data)?
            .unwrap_or_default();
        let text = |b: Vec<u8>, what| {
            String::from_utf8(b).map_err(|_| self.data(what, name, "is not PEM text"))
        };
        let (cert, key) = (
            text(cert, "client-certificate")?,
            Secret::new(text(key, "client-key")?),
        );
        if !cert.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.data("client-certificate", name, "holds no PEM certificate"));
        }
        if !key.expose().contains("PRIVATE KEY-----") {
            return Err(self.data("client-key", name, "holds no PEM private key"));
        }
        Ok(Some(Secret::new(format!("{cert}\n{}", key.expose()))))
    }

    /// The inline token, and the token file (read now, so an unreadable one fails here).
    fn token(&self) -> Result<(Option<Secret>, Option<PathBuf>), AdminConfigError> {
        let u = self.sel.user;
        let inline = u
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        let Some(file) = u.token_file.as_deref().filter(|f| !f.is_empty()) else {
            return Ok((inline, None));
        };
        let path = PathBuf::from(file);
        if inline.is_some() {
            // client-go starts with the inline token and prefers the file once read.
            return Ok((inline, Some(path)));
        }
        let token = read_token_file(&path)?;
        Ok((Some(token), Some(path)))
    }
}

/// A token file's content, whitespace trimmed (as client-go reads it).
pub fn read_token_file(path: &Path) -> Result<Secret, AdminConfigError> {
    let bytes = read_capped("tokenFile", path)?;
    let text = String::from_utf8(bytes).unwrap_or_default();
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminConfigError::Read {
            what: "tokenFile".into(),
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no token in it"),
        });
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["ca".into()]).expect("params");
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn files_are_relative_to_the_kubeconfig_and_kubeconfig_lists_merge() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        write(d, "a/pki/ca.crt", &ca_pem());
        write(d, "a/token", "  sekrit\n");
        let a = write(
            d,
            "a/config",
            "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://a:6443/', certificate-authority: pki/ca.crt}\nusers:\n- name: u\n  user: {tokenFile: token}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
        );
        let b = write(
            d,
            "b/config",
            "current-context: y\nclusters:\n- name: c\n  cluster: {server: 'https://decoy', insecure-skip-tls-verify: true}\n",
        );
        let list: OsString = format!(
            ":{}:{}:{}:{}",
            d.join("missing").display(),
            a.display(),
            b.display(),
            a.display()
        )
        .into();
        let got = load_from(None, Some(&list), Path::new("/nonexistent")).expect("load");
        assert_eq!(got.files, vec![a.clone(), b]);
        assert_eq!(got.server, "https://a:6443");
        assert_eq!(got.token.as_ref().map(Secret::expose), Some("sekrit"));
        assert_eq!(got.token_file, Some(d.join("a/token")));
        assert!(
            got.describe().contains("context \"x\""),
            "{}",
            got.describe()
        );
        assert!(!format!("{got:?}").contains("sekrit"));

        // The flag wins over the environment, alone.
        let only = load_from(Some(&a), Some(OsStr::new("/nonexistent")), Path::new("/x"));
        assert_eq!(only.expect("flag").files, vec![a]);
        let none = load_from(None, Some(OsStr::new("/no/1:/no/2")), Path::new("/x"));
        assert!(matches!(none, Err(AdminConfigError::NoneExist(_))));
    }

    #[test]
    fn unreadable_or_wrong_files_say_which() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        write(d, "notca.crt", "hello");
        let base = "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://a', CA}\nusers:\n- name: u\n  user: {USER}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n";
        for (ca, user, says) in [
            (
                "certificate-authority: notca.crt",
                "token: t",
                "holds no PEM certificate",
            ),
            ("certificate-authority: gone.crt", "token: t", "gone.crt"),
            (
                "certificate-authority-data: '%%'",
                "token: t",
                "not valid base64",
            ),
            (
                "certificate-authority: notca.crt, insecure-skip-tls-verify: true",
                "token: t",
                "insecure-skip-tls-verify",
            ),
        ] {
            let p = write(d, "k", &base.replace("CA", ca).replace("USER", user));
            let err = load_from(Some(&p), None, Path::new("/x"))
                .expect_err(says)
                .to_string();
            assert!(err.contains(says), "{ca}: {err}");
        }
    }
}
