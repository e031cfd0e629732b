//! The simulated kubelet's process mode: pods whose images are mapped to host commands run as
//! real processes, and their pod and Job status reads as a kubelet and kube-controller-manager
//! write it (the shapes `shared/reference/workloads.md` shows, the same as the scripted mode's).
//! Init containers run first and share an `emptyDir` with the containers; a claim is one
//! directory shared by the pods that mount it; the environment's references and `$(VAR)`s are
//! resolved; the termination message comes from the file the process wrote, or from its log on
//! error; a Job's deadline sends SIGTERM; a readiness probe decides Ready; the `log` subresource
//! serves the output; and no process outlives the simulated cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flywheel::sim::{ProcessMode, Sim, SimConfig, WorkloadConfig};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const SHELL: &str = "flywheel.test/shell";

struct Harness {
    sim: Sim,
    client: Client,
    root: PathBuf,
    ns: String,
}

impl Harness {
    async fn start(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("flywheel-process-{name}-{}", std::process::id()));
        let _fresh = std::fs::remove_dir_all(&root);
        let mode = ProcessMode::new(&root).image(SHELL, vec!["/bin/sh".into(), "-c".into()]);
        let config = SimConfig {
            workloads: WorkloadConfig { processes: Some(Arc::new(mode)), ..WorkloadConfig::default() },
            ..SimConfig::default()
        };
        let sim = Sim::start(config).await.unwrap_or_else(|e| panic!("sim: {e}"));
        let client = sim.client().await.unwrap_or_else(|e| panic!("client: {e}"));
        let ns = format!("proc-{name}");
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap_or_else(|e| panic!("{e}"));
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("namespace: {e}"));
        Self { sim, client, root, ns }
    }

    async fn create_job(&self, job: Value) {
        let job: Job = serde_json::from_value(job).unwrap_or_else(|e| panic!("{e}"));
        Api::<Job>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &job)
            .await
            .unwrap_or_else(|e| panic!("creating the Job: {e}"));
    }

    /// The Job once a condition of `type_` is True.
    async fn job_condition(&self, name: &str, type_: &str) -> Value {
        let api = Api::<Job>::namespaced(self.client.clone(), &self.ns);
        for _ in 0..300 {
            if let Ok(job) = api.get(name).await {
                let v = serde_json::to_value(&job).unwrap_or_default();
                let done = v
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"));
                if done {
                    return v;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pods = self.pods_of(name).await;
        panic!("Job {name} never had {type_}; its pods: {pods:#?}");
    }

    async fn pods_of(&self, job: &str) -> Vec<Value> {
        let lp = ListParams::default().labels(&format!("job-name={job}"));
        let pods =
            Api::<Pod>::namespaced(self.client.clone(), &self.ns).list(&lp).await.unwrap_or_else(|e| panic!("{e}"));
        pods.items.iter().map(|p| serde_json::to_value(p).unwrap_or_default()).collect()
    }

    async fn stop(self) {
        self.sim.shutdown().await;
        assert_no_process_under(&self.root).await;
        let _removed = std::fs::remove_dir_all(&self.root);
    }
}

/// No process is left whose working directory is under `root` (every pod's process starts in
/// its pod's directory there), a little after the cluster stopped.
async fn assert_no_process_under(root: &Path) {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = processes_under(root);
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("processes outlived the simulated cluster: {left:?}");
}

fn processes_under(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(root)))
        .filter(|e| !std::fs::read_to_string(e.path().join("stat")).unwrap_or_default().contains(") Z "))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

fn job(name: &str, pod_spec: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !read(&PathBuf::from(format!("/proc/{}/stat", pid.trim()))).contains(") Z ")
}

#[tokio::test]
async fn a_job_pod_runs_its_init_container_then_its_container_with_the_pods_environment_and_volumes() {
    let h = Harness::start("ok").await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    Api::<Secret>::namespaced(h.client.clone(), &h.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.create_job(job("train", json!({
        "restartPolicy": "Never",
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
        ],
        "initContainers": [{
            "name": "fetch", "image": format!("{SHELL}:1.0"),
            "args": ["echo fetched > /scratch/base && echo fetching"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        }],
        "containers": [{
            "name": "trainer", "image": SHELL,
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "OUT", "value": "/models/$(POD)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            ],
            "args": ["mkdir -p $(OUT) && cp /scratch/base $(OUT)/weights && cat /etc/creds/token > /models/token-copy \
                      && echo \"training $POD\" && printf '{\"uri\":\"%s\"}' \"$OUT\" > /dev/termination-log"],
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "models", "mountPath": "/models"},
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": true},
            ],
        }],
    })))
    .await;
    let done = h.job_condition("train", "Complete").await;
    assert_eq!(done["status"]["succeeded"], 1);
    let pods = h.pods_of("train").await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    assert_eq!(pod["status"]["phase"], "Succeeded");
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    let trainer = &pod["status"]["containerStatuses"][0];
    assert_eq!(trainer["state"]["terminated"]["exitCode"], 0, "{trainer}");
    assert_eq!(trainer["state"]["terminated"]["reason"], "Completed");
    // The message is what the process wrote to its termination message path; the path it names
    // is the claim's directory on this machine, which every pod mounting the claim shares.
    let message: Value = serde_json::from_str(trainer["state"]["terminated"]["message"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {trainer}"));
    let claim = h.root.join("claims").join(&h.ns).join("models");
    assert_eq!(message["uri"], claim.join(&name).to_string_lossy().as_ref());
    assert_eq!(
        read(&claim.join(&name).join("weights")),
        "fetched\n",
        "the init container ran first, in the same emptyDir"
    );
    assert_eq!(read(&claim.join("token-copy")), "s3cr3t", "the Secret is mounted as files");
    // The output of each container, through the pod's `log` subresource.
    let pods_api = Api::<Pod>::namespaced(h.client.clone(), &h.ns);
    let params = kube::api::LogParams { container: Some("trainer".into()), ..Default::default() };
    let log = pods_api.logs(&name, &params).await.unwrap_or_else(|e| panic!("logs: {e}"));
    assert_eq!(log, format!("training {name}\n"));
    let params = kube::api::LogParams { container: Some("fetch".into()), ..Default::default() };
    assert_eq!(pods_api.logs(&name, &params).await.unwrap_or_default(), "fetching\n");
    let params = kube::api::LogParams { container: Some("nope".into()), ..Default::default() };
    let err = pods_api.logs(&name, &params).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&format!("container nope is not valid for pod {name}")), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn a_failing_process_fails_the_pod_and_the_job_with_its_exit_code_and_log_tail() {
    let h = Harness::start("fail").await;
    h.create_job(job(
        "broken",
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "trainer", "image": SHELL,
                "args": ["echo 'dataset sha256 mismatch' >&2; exit 3"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
        }),
    ))
    .await;
    let failed = h.job_condition("broken", "Failed").await;
    let reason = failed["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed"))
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(json!("BackoffLimitExceeded")));
    assert_eq!(failed["status"]["failed"], 1);
    let pod = &h.pods_of("broken").await[0];
    assert_eq!(pod["status"]["phase"], "Failed");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3);
    assert_eq!(terminated["reason"], "Error");
    assert_eq!(terminated["message"], "dataset sha256 mismatch", "FallbackToLogsOnError reads the log's tail");
    let ready = pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")).cloned();
    assert_eq!(
        ready.map(|c| (c["status"].clone(), c["reason"].clone())),
        Some((json!("False"), json!("PodCompleted")))
    );
    h.stop().await;
}

#[tokio::test]
async fn a_jobs_deadline_terminates_its_process_with_sigterm() {
    let h = Harness::start("deadline").await;
    let marks = h.root.join("marks");
    std::fs::create_dir_all(&marks).unwrap_or_else(|e| panic!("{e}"));
    let m = marks.to_string_lossy().to_string();
    h.create_job(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "slow"},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "trainer", "image": SHELL,
                "args": [format!("trap 'echo term > {m}/term; exit 143' TERM; echo $$$$ > {m}/pid; sleep 60 & wait")],
            }],
        }}},
    }))
    .await;
    let failed = h.job_condition("slow", "Failed").await;
    let reason = failed["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed"))
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(json!("DeadlineExceeded")));
    let pid = read(&marks.join("pid"));
    for _ in 0..100 {
        if marks.join("term").exists() && !alive(&pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&marks.join("term")), "term\n", "the process got SIGTERM");
    assert!(!alive(&pid), "the process is gone");
    h.stop().await;
}

#[tokio::test]
async fn readiness_follows_the_probe_and_no_process_outlives_the_cluster() {
    let h = Harness::start("ready").await;
    let marks = h.root.join("marks");
    std::fs::create_dir_all(&marks).unwrap_or_else(|e| panic!("{e}"));
    let m = marks.to_string_lossy().to_string();
    // The container becomes ready when it has written its flag file (an exec probe); a child it
    // started keeps running in its process group.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "server"},
        "spec": {"containers": [{
            "name": "server", "image": SHELL,
            "args": [format!("sleep 300 & echo $! > {m}/child; echo $$$$ > {m}/pid; sleep 1; touch {m}/ready; wait")],
            "readinessProbe": {"exec": {"command": ["test", "-f", format!("{m}/ready")]}, "periodSeconds": 1},
        }]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::<Pod>::namespaced(h.client.clone(), &h.ns);
    api.create(&PostParams::default(), &pod).await.unwrap_or_else(|e| panic!("{e}"));
    let mut saw_running_unready = false;
    let mut ready = false;
    for _ in 0..100 {
        let p = serde_json::to_value(api.get("server").await.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        let is_ready = p["status"]["containerStatuses"][0]["ready"] == true;
        if p["status"]["phase"] == "Running" && !is_ready {
            saw_running_unready = true;
        }
        if is_ready {
            let cond =
                p["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")).cloned();
            assert_eq!(cond.map(|c| c["status"].clone()), Some(json!("True")));
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_running_unready, "Running but not Ready until the probe passes");
    assert!(ready, "Ready once the probe passes");
    assert!(marks.join("ready").exists());
    let (pid, child) = (read(&marks.join("pid")), read(&marks.join("child")));
    assert!(alive(&pid) && alive(&child));
    let root = h.root.clone();
    h.sim.shutdown().await;
    for _ in 0..50 {
        if !alive(&pid) && !alive(&child) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(&pid), "the container's process is gone with the cluster");
    assert!(!alive(&child), "so is the child it started");
    assert_no_process_under(&root).await;
    let _removed = std::fs::remove_dir_all(root);
}

/// With a network namespace per pod, two pods both listen on 8080, each at its own IP, and a
/// readiness probe reaches each at its IP. Needs root and iproute2: elsewhere it says why and
/// passes, unless `FLYWHEEL_REQUIRE_NETNS` is set.
#[tokio::test]
async fn pods_with_their_own_network_listen_on_the_same_port() {
    let root = std::env::temp_dir().join(format!("flywheel-process-netns-{}", std::process::id()));
    let mode = match ProcessMode::new(&root).image(SHELL, vec!["/bin/sh".into(), "-c".into()]).isolated_network() {
        Ok(mode) => mode,
        Err(e) => {
            assert!(std::env::var_os("FLYWHEEL_REQUIRE_NETNS").is_none(), "{e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let host_ip = mode.host_ip().map(|ip| ip.to_string()).unwrap_or_default();
    let mode = Arc::new(mode);
    let config = SimConfig {
        workloads: WorkloadConfig { processes: Some(mode.clone()), ..WorkloadConfig::default() },
        ..SimConfig::default()
    };
    let sim = Sim::start(config).await.unwrap_or_else(|e| panic!("sim: {e}"));
    let client = sim.client().await.unwrap_or_else(|e| panic!("client: {e}"));
    let api = Api::<Pod>::namespaced(client.clone(), "default");
    for name in ["web-a", "web-b"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{
                "name": "web", "image": SHELL,
                "args": [format!("mkdir -p site && echo {name} > site/who && cd site && exec python3 -m http.server 8080 --bind 0.0.0.0")],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/who", "port": "http"}, "periodSeconds": 1},
            }]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        api.create(&PostParams::default(), &pod).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let http = flywheel::http_client::client();
    let mut ips = Vec::new();
    for name in ["web-a", "web-b"] {
        let mut ready = None;
        for _ in 0..150 {
            let p = serde_json::to_value(api.get(name).await.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
            if p["status"]["containerStatuses"][0]["ready"] == true {
                ready = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let p = ready.unwrap_or_else(|| panic!("{name} never became Ready"));
        let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
        assert_ne!(ip, "127.0.0.1");
        assert!(
            ip.starts_with(host_ip.rsplit_once('.').map(|(net, _)| net).unwrap_or("?")),
            "{ip} is on the bridge {host_ip}"
        );
        let who = http.get(format!("http://{ip}:8080/who")).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(who.text().await.unwrap_or_default(), format!("{name}\n"));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    sim.shutdown().await;
    assert_no_process_under(&root).await;
    drop(api);
    drop(client);
    drop(mode);
    let _removed = std::fs::remove_dir_all(&root);
}

/// A running Job suspended again (as Kueue preempts) loses its pod: the process gets SIGTERM, and
/// the pod (kept by a finalizer, as trainer pods are) shows the container's exit and the Job
/// controller's `DisruptionTarget`, as the scripted mode's preempted pods do.
#[tokio::test]
async fn a_preempted_job_pod_is_terminated_and_keeps_its_disruption_condition() {
    let h = Harness::start("preempt").await;
    let marks = h.root.join("marks");
    std::fs::create_dir_all(&marks).unwrap_or_else(|e| panic!("{e}"));
    let m = marks.to_string_lossy().to_string();
    h.create_job(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "queued"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"finalizers": ["flywheel.dev/test-guard"]},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "trainer", "image": SHELL,
                    "args": [format!("trap 'echo term > {m}/term; exit 143' TERM; touch {m}/started; sleep 60 & wait")],
                }],
            }}},
    }))
    .await;
    for _ in 0..100 {
        if marks.join("started").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(marks.join("started").exists(), "the pod's process started");
    let pod_name = h.pods_of("queued").await.first().and_then(|p| p["metadata"]["name"].as_str().map(str::to_string));
    let pod_name = pod_name.unwrap_or_else(|| panic!("no pod"));
    Api::<Job>::namespaced(h.client.clone(), &h.ns)
        .patch(
            "queued",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.job_condition("queued", "Suspended").await;
    let pods = Api::<Pod>::namespaced(h.client.clone(), &h.ns);
    let mut last = Value::Null;
    for _ in 0..100 {
        last = serde_json::to_value(pods.get(&pod_name).await.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
        if last["status"]["containerStatuses"][0]["state"]["terminated"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&marks.join("term")), "term\n", "SIGTERM reached the process");
    let terminated = &last["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 143, "{last}");
    assert_eq!(terminated["reason"], "Error");
    assert_eq!(last["status"]["phase"], "Failed");
    let disruption = last["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget"))
        .cloned();
    assert_eq!(
        disruption.map(|c| (c["status"].clone(), c["reason"].clone())),
        Some((json!("True"), json!("JobSuspended")))
    );
    pods.patch(
        &pod_name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    h.stop().await;
}

/// The image's entrypoint is a command of this machine: a volume mounted over its directory in
/// the container (a trainer's scratch `emptyDir` at `/tmp`, here one at `/bin`) does not move it.
#[tokio::test]
async fn a_mount_over_the_entrypoints_directory_does_not_move_the_entrypoint() {
    let h = Harness::start("entrypoint").await;
    h.create_job(job(
        "shadowed",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "bin", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": SHELL,
                "args": ["echo in-the-volume > /bin/marker"],
                "volumeMounts": [{"name": "bin", "mountPath": "/bin"}],
            }],
        }),
    ))
    .await;
    h.job_condition("shadowed", "Complete").await;
    let pod = &h.pods_of("shadowed").await[0];
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let marker = h.root.join("pods").join(format!("{}_{name}_{uid}", h.ns)).join("volumes/bin/marker");
    assert_eq!(read(&marker), "in-the-volume\n", "the argument's path is the volume's");
    h.stop().await;
}
