//! What the stand-in serves and does, by the Kubernetes release it plays
//! ([`crate::Options::kubernetes_version`]). Every gate names the upstream source it follows;
//! `docs/upstream-versions.md` has the table these come from. "K" is kubernetes/kubernetes,
//! "v1.20.2" means the tree `tests/kubernetes/build.sh` builds (read for this file).

/// A Kubernetes release, `vMAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

const DS: &str = "digital signature";
const KE: &str = "key encipherment";
const CA: &str = "client auth";

impl Release {
    /// Parses `v1.20.2`, `1.20.2`, `v1.20` or `v1.20.2-eks-1`; what does not parse reads as 0.
    pub fn parse(text: &str) -> Release {
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Release {
            major: parts.next().unwrap_or(1),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
        }
    }

    /// `X.Y`.
    pub fn minor_text(self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    fn at_least(self, minor: u32) -> bool {
        (self.major, self.minor) >= (1, minor)
    }

    /// The `certificates.k8s.io` versions served, preferred first. v1beta1 was the only one up
    /// to 1.18; v1 is GA from 1.19 (K#91685; k8s.io/api `certificates/v1` first tagged
    /// kubernetes-1.19.0); v1beta1 is `deprecated=1.19` and no longer served from 1.22 (k8s.io/api
    /// kubernetes-1.22.0 `certificates/v1beta1/types.go` lifecycle tags).
    pub fn csr_versions(self) -> &'static [&'static str] {
        if !self.at_least(19) {
            &["v1beta1"]
        } else if !self.at_least(22) {
            &["v1", "v1beta1"]
        } else {
            &["v1"]
        }
    }

    /// Whether CSRs have `spec.signerName`: from 1.18 (k8s.io/api kubernetes-1.18.0
    /// `certificates/v1beta1/types.go` `SignerName`); before, the field is unknown and dropped.
    pub fn csr_signer_name(self) -> bool {
        self.at_least(18)
    }

    /// Whether the `Failed` condition exists and the signer sets it for a request its signer
    /// refuses: from 1.19 (k8s.io/api kubernetes-1.19.0 `CertificateFailed`; v1.20.2
    /// `pkg/controller/certificates/signer/signer.go` `handle`). Before, an unsignable approved
    /// CSR just stays without a certificate (kubernetes-1.18.0 `signer.go` `handle`: "TODO: mark
    /// the CertificateRequest as being in a terminal state").
    pub fn csr_failed_condition(self) -> bool {
        self.at_least(19)
    }

    /// Whether CSR conditions carry `status` and `lastTransitionTime`: from 1.19 (k8s.io/api
    /// kubernetes-1.19.0 `CertificateSigningRequestCondition`; v1.20.2
    /// `pkg/registry/certificates/certificates/strategy.go` `populateConditionTimestamps`).
    pub fn csr_condition_status(self) -> bool {
        self.at_least(19)
    }

    /// Whether the csrsigning controller checks a request against its signer before signing:
    /// from 1.18 (kubernetes-1.18.0 `signer.go` `requestValidForSignerName`); before, it signs
    /// every approved CSR (KEP-1400 text: failures "only reported in kube-controller-manager
    /// logs").
    pub fn csr_signer_validates(self) -> bool {
        self.at_least(18)
    }

    /// Whether `usages` are those of a kubelet client certificate, for the approver and the
    /// signer. Before 1.25 exactly {digital signature, key encipherment, client auth} (v1.20.2
    /// `pkg/apis/certificates/helpers.go` `kubeletClientRequiredUsages`,
    /// `ValidateKubeletClientCSR`); from 1.25 the controllers also take {digital signature,
    /// client auth} (K#111061, v1.25.0; helpers everywhere from 1.27, K#111660).
    pub fn kubelet_client_usages(self, usages: &[String]) -> bool {
        let mut u: Vec<&str> = usages.iter().map(String::as_str).collect();
        u.sort_unstable();
        u.dedup();
        let mut rsa = vec![DS, KE, CA];
        rsa.sort_unstable();
        let mut no_rsa = vec![DS, CA];
        no_rsa.sort_unstable();
        u == rsa || (self.at_least(25) && u == no_rsa)
    }

    /// The usages the signer names in its `Failed` message (v1.20.2 `helpers.go`:
    /// "usages did not match %v" over the sorted required set).
    pub fn kubelet_client_usages_text(self) -> &'static str {
        "[client auth digital signature key encipherment]"
    }

    /// The kubelet-config ConfigMap name kubeadm init of this version writes, with the
    /// `UnversionedKubeletConfigMap` gate of the seeded ClusterConfiguration (`None`: unset).
    /// `kubelet-config-X.Y` before 1.23 (v1.20.2 `cmd/kubeadm/app/constants/constants.go`
    /// `GetKubeletConfigMapName`); 1.23 only with the gate true (alpha, K#105741); 1.24 unless
    /// the gate is false (beta, on, K#108027); `kubelet-config` only from 1.25 (GA, K#110327).
    pub fn kubelet_config_name(self, unversioned_gate: Option<bool>) -> String {
        let unversioned = if !self.at_least(23) {
            false
        } else if !self.at_least(24) {
            unversioned_gate == Some(true)
        } else if !self.at_least(25) {
            unversioned_gate != Some(false)
        } else {
            true
        };
        if unversioned {
            "kubelet-config".into()
        } else {
            format!("kubelet-config-{}", self.minor_text())
        }
    }

    /// Whether kubeadm init creates `kubeadm:get-nodes` (a ClusterRole and its binding to the
    /// bootstrap group): from 1.18 (K#81056; v1.20.2
    /// `cmd/kubeadm/app/phases/bootstraptoken/node/tlsbootstrap.go` `AllowBoostrapTokensToGetNodes`).
    pub fn kubeadm_get_nodes(self) -> bool {
        self.at_least(18)
    }

    /// The `kubeadm.k8s.io` version kubeadm stores the ClusterConfiguration in: v1alpha3 (1.12),
    /// v1beta1 (1.13–1.14), v1beta2 (1.15–1.21; v1.20.2 `cmd/kubeadm/app/apis/kubeadm/scheme`),
    /// v1beta3 (1.22–1.30, K#101129), v1beta4 (from 1.31, K#125029).
    pub fn kubeadm_api_version(self) -> &'static str {
        const BY_RELEASE: [(u32, &str); 4] = [
            (13, "kubeadm.k8s.io/v1alpha3"),
            (15, "kubeadm.k8s.io/v1beta1"),
            (22, "kubeadm.k8s.io/v1beta2"),
            (31, "kubeadm.k8s.io/v1beta3"),
        ];
        BY_RELEASE
            .into_iter()
            .find(|(until, _)| !self.at_least(*until))
            .map_or("kubeadm.k8s.io/v1beta4", |(_, v)| v)
    }

    /// Whether kubeadm-config carries `ClusterStatus`: before 1.22 (v1.20.2
    /// `phases/uploadconfig/uploadconfig.go` `UploadConfiguration`; removed with v1beta3, K#101915).
    pub fn kubeadm_cluster_status(self) -> bool {
        !self.at_least(22)
    }

    /// kubeadm's default `imageRepository`: `k8s.gcr.io` (v1.20.2
    /// `cmd/kubeadm/app/apis/kubeadm/v1beta2/defaults.go` `DefaultImageRepository`), and
    /// `registry.k8s.io` from 1.25 (K#109938, K#110343) and from the December 2022 backports
    /// 1.22.17 (K#113388), 1.23.15 (K#113393, CHANGELOG-1.23) and 1.24.9 (K#113395).
    pub fn kubeadm_image_repository(self) -> &'static str {
        let moved = match (self.major, self.minor) {
            (1, 0..=21) => false,
            (1, 22) => self.patch >= 17,
            (1, 23) => self.patch >= 15,
            (1, 24) => self.patch >= 9,
            _ => true,
        };
        if moved {
            "registry.k8s.io"
        } else {
            "k8s.gcr.io"
        }
    }

    /// The `policy` versions served, preferred first: v1beta1 only before 1.21; v1 (the
    /// PodDisruptionBudget, k8s.io/api kubernetes-1.21.0 `policy/v1`) and v1beta1 1.21–1.24;
    /// v1 only from 1.25 (v1beta1 `removed=1.25`, k8s.io/api kubernetes-1.35.0 lifecycle tags).
    pub fn policy_versions(self) -> &'static [&'static str] {
        if !self.at_least(21) {
            &["v1beta1"]
        } else if !self.at_least(25) {
            &["v1", "v1beta1"]
        } else {
            &["v1"]
        }
    }

    /// The version the `pods/eviction` subresource is served as: `policy/v1beta1` before 1.22,
    /// `policy/v1` from 1.22 (k8s.io/api commit "Register Eviction v1", in kubernetes-1.22.0,
    /// not in kubernetes-1.21.0). Seen on v1.20.2: `/api/v1` lists pods/eviction as
    /// group policy, version v1beta1.
    pub fn eviction_version(self) -> &'static str {
        if self.at_least(22) {
            "v1"
        } else {
            "v1beta1"
        }
    }

    /// Whether an Eviction body of `api_version` decodes: before 1.22 only `policy/v1beta1`
    /// (v1.20.2 answers a `policy/v1` body 400: no kind "Eviction" is registered for version
    /// "policy/v1"); from 1.22 both (v1beta1 is deprecated, not removed).
    pub fn eviction_body_ok(self, api_version: &str) -> bool {
        match api_version {
            "" | "policy/v1beta1" => true,
            "policy/v1" => self.at_least(22),
            _ => false,
        }
    }

    /// Whether an eviction skips the budgets of a Pending pod: from 1.17 (kubernetes#83906,
    /// "Pods in Pending state are removed without checking PDBs"; v1.20.2
    /// `pkg/registry/core/pod/storage/eviction.go` `canIgnorePDB`).
    pub fn eviction_ignores_pending_pods(self) -> bool {
        self.at_least(17)
    }

    /// Whether an eviction skips the budgets of a pod already being deleted: from 1.19
    /// (kubernetes#91342; v1.20.2 `canIgnorePDB`).
    pub fn eviction_ignores_deleting_pods(self) -> bool {
        self.at_least(19)
    }

    /// Whether `/version` carries `emulationMajor`/`emulationMinor` and
    /// `minCompatibilityMajor`/`minCompatibilityMinor`: from 1.33 (kubernetes#130019, KEP-4330;
    /// apimachinery `pkg/version/types.go`, the fields `omitempty` before).
    pub fn version_reports_emulation(self) -> bool {
        self.at_least(33)
    }

    /// The versions of the RBAC and authorization groups served, preferred first: v1 and
    /// v1beta1 before 1.22, v1 only from 1.22 (K API removal guide: rbac and authorization
    /// v1beta1 removed in 1.22; v1.20.2 `/apis` lists both).
    pub fn rbac_versions(self) -> &'static [&'static str] {
        if self.at_least(22) {
            &["v1"]
        } else {
            &["v1", "v1beta1"]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Release {
        Release::parse(s)
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_release_strings() {
        assert_eq!(
            r("v1.20.2"),
            Release {
                major: 1,
                minor: 20,
                patch: 2
            }
        );
        assert_eq!(r("1.24.9-eks-1").patch, 9);
        assert_eq!(r("v1.31").minor, 31);
    }

    #[test]
    fn csr_api_versions_by_release() {
        assert_eq!(r("v1.18.20").csr_versions(), ["v1beta1"]);
        assert_eq!(r("v1.19.0").csr_versions(), ["v1", "v1beta1"]);
        assert_eq!(r("v1.21.14").csr_versions(), ["v1", "v1beta1"]);
        assert_eq!(r("v1.22.0").csr_versions(), ["v1"]);
        assert!(!r("v1.17.17").csr_signer_name());
        assert!(r("v1.18.0").csr_signer_name());
        assert!(!r("v1.18.20").csr_failed_condition());
        assert!(r("v1.19.0").csr_failed_condition());
        assert!(!r("v1.18.20").csr_condition_status());
        assert!(r("v1.19.0").csr_condition_status());
        assert!(!r("v1.17.17").csr_signer_validates());
        assert!(r("v1.18.0").csr_signer_validates());
    }

    #[test]
    fn kubelet_client_usages_by_release() {
        let three = usages(&[CA, KE, DS]);
        let two = usages(&[DS, CA]);
        assert!(r("v1.24.17").kubelet_client_usages(&three));
        assert!(!r("v1.24.17").kubelet_client_usages(&two));
        assert!(r("v1.25.0").kubelet_client_usages(&three));
        assert!(r("v1.25.0").kubelet_client_usages(&two));
        assert!(!r("v1.31.2").kubelet_client_usages(&usages(&[CA])));
        assert!(!r("v1.31.2").kubelet_client_usages(&usages(&[DS, KE, CA, "server auth"])));
    }

    #[test]
    fn kubelet_config_names_by_release_and_gate() {
        assert_eq!(
            r("v1.22.17").kubelet_config_name(None),
            "kubelet-config-1.22"
        );
        assert_eq!(
            r("v1.22.17").kubelet_config_name(Some(true)),
            "kubelet-config-1.22"
        );
        assert_eq!(
            r("v1.23.17").kubelet_config_name(None),
            "kubelet-config-1.23"
        );
        assert_eq!(
            r("v1.23.17").kubelet_config_name(Some(true)),
            "kubelet-config"
        );
        assert_eq!(r("v1.24.0").kubelet_config_name(None), "kubelet-config");
        assert_eq!(
            r("v1.24.0").kubelet_config_name(Some(false)),
            "kubelet-config-1.24"
        );
        assert_eq!(
            r("v1.25.0").kubelet_config_name(Some(false)),
            "kubelet-config"
        );
    }

    #[test]
    fn kubeadm_config_by_release() {
        assert_eq!(
            r("v1.12.10").kubeadm_api_version(),
            "kubeadm.k8s.io/v1alpha3"
        );
        assert_eq!(r("v1.13.0").kubeadm_api_version(), "kubeadm.k8s.io/v1beta1");
        assert_eq!(
            r("v1.14.10").kubeadm_api_version(),
            "kubeadm.k8s.io/v1beta1"
        );
        assert_eq!(r("v1.15.0").kubeadm_api_version(), "kubeadm.k8s.io/v1beta2");
        assert_eq!(
            r("v1.21.14").kubeadm_api_version(),
            "kubeadm.k8s.io/v1beta2"
        );
        assert_eq!(r("v1.22.0").kubeadm_api_version(), "kubeadm.k8s.io/v1beta3");
        assert_eq!(r("v1.30.0").kubeadm_api_version(), "kubeadm.k8s.io/v1beta3");
        assert_eq!(r("v1.31.0").kubeadm_api_version(), "kubeadm.k8s.io/v1beta4");
        assert!(r("v1.21.14").kubeadm_cluster_status());
        assert!(!r("v1.22.0").kubeadm_cluster_status());
        assert!(!r("v1.17.0").kubeadm_get_nodes());
        assert!(r("v1.18.0").kubeadm_get_nodes());
    }

    #[test]
    fn image_repository_by_release_and_backport() {
        for (v, want) in [
            ("v1.21.14", "k8s.gcr.io"),
            ("v1.22.16", "k8s.gcr.io"),
            ("v1.22.17", "registry.k8s.io"),
            ("v1.23.14", "k8s.gcr.io"),
            ("v1.23.15", "registry.k8s.io"),
            ("v1.24.8", "k8s.gcr.io"),
            ("v1.24.9", "registry.k8s.io"),
            ("v1.25.0", "registry.k8s.io"),
        ] {
            assert_eq!(r(v).kubeadm_image_repository(), want, "{v}");
        }
    }

    #[test]
    fn policy_and_rbac_versions_by_release() {
        assert_eq!(r("v1.20.2").policy_versions(), ["v1beta1"]);
        assert_eq!(r("v1.21.0").policy_versions(), ["v1", "v1beta1"]);
        assert_eq!(r("v1.24.17").policy_versions(), ["v1", "v1beta1"]);
        assert_eq!(r("v1.25.0").policy_versions(), ["v1"]);
        assert_eq!(r("v1.21.14").eviction_version(), "v1beta1");
        assert_eq!(r("v1.22.0").eviction_version(), "v1");
        assert!(!r("v1.21.14").eviction_body_ok("policy/v1"));
        assert!(r("v1.21.14").eviction_body_ok("policy/v1beta1"));
        assert!(r("v1.22.0").eviction_body_ok("policy/v1"));
        assert!(r("v1.22.0").eviction_body_ok("policy/v1beta1"));
        assert!(!r("v1.32.0").version_reports_emulation());
        assert!(r("v1.33.0").version_reports_emulation());
        assert!(!r("v1.16.15").eviction_ignores_pending_pods());
        assert!(r("v1.17.0").eviction_ignores_pending_pods());
        assert!(!r("v1.18.20").eviction_ignores_deleting_pods());
        assert!(r("v1.19.0").eviction_ignores_deleting_pods());
        assert_eq!(r("v1.21.14").rbac_versions(), ["v1", "v1beta1"]);
        assert_eq!(r("v1.22.0").rbac_versions(), ["v1"]);
    }
}
