//! Integration tests: the real binary against the test control plane.
