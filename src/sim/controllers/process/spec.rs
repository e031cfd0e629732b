//! What a container of a pod becomes as a host process, decided without running anything: its
//! argument vector (the image's entrypoint or the container's `command`, then `args`), its
//! environment (`envFrom`, then `env` in order, `$(VAR)` expanded against what came before,
//! `fieldRef`s and key references resolved), and the translation of every volume's mount path to
//! the host directory that stands for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Expand `$(NAME)` references as the kubelet does: a defined name is replaced by its value, an
/// undefined one is left as written, and `$$` is a literal `$` (so `$$(NAME)` stays `$(NAME)`).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The mount paths of one container and the host directories (or files) that stand for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMap {
    /// Longest container path first, so `/models/cache` wins over `/models`.
    entries: Vec<(String, PathBuf)>,
}

impl PathMap {
    /// Map `container_path` (a mount path, or a file such as the termination message path) to `host`.
    pub fn add(&mut self, container_path: &str, host: PathBuf) {
        let path = container_path.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        self.entries.retain(|(p, _)| p != path);
        self.entries.push((path.to_string(), host));
        self.entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// The host path for a container path, when a mapped path contains it.
    pub fn host(&self, container_path: &str) -> Option<PathBuf> {
        self.entries.iter().find_map(|(p, host)| {
            let rest = container_path.strip_prefix(p.as_str())?;
            if rest.is_empty() { Some(host.clone()) } else { rest.strip_prefix('/').map(|r| host.join(r)) }
        })
    }

    /// Rewrite every mapped path inside `text` (a value, an argument, a `KEY=path` flag, a
    /// `file://` URI) to its host path. A mapped path counts where it starts a path (at the
    /// start, or after `=`, `:`, `,`, `;`, a quote, a space or `//`) and ends at a path
    /// boundary (the end, `/`, or one of those separators).
    pub fn translate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        let bytes = text.as_bytes();
        'scan: while i < text.len() {
            let starts_path = bytes[i] == b'/' && (i == 0 || is_separator(bytes[i - 1]) || text[..i].ends_with("//"));
            if starts_path {
                for (p, host) in &self.entries {
                    if text[i..].starts_with(p.as_str()) {
                        let end = i + p.len();
                        if end == text.len() || bytes[end] == b'/' || is_separator(bytes[end]) {
                            out.push_str(&host.to_string_lossy());
                            i = end;
                            continue 'scan;
                        }
                    }
                }
            }
            // Copy one character (which may be several bytes).
            let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + ch_len]);
            i += ch_len;
        }
        out
    }
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'=' | b':' | b',' | b';' | b'"' | b'\'' | b' ' | b'\t')
}

/// Why a container cannot be started (the kubelet's `CreateContainerConfigError` and kin).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A referenced Secret or ConfigMap, or a key in it, does not exist.
    #[error("{0}")]
    MissingReference(String),
    /// Neither the image's entrypoint nor the container's command names a program.
    #[error("no command to run for container {0}")]
    NoCommand(String),
}

/// Reads the Secrets and ConfigMaps a container's environment refers to.
pub trait References {
    /// The decoded `data` of a Secret (`None` when it does not exist).
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>>;
    /// The `data` of a ConfigMap (`None` when it does not exist).
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>>;
}

/// The value of a `fieldRef` for this pod (the downward API's fields the operator and common
/// images use).
pub fn field_ref(pod: &Value, pod_ip: &str, path: &str) -> Option<String> {
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    let text = |pointer: &str| pod.pointer(pointer).and_then(Value::as_str).map(str::to_string);
    match path {
        "metadata.name" => text("/metadata/name"),
        "metadata.namespace" => text("/metadata/namespace"),
        "metadata.uid" => text("/metadata/uid"),
        "spec.nodeName" => text("/spec/nodeName").or_else(|| Some("sim-node".into())),
        "spec.serviceAccountName" => text("/spec/serviceAccountName").or_else(|| Some("default".into())),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        _ => {
            if let Some(key) = quoted("metadata.labels") {
                return pod
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(&key))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            let key = quoted("metadata.annotations")?;
            pod.pointer("/metadata/annotations").and_then(|a| a.get(&key)).and_then(Value::as_str).map(str::to_string)
        }
    }
}

/// The environment a container's spec declares, in the kubelet's order: `envFrom` sources, then
/// `env` entries, each value expanded against the variables defined before it.
pub fn environment(
    pod: &Value,
    container: &Value,
    pod_ip: &str,
    refs: &dyn References,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut vars = BTreeMap::new();
    let optional = |v: &Value| v.get("optional").and_then(Value::as_bool).unwrap_or(false);
    for source in container.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
        let prefix = source.get("prefix").and_then(Value::as_str).unwrap_or_default();
        let (kind, found) = if let Some(r) = source.get("secretRef") {
            ("Secret", (r, refs.secret(name_of(r))))
        } else if let Some(r) = source.get("configMapRef") {
            ("ConfigMap", (r, refs.config_map(name_of(r))))
        } else {
            continue;
        };
        match found {
            (_, Some(data)) => {
                for (k, v) in data {
                    vars.insert(format!("{prefix}{k}"), v);
                }
            }
            (r, None) if optional(r) => {}
            (r, None) => return Err(SpecError::MissingReference(format!("{kind} \"{}\" not found", name_of(r)))),
        }
    }
    for entry in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = entry.get("name").and_then(Value::as_str) else { continue };
        let value = if let Some(v) = entry.get("value").and_then(Value::as_str) {
            Some(expand(v, &vars))
        } else if let Some(from) = entry.get("valueFrom") {
            value_from(pod, container, pod_ip, from, refs)?
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            vars.insert(name.to_string(), value);
        }
    }
    Ok(vars)
}

fn name_of(reference: &Value) -> &str {
    reference.get("name").and_then(Value::as_str).unwrap_or_default()
}

fn value_from(
    pod: &Value,
    container: &Value,
    pod_ip: &str,
    from: &Value,
    refs: &dyn References,
) -> Result<Option<String>, SpecError> {
    if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
        return Ok(field_ref(pod, pod_ip, path));
    }
    if let Some(resource) = from.pointer("/resourceFieldRef/resource").and_then(Value::as_str) {
        // The container's own limit or request; this node has no allocatable figures to fall back on.
        let (section, what) = resource.split_once('.').unwrap_or(("limits", resource));
        let value = container.pointer(&format!("/resources/{section}/{what}")).and_then(Value::as_str);
        return Ok(Some(value.unwrap_or("0").to_string()));
    }
    let (kind, reference, data) = if let Some(r) = from.get("secretKeyRef") {
        ("Secret", r, refs.secret(name_of(r)))
    } else if let Some(r) = from.get("configMapKeyRef") {
        ("ConfigMap", r, refs.config_map(name_of(r)))
    } else {
        return Ok(None);
    };
    let key = reference.get("key").and_then(Value::as_str).unwrap_or_default();
    let optional = reference.get("optional").and_then(Value::as_bool).unwrap_or(false);
    match data.as_ref().map(|d| d.get(key)) {
        Some(Some(v)) => Ok(Some(v.clone())),
        _ if optional => Ok(None),
        None => Err(SpecError::MissingReference(format!("{kind} \"{}\" not found", name_of(reference)))),
        Some(None) => {
            Err(SpecError::MissingReference(format!("couldn't find key {key} in {kind} {}", name_of(reference))))
        }
    }
}

/// The argument vector: the container's `command` when it has one, otherwise the image's
/// entrypoint; then `args`; `$(VAR)` expanded against the container's environment.
pub fn argv(
    container: &Value,
    entrypoint: &[String],
    vars: &BTreeMap<String, String>,
) -> Result<Vec<String>, SpecError> {
    let strings = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(|s| expand(s, vars)).collect())
            .unwrap_or_default()
    };
    let command = strings("command");
    let mut argv = if command.is_empty() { entrypoint.to_vec() } else { command };
    argv.extend(strings("args"));
    if argv.is_empty() {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        return Err(SpecError::NoCommand(name.to_string()));
    }
    Ok(argv)
}

/// The host path of a volume mount: the volume's directory, or a `subPath` inside it.
pub fn mount_source(volume_dir: &Path, mount: &Value) -> PathBuf {
    match mount.get("subPath").and_then(Value::as_str).filter(|p| !p.is_empty()) {
        Some(sub) => volume_dir.join(sub.trim_start_matches('/')),
        None => volume_dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Refs;
    impl References for Refs {
        fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "token").then(|| BTreeMap::from([("token".to_string(), "s3cr3t".to_string())]))
        }
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "settings").then(|| BTreeMap::from([("LEVEL".to_string(), "debug".to_string())]))
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let v = vars(&[("DIR", "/models/v2"), ("EMPTY", "")]);
        assert_eq!(expand("--model=$(DIR)/weights", &v), "--model=/models/v2/weights");
        assert_eq!(expand("$(MISSING) and $(EMPTY)x", &v), "$(MISSING) and x");
        assert_eq!(expand("$$(DIR) costs $$5", &v), "$(DIR) costs $5");
        assert_eq!(expand("a $ b $(unclosed", &v), "a $ b $(unclosed");
    }

    #[test]
    fn mount_paths_are_translated_at_path_boundaries_only() {
        let mut map = PathMap::default();
        map.add("/models", PathBuf::from("/tmp/claims/models"));
        map.add("/models/cache/", PathBuf::from("/tmp/pod/cache"));
        map.add("/dev/termination-log", PathBuf::from("/tmp/pod/termination/trainer"));
        assert_eq!(map.translate("/models/x/v2"), "/tmp/claims/models/x/v2");
        assert_eq!(map.translate("/models/cache/a"), "/tmp/pod/cache/a");
        assert_eq!(map.translate("--out=/models"), "--out=/tmp/claims/models");
        assert_eq!(map.translate("file:///models/v1"), "file:///tmp/claims/models/v1");
        assert_eq!(map.translate("pvc://models/x"), "pvc://models/x", "a URI's authority is not a path");
        assert_eq!(map.translate("/modelsX/a and /data/models"), "/modelsX/a and /data/models");
        assert_eq!(map.translate("/dev/termination-log"), "/tmp/pod/termination/trainer");
        assert_eq!(map.host("/models/cache/b"), Some(PathBuf::from("/tmp/pod/cache/b")));
        assert_eq!(map.host("/elsewhere"), None);
    }

    #[test]
    fn the_environment_is_built_in_order_with_references() {
        let pod = json!({"metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "chat"}}});
        let container = json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APPNAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "URL", "value": "http://$(IP):8080/$(POD)/$(LATER)"},
                {"name": "LATER", "value": "late"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "token"}}},
                {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
            ],
        });
        let env = environment(&pod, &container, "10.88.0.7", &Refs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(env["APP_LEVEL"], "debug");
        assert_eq!(env["URL"], "http://10.88.0.7:8080/p-1/$(LATER)", "only what came before expands");
        assert_eq!(env["APPNAME"], "chat");
        assert_eq!(env["TOKEN"], "s3cr3t");
        assert!(!env.contains_key("MAYBE"));
        let missing = json!({"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "token", "key": "nope"}}}]});
        assert_eq!(
            environment(&pod, &missing, "", &Refs),
            Err(SpecError::MissingReference("couldn't find key nope in Secret token".into()))
        );
    }

    #[test]
    fn the_command_replaces_the_entrypoint_and_args_follow() {
        let env = vars(&[("DIR", "/out")]);
        let entry = vec!["/bin/flywheel".to_string()];
        let only_args = json!({"name": "a", "args": ["agent", "--dir=$(DIR)"]});
        assert_eq!(
            argv(&only_args, &entry, &env),
            Ok(vec!["/bin/flywheel".into(), "agent".into(), "--dir=/out".into()])
        );
        let command = json!({"name": "t", "command": ["python", "-m", "x"], "args": ["$(DIR)"]});
        assert_eq!(argv(&command, &entry, &env), Ok(vec!["python".into(), "-m".into(), "x".into(), "/out".into()]));
        assert_eq!(argv(&json!({"name": "n"}), &[], &env), Err(SpecError::NoCommand("n".into())));
    }
}
