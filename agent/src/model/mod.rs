//! Pure types and syntax rules, with no I/O: tokens and secrets, Kubernetes versions and what
//! changes with them, labels, taints and endpoints, durations, kubeconfigs, the node's
//! well-known paths, and the strict parsing of untrusted JSON and YAML.

pub mod cause;
pub mod compat;
pub mod duration;
pub mod kubeconfig;
pub mod paths;
pub mod secret;
pub mod strict;
pub mod token;
pub mod validate;
pub mod version;
