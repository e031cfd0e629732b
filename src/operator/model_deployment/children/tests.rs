use super::*;
use crate::api::model_deployment::ModelDeployment;

fn sample() -> ModelDeploymentSpec {
    let md: ModelDeployment = serde_yaml::from_str(include_str!("../../../../config/samples/modeldeployment.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    md.spec
}

fn owner() -> Owner {
    Owner { name: "support-chat".into(), namespace: "team".into(), uid: "u-1".into() }
}

fn settings() -> ChildSettings {
    ChildSettings {
        operator_image: "ghcr.io/flywheel-dev/flywheel:test".into(),
        collector_url: Some("http://flywheel-collector.flywheel-system:8090".into()),
        collector_token_secret: "flywheel-collector-token".into(),
    }
}

#[test]
fn model_sources() {
    assert_eq!(
        ModelSource::parse("pvc://models/qwen/v1"),
        Ok(ModelSource::Pvc { claim: "models".into(), path: "qwen/v1".into() })
    );
    assert_eq!(ModelSource::parse("pvc://models").map(|s| s.model_dir()), Ok("/models".into()));
    assert_eq!(ModelSource::parse("file:///opt/model").map(|s| s.model_dir()), Ok("/opt/model".into()));
    assert_eq!(
        ModelSource::parse("hf://Qwen/Qwen2.5-0.5B"),
        Ok(ModelSource::Fetch { uri: "hf://Qwen/Qwen2.5-0.5B".into() })
    );
    assert!(ModelSource::parse("ftp://x").is_err());
    assert!(ModelSource::parse("pvc:///x").is_err());
}

#[test]
fn deployment_carries_the_runtime_spec() {
    let spec = sample();
    let plan = TrackPlan { track: Track::Stable, version: "v1".into(), uri: spec.model.uri.clone(), replicas: 3 };
    let source = ModelSource::parse(&spec.model.uri).unwrap_or_else(|e| panic!("{e}"));
    let d = deployment(&owner(), &spec, &plan, &source, &settings());
    assert_eq!(d["metadata"]["name"], "support-chat-stable");
    assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "ModelDeployment");
    assert_eq!(d["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["flywheel.dev/track"], "stable");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "vllm/vllm-openai:v0.8.5");
    assert_eq!(c["args"][0], "--model=$(FLYWHEEL_MODEL_DIR)");
    assert_eq!(c["ports"][0], serde_json::json!({"name": "runtime", "containerPort": 8000, "protocol": "TCP"}));
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(c["startupProbe"]["failureThreshold"], 60);
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (e["name"].as_str().unwrap_or_default().to_string(), e["value"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    assert!(env.contains(&("FLYWHEEL_MODEL_VERSION".into(), "v1".into())));
    assert!(env.contains(&("FLYWHEEL_MODEL_URI".into(), "hf://Qwen/Qwen2.5-0.5B-Instruct".into())));
    assert!(env.contains(&("FLYWHEEL_MODEL_DIR".into(), "/models".into())));
    assert!(env.contains(&("VLLM_LOGGING_LEVEL".into(), "INFO".into())));
    // hf:// is fetched by an init container running the operator image into a shared volume.
    assert_eq!(
        pod["initContainers"][0]["args"],
        serde_json::json!(["fetch-model", "hf://Qwen/Qwen2.5-0.5B-Instruct", "/models"])
    );
    assert_eq!(pod["initContainers"][0]["image"], "ghcr.io/flywheel-dev/flywheel:test");
    assert_eq!(pod["volumes"][0]["emptyDir"], serde_json::json!({}));
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["flywheel.dev/version"], "v1");
}

#[test]
fn pvc_models_mount_read_only() {
    let mut spec = sample();
    spec.model.uri = "pvc://models/qwen".into();
    let source = ModelSource::parse(&spec.model.uri).unwrap_or_else(|e| panic!("{e}"));
    let plan = TrackPlan { track: Track::Canary, version: "v2".into(), uri: spec.model.uri.clone(), replicas: 1 };
    let d = deployment(&owner(), &spec, &plan, &source, &settings());
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"],
        serde_json::json!({"claimName": "models", "readOnly": true})
    );
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["readOnly"], true);
    assert!(pod.get("initContainers").is_none());
    assert_eq!(d["metadata"]["name"], "support-chat-canary");
    // The Deployment's selector is immutable: it stays the ModelDeployment and the track, and
    // every pod it makes carries what the serving selectors add.
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        serde_json::json!({"flywheel.dev/model-deployment": "support-chat", "flywheel.dev/track": "canary"})
    );
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"], "inference");
}

#[test]
fn services_and_budget() {
    let all = service(&owner(), None);
    assert_eq!(all["metadata"]["name"], "support-chat");
    // Inference pods only: trainer pods carry flywheel.dev/model-deployment too.
    let serving = serde_json::json!({"flywheel.dev/model-deployment": "support-chat", "app.kubernetes.io/component": "inference"});
    assert_eq!(all["spec"]["selector"], serving);
    let canary = service(&owner(), Some(Track::Canary));
    assert_eq!(canary["metadata"]["name"], "support-chat-canary");
    assert_eq!(canary["spec"]["selector"]["flywheel.dev/track"], "canary");
    assert_eq!(canary["spec"]["selector"]["app.kubernetes.io/component"], "inference");
    let pdb = disruption_budget(&owner());
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], serving);
    assert_eq!(
        serving_selector_string(&owner()),
        "app.kubernetes.io/component=inference,flywheel.dev/model-deployment=support-chat"
    );
}

#[test]
fn subset_comparison() {
    let desired = serde_json::json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
    let live = serde_json::json!({"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"}, "status": {}});
    assert!(is_subset(&desired, &live));
    let changed = serde_json::json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}});
    assert!(!is_subset(&changed, &live));
    let more_ports = serde_json::json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}});
    assert!(!is_subset(&more_ports, &live));
}

#[test]
fn the_agent_is_injected_in_front_of_the_runtime() {
    let spec = sample();
    let plan = TrackPlan { track: Track::Canary, version: "v2".into(), uri: spec.model.uri.clone(), replicas: 1 };
    let source = ModelSource::parse(&spec.model.uri).unwrap_or_else(|e| panic!("{e}"));
    let d = deployment(&owner(), &spec, &plan, &source, &settings());
    let pod = &d["spec"]["template"]["spec"];
    let agent = &pod["containers"][1];
    assert_eq!(agent["name"], "agent");
    assert_eq!(agent["image"], "ghcr.io/flywheel-dev/flywheel:test");
    let args: Vec<&str> = agent["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied();
    assert_eq!(args[0], "agent");
    assert_eq!(after("--listen"), Some("0.0.0.0:8080"));
    assert_eq!(after("--upstream"), Some("http://127.0.0.1:8000"));
    assert_eq!(after("--model-version"), Some("v2"));
    assert_eq!(after("--admin-listen"), Some("0.0.0.0:9091"));
    // The Services target port `http`: the agent's, not the runtime's.
    assert_eq!(agent["ports"][0], serde_json::json!({"name": "http", "containerPort": 8080, "protocol": "TCP"}));
    assert_eq!(service(&owner(), None)["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["securityContext"]["runAsNonRoot"], true);
    let env = agent["env"].as_array().cloned().unwrap_or_default();
    assert!(env.contains(&serde_json::json!({"name": "FLYWHEEL_MODEL_DEPLOYMENT", "value": "support-chat"})));
    assert!(env.contains(&serde_json::json!({"name": "FLYWHEEL_COLLECTOR_URL", "value": "http://flywheel-collector.flywheel-system:8090"})));
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "flywheel-collector-token" && v["secret"]["optional"] == true)
    );

    let mut off = sample();
    off.agent = Some(crate::api::model_deployment::AgentSpec { enabled: false, ..Default::default() });
    let d = deployment(&owner(), &off, &plan, &source, &settings());
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    assert_eq!(containers.len(), 1, "no agent when disabled");
    assert_eq!(containers[0]["ports"][0]["name"], "http", "the runtime serves the Services itself");
}

#[test]
fn an_adapter_mode_pod_shares_an_adapter_directory_and_mounts_the_wanted_adapters() {
    let mut spec = sample();
    if let Some(r) = spec.rollout.as_mut() {
        r.mode = crate::api::model_deployment::RolloutMode::Adapter;
    }
    let plan = TrackPlan { track: Track::Stable, version: "v1".into(), uri: spec.model.uri.clone(), replicas: 2 };
    let source = ModelSource::parse(&spec.model.uri).unwrap_or_else(|e| panic!("{e}"));
    let d = deployment(&owner(), &spec, &plan, &source, &settings());
    let pod = &d["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    assert!(volumes.iter().any(|v| v["name"] == "adapters" && v["emptyDir"].is_object()));
    let wanted = volumes.iter().find(|v| v["name"] == "adapters-wanted").unwrap_or_else(|| panic!("{volumes:?}"));
    assert_eq!(wanted["configMap"], json!({"name": "support-chat-adapters", "optional": true}));
    let runtime = &pod["containers"][0];
    assert!(
        runtime["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == ADAPTERS_DIR && m["readOnly"] == true))
    );
    assert!(
        runtime["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["name"] == "VLLM_ALLOW_RUNTIME_LORA_UPDATING" && e["value"] == "True"))
    );
    let agent = &pod["containers"][1];
    let args: Vec<&str> =
        agent["args"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let file = format!("{ADAPTERS_WANTED_DIR}/adapters.json");
    assert!(args.windows(2).any(|w| w == ["--adapters-file", file.as_str()]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--adapters-dir", ADAPTERS_DIR]), "{args:?}");
    let mounts = agent["volumeMounts"].as_array().cloned().unwrap_or_default();
    assert!(mounts.iter().any(|m| m["name"] == "adapters-wanted" && m["readOnly"] == true));
    assert!(mounts.iter().any(|m| m["name"] == "collector-token"), "the collector token stays mounted");
    // The default mode leaves the pod as it was.
    let plain = deployment(&owner(), &sample(), &plan, &source, &settings());
    assert!(!plain.to_string().contains("adapters"));
    let cm = adapters_config_map(&owner(), &crate::agent::adapters::Wanted::default());
    assert_eq!((cm["kind"].as_str(), cm["data"]["adapters.json"].as_str()), (Some("ConfigMap"), Some("{}")));
}
