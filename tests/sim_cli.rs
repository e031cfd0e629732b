//! `flywheel sim` as a process: it writes a kubeconfig kubectl can use, and stops cleanly on
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sim_serves_kubectl_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("flywheel-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["--log-format", "json", "sim", "--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting flywheel sim: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url).unwrap_or_else(|e| panic!("{e}"));
    assert!(url.starts_with("https://127.0.0.1:"), "prints its URL: {url}");
    let text = std::fs::read_to_string(&kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("token: ") && text.contains("certificate-authority-data: "), "bearer token over TLS");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kubeconfig).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600, "the kubeconfig holds a token: only its owner may read it");
    }
    let out = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exits 0 after SIGTERM: {status:?}");
    let mut logs = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _read = stderr.read_to_string(&mut logs);
    }
    let first = logs.lines().next().unwrap_or_default();
    let parsed: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("logs are JSON lines: {e}: {first}"));
    assert!(parsed.get("level").is_some() && parsed.get("message").is_some(), "{first}");
    assert!(
        !logs.contains(
            text.lines()
                .find(|l| l.contains("token:"))
                .unwrap_or("token: x")
                .trim_start_matches(|c: char| c != ':')
                .trim_start_matches(": ")
        ),
        "the token never appears in logs"
    );
    let _removed = std::fs::remove_dir_all(&dir);
}

/// `--run-image` runs the pods of an image as real processes: `kubectl run` starts one, and
/// `kubectl logs` reads what it printed.
#[test]
fn sim_runs_mapped_images_as_processes_for_kubectl() {
    let dir = std::env::temp_dir().join(format!("flywheel-sim-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
        .args(["sim", "--listen", "127.0.0.1:0", "--run-image", "busybox=/bin/sh -c", "--process-root"])
        .arg(dir.join("pods"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting flywheel sim: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url).unwrap_or_else(|e| panic!("{e}"));
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("kubectl: {e}"))
    };
    let run = kubectl(&["run", "hello", "--image=busybox:1.36", "--restart=Never", "--", "echo hello from $HOSTNAME"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let start = Instant::now();
    let phase = loop {
        let out = kubectl(&["get", "pod", "hello", "-o", "jsonpath={.status.phase}"]);
        let phase = String::from_utf8_lossy(&out.stdout).to_string();
        if phase == "Succeeded" || phase == "Failed" || start.elapsed() > Duration::from_secs(20) {
            break phase;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(phase, "Succeeded");
    let logs = kubectl(&["logs", "hello"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello from hello\n");
    let _killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _exited = child.wait();
    let _removed = std::fs::remove_dir_all(&dir);
}
