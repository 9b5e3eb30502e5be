//! The `node-attach` binary: everything lives in the library; this only hands over argv and
//! turns the outcome into the process exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(node_attach::cli::main_with_args(std::env::args_os()))
}
