//! LIST: the objects of one type (in one namespace or all) that match the selectors, in pages
//! with continue tokens shaped as the real server's (`meta.k8s.io/v1`, resourceVersion, start key).

use serde_json::{Value, json};

use super::options::ListOptions;
use super::store::{Key, State};
use crate::sim::error::ApiError;
use crate::sim::registry::ResourceType;
use crate::sim::select::labels_of;

/// One page of a list.
struct Page {
    items: Vec<Value>,
    /// Matching objects after the page.
    remaining: usize,
    /// Namespace and name of the page's last object.
    last: Option<(String, String)>,
}

/// LIST objects of type `t`, in a namespace or all.
pub(super) fn list(
    state: &State,
    t: &ResourceType,
    namespace: Option<&str>,
    opts: &ListOptions,
) -> Result<Value, ApiError> {
    let start_after = match &opts.continue_token {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    let page = page(state, t, namespace.filter(|_| t.namespaced), start_after.as_ref(), opts);
    let mut metadata = json!({"resourceVersion": state.rv().to_string()});
    if page.remaining > 0
        && let Some((ns, name)) = page.last
    {
        metadata["continue"] = json!(encode_continue(state.rv(), &ns, &name));
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    Ok(json!({
        "apiVersion": t.api_version(),
        "kind": format!("{}List", t.kind),
        "metadata": metadata,
        "items": page.items,
    }))
}

/// The matching objects after `start_after`, at most `opts.limit` of them.
fn page(
    state: &State,
    t: &ResourceType,
    namespace: Option<&str>,
    start_after: Option<&(String, String)>,
    opts: &ListOptions,
) -> Page {
    let mut page = Page { items: Vec::new(), remaining: 0, last: None };
    // Keys sort by type, namespace, name: a list reads only its own range.
    let first = Key {
        group: t.group.clone(),
        plural: t.plural.clone(),
        namespace: namespace.unwrap_or_default().to_string(),
        name: String::new(),
    };
    for (key, obj) in state.objects_from(first) {
        if key.group != t.group || key.plural != t.plural {
            break;
        }
        if namespace.is_some_and(|ns| key.namespace != ns)
            || start_after.is_some_and(|after| (&key.namespace, &key.name) <= (&after.0, &after.1))
            || opts.label_selector.as_ref().is_some_and(|s| !s.matches(&labels_of(obj)))
            || opts.field_selector.as_ref().is_some_and(|s| !s.matches(obj))
        {
            continue;
        }
        if opts.limit.is_some_and(|l| l > 0 && page.items.len() >= l) {
            page.remaining += 1;
            continue;
        }
        let mut o = Value::clone(obj);
        o["apiVersion"] = json!(t.api_version());
        page.last = Some((key.namespace.clone(), key.name.clone()));
        page.items.push(o);
    }
    page
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

/// The objects of type `t` a watch without a resourceVersion starts with (in `namespace`, or
/// all), unselected: the watch filters them.
pub(super) fn all_of(state: &State, t: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
    state
        .objects()
        .filter(|(k, _)| k.group == t.group && k.plural == t.plural)
        .filter(|(k, _)| namespace.is_none_or(|ns| !t.namespaced || k.namespace == ns))
        .map(|(_, o)| Value::clone(o))
        .collect()
}
