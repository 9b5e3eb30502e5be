//! The `node-attach` binary: everything lives in the library; this only hands over argv and
//! turns the outcome into the process exit code.

/// musl's own allocator maps and unmaps memory for many allocations; see docs/performance.md.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc's regions are aligned so that, where transparent huge pages are on for every
    // process, the kernel clears 2 MiB at a time for a run that needs a few hundred KiB.
    #[cfg(target_env = "musl")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    std::process::ExitCode::from(node_attach::cli::main_with_args(std::env::args_os()))
}
