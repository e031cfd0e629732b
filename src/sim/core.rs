//! The store and the semantics of every write: resource versions, generation, optimistic
//! concurrency, subresources, patches, server-side apply, deletion with finalizers, and the
//! event log that watches read from. Used by the HTTP layer and by the simulated controllers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, broadcast};

use super::error::ApiError;
use super::patch::{self, BuiltinListTypes, ListTypes, ManagedFieldsEntry, SchemaListTypes};
use super::registry::{Registry, ResourceType, from_crd};
use super::select::{FieldSelector, LabelSelector, labels_of};
use crate::api::validation::{self, FieldError, FieldReason};

/// Group, version and plural of a resource type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name.
    pub plural: String,
}

impl Gvr {
    /// A Gvr from its parts.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self { group: group.into(), version: version.into(), plural: plural.into() }
    }
}

/// Where an object is kept: type (without version), namespace (`""` if cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// As the watch stream spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub type_: EventType,
    /// Group of the object's type.
    pub group: String,
    /// Plural of the object's type.
    pub plural: String,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// The object after the change (before, for a deletion, with the deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before a modification, so a watch with a selector can tell an object that
    /// stopped (or started) matching.
    pub previous: Option<Arc<Value>>,
}

/// Receives every change after a point.
pub type EventReceiver = broadcast::Receiver<Arc<Event>>;

/// How a subresource is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// `/status`.
    Status,
    /// `/scale`.
    Scale,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
        }
    }
}

/// A patch format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

/// What to do with unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them (the real server adds a warning header).
    #[default]
    Warn,
    /// Reject the request.
    Strict,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The field manager; required for apply.
    pub field_manager: Option<String>,
    /// Server-side apply: take ownership of conflicting fields.
    pub force: bool,
    /// Validate and answer, but store nothing.
    pub dry_run: bool,
    /// Unknown field handling.
    pub field_validation: FieldValidation,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub label_selector: Option<LabelSelector>,
    /// Field selector.
    pub field_selector: Option<FieldSelector>,
    /// Page size.
    pub limit: Option<usize>,
    /// Continue token of the previous page.
    pub continue_token: Option<String>,
}

/// How dependents are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the owner now; the garbage collector deletes dependents afterwards.
    Background,
    /// Delete dependents first; the owner waits with the `foregroundDeletion` finalizer.
    Foreground,
    /// Keep dependents; strip their owner references.
    Orphan,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Propagation policy; Background by default.
    pub propagation: Option<Propagation>,
    /// Precondition on the uid.
    pub uid: Option<String>,
    /// Precondition on the resourceVersion.
    pub resource_version: Option<String>,
    /// Validate and answer, but change nothing.
    pub dry_run: bool,
}

struct State {
    registry: Registry,
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    uids: HashMap<String, Key>,
    log: VecDeque<Arc<Event>>,
    oldest_rv: u64,
    log_capacity: usize,
}

/// The in-memory API server state, shared by the HTTP layer and the simulated controllers.
pub struct Core {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    changed: Notify,
}

/// The current time as the API server writes it (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        match obj.as_object_mut() {
            Some(root) => {
                root.insert("metadata".into(), Value::Object(Map::new()));
            }
            None => *obj = json!({"metadata": {}}),
        }
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => meta,
        None => unreachable!("metadata was made an object above"),
    }
}

/// `n` characters of the alphabet the API server uses for generated names.
pub(crate) fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// FNV-1a of a string as hex: a stable hash for pod-template hashes and OpenAPI document hashes.
pub(crate) fn fnv1a_hex(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// The object without metadata and status: what a spec change is measured on.
fn content(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn list_types(t: &ResourceType) -> Box<dyn ListTypes + '_> {
    match &t.schema {
        Some(schema) => Box::new(SchemaListTypes { schema }),
        None => Box::new(BuiltinListTypes),
    }
}

fn managed_of(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default()
}

fn set_managed(obj: &mut Value, entries: &[ManagedFieldsEntry]) {
    let meta = metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else if let Ok(v) = serde_json::to_value(entries) {
        meta.insert("managedFields".into(), v);
    }
}

fn strip_managed(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// The value at a JSONPath like `.spec.replicas`.
pub fn at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let pointer: String = path.split('.').filter(|p| !p.is_empty()).map(|p| format!("/{p}")).collect();
    obj.pointer(&pointer)
}

fn set_at_path(obj: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let mut current = obj;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            if let Some(m) = current.as_object_mut() {
                m.insert((*part).to_string(), value);
            }
            return;
        }
        if !current.get(*part).is_some_and(Value::is_object) {
            current[*part] = json!({});
        }
        match current.get_mut(*part) {
            Some(next) => current = next,
            None => return,
        }
    }
}

impl Core {
    /// An empty store serving the built-in types, keeping `log_capacity` events for watches.
    pub fn new(log_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(16384);
        let core = Self {
            state: Mutex::new(State {
                registry: Registry::with_builtins(),
                rv: 100,
                objects: BTreeMap::new(),
                uids: HashMap::new(),
                log: VecDeque::new(),
                oldest_rv: 100,
                log_capacity: log_capacity.max(16),
            }),
            events,
            changed: Notify::new(),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let _created = core.create(
                &Gvr::new("", "v1", "namespaces"),
                None,
                body,
                &WriteOptions { field_manager: Some("kube-apiserver".into()), ..WriteOptions::default() },
            );
        }
        core
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is one insert), so
        // a poisoned lock is taken over rather than propagated.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registry (a copy), for discovery.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// The resource type at `gvr`.
    pub fn resource_type(&self, gvr: &Gvr) -> Option<ResourceType> {
        self.lock().registry.get(&gvr.group, &gvr.version, &gvr.plural).cloned()
    }

    /// The type of `kind` in `api_version` (`apps/v1`, `Deployment`), as a REST mapper finds it.
    pub fn resource_type_by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.lock().registry.by_kind(api_version, kind).cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Subscribe to every change.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Wait until something changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Drop the event history: a watch from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.log.clear();
        state.oldest_rv = state.rv;
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.lock().objects.len()
    }

    fn resolve(state: &State, gvr: &Gvr) -> Result<ResourceType, ApiError> {
        state
            .registry
            .get(&gvr.group, &gvr.version, &gvr.plural)
            .cloned()
            .ok_or_else(|| ApiError::no_route(&format!("{}/{}, Resource={}", gvr.group, gvr.version, gvr.plural)))
    }

    fn key(t: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
        Key {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: if t.namespaced { namespace.unwrap_or_default().to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    /// Store `obj` (or remove the object) under a new resourceVersion and tell the watchers.
    fn commit(
        &self,
        state: &mut State,
        t: &ResourceType,
        key: Key,
        obj: Option<Value>,
        previous: Option<&Value>,
    ) -> Value {
        state.rv += 1;
        let rv = state.rv;
        let (type_, mut stored) = match obj {
            Some(o) => (if previous.is_some() { EventType::Modified } else { EventType::Added }, o),
            None => (EventType::Deleted, previous.cloned().unwrap_or(Value::Null)),
        };
        metadata_mut(&mut stored).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let uid = meta_str(&stored, "uid").map(str::to_string);
        let stored = Arc::new(stored);
        let mut replaced = None;
        match type_ {
            EventType::Deleted => {
                state.objects.remove(&key);
                if let Some(uid) = uid {
                    state.uids.remove(&uid);
                }
            }
            _ => {
                if let Some(uid) = uid {
                    state.uids.insert(uid, key.clone());
                }
                replaced = state.objects.insert(key.clone(), stored.clone());
            }
        }
        let event = Arc::new(Event {
            rv,
            type_,
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: key.namespace.clone(),
            object: stored.clone(),
            previous: replaced,
        });
        state.log.push_back(event.clone());
        while state.log.len() > state.log_capacity {
            if let Some(old) = state.log.pop_front() {
                state.oldest_rv = old.rv;
            }
        }
        let _receivers = self.events.send(event);
        self.changed.notify_waiters();
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            Self::sync_crd(state, &stored, type_ == EventType::Deleted);
        }
        Value::clone(&stored)
    }

    /// Serve a CRD's types once its names are accepted (as the CRD handler: `NamesAccepted` or
    /// `Established` true), stop serving them when it goes.
    fn sync_crd(state: &mut State, crd: &Value, deleted: bool) {
        let Some(name) = meta_str(crd, "name").map(str::to_string) else { return };
        state.registry.remove_crd(&name);
        if deleted || !(crd_condition(crd, "NamesAccepted") || crd_condition(crd, "Established")) {
            return;
        }
        if let Ok(types) = from_crd(crd) {
            for t in types {
                state.registry.insert(t);
            }
        }
    }

    /// GET one object.
    pub fn get(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let key = Self::key(&t, namespace, name);
        let mut obj = state.objects.get(&key).map(|o| Value::clone(o)).ok_or_else(|| ApiError::not_found(&t, name))?;
        obj["apiVersion"] = json!(t.api_version());
        Ok(obj)
    }

    /// LIST objects of a type, in a namespace or all.
    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>, opts: &ListOptions) -> Result<Value, ApiError> {
        let state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let start_after = match &opts.continue_token {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let mut items = Vec::new();
        let mut remaining = 0usize;
        let mut last_key = None;
        // Keys sort by type, namespace, name: a list reads only its own range.
        let first = Key {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: namespace.filter(|_| t.namespaced).unwrap_or_default().to_string(),
            name: String::new(),
        };
        for (key, obj) in state.objects.range(first..) {
            if key.group != t.group || key.plural != t.plural {
                break;
            }
            if let Some(ns) = namespace.filter(|_| t.namespaced)
                && key.namespace != ns
            {
                continue;
            }
            if let Some(after) = &start_after
                && (&key.namespace, &key.name) <= (&after.0, &after.1)
            {
                continue;
            }
            if opts.label_selector.as_ref().is_some_and(|s| !s.matches(&labels_of(obj))) {
                continue;
            }
            if opts.field_selector.as_ref().is_some_and(|s| !s.matches(obj)) {
                continue;
            }
            if opts.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                remaining += 1;
                continue;
            }
            let mut o = Value::clone(obj);
            o["apiVersion"] = json!(t.api_version());
            last_key = Some((key.namespace.clone(), key.name.clone()));
            items.push(o);
        }
        let mut metadata = json!({"resourceVersion": state.rv.to_string()});
        if remaining > 0
            && let Some((ns, name)) = last_key
        {
            metadata["continue"] = json!(encode_continue(state.rv, &ns, &name));
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "apiVersion": t.api_version(),
            "kind": format!("{}List", t.kind),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// The events a watch from `since` must replay, and a receiver for what follows; 410 when
    /// `since` is older than the kept history.
    pub fn watch_from(&self, since: u64) -> Result<(Vec<Arc<Event>>, EventReceiver), ApiError> {
        let state = self.lock();
        if since < state.oldest_rv {
            return Err(ApiError::expired(since, state.oldest_rv));
        }
        let backlog = state.log.iter().filter(|e| e.rv > since).cloned().collect();
        Ok((backlog, self.events.subscribe()))
    }

    /// The objects a watch without a resourceVersion starts with (as ADDED), the current
    /// resourceVersion, and a receiver for what follows.
    pub fn watch_snapshot(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64, EventReceiver), ApiError> {
        let state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let objects = state
            .objects
            .iter()
            .filter(|(k, _)| k.group == t.group && k.plural == t.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| !t.namespaced || k.namespace == ns))
            .map(|(_, o)| Value::clone(o))
            .collect();
        Ok((objects, state.rv, self.events.subscribe()))
    }

    /// POST: create an object.
    pub fn create(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let obj = self.prepare_create(&state, &t, namespace, body, opts)?;
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let key = Self::key(&t, namespace, &name);
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&t, &name));
        }
        if opts.dry_run {
            return Ok(obj);
        }
        Ok(self.commit(&mut state, &t, key, Some(obj), None))
    }

    fn check_namespace(state: &State, t: &ResourceType, namespace: Option<&str>, name: &str) -> Result<(), ApiError> {
        if !t.namespaced {
            return Ok(());
        }
        let ns = namespace.ok_or_else(|| ApiError::bad_request("the namespace of the object must be set"))?;
        let key = Key { group: String::new(), plural: "namespaces".into(), namespace: String::new(), name: ns.into() };
        match state.objects.get(&key) {
            None => Err(ApiError::not_found(state.registry.get("", "v1", "namespaces").unwrap_or(t), ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                t.qualified(),
            ))),
            Some(_) => Ok(()),
        }
    }

    fn prepare_create(
        &self,
        state: &State,
        t: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        check_kind(t, &obj)?;
        {
            let meta = metadata_mut(&mut obj);
            if let (Some(ns), Some(body_ns)) = (namespace, meta.get("namespace").and_then(Value::as_str))
                && t.namespaced
                && ns != body_ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let name = match meta.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => match meta.get("generateName").and_then(Value::as_str) {
                    Some(prefix) => format!("{prefix}{}", random_suffix(5)),
                    None => {
                        return Err(ApiError::invalid(
                            t,
                            "",
                            &[FieldError {
                                reason: FieldReason::Required,
                                field: "metadata.name".into(),
                                message: "Required value: name or generateName is required".into(),
                            }],
                        ));
                    }
                },
            };
            if !is_dns_subdomain(&name) && t.kind != "Event" {
                return Err(ApiError::invalid(
                    t,
                    &name,
                    &[FieldError {
                        reason: FieldReason::Invalid,
                        field: "metadata.name".into(),
                        message: format!(
                            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                        ),
                    }],
                ));
            }
            meta.insert("name".into(), Value::String(name));
            if t.namespaced {
                if let Some(ns) = namespace {
                    meta.insert("namespace".into(), Value::String(ns.to_string()));
                }
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.remove("managedFields");
            if t.tracks_generation() {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        Self::check_namespace(state, t, namespace, &name)?;
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        if t.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let mut obj = self.admit(t, obj, None, opts)?;
        defaults_on_write(t, &mut obj);
        defaults_on_create(t, &mut obj);
        let manager = opts.field_manager.clone().unwrap_or_else(|| "unknown".into());
        let types = list_types(t);
        let managed = patch::record_update(
            None,
            &strip_managed(&obj),
            &manager,
            &[],
            &t.api_version(),
            None,
            types.as_ref(),
            &now_rfc3339(),
        );
        set_managed(&mut obj, &managed);
        Ok(obj)
    }

    /// Prune, default and validate a custom resource; a no-op for built-in types.
    fn admit(&self, t: &ResourceType, obj: Value, old: Option<&Value>, opts: &WriteOptions) -> Result<Value, ApiError> {
        let Some(schema) = &t.schema else { return Ok(obj) };
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let mut probe = obj.clone();
        let unknown = validation::prune(schema, &mut probe);
        if opts.field_validation == FieldValidation::Strict && !unknown.is_empty() {
            let list = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect::<Vec<_>>().join(", ");
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {list}",
                t.kind, t.version, t.kind
            )));
        }
        let old_stripped = old.map(strip_managed);
        match validation::admit(schema, &strip_managed(&obj), old_stripped.as_ref()) {
            Ok(admitted) => {
                let mut out = admitted.object;
                if let Some(mf) = obj.pointer("/metadata/managedFields") {
                    metadata_mut(&mut out).insert("managedFields".into(), mf.clone());
                }
                Ok(out)
            }
            Err(errors) => Err(ApiError::invalid(t, &name, &errors)),
        }
    }

    /// PUT: replace an object (or its status, or its scale).
    pub fn update(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        sub: Option<Sub>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let key = Self::key(&t, namespace, name);
        let current = state.objects.get(&key).map(|o| Value::clone(o)).ok_or_else(|| ApiError::not_found(&t, name))?;
        if let Some(rv) = body.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(rv) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::stale(&t, name));
        }
        let desired = match sub {
            Some(Sub::Scale) => scale_into(&t, &current, &body)?,
            _ => body,
        };
        self.finish_write(&mut state, &t, key, current, desired, sub, opts, None)
    }

    /// PATCH: apply a patch (or server-side apply) to an object, its status or its scale.
    /// Server-side apply creates the object when it does not exist. Returns the object and
    /// whether it was created.
    #[allow(clippy::too_many_arguments, reason = "mirrors the PATCH request's parts")]
    pub fn patch(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        sub: Option<Sub>,
        opts: &WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let mut state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        if kind == PatchKind::Strategic && t.custom {
            return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json"));
        }
        let key = Self::key(&t, namespace, name);
        let Some(current) = state.objects.get(&key).map(|o| Value::clone(o)) else {
            if kind != PatchKind::Apply || sub.is_some() {
                return Err(ApiError::not_found(&t, name));
            }
            let manager = opts.field_manager.clone().ok_or_else(|| {
                ApiError::bad_request("PATCH requests with apply content type must specify a fieldManager")
            })?;
            let mut obj = body.clone();
            check_kind(&t, &obj)?;
            if meta_str(&obj, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
            }
            metadata_mut(&mut obj).insert("name".into(), json!(name));
            let create_opts = WriteOptions { field_manager: Some(manager.clone()), ..opts.clone() };
            let mut created = self.prepare_create(&state, &t, namespace, obj, &create_opts)?;
            let types = list_types(&t);
            let applied_fields = strip_for_apply(body, t.status);
            let (_, managed) = patch::apply(
                None,
                &applied_fields,
                &manager,
                true,
                &[],
                &t.api_version(),
                None,
                types.as_ref(),
                &now_rfc3339(),
            )
            .map_err(|c| conflict_error(&c))?;
            set_managed(&mut created, &managed);
            if opts.dry_run {
                return Ok((created, true));
            }
            return Ok((self.commit(&mut state, &t, key, Some(created), None), true));
        };
        let base = match sub {
            Some(Sub::Scale) => scale_of(&t, &current)?,
            _ => strip_managed(&current),
        };
        let types = list_types(&t);
        let mut managed_override = None;
        let patched = match kind {
            PatchKind::Merge => {
                let mut v = base.clone();
                patch::json_merge_patch(&mut v, body);
                v
            }
            PatchKind::Json => {
                let mut v = base.clone();
                patch::json_patch(&mut v, body).map_err(|e| patch_error(&t, name, &e))?;
                v
            }
            PatchKind::Strategic => {
                let mut v = base.clone();
                patch::strategic_merge_patch(&mut v, body, types.as_ref()).map_err(|e| patch_error(&t, name, &e))?;
                v
            }
            PatchKind::Apply => {
                let manager = opts.field_manager.clone().ok_or_else(|| {
                    ApiError::bad_request("PATCH requests with apply content type must specify a fieldManager")
                })?;
                if meta_str(body, "name").is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
                }
                let applied = match sub {
                    Some(Sub::Status) => json!({"status": body.get("status").cloned().unwrap_or(Value::Null)}),
                    Some(Sub::Scale) => body.clone(),
                    None => strip_for_apply(body, t.status),
                };
                let (merged, managed) = patch::apply(
                    Some(&base),
                    &applied,
                    &manager,
                    opts.force,
                    &managed_of(&current),
                    &t.api_version(),
                    sub.map(Sub::name),
                    types.as_ref(),
                    &now_rfc3339(),
                )
                .map_err(|c| conflict_error(&c))?;
                managed_override = Some(managed);
                merged
            }
        };
        drop(types);
        let desired = match sub {
            Some(Sub::Scale) => scale_into(&t, &current, &patched)?,
            _ => patched,
        };
        let obj = self.finish_write(&mut state, &t, key, current, desired, sub, opts, managed_override)?;
        Ok((obj, false))
    }

    /// The common tail of update and patch: keep what the endpoint may not change, validate,
    /// bump generation, record managed fields, finish a deletion whose finalizers are gone.
    #[allow(clippy::too_many_arguments, reason = "the parts of one write")]
    fn finish_write(
        &self,
        state: &mut State,
        t: &ResourceType,
        key: Key,
        current: Value,
        desired: Value,
        sub: Option<Sub>,
        opts: &WriteOptions,
        managed_override: Option<Vec<ManagedFieldsEntry>>,
    ) -> Result<Value, ApiError> {
        let name = key.name.clone();
        if !desired.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        check_kind(t, &desired)?;
        if meta_str(&desired, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
        }
        let mut obj = match sub {
            Some(Sub::Status) => {
                let mut o = current.clone();
                match desired.get("status") {
                    Some(status) => o["status"] = status.clone(),
                    None => {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                o
            }
            _ => {
                let mut o = desired.clone();
                if t.status {
                    match current.get("status") {
                        Some(status) => o["status"] = status.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                // Metadata the server owns.
                let keep = [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "name",
                    "namespace",
                ];
                let current_meta = current.get("metadata").cloned().unwrap_or_else(|| json!({}));
                let meta = metadata_mut(&mut o);
                for k in keep {
                    match current_meta.get(k) {
                        Some(v) => {
                            meta.insert(k.into(), v.clone());
                        }
                        None => {
                            meta.remove(k);
                        }
                    }
                }
                // A deleting object may lose finalizers but gain none (`ValidateNoNewFinalizers`).
                if current_meta.get("deletionTimestamp").is_some() {
                    let before: Vec<&str> = current_meta
                        .get("finalizers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let mut added: Vec<String> = meta
                        .get("finalizers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .filter(|f| !before.contains(f))
                        .map(str::to_string)
                        .collect();
                    added.sort();
                    added.dedup();
                    if !added.is_empty() {
                        let list = added.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
                        return Err(ApiError::invalid(
                            t,
                            &name,
                            &[FieldError {
                                reason: FieldReason::Forbidden,
                                field: "metadata.finalizers".into(),
                                message: format!(
                                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{list}}}"
                                ),
                            }],
                        ));
                    }
                }
                o
            }
        };
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.kind);
        let mut obj = self.admit(t, obj, Some(&current), opts)?;
        if sub.is_none() {
            defaults_on_write(t, &mut obj);
        }
        if t.tracks_generation() && content(&obj) != content(&current) && sub != Some(Sub::Status) {
            let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            metadata_mut(&mut obj).insert("generation".into(), json!(generation + 1));
        }
        let types = list_types(t);
        let managed = match managed_override {
            Some(m) => m,
            None => {
                let manager = opts.field_manager.clone().unwrap_or_else(|| "unknown".into());
                patch::record_update(
                    Some(&strip_managed(&current)),
                    &strip_managed(&obj),
                    &manager,
                    &managed_of(&current),
                    &t.api_version(),
                    sub.map(Sub::name),
                    types.as_ref(),
                    &now_rfc3339(),
                )
            }
        };
        drop(types);
        set_managed(&mut obj, &managed);
        // Nothing changed: no new resourceVersion, no event (as the real server).
        let mut unchanged_probe = obj.clone();
        metadata_mut(&mut unchanged_probe).insert(
            "resourceVersion".into(),
            current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
        );
        if unchanged_probe == current {
            return Ok(current);
        }
        if opts.dry_run {
            return Ok(obj);
        }
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if deleting && no_finalizers {
            return Ok(self.commit(state, t, key, None, Some(&obj)));
        }
        Ok(self.commit(state, t, key, Some(obj), Some(&current)))
    }

    /// DELETE one object.
    pub fn delete(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let t = Self::resolve(&state, gvr)?;
        let key = Self::key(&t, namespace, name);
        let current = state.objects.get(&key).map(|o| Value::clone(o)).ok_or_else(|| ApiError::not_found(&t, name))?;
        // As `rest.BeforeDelete`: the uid first, then the resourceVersion.
        if let Some(wanted) = &opts.uid
            && meta_str(&current, "uid") != Some(wanted.as_str())
        {
            let actual = meta_str(&current, "uid").unwrap_or_default();
            let why = format!(
                "the UID in the precondition ({wanted}) does not match the UID in record ({actual}). The object might have been deleted and then recreated"
            );
            return Err(ApiError::precondition_failed(&t, name, &why));
        }
        if let Some(wanted) = &opts.resource_version
            && meta_str(&current, "resourceVersion") != Some(wanted.as_str())
        {
            let actual = meta_str(&current, "resourceVersion").unwrap_or_default();
            let why = format!(
                "the ResourceVersion in the precondition ({wanted}) does not match the ResourceVersion in record ({actual}). The object might have been modified"
            );
            return Err(ApiError::precondition_failed(&t, name, &why));
        }
        let mut obj = current.clone();
        let mut finalizers: Vec<Value> =
            obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        let namespace_kind = t.group.is_empty() && t.plural == "namespaces";
        let propagation = opts.propagation.unwrap_or(Propagation::Background);
        let already_deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        if !already_deleting {
            match propagation {
                Propagation::Foreground => finalizers.push(json!("foregroundDeletion")),
                Propagation::Orphan => finalizers.push(json!("orphan")),
                Propagation::Background => {}
            }
        }
        if namespace_kind && !already_deleting {
            obj["status"] = json!({"phase": "Terminating"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        let waits = !finalizers.is_empty() || namespace_kind;
        if opts.dry_run {
            return Ok(obj);
        }
        if waits {
            if already_deleting {
                return Ok(current);
            }
            let meta = metadata_mut(&mut obj);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), Value::Array(finalizers));
            }
            return Ok(self.commit(&mut state, &t, key, Some(obj), Some(&current)));
        }
        Ok(self.commit(&mut state, &t, key, None, Some(&current)))
    }

    /// GET the scale subresource.
    pub fn scale(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let t = self.resource_type(gvr).ok_or_else(|| ApiError::no_route(&gvr.plural))?;
        let obj = self.get(gvr, namespace, name)?;
        scale_of(&t, &obj)
    }

    /// Every object of every type, for the simulated controllers: (type, object).
    pub fn snapshot_all(&self) -> Vec<(ResourceType, Value)> {
        let state = self.lock();
        state
            .objects
            .iter()
            .filter_map(|(k, v)| {
                let t = state.registry.all().find(|t| t.group == k.group && t.plural == k.plural)?;
                Some((t.clone(), Value::clone(v)))
            })
            .collect()
    }

    /// Whether an object with this uid exists.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.lock().uids.contains_key(uid)
    }

    /// Remove a finalizer from an object (the garbage collector's own write).
    pub fn remove_finalizer(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Result<(), ApiError> {
        let gvr = Gvr::new(&t.group, &t.version, &t.plural);
        let ns = (!namespace.is_empty()).then_some(namespace);
        let current = self.get(&gvr, ns, name)?;
        let mut finalizers: Vec<Value> =
            current.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        finalizers.retain(|f| f.as_str() != Some(finalizer));
        let patch =
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": meta_str(&current, "resourceVersion")}});
        let opts = WriteOptions { field_manager: Some("kube-controller-manager".into()), ..WriteOptions::default() };
        self.patch(&gvr, ns, name, PatchKind::Merge, &patch, None, &opts).map(|_| ())
    }

    /// Remove a namespace whose contents are gone (the namespace controller's last step).
    pub fn finalize_namespace(&self, name: &str) {
        let mut state = self.lock();
        let Ok(t) = Self::resolve(&state, &Gvr::new("", "v1", "namespaces")) else { return };
        let key = Self::key(&t, None, name);
        if let Some(current) = state.objects.get(&key).map(|o| Value::clone(o)) {
            let finalizers_left =
                current.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
            if !finalizers_left {
                self.commit(&mut state, &t, key, None, Some(&current));
            }
        }
    }
}

/// Whether a CRD's condition `type_` is True.
pub fn crd_condition(crd: &Value, type_: &str) -> bool {
    crd.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(type_)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

fn check_kind(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != t.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the URL ({})",
            t.kind
        )));
    }
    Ok(())
}

/// The applied configuration without what apply never owns.
fn strip_for_apply(body: &Value, status_subresource: bool) -> Value {
    let mut v = body.clone();
    if let Some(m) = v.as_object_mut() {
        if status_subresource {
            m.remove("status");
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "deletionTimestamp"]
            {
                meta.remove(k);
            }
        }
    }
    v
}

fn patch_error(t: &ResourceType, name: &str, e: &patch::PatchError) -> ApiError {
    match e.status_code() {
        400 => ApiError::bad_request(e.to_string()),
        422 => ApiError::invalid(
            t,
            name,
            &[FieldError { reason: FieldReason::Invalid, field: "<nil>".into(), message: e.to_string() }],
        ),
        _ => ApiError::internal(e.to_string()),
    }
}

fn conflict_error(conflicts: &[patch::Conflict]) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": c.cause_message(), "field": c.field}))
        .collect();
    ApiError::apply_conflict(patch::conflict_message(conflicts), causes)
}

/// Defaults the real server's decoding fills in on every write (`SetDefaults_*`).
fn defaults_on_write(t: &ResourceType, obj: &mut Value) {
    if (t.group.as_str(), t.kind.as_str()) == ("apiextensions.k8s.io", "CustomResourceDefinition") {
        // SetDefaults_CustomResourceDefinitionSpec: singular and listKind from the kind, conversion None.
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
        if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut)
            && let Some(kind) = names.get("kind").and_then(Value::as_str).map(str::to_string)
        {
            if names.get("singular").and_then(Value::as_str).is_none_or(str::is_empty) {
                names.insert("singular".into(), json!(kind.to_lowercase()));
            }
            if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) {
                names.insert("listKind".into(), json!(format!("{kind}List")));
            }
        }
        if !spec.contains_key("conversion") {
            spec.insert("conversion".into(), json!({"strategy": "None"}));
        }
    }
}

/// Defaults the real server (or its admission) fills in on create.
fn defaults_on_create(t: &ResourceType, obj: &mut Value) {
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Namespace") => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        ("", "Pod") => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        ("", "Secret") if obj.get("type").and_then(Value::as_str).is_none_or(str::is_empty) => {
            // SetDefaults_Secret.
            obj["type"] = json!("Opaque");
        }
        ("", "Service") => {
            if obj.pointer("/spec/type").is_none() {
                obj["spec"]["type"] = json!("ClusterIP");
            }
            if obj.pointer("/spec/clusterIP").is_none() {
                use rand::Rng;
                let mut rng = rand::rng();
                obj["spec"]["clusterIP"] =
                    json!(format!("10.96.{}.{}", rng.random_range(0..255), rng.random_range(1..255)));
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("apps", "Deployment") if obj.pointer("/spec/replicas").is_none() => {
            obj["spec"]["replicas"] = json!(1);
        }
        ("batch", "Job") => {
            super::workloads::default_job(obj);
            let spec = &mut obj["spec"];
            for (k, v) in [("backoffLimit", json!(6)), ("completions", json!(1)), ("parallelism", json!(1))] {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            // As the CRD strategy's PrepareForCreate: an empty status but the storage version; the
            // naming and establishing controllers (`workloads::crd_conditions`) fill in the rest.
            obj["status"] = json!({
                "acceptedNames": {"plural": "", "kind": ""},
                "storedVersions": obj.pointer("/spec/versions").and_then(Value::as_array).map(|vs| vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
            });
        }
        _ => {}
    }
}

/// The autoscaling/v1 Scale of an object.
fn scale_of(t: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
    let (spec_path, status_path, selector) = match &t.scale {
        Some(s) => (s.spec_replicas.clone(), s.status_replicas.clone(), s.label_selector.clone()),
        None => return Err(ApiError::no_route(&format!("{}/scale", t.plural))),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = json!({});
    for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(k) {
            scale_meta[k] = v.clone();
        }
    }
    let mut status = json!({"replicas": at_path(obj, &status_path).and_then(Value::as_i64).unwrap_or(0)});
    let selector_value = match selector {
        Some(path) => at_path(obj, &path).and_then(Value::as_str).map(str::to_string),
        None if t.kind == "Deployment" || t.kind == "ReplicaSet" => {
            obj.pointer("/spec/selector").map(|s| LabelSelector::from_json(s).to_selector_string())
        }
        None => None,
    };
    if let Some(sel) = selector_value {
        status["selector"] = json!(sel);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": at_path(obj, &spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": status,
    }))
}

/// Write a Scale's spec.replicas back into the object.
fn scale_into(t: &ResourceType, current: &Value, scale: &Value) -> Result<Value, ApiError> {
    let Some(paths) = &t.scale else { return Err(ApiError::no_route(&format!("{}/scale", t.plural))) };
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("spec.replicas of a Scale must be an integer"))?;
    let mut obj = strip_managed(current);
    set_at_path(&mut obj, &paths.spec_replicas, json!(replicas));
    Ok(obj)
}

fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    use base64::Engine;
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{namespace}/{name}\u{0}")});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let bytes = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let start = start.trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}
