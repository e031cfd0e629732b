//! [`ProcessMode`]: which images run as host commands, and where the pods' files live.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::network::{Bridge, NetworkError};

/// Which images run as host commands, and where the pods' files live.
#[derive(Debug, Clone, Default)]
pub struct ProcessMode {
    /// Image (without its tag or digest) → the command that stands for its entrypoint.
    images: BTreeMap<String, Vec<String>>,
    /// Variables every process starts with (before the pod's own), such as `PATH`.
    base_env: BTreeMap<String, String>,
    /// Pods' directories, claims and logs.
    root: PathBuf,
    /// A network namespace per pod on this bridge; `None`: pods share this machine's network.
    network: Option<Arc<Bridge>>,
}

/// Why an image mapping cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an image mapping is IMAGE=COMMAND [ARG...], got {0:?}")]
pub struct MappingError(pub String);

impl ProcessMode {
    /// Process mode with its files under `root`; no image is mapped yet. Processes start with
    /// this process's `PATH`, `HOME` set to the pod's directory, and `LANG`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let mut base_env = BTreeMap::new();
        for key in ["PATH", "LANG", "LC_ALL", "TMPDIR"] {
            if let Ok(value) = std::env::var(key) {
                base_env.insert(key.to_string(), value);
            }
        }
        Self { images: BTreeMap::new(), base_env, root: root.into(), network: None }
    }

    /// Run containers of `image` (any tag) as `command`.
    #[must_use]
    pub fn image(mut self, image: &str, command: Vec<String>) -> Self {
        self.images.insert(repository(image).to_string(), command);
        self
    }

    /// A variable every process of this mode starts with.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.base_env.insert(key.to_string(), value.to_string());
        self
    }

    /// Give every pod a network namespace of its own (its own IP on a bridge of this machine),
    /// so pods can listen on the same port and `localhost` is the pod's own.
    pub fn isolated_network(mut self) -> Result<Self, NetworkError> {
        self.network = Some(Arc::new(Bridge::create()?));
        Ok(self)
    }

    /// Where pods reach this machine's services when each has its own network (the bridge's
    /// address); `None` when pods share this machine's network (they use 127.0.0.1).
    pub fn host_ip(&self) -> Option<Ipv4Addr> {
        self.network.as_ref().map(|b| b.host_ip())
    }

    pub(super) fn network(&self) -> Option<&Arc<Bridge>> {
        self.network.as_ref()
    }

    /// The variables every process starts with.
    pub(super) fn base_env(&self) -> &BTreeMap<String, String> {
        &self.base_env
    }

    /// Parse `IMAGE=COMMAND [ARG...]` (split on whitespace), as `flywheel sim --run-image` takes it.
    pub fn parse_mapping(text: &str) -> Result<(String, Vec<String>), MappingError> {
        let (image, command) = text.split_once('=').ok_or_else(|| MappingError(text.to_string()))?;
        let command: Vec<String> = command.split_whitespace().map(str::to_string).collect();
        if image.trim().is_empty() || command.is_empty() {
            return Err(MappingError(text.to_string()));
        }
        Ok((image.trim().to_string(), command))
    }

    /// The command standing for `image`'s entrypoint.
    pub fn entrypoint(&self, image: &str) -> Option<&[String]> {
        self.images.get(repository(image)).map(Vec::as_slice)
    }

    /// Whether `pod` runs as processes: it has containers and every one of them (init
    /// containers included) has a mapped image.
    pub fn runs(&self, pod: &Value) -> bool {
        let images = |key: &str| -> Vec<String> {
            pod.pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter().map(|c| c.get("image").and_then(Value::as_str).unwrap_or_default().to_string()).collect()
                })
                .unwrap_or_default()
        };
        let containers = images("containers");
        !containers.is_empty()
            && containers.iter().chain(images("initContainers").iter()).all(|i| self.entrypoint(i).is_some())
    }

    /// The directory standing for a PersistentVolumeClaim (shared by the pods that mount it).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.root.join("claims").join(namespace).join(claim)
    }

    /// A pod's own directory (its `emptyDir`s, Secrets, ConfigMaps, termination messages).
    pub fn pod_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.root.join("pods").join(format!("{namespace}_{pod}_{uid}"))
    }

    /// The output of a pod's container, as `kubectl logs` reads it.
    pub fn log_file(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.root.join("logs").join(namespace).join(pod).join(format!("{container}.log"))
    }
}

/// An image reference without its tag or digest (a registry's port is kept).
fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn images_match_without_their_tag_or_digest() {
        assert_eq!(repository("ghcr.io/flywheel-dev/trainer:0.1.0"), "ghcr.io/flywheel-dev/trainer");
        assert_eq!(repository("localhost:5000/x@sha256:ab"), "localhost:5000/x");
        assert_eq!(repository("localhost:5000/x"), "localhost:5000/x");
        let mode = ProcessMode::new("/tmp/p").image("trainer:latest", vec!["python".into(), "-m".into(), "t".into()]);
        assert_eq!(mode.entrypoint("trainer:0.2"), Some(&["python".to_string(), "-m".into(), "t".into()][..]));
        let pod =
            |init: &str| json!({"spec": {"initContainers": [{"image": init}], "containers": [{"image": "trainer"}]}});
        assert!(mode.runs(&pod("trainer:1")));
        assert!(!mode.runs(&pod("busybox")), "a pod with one unmapped image stays scripted");
        assert!(!mode.runs(&json!({"spec": {}})));
    }

    #[test]
    fn mappings_parse() {
        assert_eq!(
            ProcessMode::parse_mapping("ghcr.io/x/t=python -m flywheel_trainer"),
            Ok(("ghcr.io/x/t".to_string(), vec!["python".into(), "-m".into(), "flywheel_trainer".into()]))
        );
        assert!(ProcessMode::parse_mapping("no-equals").is_err());
        assert!(ProcessMode::parse_mapping("image=").is_err());
    }
}
