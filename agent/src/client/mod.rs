//! The one network layer: [`http`] (TLS configured in one place, timeouts, size caps, error
//! classes, bounded jittered retries), the Kubernetes API as node-attach uses it ([`kube`]),
//! and reports to a callback ([`callback`]).

pub mod callback;
pub mod ess;
pub mod http;
pub mod kube;
