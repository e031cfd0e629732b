//! The `flywheel` binary: one subcommand per component (`flywheel::cmd`).

fn main() -> std::process::ExitCode {
    flywheel::cmd::main()
}
