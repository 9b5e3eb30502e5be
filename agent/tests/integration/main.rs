//! Integration tests: the real `node-attach` binary (and its library) against the test control
//! plane over real TLS, with the real kubectl and openssl as cross-checks.

// The tests run programs and inspect the trees they made directly.
#![allow(clippy::disallowed_methods)]

mod artifacts;
mod audit;
mod deploy;
mod differential;
mod discover;
mod doctor;
mod ess;
mod faults;
mod golden;
mod hostile;
mod join;
mod kubeconfigs;
mod kubectl;
mod metadata;
mod metrics;
mod operator;
mod real;
mod real_cluster;
mod reset;
mod serve;
mod shell;
mod support;
mod trust;
mod units;
mod values;
