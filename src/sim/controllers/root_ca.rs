//! The root-ca-cert publisher (`pkg/controller/certificates/rootcacertpublisher`): every namespace
//! that is not terminating holds the ConfigMap `kube-root-ca.crt` with the CA as `ca.crt` and its
//! description annotation; a missing one is created, a changed one is put back (other data keys go).

use serde_json::{Value, json};

use super::common::{MANAGER, gvr_namespaces, is_deleting, list, opts, s};
use crate::sim::core::{Core, Gvr};

/// The ConfigMap the controller-manager's root-ca-cert publisher keeps in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// One pass over every namespace.
pub(super) fn publish_root_ca(core: &Core, root_ca: &str) {
    let gvr = Gvr::new("", "v1", "configmaps");
    let data = json!({"ca.crt": root_ca});
    for ns in list(core, &gvr_namespaces()) {
        if is_deleting(&ns) {
            continue;
        }
        let Some(name) = s(&ns, "/metadata/name") else { continue };
        match core.get(&gvr, Some(name), ROOT_CA_CONFIG_MAP) {
            Ok(cm) => {
                let described = cm
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty());
                if cm.get("data") == Some(&data) && described {
                    continue;
                }
                let mut body = cm.clone();
                body["data"] = data.clone();
                body["metadata"]["annotations"][DESCRIPTION_ANNOTATION] = json!(ROOT_CA_DESCRIPTION);
                let _updated = core.update(&gvr, Some(name), ROOT_CA_CONFIG_MAP, body, None, &opts(MANAGER));
            }
            Err(e) if e.code == 404 => {
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIG_MAP, "annotations": {DESCRIPTION_ANNOTATION: ROOT_CA_DESCRIPTION}},
                    "data": data,
                });
                let _created = core.create(&gvr, Some(name), cm, &opts(MANAGER));
            }
            Err(_) => {}
        }
    }
}
