//! The run lock: one join or reset changes a root at a time.

use crate::effects::fs::{FsError, Root, RootLock};
use crate::error::{Code, Failure};

/// Takes the root's run lock, mapping contention to [`Code::Busy`].
pub fn lock(root: &Root) -> Result<RootLock, Failure> {
    root.lock_exclusive().map_err(|e| match e {
        FsError::Busy(_) => Failure::new(Code::Busy, e.to_string()),
        other => Failure::new(Code::Filesystem, other.to_string()),
    })
}
