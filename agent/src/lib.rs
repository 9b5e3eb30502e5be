//! node-attach turns a plain Linux machine into a Kubernetes worker node, and removes it again.
//!
//! The flow of a join: flags, environment and the cluster values fetched with an openapi token
//! ([`values`]) are merged into one validated [`settings::Settings`]; [`discovery`] establishes
//! trust in the API server exactly as `kubeadm join` token discovery does ([`jws`], [`pin`]); the
//! later phases configure the node.
//!
//! Exit codes and their meaning are in [`error::Code`] and `docs/exit-codes.md`.

pub mod apply;
pub mod bootstrap;
pub mod callback;
pub mod cli;
pub mod compat;
pub mod discovery;
pub mod duration;
pub mod effects;
pub mod error;
pub mod http;
pub mod identity;
pub mod join;
pub mod jws;
pub mod kube;
pub mod kube_version;
pub mod kubeconfig;
pub mod kubelet;
pub mod logging;
pub mod metadata;
pub mod pin;
pub mod preflight;
pub mod report;
pub mod reset;
pub mod runtime;
pub mod secret;
pub mod serve;
pub mod settings;
pub mod strict;
pub mod tls;
pub mod token;
pub mod tokens;
pub mod validate;
pub mod values;

/// The journal, which lives with the applier that writes it.
pub use apply::journal;
/// The on-disk records join leaves for status and reset.
pub use apply::records;
