//! `Adapter` rollout mode, the operator's side: what every pod should hold (written into the
//! `<name>-adapters` ConfigMap the agents read), and what each ready pod holds (read from its
//! agent's `GET /v1/adapters` on the admin port, as the autoscaler reads `/metrics`).

use std::time::Duration;

use futures::future::BoxFuture;

use super::observed::{Observed, PodAdapters};
use crate::agent::adapters::{AdapterRef, CanaryRef, Report, Wanted};
use crate::api::model_deployment::{ModelDeploymentStatus, PodAdapterFailure};
use crate::autoscale::scrape::PodTarget;

/// Reads what a pod's agent holds.
pub trait AdapterSource: Send + Sync {
    /// The pod's report, or why it could not be read.
    fn report<'a>(&'a self, pod: &'a PodTarget) -> BoxFuture<'a, Result<Report, String>>;
}

/// Asks `http://<pod IP>:<admin port>/v1/adapters`.
pub struct HttpAdapterSource {
    client: reqwest::Client,
}

impl Default for HttpAdapterSource {
    fn default() -> Self {
        let client = crate::http_client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|_| crate::http_client::client());
        Self { client }
    }
}

impl HttpAdapterSource {
    /// The report at `base` (`http://host:port`).
    pub async fn report_at(&self, base: &str) -> Result<Report, String> {
        let url = format!("{}/v1/adapters", base.trim_end_matches('/'));
        let response = self.client.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: the agent answered {status}"));
        }
        response.json::<Report>().await.map_err(|e| format!("GET {url}: {e}"))
    }
}

impl AdapterSource for HttpAdapterSource {
    fn report<'a>(&'a self, pod: &'a PodTarget) -> BoxFuture<'a, Result<Report, String>> {
        Box::pin(async move {
            let ip = pod.ip.as_deref().ok_or_else(|| "the pod has no IP yet".to_string())?;
            self.report_at(&format!("http://{ip}:{}", pod.port)).await
        })
    }
}

/// What every pod should hold for this status: the stable adapter (none: the base model) and
/// the canary adapter with its weight.
pub fn wanted(status: &ModelDeploymentStatus) -> Wanted {
    Wanted {
        stable: status
            .stable
            .as_ref()
            .filter(|s| s.adapter)
            .map(|s| AdapterRef { version: s.version.clone(), uri: s.uri.clone() }),
        canary: status.canary.as_ref().filter(|c| c.adapter).map(|c| CanaryRef {
            version: c.version.clone(),
            uri: c.uri.clone(),
            weight: c.weight,
        }),
    }
}

/// Whether every ready pod serves `version` (at `weight`, for a canary), and at least one pod
/// is ready.
pub fn all_serve(pods: &[PodAdapters], version: &str, weight: Option<i32>) -> bool {
    !pods.is_empty()
        && pods.iter().all(|p| {
            p.report.as_ref().is_ok_and(|r| {
                r.serves(version)
                    && match weight {
                        Some(w) => r.canary.as_deref() == Some(version) && r.weight == w,
                        None => r.stable == version,
                    }
            })
        })
}

/// The canary in status is held by every ready pod at its step's weight.
pub fn canary_held(status: Option<&ModelDeploymentStatus>, observed: &Observed) -> bool {
    status.and_then(|s| s.canary.as_ref()).is_some_and(|c| all_serve(&observed.adapters, &c.version, Some(c.weight)))
}

/// Pods serving `version` now.
pub fn serving(pods: &[PodAdapters], version: &str) -> i32 {
    let n = pods.iter().filter(|p| p.report.as_ref().is_ok_and(|r| r.serves(version))).count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The ready pods that could not load `version` or whose agent did not answer, by name.
pub fn failures(pods: &[PodAdapters], version: &str) -> Vec<PodAdapterFailure> {
    pods.iter()
        .filter_map(|p| {
            let message = match &p.report {
                Err(e) => format!("the agent's adapter report is unavailable: {e}"),
                Ok(r) => match (r.failures.get(version), &r.error) {
                    (Some(m), _) => m.clone(),
                    (None, Some(e)) => format!("the agent cannot read the wanted adapters: {e}"),
                    (None, None) => return None,
                },
            };
            Some(PodAdapterFailure { pod: p.pod.clone(), message: message.chars().take(512).collect() })
        })
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model_deployment::{CanaryStatus, TrackStatus};

    fn pod(name: &str, report: Result<Report, String>) -> PodAdapters {
        PodAdapters { pod: name.into(), report }
    }

    fn holding(stable: &str, canary: Option<(&str, i32)>, loaded: &[&str]) -> Report {
        Report {
            loaded: loaded.iter().map(|s| (*s).to_string()).collect(),
            stable: stable.into(),
            canary: canary.map(|(v, _)| v.to_string()),
            weight: canary.map_or(0, |(_, w)| w),
            ..Report::default()
        }
    }

    #[test]
    fn the_wanted_state_follows_the_status() {
        let mut status = ModelDeploymentStatus {
            stable: Some(TrackStatus { version: "base".into(), uri: "s3://m/base".into(), ..TrackStatus::default() }),
            ..ModelDeploymentStatus::default()
        };
        assert_eq!(wanted(&status), Wanted::default(), "the base alone holds no adapter");
        status.canary = Some(CanaryStatus {
            version: "a2".into(),
            uri: "s3://m/a2".into(),
            weight: 10,
            adapter: true,
            ..CanaryStatus::default()
        });
        let w = wanted(&status);
        assert_eq!(w.canary.map(|c| (c.version, c.weight)), Some(("a2".to_string(), 10)));
        assert!(w.stable.is_none());
    }

    #[test]
    fn a_canary_is_held_only_when_every_ready_pod_serves_it_at_its_weight() {
        let ok = || Ok(holding("base", Some(("a2", 10)), &["a2"]));
        assert!(all_serve(&[pod("p1", ok()), pod("p2", ok())], "a2", Some(10)));
        assert!(!all_serve(&[pod("p1", ok())], "a2", Some(50)), "the new step's weight is not there yet");
        assert!(!all_serve(&[pod("p1", ok()), pod("p2", Ok(holding("base", None, &[])))], "a2", Some(10)));
        assert!(!all_serve(&[pod("p1", ok()), pod("p2", Err("refused".into()))], "a2", Some(10)));
        assert!(!all_serve(&[], "a2", Some(10)), "no ready pod holds nothing");
    }

    #[test]
    fn failures_name_the_pods() {
        let mut refused = holding("base", None, &[]);
        refused.failures.insert("a2".into(), "loading a2: the runtime answered 500".into());
        let pods = [
            pod("p1", Ok(refused)),
            pod("p2", Err("timeout".into())),
            pod("p3", Ok(holding("base", Some(("a2", 10)), &["a2"]))),
        ];
        let f = failures(&pods, "a2");
        assert_eq!(f.iter().map(|f| f.pod.as_str()).collect::<Vec<_>>(), ["p1", "p2"]);
        assert!(f[0].message.contains("500"), "{}", f[0].message);
        assert_eq!(serving(&pods, "a2"), 1);
    }
}
