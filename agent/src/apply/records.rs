//! What join leaves on disk for `status` and `reset`, typed: `state.json` (the joined node's
//! summary) and `callback.json` (where reset reports), both 0600 in node-attach's state
//! directory, and the removal marker the shutdown unit looks for.

use crate::effects::fs::Root;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where join keeps its summary for `node-attach status`.
pub const STATE_FILE: &str = "/var/lib/node-attach/state.json";
/// Where join keeps the callback (URL and CA file) for reset to report to (0600: the URL may
/// carry a token in its path).
pub const CALLBACK_FILE: &str = "/var/lib/node-attach/callback.json";
/// The file that marks a node for removal at shutdown (see node-attach-reset-on-shutdown.service).
pub const REMOVAL_MARKER: &str = "/var/lib/node-attach/remove-on-shutdown";

/// The joined node, as `state.json` records it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// The Node's name.
    pub node_name: String,
    /// The API server URL.
    pub api_server: String,
    /// The CA pin that matched.
    pub ca_pin: Option<String>,
    /// containerd or docker.
    pub runtime: String,
    /// The kubelet's CRI endpoint (None: dockershim).
    pub cri_endpoint: Option<String>,
    /// Labels the kubelet registers with.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Labels left for the control plane to apply.
    #[serde(default)]
    pub pending_labels: std::collections::BTreeMap<String, String>,
    /// Taints, as `key=value:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// providerID.
    pub provider_id: Option<String>,
}

/// Where reset reports the removal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallbackRecord {
    /// The callback URL (its path may carry a token: never printed whole).
    pub url: String,
    /// An extra CA file for it.
    pub ca_file: Option<PathBuf>,
}

/// Reads a JSON record, if present and readable.
pub fn read<T: for<'de> Deserialize<'de>>(root: &Root, path: &str) -> Option<T> {
    let bytes = root.read(Path::new(path)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// A record as the bytes join writes (pretty JSON).
pub fn to_bytes<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(record).unwrap_or_default()
}
