//! Patch and server-side apply semantics of the simulated API server: JSON merge patch (RFC 7396), JSON patch
//! (RFC 6902), strategic merge patch for built-in kinds, and server-side apply with managedFields ownership as
//! the Kubernetes structured-merge-diff library computes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a list at a given path merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// The list is a single value: replaced whole, owned whole.
    Atomic,
    /// A list of unique scalars, merged by union (`x-kubernetes-list-type: set`).
    Set,
    /// A list of objects keyed by these fields (`x-kubernetes-list-type: map`); strategic merge patch uses the
    /// first key as its merge key.
    Map(Vec<String>),
}

/// Tells the list type of the list found at a path.
pub trait ListTypes {
    /// The list type of the list at `path`: field names from the object root, list indices omitted, e.g.
    /// `["spec","template","spec","containers"]`.
    fn list_type(&self, path: &[&str]) -> ListType;

    /// Whether the object at `path` is atomic (`x-kubernetes-map-type: atomic`, Go `+structType=atomic`): apply
    /// replaces and owns it whole. None by default.
    fn atomic_map(&self, _path: &[&str]) -> bool {
        false
    }
}

/// Strategic-merge keys of the built-in Kubernetes kinds (pod specs wherever they are nested, Service ports,
/// status conditions, metadata); every other list is atomic.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinListTypes;

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

fn map_by(keys: &[&str]) -> ListType {
    ListType::Map(keys.iter().map(|k| k.to_string()).collect())
}

fn metadata_list_type(path: &[&str]) -> Option<ListType> {
    match path {
        [.., "metadata", "ownerReferences"] => Some(map_by(&["uid"])),
        [.., "metadata", "finalizers"] => Some(ListType::Set),
        _ => None,
    }
}

impl ListTypes for BuiltinListTypes {
    fn list_type(&self, path: &[&str]) -> ListType {
        if let Some(t) = metadata_list_type(path) {
            return t;
        }
        match path {
            ["spec", "ports"] => map_by(&["port"]),
            [.., "spec", c] if CONTAINER_LISTS.contains(c) => map_by(&["name"]),
            [.., "spec", c, field] if CONTAINER_LISTS.contains(c) => match *field {
                "env" => map_by(&["name"]),
                "ports" => map_by(&["containerPort"]),
                "volumeMounts" => map_by(&["mountPath"]),
                "volumeDevices" => map_by(&["devicePath"]),
                "resizePolicy" => map_by(&["resourceName"]),
                _ => ListType::Atomic,
            },
            [.., "spec", "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => map_by(&["name"]),
            [.., "spec", "hostAliases"] => map_by(&["ip"]),
            [.., "spec", "topologySpreadConstraints"] => map_by(&["topologyKey", "whenUnsatisfiable"]),
            [.., "status", "conditions"] => map_by(&["type"]),
            ["status", "podIPs" | "hostIPs"] => map_by(&["ip"]),
            _ => ListType::Atomic,
        }
    }

    fn atomic_map(&self, path: &[&str]) -> bool {
        matches!(
            path,
            ["spec", "selector"]
                | [.., "jobTemplate", "spec", "selector"]
                | [.., "nodeSelector"]
                | [.., "valueFrom", "secretKeyRef" | "configMapKeyRef" | "fieldRef" | "resourceFieldRef"]
        )
    }
}

/// List types read from a CRD version's `openAPIV3Schema` (`x-kubernetes-list-type`,
/// `x-kubernetes-list-map-keys`), walking `properties`, `items` and `additionalProperties`; atomic by default.
/// `metadata.ownerReferences` (map by uid) and `metadata.finalizers` (set) are known as for built-in kinds.
#[derive(Debug, Clone, Copy)]
pub struct SchemaListTypes<'a> {
    /// The `openAPIV3Schema` object.
    pub schema: &'a Value,
}

impl SchemaListTypes<'_> {
    fn node(&self, path: &[&str]) -> Option<&Value> {
        let mut node = self.schema;
        for name in path {
            while let Some(items) = node.get("items").filter(|i| i.is_object()) {
                node = items;
            }
            node = match node.get("properties").and_then(|p| p.get(*name)) {
                Some(n) => n,
                None => node.get("additionalProperties").filter(|n| n.is_object())?,
            };
        }
        Some(node)
    }
}

impl ListTypes for SchemaListTypes<'_> {
    fn list_type(&self, path: &[&str]) -> ListType {
        if let Some(t) = metadata_list_type(path) {
            return t;
        }
        let Some(node) = self.node(path) else { return ListType::Atomic };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => ListType::Map(
                node.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                    .unwrap_or_default(),
            ),
            Some("set") => ListType::Set,
            _ => ListType::Atomic,
        }
    }

    fn atomic_map(&self, path: &[&str]) -> bool {
        self.node(path).and_then(|n| n.get("x-kubernetes-map-type")).is_some_and(|t| t == "atomic")
    }
}

/// Why a patch could not be applied; the message is worded as the API server words it.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch document does not decode (HTTP 400 BadRequest).
    #[error("{0}")]
    InvalidJsonPatch(String),
    /// A JSON patch operation does not apply to the document (HTTP 422).
    #[error("{message}")]
    JsonPatchOp {
        /// Index of the failing operation in the patch.
        index: usize,
        /// The operation's path.
        path: String,
        /// The API server's message.
        message: String,
    },
    /// A JSON patch `test` operation found a different value (HTTP 422).
    #[error("testing value {path} failed: test failed")]
    TestFailed {
        /// Index of the failing operation in the patch.
        index: usize,
        /// The operation's path.
        path: String,
    },
    /// A strategic merge patch is malformed: not an object, or a bad `$retainKeys`, `$setElementOrder` or
    /// `$deleteFromPrimitiveList` directive (HTTP 400 BadRequest).
    #[error("{0}")]
    BadStrategicPatch(String),
    /// A strategic merge patch cannot be merged: an unknown `$patch` directive or a list item without its merge
    /// key (the API server answers these with HTTP 500).
    #[error("{0}")]
    StrategicMerge(String),
}

impl PatchError {
    /// The HTTP status code the API server answers this error with.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::InvalidJsonPatch(_) | PatchError::BadStrategicPatch(_) => 400,
            PatchError::JsonPatchOp { .. } | PatchError::TestFailed { .. } => 422,
            PatchError::StrategicMerge(_) => 500,
        }
    }
}

/// Apply a JSON merge patch (RFC 7396): objects merge recursively, `null` deletes, everything else replaces.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply a JSON patch (RFC 6902); on any error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = match patch {
        Value::Array(ops) => ops,
        Value::Null => return Ok(()),
        other => {
            let kind = match other {
                Value::Object(_) => "object",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                _ => "bool",
            };
            return Err(PatchError::InvalidJsonPatch(format!(
                "json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch"
            )));
        }
    };
    let mut parsed = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
        if !["add", "remove", "replace", "move", "copy", "test"].contains(&kind) {
            let (path, message) = (op.get("path").map(go_fmt).unwrap_or_default(), format!("Unexpected kind: {kind}"));
            return Err(PatchError::JsonPatchOp { index: i, path, message });
        }
        let op: json_patch::PatchOperation = serde_json::from_value(op.clone())
            .map_err(|e| PatchError::InvalidJsonPatch(format!("invalid JSON patch operation {i}: {e}")))?;
        parsed.push(op);
    }
    let mut doc = target.clone();
    if let Err(e) = json_patch::patch_unsafe(&mut doc, &parsed) {
        return Err(json_patch_error(parsed.get(e.operation), &e));
    }
    *target = doc;
    Ok(())
}

fn json_patch_error(op: Option<&json_patch::PatchOperation>, e: &json_patch::PatchError) -> PatchError {
    use json_patch::PatchOperation as Op;
    let (index, path) = (e.operation, e.path.as_str().to_string());
    let message = match op {
        Some(Op::Test(_)) => return PatchError::TestFailed { index, path },
        Some(Op::Add(_)) => format!("add operation does not apply: doc is missing path: \"{path}\": missing value"),
        Some(Op::Remove(_)) => {
            format!("remove operation does not apply: doc is missing path: \"{path}\": missing value")
        }
        Some(Op::Replace(_)) => format!("replace operation does not apply: doc is missing key: {path}: missing value"),
        Some(Op::Move(m)) if matches!(e.kind, json_patch::PatchErrorKind::InvalidFromPointer) => {
            format!("move operation does not apply: doc is missing from path: {}: missing value", m.from)
        }
        Some(Op::Copy(c)) if matches!(e.kind, json_patch::PatchErrorKind::InvalidFromPointer) => {
            format!("copy operation does not apply: doc is missing from path: {}: missing value", c.from)
        }
        _ => e.to_string(),
    };
    PatchError::JsonPatchOp { index, path, message }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Formats a value as Go's `%v` does for decoded JSON, for error messages.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut entries: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{}", go_fmt(v))).collect();
            entries.sort();
            format!("map[{}]", entries.join(" "))
        }
        other => other.to_string(),
    }
}

fn list_type_at(types: &dyn ListTypes, names: &[String]) -> ListType {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    types.list_type(&refs)
}

fn atomic_map_at(types: &dyn ListTypes, names: &[String]) -> bool {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    !refs.is_empty() && types.atomic_map(&refs)
}

/// Strategic merge patch as kube-apiserver does for built-in types (`apimachinery/pkg/util/strategicpatch`):
/// maps merge recursively, null deletes, lists of type Map merge by key and Set lists by value, Atomic lists
/// replace; directives `$patch: replace` and `$patch: delete` (in a map or a list item),
/// `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>` and `$retainKeys`.
///
/// The order of a merged list is the real one (`normalizeElementOrder`): the items the patch names keep the
/// patch's order (or `$setElementOrder`'s), the items only the live list has keep theirs, and the two are
/// interleaved by their places in the live list, so an item new to the list goes before the live items it
/// is compared with: adding env `B` to `[A]` gives `[B, A]`.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, types: &dyn ListTypes) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::BadStrategicPatch("invalid JSON document".to_string()));
    };
    let mut doc = target.clone();
    smp_map(&mut doc, p, &mut Vec::new(), types)?;
    *target = doc;
    Ok(())
}

fn bad_patch_type(directive: &Value, m: &Map<String, Value>) -> PatchError {
    PatchError::StrategicMerge(format!(
        "unknown patch type: {} in map: {}",
        go_fmt(directive),
        go_fmt(&Value::Object(m.clone()))
    ))
}

fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    PatchError::StrategicMerge(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt(&Value::Object(m.clone()))
    ))
}

fn bad_set_element_order() -> PatchError {
    PatchError::BadStrategicPatch("invalid patch format of setElementOrder list".into())
}

fn smp_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
) -> Result<(), PatchError> {
    if let Some(directive) = patch.get("$patch") {
        match directive.as_str() {
            Some("replace") => {
                let mut rest = patch.clone();
                rest.remove("$patch");
                let mut fresh = Value::Object(Map::new());
                smp_map(&mut fresh, &rest, names, types)?;
                *target = fresh;
                return Ok(());
            }
            Some("delete") => {
                *target = Value::Object(Map::new());
                return Ok(());
            }
            _ => return Err(bad_patch_type(directive, patch)),
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(tm) = target else { return Ok(()) };
    if let Some(retain) = patch.get("$retainKeys") {
        let bad = || PatchError::BadStrategicPatch("invalid patch format of retainKeys".to_string());
        let keep: BTreeSet<&str> = retain.as_array().ok_or_else(bad)?.iter().filter_map(Value::as_str).collect();
        if patch.iter().any(|(k, v)| !v.is_null() && !k.starts_with('$') && !keep.contains(k.as_str())) {
            return Err(bad());
        }
        tm.retain(|k, _| keep.contains(k.as_str()));
    }
    // `mergePatchIntoOriginal`: a list with a `$setElementOrder` is merged first, in that order.
    let mut ordered: BTreeSet<&str> = BTreeSet::new();
    for (key, value) in patch {
        let Some(field) = key.strip_prefix("$setElementOrder/") else {
            if key.starts_with("$setElementOrder") {
                return Err(bad_set_element_order());
            }
            continue;
        };
        let order = value.as_array().ok_or_else(bad_set_element_order)?;
        names.push(field.to_string());
        let list_type = list_type_at(types, names);
        let merged = merge_with_element_order(tm.get(field), patch.get(field), order, &list_type, names, types);
        names.pop();
        if let Some(merged) = merged? {
            tm.insert(field.to_string(), Value::Array(merged));
        }
        ordered.insert(field);
    }
    let mut deletions = Vec::new();
    for (key, value) in patch {
        if key.starts_with("$setElementOrder") || ordered.contains(key.as_str()) {
            continue;
        }
        if key.starts_with("$deleteFromPrimitiveList") {
            match (key.strip_prefix("$deleteFromPrimitiveList/"), value) {
                (Some(field), Value::Array(values)) => deletions.push((field, values)),
                _ => {
                    return Err(PatchError::BadStrategicPatch("invalid patch format of primitive list".into()));
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            tm.remove(key);
            continue;
        }
        names.push(key.clone());
        let slot = tm.entry(key.clone()).or_insert(Value::Null);
        smp_field(slot, value, names, types)?;
        names.pop();
    }
    for (field, values) in deletions {
        if let Some(Value::Array(items)) = tm.get_mut(field) {
            items.retain(|item| !values.contains(item));
        }
    }
    Ok(())
}

fn smp_field(
    target: &mut Value,
    patch: &Value,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
) -> Result<(), PatchError> {
    match patch {
        Value::Object(pm) => smp_map(target, pm, names, types),
        Value::Array(items) => {
            let list_type = list_type_at(types, names);
            let merged = match target.as_array() {
                // Not in the live object (or not a list there): the patch's list, without directives.
                None => fresh_list(items, &list_type, names, types)?,
                Some(current) => merge_list(current.clone(), items, &list_type, names, types)?,
            };
            *target = Value::Array(merged);
            Ok(())
        }
        _ => {
            *target = patch.clone();
            Ok(())
        }
    }
}

/// A list the live object does not have: the patch's items, merged into nothing (directives removed,
/// `$patch: delete` items dropped), in the patch's order.
fn fresh_list(
    items: &[Value],
    list_type: &ListType,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
) -> Result<Vec<Value>, PatchError> {
    match list_type {
        ListType::Map(keys) if !keys.is_empty() => merge_list(Vec::new(), items, list_type, names, types),
        _ => Ok(items.to_vec()),
    }
}

/// How `index` in strategicpatch finds an item of a list: by its merge key in a list of maps, by value in a
/// list of scalars.
fn position(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    match key {
        Some(k) => {
            let wanted = item.get(k)?;
            list.iter().position(|it| it.get(k) == Some(wanted))
        }
        None => list.iter().position(|it| it == item),
    }
}

/// `normalizeElementOrder`: sort the patch's items by `patch_order` and the live-only items by `live_order`
/// (stable), then interleave them (`mergeSortedSlice`): a live-only item goes first only when both it and
/// the patch item it is compared with are in the live list and it stands before that item there.
fn normalize_element_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    live_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    patch_items.sort_by_key(|it| position(patch_order, it, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|it| position(live_order, it, key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                matches!((position(live_order, l, key), position(live_order, r, key)), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// Split `merged` into the items `present_in` names (by key or value) and the rest.
fn partition_by_presence(merged: Vec<Value>, present_in: &[Value], key: Option<&str>) -> (Vec<Value>, Vec<Value>) {
    merged.into_iter().partition(|it| position(present_in, it, key).is_some())
}

/// `mergeSlice`: merge the patch's items into the live list (by merge key, or as a set of scalars), then put
/// the result in the real order.
fn merge_list(
    mut current: Vec<Value>,
    patch: &[Value],
    list_type: &ListType,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
) -> Result<Vec<Value>, PatchError> {
    match list_type {
        ListType::Atomic => Ok(patch.to_vec()),
        ListType::Set => {
            let live = current.clone();
            for v in patch {
                if !current.contains(v) {
                    current.push(v.clone());
                }
            }
            let (patch_items, server_only) = partition_by_presence(current, patch, None);
            Ok(normalize_element_order(patch_items, server_only, patch, &live, None))
        }
        ListType::Map(keys) => {
            let Some(key) = keys.first().map(String::as_str) else { return Ok(patch.to_vec()) };
            // `mergeSliceWithSpecialElements`: deletions and `$patch: replace` first.
            let mut replace = false;
            let mut merges = Vec::new();
            for (i, item) in patch.iter().enumerate() {
                let Value::Object(pm) = item else {
                    return Err(PatchError::StrategicMerge(format!("value for key {i} is not a map.")));
                };
                match pm.get("$patch") {
                    None => merges.push(pm),
                    Some(d) if d == "delete" => {
                        let value = pm.get(key).ok_or_else(|| no_merge_key(pm, key))?;
                        current.retain(|it| it.get(key) != Some(value));
                    }
                    Some(d) if d == "replace" => replace = true,
                    Some(d) if d == "merge" => {
                        return Err(PatchError::StrategicMerge(
                            "merging lists cannot yet be specified in the patch".into(),
                        ));
                    }
                    Some(d) => return Err(bad_patch_type(d, pm)),
                }
            }
            if replace {
                // The patch's other items become the list, in the patch's order.
                return Ok(merges.into_iter().map(|m| Value::Object(m.clone())).collect());
            }
            let live = current.clone();
            for pm in &merges {
                let value = pm.get(key).ok_or_else(|| no_merge_key(pm, key))?;
                match current.iter_mut().find(|it| it.get(key) == Some(value)) {
                    Some(existing) => smp_map(existing, pm, names, types)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        smp_map(&mut fresh, pm, names, types)?;
                        current.push(fresh);
                    }
                }
            }
            let patch_list: Vec<Value> = merges.iter().map(|m| Value::Object((*m).clone())).collect();
            let (patch_items, server_only) = partition_by_presence(current, &patch_list, Some(key));
            Ok(normalize_element_order(patch_items, server_only, &patch_list, &live, Some(key)))
        }
    }
}

/// `mergePatchIntoOriginal` for one `$setElementOrder/<field>`: merge the field's patch list (if any) into
/// the live list, then order the items the directive names as it names them and interleave the rest by the
/// live order. `None` when neither the live object nor the patch has the list.
fn merge_with_element_order(
    live: Option<&Value>,
    patch: Option<&Value>,
    order: &[Value],
    list_type: &ListType,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
) -> Result<Option<Vec<Value>>, PatchError> {
    let live_list = match live {
        Some(Value::Array(items)) => Some(items.clone()),
        Some(_) => return Err(bad_set_element_order()),
        None => None,
    };
    let patch_list = match patch {
        Some(Value::Array(items)) => Some(items.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(bad_set_element_order()),
    };
    let key = match list_type {
        ListType::Map(keys) => keys.first().map(String::as_str),
        _ => None,
    };
    if let Some(items) = &patch_list {
        check_order_matches_patch(items, order, key)?;
    }
    let merged = match (live_list.clone(), &patch_list) {
        (Some(l), None) => l,
        (None, Some(p)) => fresh_list(p, list_type, names, types)?,
        (Some(l), Some(p)) => merge_list(l, p, list_type, names, types)?,
        (None, None) => return Ok(None),
    };
    // Items the directive marks `$patch: delete` leave the list.
    let deleted: Vec<&Value> =
        order.iter().filter(|it| it.get("$patch").and_then(Value::as_str) == Some("delete")).collect();
    let (mut patch_items, server_only) = partition_by_presence(merged, order, key);
    if let Some(k) = key {
        patch_items.retain(|it| !deleted.iter().any(|d| d.get(k).is_some() && d.get(k) == it.get(k)));
    }
    let live_order = live_list.unwrap_or_default();
    Ok(Some(normalize_element_order(patch_items, server_only, order, &live_order, key)))
}

/// `validatePatchWithSetOrderList`: the patch list's items (deletions aside) appear in the directive's list,
/// in the same relative order.
fn check_order_matches_patch(patch: &[Value], order: &[Value], key: Option<&str>) -> Result<(), PatchError> {
    let items: Vec<&Value> =
        patch.iter().filter(|it| it.get("$patch").and_then(Value::as_str) != Some("delete")).collect();
    let equal = |a: &Value, b: &Value| match key {
        Some(k) => a.get(k).is_some() && a.get(k) == b.get(k),
        None => a == b,
    };
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        if items[p].get("$patch").is_some() {
            p += 1;
            continue;
        }
        if equal(items[p], &order[o]) {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() {
        let shown = |l: &[Value]| go_fmt(&Value::Array(l.to_vec()));
        return Err(PatchError::StrategicMerge(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            shown(patch),
            shown(order)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Field sets (fieldpath.Set): a tree of encoded path elements ("f:name", "k:{..}", "v:..").

#[derive(Debug, Clone, Default, PartialEq)]
struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn insert(&mut self, path: &[String]) {
        if path.is_empty() {
            return;
        }
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union(c);
        }
    }

    fn combine(&self, other: &FieldSet, keep_common: bool) -> FieldSet {
        let mut out = FieldSet { member: self.member && (other.member == keep_common), children: BTreeMap::new() };
        for (k, c) in &self.children {
            let sub = match other.children.get(k) {
                Some(o) => c.combine(o, keep_common),
                None if keep_common => continue,
                None => c.clone(),
            };
            if !sub.is_empty() {
                out.children.insert(k.clone(), sub);
            }
        }
        out
    }

    fn difference(&self, other: &FieldSet) -> FieldSet {
        self.combine(other, false)
    }

    fn intersection(&self, other: &FieldSet) -> FieldSet {
        self.combine(other, true)
    }

    fn normalize(&mut self) {
        for c in self.children.values_mut() {
            c.normalize();
        }
        self.children.retain(|_, c| !c.is_empty());
    }

    fn paths(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.paths(prefix, out);
            prefix.pop();
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_string(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        for (k, c) in v.as_object().into_iter().flatten() {
            if k == "." {
                set.member = true;
                continue;
            }
            let mut child = FieldSet::from_json(c);
            if child.children.is_empty() {
                child.member = true;
            }
            set.children.insert(k.clone(), child);
        }
        set
    }
}

fn item_pe(item: &Value, lt: &ListType) -> String {
    match lt {
        ListType::Map(keys) => {
            let mut keys: Vec<&String> = keys.iter().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    item.get(k.as_str()).map(|v| format!("{}:{}", compact(&Value::from(k.as_str())), compact(v)))
                })
                .collect();
            format!("k:{{{}}}", parts.join(","))
        }
        _ => format!("v:{}", compact(item)),
    }
}

fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let fields = match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect::<Vec<_>>(),
                _ => vec![k.to_string()],
            };
            out.push_str(&format!("[{}]", fields.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else {
            out.push_str(&format!("[{}]", pe.trim_start_matches("i:")));
        }
    }
    out
}

const IGNORED_METADATA: &str = concat!(
    "name namespace uid resourceVersion generation creationTimestamp managedFields selfLink ",
    "deletionTimestamp deletionGracePeriodSeconds"
);

/// Drops the paths the API server never tracks (apiVersion, kind, metadata itself and its server-set fields).
fn strip_ignored(set: &mut FieldSet) {
    set.children.remove("f:apiVersion");
    set.children.remove("f:kind");
    if let Some(meta) = set.children.get_mut("f:metadata") {
        meta.member = false;
        for f in IGNORED_METADATA.split(' ') {
            meta.children.remove(&format!("f:{f}"));
        }
        if meta.is_empty() {
            set.children.remove("f:metadata");
        }
    }
}

fn collect(v: &Value, node: &mut FieldSet, names: &mut Vec<String>, types: &dyn ListTypes) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let child = node.children.entry(format!("f:{k}")).or_default();
                names.push(k.clone());
                if c.is_null() || c.as_object().is_some_and(|m| m.is_empty() || atomic_map_at(types, names)) {
                    child.member = true;
                } else {
                    collect(c, child, names, types);
                }
                names.pop();
            }
        }
        Value::Array(items) => match list_type_at(types, names) {
            ListType::Atomic => node.member = true,
            lt => {
                for item in items {
                    let child = node.children.entry(item_pe(item, &lt)).or_default();
                    child.member = true;
                    if matches!(lt, ListType::Map(_)) {
                        collect(item, child, names, types);
                    }
                }
            }
        },
        _ => node.member = true,
    }
}

fn field_set_of(obj: &Value, types: &dyn ListTypes) -> FieldSet {
    let mut set = FieldSet::default();
    collect(obj, &mut set, &mut Vec::new(), types);
    set.normalize();
    strip_ignored(&mut set);
    set
}

/// The fieldsV1 set of an object as the API server encodes it for an apply: every leaf field path, "f:<name>"
/// for fields, "k:{key fields}" for items of Map lists (with "." and their fields), "v:<json>" for items of Set
/// lists; atomic lists and empty objects are leaves. apiVersion, kind and the server-set metadata fields (name,
/// namespace, uid, resourceVersion, generation, creationTimestamp, managedFields, ...) are never tracked.
pub fn field_set(obj: &Value, types: &dyn ListTypes) -> Value {
    field_set_of(obj, types).to_json()
}

#[derive(Default)]
struct Diff {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

fn is_empty_or_absent(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

/// structured-merge-diff's Compare: leaves that appear, vanish or change, and containers that appear or vanish.
fn compare(
    l: Option<&Value>,
    r: Option<&Value>,
    path: &mut Vec<String>,
    names: &mut Vec<String>,
    types: &dyn ListTypes,
    d: &mut Diff,
) {
    let (lm, rm) = (l.and_then(Value::as_object), r.and_then(Value::as_object));
    let atomic = (lm.is_some() || rm.is_some()) && atomic_map_at(types, names);
    let leaf = atomic || (is_empty_or_absent(l) && is_empty_or_absent(r));
    let (la, ra) = (l.and_then(Value::as_array), r.and_then(Value::as_array));
    let mut container = false;
    if !leaf && (lm.is_some() || l.is_none()) && (rm.is_some() || r.is_none()) {
        container = true;
        let keys: BTreeSet<&String> = lm.into_iter().chain(rm).flat_map(Map::keys).collect();
        for k in keys {
            path.push(format!("f:{k}"));
            names.push(k.clone());
            compare(lm.and_then(|m| m.get(k)), rm.and_then(|m| m.get(k)), path, names, types, d);
            names.pop();
            path.pop();
        }
    } else if !leaf && (la.is_some() || l.is_none()) && (ra.is_some() || r.is_none()) {
        let lt = list_type_at(types, names);
        if lt != ListType::Atomic {
            container = true;
            let mut items: BTreeMap<String, (Option<&Value>, Option<&Value>)> = BTreeMap::new();
            for item in la.into_iter().flatten() {
                items.entry(item_pe(item, &lt)).or_default().0.get_or_insert(item);
            }
            for item in ra.into_iter().flatten() {
                items.entry(item_pe(item, &lt)).or_default().1.get_or_insert(item);
            }
            for (pe, (li, ri)) in items {
                path.push(pe);
                compare(li, ri, path, names, types, d);
                path.pop();
            }
        }
    }
    match (l, r) {
        (None, Some(_)) => d.added.insert(path),
        (Some(_), None) => d.removed.insert(path),
        (Some(a), Some(b)) if !container && a != b => d.modified.insert(path),
        _ => {}
    }
}

fn diff(old: &Value, new: &Value, types: &dyn ListTypes) -> Diff {
    let mut d = Diff::default();
    compare(Some(old), Some(new), &mut Vec::new(), &mut Vec::new(), types, &mut d);
    for set in [&mut d.added, &mut d.modified, &mut d.removed] {
        strip_ignored(set);
    }
    d
}

/// structured-merge-diff's Merge: maps recursively, Map lists by key, Set lists by value, the rest replaced.
fn merge(live: &mut Value, cfg: &Value, names: &mut Vec<String>, types: &dyn ListTypes) {
    if let (Value::Object(lm), Value::Object(cm)) = (&mut *live, cfg)
        && !atomic_map_at(types, names)
    {
        for (k, c) in cm {
            match lm.get_mut(k) {
                Some(lv) => {
                    names.push(k.clone());
                    merge(lv, c, names, types);
                    names.pop();
                }
                None => {
                    lm.insert(k.clone(), c.clone());
                }
            }
        }
        return;
    }
    if let (Value::Array(la), Value::Array(ca)) = (&mut *live, cfg) {
        let lt = list_type_at(types, names);
        if lt != ListType::Atomic {
            for c in ca {
                let pe = item_pe(c, &lt);
                match la.iter_mut().find(|i| item_pe(i, &lt) == pe) {
                    Some(li) if matches!(lt, ListType::Map(_)) => merge(li, c, names, types),
                    Some(_) => {}
                    None => la.push(c.clone()),
                }
            }
            return;
        }
    }
    *live = cfg.clone();
}

/// Removes from `v` the fields in `remove` unless something at or below them is in `owned`. A list-map item
/// goes when it or one of its key fields is removed and nothing of it is owned; containers emptied by the
/// pruning go too.
fn prune(v: &mut Value, remove: &FieldSet, owned: Option<&FieldSet>, names: &mut Vec<String>, types: &dyn ListTypes) {
    let child_owned = |pe: &str| owned.and_then(|o| o.children.get(pe));
    match v {
        Value::Object(m) => {
            for (pe, rnode) in &remove.children {
                let Some(name) = pe.strip_prefix("f:") else { continue };
                let onode = child_owned(pe);
                if rnode.member && onode.is_none() {
                    m.remove(name);
                } else if let Some(child) = m.get_mut(name) {
                    let was_empty = is_empty_or_absent(Some(child));
                    names.push(name.to_string());
                    prune(child, rnode, onode, names, types);
                    names.pop();
                    if !was_empty && is_empty_or_absent(Some(child)) {
                        m.remove(name);
                    }
                }
            }
        }
        Value::Array(items) => {
            let lt = list_type_at(types, names);
            let keys = match &lt {
                ListType::Atomic => return,
                ListType::Set => Vec::new(),
                ListType::Map(keys) => keys.iter().map(|k| format!("f:{k}")).collect(),
            };
            for mut item in std::mem::take(items) {
                let pe = item_pe(&item, &lt);
                if let Some(rnode) = remove.children.get(&pe) {
                    let onode = child_owned(&pe);
                    let key_removed = keys.iter().any(|k| rnode.children.get(k).is_some_and(|n| n.member));
                    if (rnode.member || key_removed) && onode.is_none() {
                        continue;
                    }
                    let mut rest = rnode.clone();
                    rest.children.retain(|k, _| !keys.contains(k));
                    prune(&mut item, &rest, onode, names, types);
                }
                items.push(item);
            }
        }
        _ => {}
    }
}

/// A managedFields entry (metav1.ManagedFieldsEntry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    /// The field manager's name.
    #[serde(default)]
    pub manager: String,
    /// "Apply" or "Update".
    #[serde(default)]
    pub operation: String,
    /// The apiVersion the fields were written in.
    #[serde(default)]
    pub api_version: String,
    /// When the entry last changed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Always "FieldsV1".
    #[serde(default)]
    pub fields_type: String,
    /// The owned field set, encoded as [`field_set`] does.
    #[serde(rename = "fieldsV1", default)]
    pub fields_v1: Value,
    /// The subresource written through ("status", "scale"), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// A conflict of an apply with another manager.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The field, like `.spec.replicas` or `.spec.containers[name="app"].image`.
    pub field: String,
    /// What the API server prints after the quoted manager name: empty for an Apply entry, ` using v1` for an
    /// Update entry, preceded by ` with subresource "status"` for an entry written through a subresource.
    pub qualifier: String,
}

impl Conflict {
    /// The message of this conflict's `FieldManagerConflict` cause: `conflict with "alice"`.
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.who())
    }

    fn who(&self) -> String {
        format!("{}{}", compact(&Value::from(self.manager.as_str())), self.qualifier)
    }
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    v
}

fn decode(managed: &[ManagedFieldsEntry]) -> Vec<(ManagedFieldsEntry, FieldSet)> {
    managed.iter().map(|e| (e.clone(), FieldSet::from_json(&e.fields_v1))).collect()
}

fn new_entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: manager.to_string(),
        operation: operation.to_string(),
        api_version: api_version.to_string(),
        time: Some(now.to_string()),
        fields_type: "FieldsV1".to_string(),
        fields_v1: Value::Object(Map::new()),
        subresource: subresource.map(str::to_string),
    }
}

/// Encodes the sets, drops empty entries and sorts as the API server does (operation, time, manager).
fn finish(entries: Vec<(ManagedFieldsEntry, FieldSet)>) -> Vec<ManagedFieldsEntry> {
    let mut out: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(mut e, s)| {
            e.fields_v1 = s.to_json();
            e.fields_type = "FieldsV1".to_string();
            e
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    out
}

/// Server-side apply of `applied` (the full intent of `manager`) onto `live` (None when creating), following
/// structured-merge-diff: applied fields merge into live (maps recursively, Map lists by key, Set lists by value,
/// atomic lists replaced); fields the manager applied before but no longer does are removed unless another
/// manager owns them; a changed field owned by another manager is a conflict unless `force`, which moves its
/// ownership; equal values are co-owned. The manager's Apply entry becomes exactly `field_set(applied)`; empty
/// entries are dropped. Returns the new object (without managedFields) and the new managedFields, or the
/// conflicts.
#[allow(clippy::too_many_arguments, reason = "the parts of one server-side apply request")]
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    managed: &[ManagedFieldsEntry],
    api_version: &str,
    subresource: Option<&str>,
    types: &dyn ListTypes,
    now: &str,
) -> Result<(Value, Vec<ManagedFieldsEntry>), Vec<Conflict>> {
    let live = live.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let cfg = without_managed_fields(applied);
    let mut entries = decode(managed);
    let mine = entries
        .iter()
        .position(|(e, _)| e.manager == manager && e.operation == "Apply" && e.subresource.as_deref() == subresource);
    let last = mine.and_then(|i| entries.get(i)).map(|(_, s)| s.clone()).unwrap_or_default();
    let new_set = field_set_of(&cfg, types);

    let mut merged = live.clone();
    merge(&mut merged, &cfg, &mut Vec::new(), types);
    let mut owned = new_set.clone();
    for (i, (_, s)) in entries.iter().enumerate() {
        if Some(i) != mine {
            owned.union(s);
        }
    }
    prune(&mut merged, &last.difference(&owned), Some(&owned), &mut Vec::new(), types);

    let d = diff(&live, &merged, types);
    let mut changed = d.added;
    changed.union(&d.modified);
    let mut conflicts = Vec::new();
    for (i, (e, s)) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        let mut paths = Vec::new();
        s.intersection(&changed).paths(&mut Vec::new(), &mut paths);
        for p in paths {
            let mut qualifier = String::new();
            if let Some(sub) = &e.subresource {
                qualifier = format!(" with subresource {}", compact(&Value::from(sub.as_str())));
            }
            if e.operation == "Update" {
                qualifier = format!("{qualifier} using {}", e.api_version);
            }
            let c = Conflict { manager: e.manager.clone(), field: display_path(&p), qualifier };
            if !conflicts.contains(&c) {
                conflicts.push(c);
            }
        }
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort_by(|a, b| (&a.manager, &a.qualifier).cmp(&(&b.manager, &b.qualifier)));
        return Err(conflicts);
    }
    for (i, (_, s)) in entries.iter_mut().enumerate() {
        if Some(i) != mine {
            *s = s.difference(&changed).difference(&d.removed);
        }
    }
    let object_changed = merged != live;
    match mine.and_then(|i| entries.get_mut(i)) {
        Some((e, s)) => {
            *s = new_set;
            e.api_version = api_version.to_string();
            if object_changed || e.time.is_none() {
                e.time = Some(now.to_string());
            }
        }
        None => entries.push((new_entry(manager, "Apply", api_version, subresource, now), new_set)),
    }
    Ok((merged, finish(entries)))
}

/// Record a non-apply write (create, update, patch) by `manager` (operation "Update"): the fields that changed
/// between `old` (None for create: all fields of `new`) and `new` become owned by this manager's Update entry
/// (per manager, apiVersion and subresource) and leave the other managers' sets, as do removed fields; entries
/// left empty are dropped. The entry's time moves only when it takes fields.
#[allow(clippy::too_many_arguments, reason = "the parts of one non-apply write")]
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    managed: &[ManagedFieldsEntry],
    api_version: &str,
    subresource: Option<&str>,
    types: &dyn ListTypes,
    now: &str,
) -> Vec<ManagedFieldsEntry> {
    let old = old.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let d = diff(&old, &without_managed_fields(new), types);
    let mut changed = d.added;
    changed.union(&d.modified);
    let mut entries = decode(managed);
    for (_, s) in &mut entries {
        *s = s.difference(&changed).difference(&d.removed);
    }
    if !changed.is_empty() {
        let mine = entries.iter_mut().find(|(e, _)| {
            e.manager == manager
                && e.operation == "Update"
                && e.api_version == api_version
                && e.subresource.as_deref() == subresource
        });
        match mine {
            Some((e, s)) => {
                s.union(&changed);
                e.time = Some(now.to_string());
            }
            None => entries.push((new_entry(manager, "Update", api_version, subresource, now), changed)),
        }
    }
    finish(entries)
}

/// The 409 message of an apply conflict, as the API server words it: `Apply failed with 1 conflict: conflict
/// with "alice": .spec.replicas`, or for several `Apply failed with 2 conflicts: conflicts with "alice":\n-
/// .spec.a\n- .spec.b` (managers sorted, one block each; an Update entry reads `"bob" using v1`).
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.who(), c.field);
    }
    let mut by_manager: BTreeMap<(&str, &str), (String, Vec<&str>)> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry((&c.manager, &c.qualifier)).or_insert_with(|| (c.who(), Vec::new())).1.push(&c.field);
    }
    let mut lines = Vec::new();
    for (who, fields) in by_manager.into_values() {
        lines.push(format!("conflicts with {who}:"));
        lines.extend(fields.iter().map(|f| format!("- {f}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &str = "2026-11-27T02:44:08Z";
    const V: &str = "example.com/v1";

    fn widget_schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer"}, "minReplicas": {"type": "integer"},
                "mode": {"type": "string"}, "name": {"type": "string"}}},
            "status": {"type": "object", "properties": {
                "replicas": {"type": "integer"},
                "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                    "items": {"type": "object",
                        "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}}}}}})
    }

    fn widget(name: &str, spec: Value) -> Value {
        json!({"apiVersion": V, "kind": "Widget", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn entry(manager: &str, op: &str, fields: Value, sub: Option<&str>) -> Value {
        let mut e = json!({"apiVersion": V, "fieldsType": "FieldsV1", "fieldsV1": fields, "manager": manager,
            "operation": op, "time": T});
        if let Some(s) = sub {
            e["subresource"] = json!(s);
        }
        e
    }

    fn mf(entries: &[ManagedFieldsEntry]) -> Value {
        serde_json::to_value(entries).unwrap()
    }

    #[test]
    fn apply_conflict_force_and_co_ownership() {
        let schema = widget_schema();
        let types = SchemaListTypes { schema: &schema };
        let (obj, managed) = apply(
            None,
            &widget("w2", json!({"replicas": 3, "minReplicas": 1})),
            "alice",
            false,
            &[],
            V,
            None,
            &types,
            T,
        )
        .unwrap();
        let bob = widget("w2", json!({"replicas": 5, "minReplicas": 1}));
        let conflicts = apply(Some(&obj), &bob, "bob", false, &managed, V, None, &types, T).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!((conflicts[0].manager.as_str(), conflicts[0].field.as_str()), ("alice", ".spec.replicas"));
        assert_eq!(
            conflict_message(&conflicts),
            "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
        );
        assert_eq!(conflicts[0].cause_message(), "conflict with \"alice\"");

        let (obj, managed) = apply(Some(&obj), &bob, "bob", true, &managed, V, None, &types, T).unwrap();
        assert_eq!(obj["spec"], json!({"minReplicas": 1, "replicas": 5}));
        assert_eq!(
            mf(&managed),
            json!([
                entry("alice", "Apply", json!({"f:spec": {"f:minReplicas": {}}}), None),
                entry("bob", "Apply", json!({"f:spec": {"f:minReplicas": {}, "f:replicas": {}}}), None),
            ])
        );

        // bob stops applying minReplicas, which alice co-owns: it stays, only bob's ownership goes.
        let (obj2, managed) =
            apply(Some(&obj), &widget("w2", json!({"replicas": 5})), "bob", false, &managed, V, None, &types, T)
                .unwrap();
        assert_eq!(obj2, obj);
        assert_eq!(
            mf(&managed),
            json!([
                entry("alice", "Apply", json!({"f:spec": {"f:minReplicas": {}}}), None),
                entry("bob", "Apply", json!({"f:spec": {"f:replicas": {}}}), None),
            ])
        );
    }

    #[test]
    fn apply_sole_owner_removal_then_status_update() {
        let schema = widget_schema();
        let types = SchemaListTypes { schema: &schema };
        let full = widget("w3", json!({"replicas": 2, "minReplicas": 1, "mode": "auto"}));
        let (obj, managed) = apply(None, &full, "carol", false, &[], V, None, &types, T).unwrap();
        assert_eq!(obj["spec"]["mode"], json!("auto"));
        let fewer = widget("w3", json!({"replicas": 2, "minReplicas": 1}));
        let (obj, managed) = apply(Some(&obj), &fewer, "carol", false, &managed, V, None, &types, T).unwrap();
        assert_eq!(obj["spec"], json!({"minReplicas": 1, "replicas": 2}));
        let carol = entry("carol", "Apply", json!({"f:spec": {"f:minReplicas": {}, "f:replicas": {}}}), None);
        assert_eq!(mf(&managed), json!([carol.clone()]));

        // A status write by curl (merge patch on /status).
        let mut new = obj.clone();
        new["status"] = json!({"conditions": [{"status": "True", "type": "Ready"}], "replicas": 2});
        let managed = record_update(Some(&obj), &new, "curl", &managed, V, Some("status"), &types, T);
        let status = json!({"f:status": {".": {}, "f:conditions": {".": {},
            "k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}, "f:replicas": {}}});
        assert_eq!(mf(&managed), json!([carol, entry("curl", "Update", status, Some("status"))]));
    }

    fn deployment(containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": containers}}}})
    }

    fn containers(obj: &Value) -> &Value {
        &obj["spec"]["template"]["spec"]["containers"]
    }

    #[test]
    fn strategic_merge_containers_by_name() {
        let mut obj = deployment(json!([
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "side:1"}]));
        obj["metadata"]["finalizers"] = json!(["a", "b"]);
        obj["metadata"]["labels"] = json!({"x": "1", "y": "2"});
        let patch = json!({
            "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"x": null},
                "$setElementOrder/finalizers": ["b", "c"]},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 8080}]},
                {"name": "sidecar", "$patch": "delete"},
                {"name": "new", "image": "new:1"}]}}}});
        strategic_merge_patch(&mut obj, &patch, &BuiltinListTypes).unwrap();
        assert_eq!(
            containers(&obj),
            &json!([
                {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 8080}, {"containerPort": 80}]},
                {"name": "new", "image": "new:1"}])
        );
        assert_eq!(obj["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(obj["metadata"]["labels"], json!({"y": "2"}));

        // `$patch: replace` in a list and in a map; `$retainKeys`; atomic lists replace.
        let patch = json!({"spec": {
            "template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o:1"}],
                "tolerations": [{"key": "k"}]}},
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "selector": {"$patch": "replace", "matchLabels": {"app": "d"}}}});
        obj["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
        obj["spec"]["selector"] = json!({"matchLabels": {"old": "x"}, "matchExpressions": []});
        obj["spec"]["template"]["spec"]["tolerations"] = json!([{"key": "a"}, {"key": "b"}]);
        strategic_merge_patch(&mut obj, &patch, &BuiltinListTypes).unwrap();
        assert_eq!(containers(&obj), &json!([{"name": "only", "image": "o:1"}]));
        assert_eq!(obj["spec"]["template"]["spec"]["tolerations"], json!([{"key": "k"}]));
        assert_eq!(obj["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(obj["spec"]["selector"], json!({"matchLabels": {"app": "d"}}));

        // `$patch: delete` on a map empties it, as the API server does.
        strategic_merge_patch(&mut obj, &json!({"spec": {"strategy": {"$patch": "delete"}}}), &BuiltinListTypes)
            .unwrap();
        assert_eq!(obj["spec"]["strategy"], json!({}));
    }

    /// The order of merged lists, case by case as `strategicpatch.mergeSlice` and `mergePatchIntoOriginal` give it.
    #[test]
    fn strategic_merge_list_order() {
        let env = |names: &[&str]| -> Value { names.iter().map(|n| json!({"name": n, "value": n})).collect() };
        let merged = |live: &[&str], patch: Value| -> Vec<String> {
            let mut obj = deployment(json!([{"name": "app", "env": env(live)}]));
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "$setElementOrder/env": patch.get("order").cloned().unwrap_or(Value::Null), "env": patch["env"].clone()}]}}}});
            let patch = match patch.pointer("/spec/template/spec/containers/0/$setElementOrder~1env") {
                Some(Value::Null) => {
                    let mut p = patch.clone();
                    if let Some(c) = p.pointer_mut("/spec/template/spec/containers/0").and_then(Value::as_object_mut) {
                        c.remove("$setElementOrder/env");
                    }
                    p
                }
                _ => patch,
            };
            strategic_merge_patch(&mut obj, &patch, &BuiltinListTypes).unwrap();
            containers(&obj)[0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        };
        // New items go first; items merged in place keep their live order.
        assert_eq!(merged(&["A"], json!({"env": env(&["B"])})), ["B", "A"]);
        assert_eq!(merged(&["A", "B"], json!({"env": env(&["B"])})), ["A", "B"]);
        assert_eq!(merged(&["A", "B"], json!({"env": env(&["C", "A"])})), ["C", "A", "B"]);
        assert_eq!(merged(&["A", "B", "C"], json!({"env": env(&["C", "A"])})), ["B", "C", "A"]);
        assert_eq!(merged(&["A", "B"], json!({"env": env(&["B", "A"])})), ["B", "A"]);
        // `$setElementOrder` (what `kubectl apply` sends) decides the order of the items it names.
        let order = |names: &[&str]| -> Value { names.iter().map(|n| json!({"name": n})).collect() };
        assert_eq!(merged(&["A"], json!({"order": order(&["A", "B"]), "env": env(&["B"])})), ["A", "B"]);
        assert_eq!(merged(&["A", "B"], json!({"order": order(&["B", "A"]), "env": []})), ["B", "A"]);
        assert_eq!(
            merged(&["A", "B", "C"], json!({"order": order(&["C", "D", "A"]), "env": env(&["D"])})),
            ["B", "C", "D", "A"]
        );
        // Scalars (finalizers) merge as a set, new ones first too.
        let mut obj = deployment(json!([]));
        obj["metadata"]["finalizers"] = json!(["a"]);
        strategic_merge_patch(&mut obj, &json!({"metadata": {"finalizers": ["b", "a"]}}), &BuiltinListTypes).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["b", "a"]));
        strategic_merge_patch(&mut obj, &json!({"metadata": {"finalizers": ["c"]}}), &BuiltinListTypes).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["c", "b", "a"]));
        // A patch list out of step with its `$setElementOrder` is refused.
        let mut obj = deployment(json!([{"name": "app", "env": env(&["A"])}]));
        let bad = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "$setElementOrder/env": order(&["A", "B"]), "env": env(&["B", "A"])}]}}}});
        let err = strategic_merge_patch(&mut obj, &bad, &BuiltinListTypes).unwrap_err();
        assert_eq!(err.status_code(), 500);
    }

    #[test]
    fn strategic_merge_errors_leave_target_unchanged() {
        let before = deployment(json!([{"name": "app", "image": "app:1"}]));
        let mut obj = before.clone();
        let no_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = strategic_merge_patch(&mut obj, &no_key, &BuiltinListTypes).unwrap_err();
        assert_eq!(err.to_string(), "map: map[image:x] does not contain declared merge key: name");
        assert_eq!(err.status_code(), 500);
        let bad = json!({"metadata": {"labels": {"$patch": "bogus"}}});
        let err = strategic_merge_patch(&mut obj, &bad, &BuiltinListTypes).unwrap_err();
        assert_eq!(err.to_string(), "unknown patch type: bogus in map: map[$patch:bogus]");
        let bad = json!({"spec": {"$retainKeys": ["a"], "b": 1}});
        let err = strategic_merge_patch(&mut obj, &bad, &BuiltinListTypes).unwrap_err();
        assert_eq!((err.to_string().as_str(), err.status_code()), ("invalid patch format of retainKeys", 400));
        assert_eq!(obj, before);
    }

    #[test]
    fn apply_containers_by_name() {
        let types = BuiltinListTypes;
        let alice_cfg = deployment(json!([{"name": "app", "image": "app:1"}]));
        let (obj, managed) = apply(None, &alice_cfg, "alice", false, &[], "apps/v1", None, &types, T).unwrap();
        let app = json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
            "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}});
        assert_eq!(managed[0].fields_v1, app);
        assert_eq!(field_set(&alice_cfg, &types), app);

        let bob_cfg = deployment(json!([{"name": "app", "image": "app:2"}, {"name": "side", "image": "side:1"}]));
        let conflicts = apply(Some(&obj), &bob_cfg, "bob", false, &managed, "apps/v1", None, &types, T).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].field, ".spec.template.spec.containers[name=\"app\"].image");

        // spec.selector is an atomic struct: owned whole.
        let mut sel = deployment(json!([]));
        sel["spec"]["selector"] = json!({"matchLabels": {"app": "d"}});
        assert_eq!(field_set(&sel, &types), json!({"f:spec": {"f:selector": {}}}));
        let (with_sel, m2) = apply(Some(&obj), &sel, "carol", false, &managed, "apps/v1", None, &types, T).unwrap();
        sel["spec"]["selector"] = json!({"matchLabels": {"app": "e"}});
        let conflicts = apply(Some(&with_sel), &sel, "dave", false, &m2, "apps/v1", None, &types, T).unwrap_err();
        assert_eq!(conflicts[0].field, ".spec.selector");

        let bob_cfg = deployment(json!([{"name": "side", "image": "side:1"}]));
        let (obj, managed) = apply(Some(&obj), &bob_cfg, "bob", false, &managed, "apps/v1", None, &types, T).unwrap();
        assert_eq!(containers(&obj), &json!([{"name": "app", "image": "app:1"}, {"name": "side", "image": "side:1"}]));

        // alice stops applying her container: it goes, bob's stays.
        let mut alice_cfg = deployment(json!(null));
        alice_cfg["spec"] = json!({"replicas": 2});
        let (obj, managed) =
            apply(Some(&obj), &alice_cfg, "alice", false, &managed, "apps/v1", None, &types, T).unwrap();
        assert_eq!(containers(&obj), &json!([{"name": "side", "image": "side:1"}]));
        assert_eq!(obj["spec"]["replicas"], json!(2));
        assert_eq!(managed.len(), 2);
    }

    #[test]
    fn apply_set_lists_and_metadata() {
        let types = BuiltinListTypes;
        let cm = |meta: Value| {
            let mut m = json!({"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "3"});
            json_merge_patch(&mut m, &meta);
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m})
        };
        let (obj, managed) = apply(
            None,
            &cm(json!({"finalizers": ["a"], "labels": {"l": "1"}})),
            "alice",
            false,
            &[],
            "v1",
            None,
            &types,
            T,
        )
        .unwrap();
        assert_eq!(
            managed[0].fields_v1,
            json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}}, "f:labels": {"f:l": {}}}})
        );
        let (obj, managed) =
            apply(Some(&obj), &cm(json!({"finalizers": ["b"]})), "bob", false, &managed, "v1", None, &types, T)
                .unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["a", "b"]));
        let (obj, _) = apply(Some(&obj), &cm(json!({})), "bob", false, &managed, "v1", None, &types, T).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["a"]));
        assert_eq!(obj["metadata"]["labels"], json!({"l": "1"}));
    }

    #[test]
    fn record_update_moves_ownership() {
        let schema = widget_schema();
        let types = SchemaListTypes { schema: &schema };
        let cfg = widget("w", json!({"replicas": 1, "mode": "auto"}));
        let (obj, managed) = apply(None, &cfg, "alice", false, &[], V, None, &types, T).unwrap();
        let mut edited = obj.clone();
        edited["spec"]["replicas"] = json!(4);
        edited["metadata"]["resourceVersion"] = json!("9");
        let later = "2026-11-27T02:45:00Z";
        let managed = record_update(Some(&obj), &edited, "kubectl-edit", &managed, V, None, &types, later);
        assert_eq!(managed[0].fields_v1, json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(managed[1].fields_v1, json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!((managed[1].operation.as_str(), managed[1].time.as_deref()), ("Update", Some(later)));

        let err = apply(Some(&edited), &cfg, "alice", false, &managed, V, None, &types, T).unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using example.com/v1: .spec.replicas"
        );
        let mut two = vec![err[0].clone(), err[0].clone()];
        two[1].field = ".spec.mode".into();
        two.push(Conflict { manager: "alice".into(), field: ".spec.x".into(), qualifier: String::new() });
        assert_eq!(
            conflict_message(&two),
            concat!(
                "Apply failed with 3 conflicts: conflicts with \"alice\":\n- .spec.x\n",
                "conflicts with \"kubectl-edit\" using example.com/v1:\n- .spec.replicas\n- .spec.mode"
            )
        );

        // A create records every field except the untracked ones.
        let created = record_update(None, &cfg, "curl", &[], V, None, &types, T);
        assert_eq!(created[0].fields_v1, json!({"f:spec": {".": {}, "f:mode": {}, "f:replicas": {}}}));
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let mut doc = json!({"spec": {"replicas": 1, "list": [1, 2]}});
        let ops = json!([
            {"op": "add", "path": "/spec/mode", "value": "auto"},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "test", "path": "/spec/replicas", "value": 3}]);
        json_patch(&mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"spec": {"replicas": 3, "list": [2], "mode": "auto"}}));

        let before = doc.clone();
        let ops = json!([{"op": "remove", "path": "/spec/mode"}, {"op": "test", "path": "/spec/replicas", "value": 9}]);
        let err = json_patch(&mut doc, &ops).unwrap_err();
        assert!(matches!(err, PatchError::TestFailed { index: 1, .. }));
        assert_eq!(
            (err.to_string().as_str(), err.status_code()),
            ("testing value /spec/replicas failed: test failed", 422)
        );
        assert_eq!(doc, before);
        let err = json_patch(&mut doc, &json!([{"op": "remove", "path": "/spec/nope"}])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "remove operation does not apply: doc is missing path: \"/spec/nope\": missing value"
        );
        let err = json_patch(&mut doc, &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.status_code(), 400);
        let err = json_patch(&mut doc, &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert_eq!((err.to_string().as_str(), err.status_code()), ("Unexpected kind: frobnicate", 422));
    }

    #[test]
    fn merge_patch_null_deletes() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"list": [1, 2]}});
        json_merge_patch(&mut doc, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"list": [3]}}));
        assert_eq!(doc, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"list": [3]}}));
    }

    #[test]
    fn list_types() {
        let t = BuiltinListTypes;
        assert_eq!(t.list_type(&["spec", "containers"]), ListType::Map(vec!["name".into()]));
        assert_eq!(
            t.list_type(&["spec", "template", "spec", "initContainers", "env"]),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(t.list_type(&["spec", "ports"]), ListType::Map(vec!["port".into()]));
        assert_eq!(t.list_type(&["spec", "template", "spec", "tolerations"]), ListType::Atomic);
        let schema = widget_schema();
        let s = SchemaListTypes { schema: &schema };
        assert_eq!(s.list_type(&["status", "conditions"]), ListType::Map(vec!["type".into()]));
        assert_eq!(s.list_type(&["metadata", "finalizers"]), ListType::Set);
        assert_eq!(s.list_type(&["spec", "nothing"]), ListType::Atomic);
    }
}
