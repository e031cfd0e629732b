//! The in-memory API server: the store and the semantics of every request. [`Core`] is what the
//! HTTP layer and the simulated controllers call; each concern is its own module:
//!
//! | module | what it holds |
//! | --- | --- |
//! | `store` | objects, the global resourceVersion, uids, the watch history and its compaction |
//! | `list` | LIST with selectors, pages and continue tokens; the objects a watch starts with |
//! | `create` | POST: server metadata, admission, defaults, the creator's managed fields |
//! | `writes` | PUT, and the steps every change to an existing object takes |
//! | `patches` | PATCH: merge, JSON, strategic merge, server-side apply (which may create) |
//! | `subresources` | what `/status` and `/scale` may change; the Scale of an object |
//! | `delete` | DELETE: preconditions, propagation finalizers, deletionTimestamp, finalizer rules |
//! | `admission` | the checks of a body, names, namespace lifecycle, custom resource validation |
//! | `defaults` | the defaults of built-in kinds |
//! | `crds` | the types a CRD serves, its defaults and conditions |
//! | `managed` | managedFields bookkeeping |
//! | `object` | helpers over JSON objects |
//! | `options` | the options of requests |

mod admission;
mod crds;
mod create;
mod defaults;
mod delete;
mod list;
mod managed;
mod object;
mod options;
mod patches;
mod store;
mod subresources;
mod writes;

use std::sync::Arc;

use serde_json::{Value, json};

pub use self::crds::crd_condition;
pub use self::object::{at_path, now_rfc3339};
pub(crate) use self::object::{fnv1a_hex, random_suffix};
pub use self::options::{DeleteOptions, FieldValidation, ListOptions, PatchKind, Propagation, WriteOptions};
pub use self::store::{Event, EventReceiver, EventType, Gvr};
use self::store::{Key, Store};
pub use self::subresources::Sub;
use self::writes::Target;
use super::error::ApiError;
use super::registry::{Registry, ResourceType};

/// The in-memory API server state, shared by the HTTP layer and the simulated controllers.
pub struct Core {
    store: Store,
}

impl Core {
    /// An empty store serving the built-in types, keeping `log_capacity` events for watches.
    pub fn new(log_capacity: usize) -> Self {
        let core = Self { store: Store::new(log_capacity) };
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

    /// The registry (a copy), for discovery.
    pub fn registry(&self) -> Registry {
        self.store.lock().registry().clone()
    }

    /// The resource type at `gvr`.
    pub fn resource_type(&self, gvr: &Gvr) -> Option<ResourceType> {
        self.store.lock().registry().get(&gvr.group, &gvr.version, &gvr.plural).cloned()
    }

    /// The type of `kind` in `api_version` (`apps/v1`, `Deployment`), as a REST mapper finds it.
    pub fn resource_type_by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.store.lock().registry().by_kind(api_version, kind).cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.lock().rv()
    }

    /// Subscribe to every change.
    pub fn subscribe(&self) -> EventReceiver {
        self.store.subscribe()
    }

    /// Wait until something changes.
    pub async fn changed(&self) {
        self.store.changed().await;
    }

    /// Drop the event history: a watch from any earlier resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        self.store.lock().compact();
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.store.lock().object_count()
    }

    /// GET one object.
    pub fn get(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let state = self.store.lock();
        let t = state.resolve(gvr)?;
        let mut obj = state.existing(&t, &Key::new(&t, namespace, name))?;
        obj["apiVersion"] = json!(t.api_version());
        Ok(obj)
    }

    /// LIST objects of a type, in a namespace or all.
    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>, opts: &ListOptions) -> Result<Value, ApiError> {
        let state = self.store.lock();
        let t = state.resolve(gvr)?;
        list::list(&state, &t, namespace, opts)
    }

    /// The events a watch from `since` must replay, and a receiver for what follows; 410 when
    /// `since` is older than the kept history.
    pub fn watch_from(&self, since: u64) -> Result<(Vec<Arc<Event>>, EventReceiver), ApiError> {
        let state = self.store.lock();
        let backlog = state.history_since(since)?;
        Ok((backlog, state.subscribe()))
    }

    /// The objects a watch without a resourceVersion starts with (as ADDED), the current
    /// resourceVersion, and a receiver for what follows.
    pub fn watch_snapshot(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64, EventReceiver), ApiError> {
        let state = self.store.lock();
        let t = state.resolve(gvr)?;
        Ok((list::all_of(&state, &t, namespace), state.rv(), state.subscribe()))
    }

    /// POST: create an object.
    pub fn create(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut tx = self.store.lock();
        let t = tx.resolve(gvr)?;
        create::create(&mut tx, &t, namespace, body, opts)
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
        let mut tx = self.store.lock();
        let t = tx.resolve(gvr)?;
        writes::update(&mut tx, Target::new(&t, namespace, name, sub, opts), body)
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
        let mut tx = self.store.lock();
        let t = tx.resolve(gvr)?;
        patches::patch(&mut tx, Target::new(&t, namespace, name, sub, opts), kind, body)
    }

    /// DELETE one object.
    pub fn delete(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut tx = self.store.lock();
        let t = tx.resolve(gvr)?;
        delete::delete(&mut tx, &t, namespace, name, opts)
    }

    /// GET the scale subresource.
    pub fn scale(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let t = self.resource_type(gvr).ok_or_else(|| ApiError::no_route(&gvr.plural))?;
        let obj = self.get(gvr, namespace, name)?;
        subresources::scale_of(&t, &obj)
    }

    /// Every object of every type, for the simulated controllers: (type, object).
    pub fn snapshot_all(&self) -> Vec<(ResourceType, Value)> {
        self.store.lock().typed_objects()
    }

    /// Whether an object with this uid exists.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.store.lock().uid_exists(uid)
    }

    /// Remove a finalizer from an object (the garbage collector's own write): a merge patch of
    /// the remaining finalizers, on the resourceVersion read.
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
        let mut finalizers = object::finalizers_of(&current);
        finalizers.retain(|f| f.as_str() != Some(finalizer));
        let rv = current.pointer("/metadata/resourceVersion").and_then(Value::as_str);
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
        let opts = WriteOptions { field_manager: Some("kube-controller-manager".into()), ..WriteOptions::default() };
        self.patch(&gvr, ns, name, PatchKind::Merge, &patch, None, &opts).map(|_| ())
    }

    /// Remove a namespace whose contents are gone (the namespace controller's last step).
    pub fn finalize_namespace(&self, name: &str) {
        let mut tx = self.store.lock();
        let Ok(t) = tx.resolve(&Gvr::new("", "v1", "namespaces")) else { return };
        delete::finalize_namespace(&mut tx, &t, name);
    }
}
