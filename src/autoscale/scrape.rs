//! Where the load of a track comes from: each ready pod's Prometheus metrics, summed.

use std::time::Duration;

use futures::future::BoxFuture;

/// The in-flight gauge the agent exposes.
pub const AGENT_IN_FLIGHT: &str = "flywheel_agent_in_flight_requests";

/// A pod to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub ip: Option<String>,
    /// Port serving `/metrics`.
    pub port: u16,
}

/// The load of a set of pods: the sum of the named metrics over the pods that answered, or
/// `None` when none did (the autoscaler then holds).
pub trait LoadSource: Send + Sync {
    /// Total load over `pods`, and how many answered.
    fn load<'a>(&'a self, pods: &'a [PodTarget], metrics: &'a [String]) -> BoxFuture<'a, Option<(f64, i32)>>;
}

/// Sums the values of the named metrics in a Prometheus text exposition (all label sets).
pub fn sum_metrics(text: &str, names: &[String]) -> Option<f64> {
    let mut total = 0.0;
    let mut found = false;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !names.iter().any(|n| n == name) {
            continue;
        }
        // The value follows the labels (which may hold spaces inside quotes).
        let rest = match line[name_end..].strip_prefix('{') {
            Some(labels) => labels.rfind('}').map_or("", |i| &labels[i + 1..]),
            None => &line[name_end..],
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok())
            && v.is_finite()
        {
            total += v;
            found = true;
        }
    }
    found.then_some(total)
}

/// Scrapes `http://<pod IP>:<port>/metrics` of each pod.
pub struct HttpScraper {
    client: reqwest::Client,
}

impl Default for HttpScraper {
    fn default() -> Self {
        let client = crate::http_client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|_| crate::http_client::client());
        Self { client }
    }
}

impl LoadSource for HttpScraper {
    fn load<'a>(&'a self, pods: &'a [PodTarget], metrics: &'a [String]) -> BoxFuture<'a, Option<(f64, i32)>> {
        Box::pin(async move {
            let asks = pods.iter().filter_map(|p| p.ip.as_ref().map(|ip| (p, ip))).map(|(p, ip)| {
                let url = format!("http://{ip}:{}/metrics", p.port);
                let client = self.client.clone();
                async move {
                    let text = client.get(&url).send().await.ok()?.error_for_status().ok()?.text().await.ok()?;
                    sum_metrics(&text, metrics)
                }
            });
            let answers: Vec<f64> = futures::future::join_all(asks).await.into_iter().flatten().collect();
            if answers.is_empty() {
                None
            } else {
                Some((answers.iter().sum(), i32::try_from(answers.len()).unwrap_or(i32::MAX)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_of_the_named_metrics() {
        let text = "# HELP x\n# TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{model_name=\"a b\"} 3\n\
            vllm:num_requests_waiting{model_name=\"a b\"} 2.5\n\
            vllm:num_requests_running_total 99\n\
            flywheel_agent_in_flight_requests 4\n";
        let names = vec!["vllm:num_requests_running".to_string(), "vllm:num_requests_waiting".to_string()];
        assert_eq!(sum_metrics(text, &names), Some(5.5));
        assert_eq!(sum_metrics(text, &[AGENT_IN_FLIGHT.to_string()]), Some(4.0));
        assert_eq!(sum_metrics(text, &["absent".to_string()]), None);
        assert_eq!(sum_metrics("m{a=\"}\"} NaN\n", &["m".to_string()]), None);
    }
}
