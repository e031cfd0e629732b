//! `flywheel operator`: the controllers of the three kinds over one skeleton, leader election,
//! health and metrics endpoints, and graceful shutdown.
//!
//! | module | what it holds |
//! | --- | --- |
//! | `config` | the operator's settings and the namespaces it watches |
//! | `runtime` | leader election, the controllers per watched namespace, the endpoints, shutdown |
//! | `skeleton` | the one wrapper of every controller (metrics, logs, Events, a failure in status, backoff) |
//! | `model_deployment`, `feedback_policy`, `retrain_job` | one controller each: observe, validate, decide, apply |
//! | `events` | Events (`events.k8s.io/v1`), a repeat counting up one series, with a bounded memory |
//! | `leader`, `metrics` | the Lease election, Prometheus metrics (the collector's client is `crate::collector::client`) |

pub mod config;
pub mod events;
pub mod feedback_policy;
pub mod leader;
pub mod metrics;
pub mod model_deployment;
pub mod retrain_job;
pub mod runtime;
pub mod skeleton;

pub use self::config::{OperatorConfig, Scope, default_image};
pub use self::runtime::{Operator, OperatorError, start};
