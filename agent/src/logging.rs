//! Structured logs on stderr through `tracing`.
//!
//! Only node-attach's own events are shown below warning level: dependencies (HTTP, TLS) stay at
//! warnings whatever the verbosity, so no library can print a header or a URL that carries a
//! token. `-v` gives info, `-vv` debug, `-vvv` trace.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Installs the subscriber; safe to call more than once (later calls do nothing).
pub fn init(verbose: u8) {
    let ours = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = Targets::new()
        .with_target("node_attach", ours)
        .with_default(LevelFilter::WARN);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}
