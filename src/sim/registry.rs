//! The resource types the simulated API server serves: the built-in ones the operator and its
//! users touch, and every custom resource registered by creating its CRD.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: String,
    /// Version served.
    pub version: String,
    /// Kind of the objects.
    pub kind: String,
    /// Plural lower-case name used in paths.
    pub plural: String,
    /// Singular lower-case name.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names (`kubectl get md`).
    pub short_names: Vec<String>,
    /// Categories (`kubectl get flywheel`).
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (then the main endpoint ignores status changes).
    pub status: bool,
    /// The scale subresource's paths, when it has one.
    pub scale: Option<ScalePaths>,
    /// Printer columns (custom resources), for Table output.
    pub printer_columns: Vec<PrinterColumn>,
    /// `openAPIV3Schema` of a custom resource, for validation, pruning and defaults.
    pub schema: Option<Value>,
    /// Whether this is a custom resource (served from a CRD).
    pub custom: bool,
    /// The CRD's name, for a custom resource.
    pub crd_name: Option<String>,
    /// Whether discovery and the OpenAPI documents list it: always for built-in types, once its
    /// CRD is `Established` for a custom resource (its endpoints answer from `NamesAccepted` on).
    pub established: bool,
}

/// Paths of a scale subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// `.spec.replicas`.
    pub spec_replicas: String,
    /// `.status.replicas`.
    pub status_replicas: String,
    /// `.status.selector`, when set.
    pub label_selector: Option<String>,
}

/// A printer column of a CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// `format` of the column.
    pub format: String,
    /// Description.
    pub description: String,
    /// Priority (0 shows by default).
    pub priority: i64,
    /// JSONPath of the value.
    pub json_path: String,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group`, or `plural` for the core group: how errors name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Kind.group`, how validation errors name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }

    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool, short: &[&str]) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            status: false,
            scale: None,
            printer_columns: Vec::new(),
            schema: None,
            custom: false,
            crd_name: None,
            established: true,
        }
    }

    fn with_status(mut self) -> Self {
        self.status = true;
        self
    }

    fn with_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| s.to_string()).collect();
        self
    }

    fn with_scale(mut self) -> Self {
        self.scale = Some(ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
        self
    }

    /// Whether a change of this object's content counts as a spec change (bumps generation).
    pub fn tracks_generation(&self) -> bool {
        self.custom
            || matches!(
                (self.group.as_str(), self.kind.as_str()),
                ("apps", _) | ("batch", "Job") | ("policy", _) | ("apiextensions.k8s.io", _)
            )
    }

    /// Entry of the legacy `APIResourceList` and its subresources.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status {
            out.push(json!({"name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced, "kind": self.kind, "verbs": ["get", "patch", "update"]}));
        }
        if self.scale.is_some() {
            out.push(json!({"name": format!("{}/scale", self.plural), "singularName": "", "namespaced": self.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        out
    }

    /// Entry of the aggregated discovery document (`apidiscovery.k8s.io/v2`).
    pub fn aggregated_entry(&self) -> Value {
        let mut entry = json!({
            "resource": self.plural,
            "responseKind": {"group": "", "version": "", "kind": self.kind},
            "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": self.singular,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            entry["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            entry["categories"] = json!(self.categories);
        }
        let mut subs = Vec::new();
        if self.status {
            subs.push(json!({"subresource": "status", "responseKind": {"group": "", "version": "", "kind": self.kind}, "verbs": ["get", "patch", "update"]}));
        }
        if self.scale.is_some() {
            subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
        }
        if !subs.is_empty() {
            entry["subresources"] = json!(subs);
        }
        entry
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    use ResourceType as R;
    vec![
        R::builtin("", "v1", "Namespace", "namespaces", false, &["ns"]).with_status(),
        R::builtin("", "v1", "Pod", "pods", true, &["po"]).with_status().with_categories(&["all"]),
        R::builtin("", "v1", "Service", "services", true, &["svc"]).with_status().with_categories(&["all"]),
        R::builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"]),
        R::builtin("", "v1", "Secret", "secrets", true, &[]),
        R::builtin("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"]).with_status(),
        R::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
        R::builtin("", "v1", "Event", "events", true, &["ev"]),
        R::builtin("", "v1", "Endpoints", "endpoints", true, &["ep"]),
        R::builtin("apps", "v1", "Deployment", "deployments", true, &["deploy"])
            .with_status()
            .with_scale()
            .with_categories(&["all"]),
        R::builtin("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"])
            .with_status()
            .with_scale()
            .with_categories(&["all"]),
        R::builtin("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"]).with_status().with_categories(&["all"]),
        R::builtin("batch", "v1", "Job", "jobs", true, &[]).with_status().with_categories(&["all"]),
        R::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
        R::builtin("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"]).with_status(),
        R::builtin("events.k8s.io", "v1", "Event", "events", true, &["ev"]),
        R::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
        )
        .with_status()
        .with_categories(&["api-extensions"]),
        R::builtin("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[]),
        R::builtin("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[]),
        R::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[]),
        R::builtin("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[]),
        R::builtin("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"]),
    ]
}

/// Errors reading a CRD into resource types.
#[derive(Debug, thiserror::Error)]
pub enum CrdReadError {
    /// A required field of the CRD is missing.
    #[error("spec.{0}: Required value")]
    Missing(&'static str),
}

fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| c.get("type") == Some(&json!("Established")) && c.get("status") == Some(&json!("True")))
    })
}

/// The resource types a CRD serves (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, CrdReadError> {
    let spec = crd.get("spec").ok_or(CrdReadError::Missing("spec"))?;
    let group = spec.get("group").and_then(Value::as_str).ok_or(CrdReadError::Missing("group"))?;
    let names = spec.get("names").ok_or(CrdReadError::Missing("names"))?;
    let kind = names.get("kind").and_then(Value::as_str).ok_or(CrdReadError::Missing("names.kind"))?;
    let plural = names.get("plural").and_then(Value::as_str).ok_or(CrdReadError::Missing("names.plural"))?;
    let singular = names.get("singular").and_then(Value::as_str).map_or_else(|| kind.to_lowercase(), str::to_string);
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let versions = spec.get("versions").and_then(Value::as_array).ok_or(CrdReadError::Missing("versions"))?;
    let mut out = Vec::new();
    for version in versions {
        if version.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(name) = version.get("name").and_then(Value::as_str) else { continue };
        let subresources = version.get("subresources");
        let scale = subresources.and_then(|s| s.get("scale")).map(|s| ScalePaths {
            spec_replicas: s.get("specReplicasPath").and_then(Value::as_str).unwrap_or(".spec.replicas").into(),
            status_replicas: s.get("statusReplicasPath").and_then(Value::as_str).unwrap_or(".status.replicas").into(),
            label_selector: s.get("labelSelectorPath").and_then(Value::as_str).map(str::to_string),
        });
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                        type_: c.get("type").and_then(Value::as_str).unwrap_or("string").into(),
                        format: c.get("format").and_then(Value::as_str).unwrap_or_default().into(),
                        description: c.get("description").and_then(Value::as_str).map_or_else(
                            || {
                                format!(
                                    "Custom resource definition column (in JSONPath format): {}",
                                    c.get("jsonPath").and_then(Value::as_str).unwrap_or_default()
                                )
                            },
                            str::to_string,
                        ),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c.get("jsonPath").and_then(Value::as_str).unwrap_or_default().into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.into(),
            version: name.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: singular.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status: subresources.and_then(|s| s.get("status")).is_some(),
            scale,
            printer_columns,
            schema: version.get("schema").and_then(|s| s.get("openAPIV3Schema")).cloned(),
            custom: true,
            crd_name: crd.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string),
            established: established(crd),
        });
    }
    Ok(out)
}

/// All served types, keyed by (group, version, plural).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<(String, String, String), ResourceType>,
}

impl Registry {
    /// A registry of the built-in types.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        for t in builtins() {
            registry.insert(t);
        }
        registry
    }

    /// The types discovery and the OpenAPI documents list: a custom resource only once its CRD
    /// is `Established`.
    pub fn established_only(&self) -> Self {
        Self { types: self.types.iter().filter(|(_, t)| t.established).map(|(k, t)| (k.clone(), t.clone())).collect() }
    }

    /// Serve a type.
    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert((t.group.clone(), t.version.clone(), t.plural.clone()), t);
    }

    /// Stop serving every type of a CRD.
    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types.retain(|_, t| t.crd_name.as_deref() != Some(crd_name));
    }

    /// The type at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    /// The type of a kind in an API version (`apps/v1`, `Deployment`).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types.values().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Every type.
    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Groups and their versions, core first, in a stable order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let versions = groups.entry(t.group.clone()).or_default();
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        groups.into_iter().collect()
    }
}
