//! The ModelDeployment controller, as four steps over the shared skeleton: validate (pure: the
//! parsed model sources, `validate`) → observe (reads: references, the tracks' children, the
//! canary's analysis, the pods' load, `observe`) → decide (pure, `decide`: the rollout's state
//! machine and the autoscaler put together into children, status, Events and a requeue) →
//! apply (writes, `apply`). The children are built by `children` (pure); the canary's evidence
//! comes from `feedback_analysis`; the autoscaler's I/O-free parts are in `scaling`.

pub mod adapters;
pub mod apply;
pub mod children;
pub mod context;
pub mod decide;
pub mod feedback_analysis;
pub mod observe;
pub mod observed;
pub mod replicas;
pub mod scaling;
pub mod validate;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

pub use self::context::{CONTROLLER, FIELD_MANAGER, ModelDeploymentError, ModelDeployments};
use crate::api::model_deployment::ModelDeployment;
use crate::operator::skeleton::{Reconciler, Shared, record_failure_in_status};

impl Reconciler for ModelDeployments {
    type Object = ModelDeployment;
    type Error = ModelDeploymentError;
    const NAME: &'static str = CONTROLLER;

    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn reconcile(&self, md: &ModelDeployment) -> Result<Action, ModelDeploymentError> {
        if md.metadata.deletion_timestamp.is_some() {
            // Children go with the owner through their owner references.
            return Ok(Action::await_change());
        }
        let now = Timestamp::now();
        let decision = match validate::validate(md)? {
            Err(invalid) => decide::stalled(md, invalid.reason, &invalid.message, now),
            Ok(valid) => {
                let observed = observe::observe(self, md, &valid, now).await?;
                decide::decide(md, &valid, &observed, &self.settings, now)?
            }
        };
        let ns = md.namespace().unwrap_or_default();
        apply::apply(self, md, &ns, decision).await
    }

    async fn record_failure(&self, md: &ModelDeployment, error: &ModelDeploymentError) {
        record_failure_in_status(&self.shared, md, error).await;
    }
}
