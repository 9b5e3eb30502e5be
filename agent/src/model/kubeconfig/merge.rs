//! Several kubeconfig files read as one, and the context in use picked, the way kubectl does it
//! (client-go's `clientcmd` loading rules and validation):
//!
//! - relative paths (`certificate-authority`, `client-certificate`, `client-key`, `tokenFile`)
//!   are relative to the directory of the file that holds the entry ([`Kubeconfig::resolve_paths`]);
//! - the first file to define a cluster, context or user name wins, whole: nothing of a later
//!   file's entry of that name is used ([`merge`]);
//! - `current-context` comes from the first file that sets it;
//! - a name listed twice in one file makes that file invalid.
//!
//! [`Kubeconfig::select`] then applies client-go's validation to the current context, and refuses
//! what node-attach does not do: skipping TLS verification, exec and auth-provider plugins,
//! basic auth, impersonation, proxies and a TLS server name override.

use super::{Cluster, Kubeconfig, KubeconfigError, NamedUser, User};
use std::collections::HashSet;
use std::path::Path;

/// The context in use, with its cluster and user, from a merged kubeconfig.
#[derive(Clone, Debug, PartialEq)]
pub struct Selected<'a> {
    /// The context's name.
    pub context: &'a str,
    /// The cluster's name.
    pub cluster_name: &'a str,
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The user's name.
    pub user_name: &'a str,
    /// The user.
    pub user: &'a User,
}

fn resolve(path: &mut Option<String>, dir: &Path) {
    if let Some(p) = path.as_mut().filter(|p| !p.is_empty()) {
        if Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).display().to_string();
        }
    }
}

impl Kubeconfig {
    /// Makes every relative file reference absolute against `dir` (the file's own directory),
    /// as client-go's `ResolveLocalPaths` does before merging.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for c in &mut self.clusters {
            resolve(&mut c.cluster.certificate_authority, dir);
        }
        for u in &mut self.users {
            resolve(&mut u.user.client_certificate, dir);
            resolve(&mut u.user.client_key, dir);
            resolve(&mut u.user.token_file, dir);
        }
    }

    /// Refuses a file listing one name twice (client-go's conversion refuses it too).
    pub fn check_unique_names(&self) -> Result<(), KubeconfigError> {
        fn unique<'a>(
            what: &'static str,
            names: impl Iterator<Item = &'a String>,
        ) -> Result<(), KubeconfigError> {
            let mut seen = HashSet::new();
            for n in names {
                if !seen.insert(n) {
                    return Err(KubeconfigError::Duplicate {
                        what,
                        name: n.clone(),
                    });
                }
            }
            Ok(())
        }
        unique("cluster", self.clusters.iter().map(|c| &c.name))?;
        unique("context", self.contexts.iter().map(|c| &c.name))?;
        unique("user", self.users.iter().map(|u| &u.name))
    }

    /// The current context, its cluster and its user, checked as client-go checks them, and
    /// refused where node-attach would not do what kubectl does.
    pub fn select(&self) -> Result<Selected<'_>, KubeconfigError> {
        let bad = |m: String| KubeconfigError::Unusable(m);
        if self.current_context.is_empty() {
            return Err(bad("the kubeconfig sets no current-context".into()));
        }
        let name = self.current_context.as_str();
        let context = self
            .contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                bad(format!(
                    "context was not found for specified context: {name}"
                ))
            })?;
        let (cluster_name, user_name) = (&context.context.cluster, &context.context.user);
        if user_name.is_empty() {
            return Err(bad(format!("user was not specified for context {name:?}")));
        }
        if cluster_name.is_empty() {
            return Err(bad(format!(
                "cluster was not specified for context {name:?}"
            )));
        }
        let user = self
            .users
            .iter()
            .find(|u| &u.name == user_name)
            .ok_or_else(|| {
                bad(format!(
                    "user {user_name:?} was not found for context {name:?}"
                ))
            })?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| &c.name == cluster_name)
            .ok_or_else(|| {
                bad(format!(
                    "cluster {cluster_name:?} was not found for context {name:?}"
                ))
            })?;
        check_cluster(cluster_name, &cluster.cluster).map_err(bad)?;
        check_user(user).map_err(bad)?;
        Ok(Selected {
            context: name,
            cluster_name,
            cluster: &cluster.cluster,
            user_name,
            user: &user.user,
        })
    }
}

fn set(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

fn check_cluster(name: &str, c: &Cluster) -> Result<(), String> {
    if c.insecure_skip_tls_verify {
        return Err(format!(
            "cluster {name:?} sets insecure-skip-tls-verify: node-attach never talks to an API \
             server it cannot verify; give the cluster's CA (certificate-authority or \
             certificate-authority-data) and remove insecure-skip-tls-verify"
        ));
    }
    if c.server.is_empty() {
        return Err(format!("no server found for cluster {name:?}"));
    }
    if set(&c.certificate_authority) && set(&c.certificate_authority_data) {
        return Err(format!(
            "certificate-authority-data and certificate-authority are both specified for {name}"
        ));
    }
    if !set(&c.certificate_authority) && !set(&c.certificate_authority_data) {
        return Err(format!(
            "cluster {name:?} names no CA (certificate-authority or certificate-authority-data): \
             node-attach trusts only the cluster's own CA, never the system's roots"
        ));
    }
    for (field, v) in [
        ("proxy-url", &c.proxy_url),
        ("tls-server-name", &c.tls_server_name),
    ] {
        if set(v) {
            return Err(format!(
                "cluster {name:?} sets {field}, which node-attach does not support"
            ));
        }
    }
    Ok(())
}

fn check_user(named: &NamedUser) -> Result<(), String> {
    let (name, u) = (&named.name, &named.user);
    let unsupported = [
        ("exec", u.exec.is_some()),
        ("auth-provider", u.auth_provider.is_some()),
        (
            "username/password (basic auth)",
            set(&u.username) || set(&u.password),
        ),
        ("as (impersonation)", set(&u.impersonate)),
    ];
    if let Some((what, _)) = unsupported.iter().find(|(_, on)| *on) {
        return Err(format!(
            "user {name:?} authenticates with {what}, which node-attach does not support: use a \
             client certificate, token or tokenFile"
        ));
    }
    let cert = set(&u.client_certificate) || set(&u.client_certificate_data);
    if set(&u.client_certificate) && set(&u.client_certificate_data) {
        return Err(format!(
            "client-cert-data and client-cert are both specified for {name}"
        ));
    }
    if set(&u.client_key) && set(&u.client_key_data) {
        return Err(format!(
            "client-key-data and client-key are both specified for {name}"
        ));
    }
    if cert && !set(&u.client_key) && !set(&u.client_key_data) {
        return Err(format!(
            "client-key-data or client-key must be specified for {name} to use the clientCert authentication method"
        ));
    }
    if !cert && !set(&u.token) && !set(&u.token_file) {
        return Err(format!(
            "user {name:?} has no credentials (client certificate, token or tokenFile)"
        ));
    }
    Ok(())
}

/// Merges kubeconfig files in precedence order, as kubectl merges `KUBECONFIG=a:b:c`: the first
/// file to define a name keeps it (later entries of that name are dropped whole), and
/// `current-context` is the first non-empty one. Resolve each file's paths first.
pub fn merge(files: impl IntoIterator<Item = Kubeconfig>) -> Kubeconfig {
    let mut out = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        ..Kubeconfig::default()
    };
    for f in files {
        if out.current_context.is_empty() {
            out.current_context = f.current_context;
        }
        for c in f.clusters {
            if !out.clusters.iter().any(|o| o.name == c.name) {
                out.clusters.push(c);
            }
        }
        for c in f.contexts {
            if !out.contexts.iter().any(|o| o.name == c.name) {
                out.contexts.push(c);
            }
        }
        for u in f.users {
            if !out.users.iter().any(|o| o.name == u.name) {
                out.users.push(u);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Kubeconfig {
        Kubeconfig::parse(text).expect("parse")
    }

    const A: &str = "clusters:\n- name: c\n  cluster:\n    server: https://a:6443\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: pki/u.crt\n    client-key: /abs/u.key\n    tokenFile: tok\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n";
    const B: &str = "current-context: x\nclusters:\n- name: c\n  cluster:\n    server: https://decoy:6443\n    certificate-authority-data: AAAA\n- name: d\n  cluster:\n    server: https://d:6443\n    certificate-authority-data: AAAA\ncontexts:\n- name: x\n  context: {cluster: d, user: u}\n- name: y\n  context: {cluster: d, user: u}\ncurrent-context: y\n";

    #[test]
    fn relative_paths_follow_their_file() {
        let mut a = cfg(A);
        a.resolve_paths(Path::new("/etc/kube"));
        assert_eq!(
            a.clusters[0].cluster.certificate_authority.as_deref(),
            Some("/etc/kube/ca.crt")
        );
        let u = &a.users[0].user;
        assert_eq!(u.client_certificate.as_deref(), Some("/etc/kube/pki/u.crt"));
        assert_eq!(u.client_key.as_deref(), Some("/abs/u.key"));
        assert_eq!(u.token_file.as_deref(), Some("/etc/kube/tok"));
    }

    #[test]
    fn the_first_file_to_set_a_name_or_the_current_context_wins() {
        // B repeats current-context: that is a duplicate key, which strict parsing refuses.
        assert!(Kubeconfig::parse(B).is_err());
        let b = cfg(&B.replace("current-context: y\n", ""));
        let merged = merge([cfg(A), b.clone()]);
        assert_eq!(merged.current_context, "x");
        let s = merged.select().expect("select");
        assert_eq!((s.context, s.cluster_name), ("x", "c"));
        assert_eq!(s.cluster.server, "https://a:6443");
        assert_eq!(merged.clusters.len(), 2);
        // The other order: B's x (cluster d) wins, its current-context too.
        let merged = merge([b, cfg(A)]);
        assert_eq!(
            merged.select().expect("select").cluster.server,
            "https://d:6443"
        );
    }

    #[test]
    fn kubectl_s_refusals_and_node_attach_s_own() {
        let base = "current-context: x\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\nclusters:\n- name: c\n  cluster:\n    server: https://a\n    CLUSTER\nusers:\n- name: u\n  user:\n    USER\n";
        let with = |cluster: &str, user: &str| {
            cfg(&base.replace("CLUSTER", cluster).replace("USER", user))
                .select()
                .map(|_| ())
        };
        let ok = with("certificate-authority-data: AAAA", "token: t");
        assert!(ok.is_ok(), "{ok:?}");
        for (cluster, user, says) in [
            (
                "insecure-skip-tls-verify: true",
                "token: t",
                "insecure-skip-tls-verify",
            ),
            (
                "certificate-authority: f\n    certificate-authority-data: AAAA",
                "token: t",
                "both specified",
            ),
            (
                "certificate-authority: f\n    proxy-url: http://p",
                "token: t",
                "proxy-url",
            ),
            ("proxy-url: \"\"", "token: t", "no CA"),
            (
                "certificate-authority: f\n    tls-server-name: n",
                "token: t",
                "tls-server-name",
            ),
            (
                "certificate-authority: f",
                "client-certificate: c",
                "client-key must be specified",
            ),
            ("certificate-authority: f", "exec: {command: x}", "exec"),
            (
                "certificate-authority: f",
                "username: a\n    password: b",
                "basic auth",
            ),
            (
                "certificate-authority: f",
                "client-key: k",
                "no credentials",
            ),
        ] {
            let err = with(cluster, user).expect_err(says).to_string();
            assert!(err.contains(says), "{cluster} / {user}: {err}");
        }
        let no_user = cfg(&base
            .replace("CLUSTER", "certificate-authority-data: AAAA")
            .replace("USER", "token: t")
            .replace("name: u\n", "name: v\n"));
        assert!(no_user
            .select()
            .expect_err("user")
            .to_string()
            .contains("user \"u\" was not found"));
    }

    #[test]
    fn one_file_may_not_list_a_name_twice() {
        let twice = "users:\n- name: u\n  user: {token: a}\n- name: u\n  user: {token: b}\n";
        assert!(matches!(
            cfg(twice).check_unique_names(),
            Err(KubeconfigError::Duplicate { what: "user", .. })
        ));
        assert!(cfg(A).check_unique_names().is_ok());
    }
}
