//! Every CEL rule of the three CRDs, evaluated without a cluster: one object it accepts (the
//! sample from `config/samples/`) and one it rejects, with the field and message a user sees.
//! A rule added to the types without a case here fails `every_rule_has_a_case`.

use std::collections::BTreeSet;

use flywheel::api::validation::{FieldError, admit, storage_schema};
use flywheel::api::{FeedbackPolicy, ModelDeployment, RetrainJob};
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn sample(kind: &str) -> Value {
    let file = match kind {
        "ModelDeployment" => "modeldeployment.yaml",
        "FeedbackPolicy" => "feedbackpolicy.yaml",
        "RetrainJob" => "retrainjob.yaml",
        other => panic!("no sample for {other}"),
    };
    let path = format!("{}/config/samples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut value: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    value["metadata"]["namespace"] = json!("default");
    value
}

fn schema(kind: &str) -> Value {
    let crd = match kind {
        "ModelDeployment" => ModelDeployment::crd(),
        "FeedbackPolicy" => FeedbackPolicy::crd(),
        "RetrainJob" => RetrainJob::crd(),
        other => panic!("unknown kind {other}"),
    };
    storage_schema(&crd).unwrap_or_else(|| panic!("{kind} CRD has a schema"))
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or_else(|| panic!("bad pointer {pointer}"));
    let target = obj.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in sample"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => {
            let i: usize = key.parse().unwrap_or_else(|e| panic!("{key}: {e}"));
            items[i] = value;
        }
        other => panic!("cannot set {key} in {other}"),
    }
}

fn remove(obj: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or_else(|| panic!("bad pointer {pointer}"));
    if let Some(Value::Object(map)) = obj.pointer_mut(parent) {
        map.remove(key);
    }
}

/// One rule: how to break the sample, and what the API server must answer.
struct Case {
    kind: &'static str,
    rule: &'static str,
    breaks: fn(&mut Value),
    field: &'static str,
    message: &'static str,
    /// For a transition rule: the sample is the old object.
    update: bool,
}

const URI_RULE: &str = "self.startsWith('pvc://') || self.startsWith('s3://') || self.startsWith('gs://') || self.startsWith('https://') || self.startsWith('hf://') || self.startsWith('file://')";
const URI_MSG: &str = "must start with one of pvc://, s3://, gs://, https://, hf://, file://";
const EVAL_RULE: &str = "has(self.minImprovement) || has(self.maxRegression) || has(self.bound)";
const ENV_RULE: &str = "self.all(e, !e.name.startsWith('FLYWHEEL_'))";
const OUTPUT_RULE: &str =
    "self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$') || self.matches('^s3://[^/]+(/.*)?$')";
const OUTPUT_MSG: &str =
    "must be pvc://claim/path (the claim is mounted read-write into the trainer) or s3://bucket/prefix";
const PORTS_RULE: &str = "(has(self.agent) && has(self.agent.enabled) && !self.agent.enabled) || (self.runtime.port != 8080 && self.runtime.port != 9091)";
const PORTS_MSG: &str = "runtime.port cannot be 8080 or 9091: the flywheel agent sidecar listens on 8080 (its proxy) and 9091 (its admin port)";

fn cases() -> Vec<Case> {
    vec![
        // ModelDeployment
        Case {
            kind: "ModelDeployment",
            rule: "self.metadata.name.size() <= 56",
            breaks: |o| set(o, "/metadata/name", json!("a-model-deployment-name-that-is-far-too-long-for-services")),
            field: "<nil>",
            message: "metadata.name must be at most 56 characters",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "!has(self.replicas) || !has(self.scaling) || (self.replicas >= self.scaling.minReplicas && self.replicas <= self.scaling.maxReplicas)",
            breaks: |o| set(o, "/spec/replicas", json!(9)),
            field: "spec",
            message: "replicas must lie within scaling.minReplicas..scaling.maxReplicas",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "!has(self.traffic) || self.traffic.mode != 'GatewayAPI' || has(self.traffic.httpRouteRef)",
            breaks: |o| set(o, "/spec/traffic", json!({"mode": "GatewayAPI"})),
            field: "spec",
            message: "traffic.httpRouteRef is required when traffic.mode is GatewayAPI",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: PORTS_RULE,
            breaks: |o| set(o, "/spec/runtime/port", json!(8080)),
            field: "spec.runtime.port",
            message: PORTS_MSG,
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: PORTS_RULE,
            breaks: |o| set(o, "/spec/runtime/port", json!(9091)),
            field: "spec.runtime.port",
            message: PORTS_MSG,
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: URI_RULE,
            breaks: |o| set(o, "/spec/model/uri", json!("ftp://models/qwen")),
            field: "spec.model.uri",
            message: URI_MSG,
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')",
            breaks: |o| set(o, "/spec/model/uri", json!("pvc:///no-claim")),
            field: "spec.model.uri",
            message: "a pvc:// URI must name a claim",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: ENV_RULE,
            breaks: |o| set(o, "/spec/runtime/env/0", json!({"name": "FLYWHEEL_MODEL_URI", "value": "x"})),
            field: "spec.runtime.env",
            message: "names starting with FLYWHEEL_ are reserved for the operator",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "self.minReplicas <= self.maxReplicas",
            breaks: |o| set(o, "/spec/scaling/minReplicas", json!(5)),
            field: "spec.scaling",
            message: "minReplicas must not exceed maxReplicas",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "self.panicWindowSeconds < self.stableWindowSeconds",
            breaks: |o| set(o, "/spec/scaling/panicWindowSeconds", json!(60)),
            field: "spec.scaling",
            message: "panicWindowSeconds must be shorter than stableWindowSeconds",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))",
            breaks: |o| set(o, "/spec/rollout/steps/1/weight", json!(10)),
            field: "spec.rollout.steps",
            message: "step weights must rise strictly",
            update: false,
        },
        Case {
            kind: "ModelDeployment",
            rule: "self.gate != 'Pause' || has(self.pauseSeconds)",
            breaks: |o| set(o, "/spec/rollout/steps/0/gate", json!("Pause")),
            field: "spec.rollout.steps[0]",
            message: "pauseSeconds is required when gate is Pause",
            update: false,
        },
        // FeedbackPolicy
        Case {
            kind: "FeedbackPolicy",
            rule: OUTPUT_RULE,
            breaks: |o| set(o, "/spec/outputUriPrefix", json!("/var/models")),
            field: "spec.outputUriPrefix",
            message: OUTPUT_MSG,
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: OUTPUT_RULE,
            // A path in the trainer's pod: serving could never load it.
            breaks: |o| set(o, "/spec/outputUriPrefix", json!("file:///models/support-chat/")),
            field: "spec.outputUriPrefix",
            message: OUTPUT_MSG,
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: "!has(self.positiveLabels) || !has(self.negativeLabels) || self.positiveLabels.all(l, !(l in self.negativeLabels))",
            breaks: |o| {
                set(o, "/spec/signals", json!({"positiveLabels": ["helpful"], "negativeLabels": ["helpful", "rude"]}))
            },
            field: "spec.signals",
            message: "a label cannot be both positive and negative",
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: "has(self.newSignals) || has(self.qualityBelow) || has(self.correctionRateAbove) || has(self.schedule)",
            breaks: |o| set(o, "/spec/triggers", json!({"minSamples": 10})),
            field: "spec.triggers",
            message: "set at least one of newSignals, qualityBelow, correctionRateAbove, schedule",
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: "self.split(' ').filter(f, f != '').size() == 5",
            breaks: |o| set(o, "/spec/triggers/schedule", json!("0 3 * * * *")),
            field: "spec.triggers.schedule",
            message: "must be a cron expression of five fields",
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: "self.minRows <= self.maxRows",
            breaks: |o| set(o, "/spec/dataset/minRows", json!(60000)),
            field: "spec.dataset",
            message: "minRows must not exceed maxRows",
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: ENV_RULE,
            breaks: |o| set(o, "/spec/trainer/env", json!([{"name": "FLYWHEEL_OUTPUT_URI", "value": "s3://x"}])),
            field: "spec.trainer.env",
            message: "names starting with FLYWHEEL_ are reserved for the trainer contract",
            update: false,
        },
        Case {
            kind: "FeedbackPolicy",
            rule: EVAL_RULE,
            breaks: |o| set(o, "/spec/evaluation", json!({"rules": [{"metric": "evalLoss"}]})),
            field: "spec.evaluation.rules[0]",
            message: "set at least one of minImprovement, maxRegression, bound",
            update: false,
        },
        // RetrainJob
        Case {
            kind: "RetrainJob",
            rule: EVAL_RULE,
            breaks: |o| set(o, "/spec/evaluation", json!({"rules": [{"metric": "evalLoss", "better": "Lower"}]})),
            field: "spec.evaluation.rules[0]",
            message: "set at least one of minImprovement, maxRegression, bound",
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: "self == oldSelf",
            breaks: |o| set(o, "/spec/trainer/retries", json!(5)),
            field: "spec",
            message: "spec is immutable; create a new RetrainJob instead",
            update: true,
        },
        Case {
            kind: "RetrainJob",
            rule: OUTPUT_RULE,
            breaks: |o| set(o, "/spec/outputUri", json!("models/out")),
            field: "spec.outputUri",
            message: OUTPUT_MSG,
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: OUTPUT_RULE,
            breaks: |o| set(o, "/spec/outputUri", json!("gs://models/out")),
            field: "spec.outputUri",
            message: OUTPUT_MSG,
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: URI_RULE,
            breaks: |o| set(o, "/spec/base/uri", json!("ssh://host/base")),
            field: "spec.base.uri",
            message: URI_MSG,
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: "self.startsWith('http://') || self.startsWith('pvc://') || self.startsWith('s3://') || self.startsWith('gs://') || self.startsWith('https://') || self.startsWith('hf://') || self.startsWith('file://')",
            breaks: |o| set(o, "/spec/dataset/uri", json!("ftp://elsewhere/ds")),
            field: "spec.dataset.uri",
            message: "must start with one of http://, https://, pvc://, s3://, gs://, hf://, file://",
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: "self.counts.sft + self.counts.dpo > 0",
            breaks: |o| set(o, "/spec/dataset/counts", json!({"sft": 0, "dpo": 0, "heldOut": 3})),
            field: "spec.dataset",
            message: "the dataset must hold at least one training row",
            update: false,
        },
        Case {
            kind: "RetrainJob",
            rule: ENV_RULE,
            breaks: |o| set(o, "/spec/trainer/env", json!([{"name": "FLYWHEEL_DATASET_URI", "value": "s3://x"}])),
            field: "spec.trainer.env",
            message: "names starting with FLYWHEEL_ are reserved for the trainer contract",
            update: false,
        },
    ]
}

fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[test]
fn samples_are_accepted() {
    for kind in ["ModelDeployment", "FeedbackPolicy", "RetrainJob"] {
        let admitted = admit(&schema(kind), &sample(kind), None)
            .unwrap_or_else(|e| panic!("{kind} sample rejected: {}", describe(&e)));
        assert!(admitted.pruned.is_empty(), "{kind} sample has unknown fields: {:?}", admitted.pruned);
    }
}

#[test]
fn each_rule_rejects_what_it_should() {
    for case in cases() {
        let schema = schema(case.kind);
        let original = sample(case.kind);
        let mut broken = original.clone();
        (case.breaks)(&mut broken);
        let old = case.update.then_some(&original);
        let errors = match admit(&schema, &broken, old) {
            Ok(_) => panic!("{} rule `{}` accepted a broken object", case.kind, case.rule),
            Err(errors) => errors,
        };
        assert!(
            errors.iter().any(|e| e.field == case.field && e.message.contains(case.message)),
            "{} rule `{}`: expected `{}: …{}…`, got {}",
            case.kind,
            case.rule,
            case.field,
            case.message,
            describe(&errors)
        );
        assert_eq!(errors.len(), 1, "{} rule `{}` broke more than itself: {}", case.kind, case.rule, describe(&errors));
    }
}

#[test]
fn transition_rule_accepts_status_only_changes_and_creation() {
    let schema = schema("RetrainJob");
    let old = sample("RetrainJob");
    let mut new = old.clone();
    new["status"] = json!({"phase": "Running", "attemptCount": 1});
    new["metadata"]["labels"] = json!({"team": "ml"});
    admit(&schema, &new, Some(&old)).unwrap_or_else(|e| panic!("status change rejected: {}", describe(&e)));
    admit(&schema, &old, None).unwrap_or_else(|e| panic!("creation rejected: {}", describe(&e)));
}

#[test]
fn the_agent_ports_are_free_for_the_runtime_when_no_agent_is_injected() {
    let schema = schema("ModelDeployment");
    let mut no_agent = sample("ModelDeployment");
    set(&mut no_agent, "/spec/runtime/port", json!(8080));
    set(&mut no_agent, "/spec/agent", json!({"enabled": false}));
    admit(&schema, &no_agent, None).unwrap_or_else(|e| panic!("{}", describe(&e)));
    let mut agent = no_agent.clone();
    set(&mut agent, "/spec/agent", json!({"enabled": true}));
    assert!(admit(&schema, &agent, None).is_err());
    // The agent's defaults (no agent stanza at all) inject it.
    remove(&mut agent, "/spec/agent");
    assert!(admit(&schema, &agent, None).is_err());
}

#[test]
fn outputs_serving_can_load_are_accepted() {
    let schema = schema("RetrainJob");
    for uri in ["pvc://models/support-chat/v2", "pvc://models", "s3://bucket/models/v2", "s3://bucket"] {
        let mut ok = sample("RetrainJob");
        set(&mut ok, "/spec/outputUri", json!(uri));
        admit(&schema, &ok, None).unwrap_or_else(|e| panic!("{uri}: {}", describe(&e)));
    }
}

#[test]
fn rising_weights_accept_a_single_step_and_reject_a_fall() {
    let schema = schema("ModelDeployment");
    let mut one = sample("ModelDeployment");
    set(&mut one, "/spec/rollout/steps", json!([{"weight": 100}]));
    admit(&schema, &one, None).unwrap_or_else(|e| panic!("{}", describe(&e)));
    let mut fall = sample("ModelDeployment");
    set(&mut fall, "/spec/rollout/steps", json!([{"weight": 50}, {"weight": 20}]));
    assert!(admit(&schema, &fall, None).is_err());
}

#[test]
fn schema_bounds_reject_before_cel() {
    let md_schema = schema("ModelDeployment");
    let mut obj = sample("ModelDeployment");
    set(&mut obj, "/spec/rollout/steps/0/weight", json!(0));
    set(&mut obj, "/spec/model/version", json!("v1 beta"));
    set(&mut obj, "/spec/rollout/approval", json!("Sometimes"));
    let errors = admit(&md_schema, &obj, None).err().unwrap_or_default();
    let fields: BTreeSet<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains("spec.rollout.steps[0].weight"), "{}", describe(&errors));
    assert!(fields.contains("spec.model.version"), "{}", describe(&errors));
    assert!(fields.contains("spec.rollout.approval"), "{}", describe(&errors));
    assert!(fields.contains("<nil>"), "CEL rules are reported as not checked: {}", describe(&errors));

    let mut rate = sample("FeedbackPolicy");
    set(&mut rate, "/spec/triggers/qualityBelow", json!(1.5));
    let errors = admit(&schema("FeedbackPolicy"), &rate, None).err().unwrap_or_default();
    assert!(errors.iter().any(|e| e.field == "spec.triggers.qualityBelow"), "{}", describe(&errors));
    let mut missing = sample("RetrainJob");
    remove(&mut missing, "/spec/dataset/sha256");
    let errors = admit(&schema("RetrainJob"), &missing, None).err().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e.field == "spec.dataset.sha256" && e.message == "Required value"),
        "{}",
        describe(&errors)
    );
}

fn rules_in(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(rules) = map.get("x-kubernetes-validations").and_then(Value::as_array) {
                for rule in rules {
                    if let Some(r) = rule.get("rule").and_then(Value::as_str) {
                        out.insert(r.to_string());
                    }
                }
            }
            map.values().for_each(|v| rules_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rules_in(v, out)),
        _ => {}
    }
}

#[test]
fn every_rule_has_a_case() {
    let cases = cases();
    for kind in ["ModelDeployment", "FeedbackPolicy", "RetrainJob"] {
        let mut rules = BTreeSet::new();
        rules_in(&schema(kind), &mut rules);
        assert!(!rules.is_empty());
        for rule in rules {
            assert!(
                cases.iter().any(|c| c.kind == kind && c.rule == rule),
                "{kind} rule `{rule}` has no accept/reject case in tests/api_rules.rs"
            );
        }
    }
}

#[test]
fn samples_deserialize_into_the_rust_types() {
    let md: ModelDeployment = serde_json::from_value(sample("ModelDeployment")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(md.spec.model.version, "v1");
    assert_eq!(md.spec.scaling.as_ref().map(|s| s.max_replicas), Some(4));
    let fbp: FeedbackPolicy = serde_json::from_value(sample("FeedbackPolicy")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fbp.spec.target_ref.name, "support-chat");
    let rtj: RetrainJob = serde_json::from_value(sample("RetrainJob")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rtj.spec.dataset.counts.sft, 1840);
}
