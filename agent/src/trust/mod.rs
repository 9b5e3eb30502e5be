//! Trust in the API server, as `kubeadm join` token discovery establishes it and a little
//! further: cluster-info's detached JWS ([`jws`]), the CA public-key pin ([`pin`]), TLS that
//! trusts only the pinned CA ([`tls`]), and the discovery that ties them together
//! ([`discovery`]).

pub mod discovery;
pub mod jws;
pub mod pin;
pub mod tls;
