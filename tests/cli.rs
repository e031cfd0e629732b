//! The command line: every component is listed, and the demo takes the flags other checks rely
//! on and refuses nonsense with a clear message and exit code 2.

use std::process::Command;

#[test]
fn the_demo_takes_its_flags_and_refuses_bad_values() {
    let help = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["demo", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--scenario", "improve", "regression", "--cycles", "--speed", "--json", "--kubeconfig-out"] {
        assert!(text.contains(flag), "demo --help lists {flag}: {text}");
    }
    for (args, needle) in [(["--cycles", "0"], "--cycles"), (["--speed", "0"], "--speed")] {
        let out = Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .arg("demo")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(2), "demo {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "demo {args:?}: {stderr}");
    }
}

#[test]
fn help_lists_every_component() {
    let out = Command::new(env!("CARGO_BIN_EXE_flywheel")).arg("--help").output().unwrap_or_else(|e| panic!("{e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    for c in ["operator", "collector", "agent", "sim", "demo", "crds", "rollout", "fetch-model"] {
        assert!(help.contains(c), "--help lists {c}: {help}");
    }
}
