//! The RetrainJob controller, as four steps over the shared skeleton: observe (the attempts'
//! Jobs, the open attempt's pods, the target, `observe`) → decide (pure: how the open attempt
//! ended, whether the next starts, the hand-over, `decide`; the Job built by `job`, the end read
//! by `result`) → apply (the Job, the hand-over, the status, `apply`). `pods` guards the
//! trainer pods' results until they are recorded.
//!
//! Restart-safe: a Job's name is its attempt's (`<retrainjob>-<n>`), a Job found without its
//! attempt in status is adopted, and a create that finds the Job already there changes
//! nothing, so one attempt never has two Jobs.

pub mod apply;
pub mod context;
pub mod decide;
pub mod evaluation;
pub mod job;
pub mod observe;
pub mod pods;
pub mod result;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

pub use self::context::{CONTROLLER, MAX_ATTEMPTS, RetrainError, RetrainJobs, lineage};
use crate::api::retrain_job::RetrainJob;
use crate::operator::skeleton::{Reconciler, Shared, record_failure_in_status};

impl Reconciler for RetrainJobs {
    type Object = RetrainJob;
    type Error = RetrainError;
    const NAME: &'static str = CONTROLLER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn reconcile(&self, rtj: &RetrainJob) -> Result<Action, RetrainError> {
        if rtj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = rtj.namespace().ok_or(RetrainError::Malformed("a namespace"))?;
        let uid = rtj.uid().ok_or(RetrainError::Malformed("a uid"))?;
        let now = Timestamp::now();
        let observed = observe::observe(self, rtj, &ns, &uid).await?;
        let decision = decide::decide(rtj, &observed, &self.settings, now)?;
        apply::apply(self, rtj, &ns, decision, now).await
    }

    async fn record_failure(&self, rtj: &RetrainJob, error: &RetrainError) {
        record_failure_in_status(&self.shared, rtj, error).await;
    }
}
