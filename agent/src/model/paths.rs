//! Where a node's Kubernetes identity lives: the paths join writes and reset reads, in the
//! layout kubeadm and the kubelet use (`/var/lib/kubelet/pki`, `/etc/kubernetes`).

/// The kubelet's client certificate store.
pub const PKI_DIR: &str = "/var/lib/kubelet/pki";
/// The current pair, as the kubelet's store names it (a link to the dated pair).
pub const CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
/// The key kept across retries until a certificate is issued.
pub const TMP_KEY: &str = "/var/lib/kubelet/pki/kubelet-client.key.tmp";
/// The kubelet's kubeconfig.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// kubeadm's bootstrap kubeconfig (only with `--tls-bootstrap=kubelet`).
pub const BOOTSTRAP_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
/// CNI configuration and state: the CNI plugins' and their daemonsets' files, which reset
/// empties except for what was there before join ([`crate::apply::journal::Change::Found`]).
pub const CNI_DIRS: &[&str] = &["/etc/cni/net.d", "/var/lib/cni"];
