//! Validate (pure): what the schema let through but serving cannot use. The result is a
//! [`ValidModelDeployment`] holding the parsed sources, so nothing later parses a URI again and
//! no builder takes the raw spec's URIs.

use kube::ResourceExt;

use super::children::{ModelSource, Owner};
use super::context::ModelDeploymentError;
use crate::api::model_deployment::{ModelDeployment, TrafficMode};

/// A ModelDeployment that can be served: its identity and its parsed model sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidModelDeployment {
    /// Name, namespace and uid, for children's names and owner references.
    pub owner: Owner,
    /// The spec's model.
    pub spec_source: ModelSource,
    /// The stable version's source, when one is already serving (a retrained version lives
    /// only in status).
    pub stable_source: Option<ModelSource>,
    /// The HTTPRoute to set weights on, in GatewayAPI mode.
    pub route: Option<String>,
    /// Every model URI of the object parsed (spec, stable, canary, candidate): the builders
    /// look sources up here.
    pub sources: std::collections::BTreeMap<String, ModelSource>,
    /// The canary's or candidate's URI that does not parse, with why (they came from a
    /// RetrainJob: refused, not a stall).
    pub unparseable: std::collections::BTreeMap<String, String>,
}

impl ValidModelDeployment {
    /// The claims the spec's and the stable version's models live on: they must exist.
    pub fn claims(&self) -> Vec<(String, String)> {
        [Some(&self.spec_source), self.stable_source.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| match s {
                ModelSource::Pvc { claim, .. } => Some((claim.clone(), s.uri())),
                _ => None,
            })
            .collect()
    }
}

/// Why a ModelDeployment cannot be served until its spec changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason (`Stalled`'s).
    pub reason: &'static str,
    /// In words.
    pub message: String,
}

/// Validate (pure). An object without namespace or uid was not read from the API server: an
/// error, not a stall.
pub fn validate(md: &ModelDeployment) -> Result<Result<ValidModelDeployment, Invalid>, ModelDeploymentError> {
    let owner = Owner {
        name: md.name_any(),
        namespace: md.namespace().ok_or(ModelDeploymentError::Malformed("a namespace"))?,
        uid: md.uid().ok_or(ModelDeploymentError::Malformed("a uid"))?,
    };
    let invalid = |e: super::children::SpecError| Invalid { reason: "InvalidSpec", message: e.to_string() };
    let spec_source = match ModelSource::parse(&md.spec.model.uri) {
        Ok(s) => s,
        Err(e) => return Ok(Err(invalid(e))),
    };
    let stable_source = match md.status.as_ref().and_then(|s| s.stable.as_ref()) {
        Some(stable) => match ModelSource::parse(&stable.uri) {
            Ok(s) => Some(s),
            Err(e) => return Ok(Err(invalid(e))),
        },
        None => None,
    };
    let route = md
        .spec
        .traffic
        .as_ref()
        .filter(|t| t.mode == TrafficMode::GatewayApi)
        .map(|t| t.http_route_ref.as_ref().map(|r| r.name.clone()).unwrap_or_default());
    let mut sources = std::collections::BTreeMap::from([(md.spec.model.uri.clone(), spec_source.clone())]);
    if let (Some(stable), Some(source)) = (md.status.as_ref().and_then(|s| s.stable.as_ref()), &stable_source) {
        sources.insert(stable.uri.clone(), source.clone());
    }
    let mut unparseable = std::collections::BTreeMap::new();
    let handed = md
        .status
        .as_ref()
        .map(|s| [s.canary.as_ref().map(|c| c.uri.clone()), s.candidate.as_ref().map(|c| c.uri.clone())]);
    for uri in handed.into_iter().flatten().flatten() {
        match ModelSource::parse(&uri) {
            Ok(source) => {
                sources.insert(uri, source);
            }
            Err(e) => {
                unparseable.insert(uri, e.to_string());
            }
        }
    }
    Ok(Ok(ValidModelDeployment { owner, spec_source, stable_source, route, sources, unparseable }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(uri: &str, stable: Option<&str>) -> ModelDeployment {
        let mut v = serde_json::json!({
            "apiVersion": "flywheel.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "team", "uid": "u-1"},
            "spec": {"model": {"name": "m", "version": "v1", "uri": uri}, "runtime": {"image": "r"}}
        });
        if let Some(s) = stable {
            v["status"] = serde_json::json!({"stable": {"version": "v0", "uri": s}});
        }
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sources_are_parsed_once_and_claims_listed() {
        let valid = validate(&md("pvc://models/v1", Some("s3://bucket/v0")))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(valid.spec_source, ModelSource::Pvc { claim: "models".into(), path: "v1".into() });
        assert_eq!(valid.claims(), vec![("models".to_string(), "pvc://models/v1".to_string())]);
        assert_eq!(valid.owner.uid, "u-1");
    }

    #[test]
    fn an_unreadable_uri_is_a_stall_and_a_missing_uid_an_error() {
        let invalid = validate(&md("ftp://x/m", None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(invalid.err().map(|i| i.reason), Some("InvalidSpec"));
        let stable_bad = validate(&md("pvc://models/v1", Some("ftp://x"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(stable_bad.is_err());
        let mut no_uid = md("pvc://models/v1", None);
        no_uid.metadata.uid = None;
        assert!(matches!(validate(&no_uid), Err(ModelDeploymentError::Malformed("a uid"))));
    }
}
