//! Components not built yet say so and exit non-zero, so a pod or a script never mistakes them
//! for working ones.

use std::process::Command;

#[test]
fn unbuilt_components_exit_non_zero_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel")).arg("demo").output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "demo must fail until it is built");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not implemented yet"), "demo: {stderr}");
}

#[test]
fn help_lists_every_component() {
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel")).arg("--help").output().unwrap_or_else(|e| panic!("{e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    for c in ["operator", "collector", "agent", "sim", "demo", "crds", "rollout", "fetch-model"] {
        assert!(help.contains(c), "--help lists {c}: {help}");
    }
}
