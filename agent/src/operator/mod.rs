//! The control plane's side of joining: bootstrap tokens and the RBAC joining needs, as
//! `kubeadm token` makes them ([`bootstrap_tokens`]), and the values service that serves a
//! node its cluster's values by openapi token ([`serve`]).

pub mod bootstrap_tokens;
pub mod serve;
