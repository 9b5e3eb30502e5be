//! node-attach turns a plain Linux machine into a Kubernetes worker node, and removes it again.
//!
//! The tree follows the data flow (see `docs/architecture.md`):
//!
//! - [`cli`] parses the command line and dispatches;
//! - [`sources`] turns flags, environment, files, the cluster values ([`sources::values`]) and
//!   cloud metadata ([`sources::metadata`]) into one validated [`sources::settings::Settings`];
//! - [`trust`] establishes trust in the API server as `kubeadm join` token discovery does;
//! - [`client`] is the one network layer (HTTP with retries, the Kubernetes API, callbacks);
//! - [`join`] runs the phases, each computing what to change from pure [`model`] types;
//! - [`apply`] makes every change through the journal; [`reset`] replays it backwards;
//! - [`operator`] is the control plane's side (bootstrap tokens, the values service);
//! - [`effects`] holds every side effect on the host behind small traits;
//! - [`check`] lints userdata with join's own flag parsing, [`doctor`] checks a node's health.
//!
//! Exit codes and their meaning are in [`error::Code`] and `docs/exit-codes.md`.

// Functions short enough to read at once (the threshold is in clippy.toml); tests may be longer.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]
// Tests set up and inspect scratch trees directly; the code under test may not (clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod apply;
pub mod artifacts;
pub mod check;
pub mod cli;
pub mod client;
pub mod doctor;
pub mod effects;
pub mod error;
pub mod join;
pub mod logging;
pub mod model;
pub mod operator;
pub mod report;
pub mod reset;
pub mod sources;
pub mod trust;
