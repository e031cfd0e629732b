//! Pure helpers for status conditions: setting one moves `lastTransitionTime` only when its
//! status flips, so a reconcile that changes nothing writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::common::{CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, Condition, ConditionStatus};

/// A condition as a controller wants it, before times are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: ConditionStatus,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Desired {
    /// A desired condition.
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// Set `desired` in `conditions` for `generation` at `now`. The transition time is kept when the
/// status does not change; reason, message and observed generation are updated. Returns whether
/// anything changed.
pub fn set(conditions: &mut Vec<Condition>, desired: &Desired, generation: Option<i64>, now: &Time) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            let mut changed = false;
            if existing.status != desired.status {
                existing.status = desired.status;
                existing.last_transition_time = now.clone();
                changed = true;
            }
            if existing.reason != desired.reason {
                existing.reason.clone_from(&desired.reason);
                changed = true;
            }
            if existing.message != desired.message {
                existing.message.clone_from(&desired.message);
                changed = true;
            }
            if existing.observed_generation != generation {
                existing.observed_generation = generation;
                changed = true;
            }
            changed
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_string(),
                status: desired.status,
                observed_generation: generation,
                last_transition_time: now.clone(),
                reason: desired.reason.clone(),
                message: desired.message.clone(),
            });
            true
        }
    }
}

/// A status with kstatus conditions and an observed generation: what the controller skeleton
/// needs to record a failed reconcile in any of the three kinds' status.
pub trait Conditioned {
    /// The conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl Conditioned for super::model_deployment::ModelDeploymentStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditioned for super::feedback_policy::FeedbackPolicyStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditioned for super::retrain_job::RetrainJobStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Find a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// The overall health of an object in kstatus terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Everything is as the spec asks.
    Ready { reason: String, message: String },
    /// Work is under way; it will get there without help.
    Progressing { reason: String, message: String },
    /// It cannot get there without a change from the user.
    Stalled { reason: String, message: String },
}

/// The three kstatus conditions (`Ready`, `Reconciling`, `Stalled`) for `health`. A condition
/// that does not apply is set `False`, never removed, so `kubectl wait` always finds it.
pub fn kstatus(health: &Health) -> [Desired; 3] {
    use ConditionStatus::{False, True};
    match health {
        Health::Ready { reason, message } => [
            Desired::new(CONDITION_READY, True, reason.clone(), message.clone()),
            Desired::new(CONDITION_RECONCILING, False, reason.clone(), ""),
            Desired::new(CONDITION_STALLED, False, reason.clone(), ""),
        ],
        Health::Progressing { reason, message } => [
            Desired::new(CONDITION_READY, False, reason.clone(), message.clone()),
            Desired::new(CONDITION_RECONCILING, True, reason.clone(), message.clone()),
            Desired::new(CONDITION_STALLED, False, reason.clone(), ""),
        ],
        Health::Stalled { reason, message } => [
            Desired::new(CONDITION_READY, False, reason.clone(), message.clone()),
            Desired::new(CONDITION_RECONCILING, False, reason.clone(), ""),
            Desired::new(CONDITION_STALLED, True, reason.clone(), message.clone()),
        ],
    }
}

/// Apply [`kstatus`] of `health` to `conditions`; returns whether anything changed.
pub fn set_health(conditions: &mut Vec<Condition>, health: &Health, generation: Option<i64>, now: &Time) -> bool {
    let mut changed = false;
    for desired in kstatus(health) {
        changed |= set(conditions, &desired, generation, now);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut conds = Vec::new();
        let ready = Desired::new(CONDITION_READY, ConditionStatus::True, "Available", "ok");
        assert!(set(&mut conds, &ready, Some(1), &at(10)));
        assert!(!set(&mut conds, &ready, Some(1), &at(20)), "an identical set changes nothing");
        assert_eq!(conds[0].last_transition_time, at(10));

        let msg = Desired::new(CONDITION_READY, ConditionStatus::True, "Available", "still ok");
        assert!(set(&mut conds, &msg, Some(2), &at(30)));
        assert_eq!(conds[0].last_transition_time, at(10), "message change is no transition");
        assert_eq!(conds[0].observed_generation, Some(2));

        let down = Desired::new(CONDITION_READY, ConditionStatus::False, "Degraded", "no");
        assert!(set(&mut conds, &down, Some(2), &at(40)));
        assert_eq!(conds[0].last_transition_time, at(40));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn kstatus_sets_all_three() {
        let mut conds = Vec::new();
        let stalled = Health::Stalled { reason: "MissingPVC".into(), message: "pvc models not found".into() };
        assert!(set_health(&mut conds, &stalled, Some(3), &at(1)));
        assert_eq!(conds.len(), 3);
        assert!(is_true(&conds, CONDITION_STALLED));
        assert!(!is_true(&conds, CONDITION_READY));
        assert!(!set_health(&mut conds, &stalled, Some(3), &at(2)));
        let ready = Health::Ready { reason: "Available".into(), message: "serving v1".into() };
        assert!(set_health(&mut conds, &ready, Some(3), &at(3)));
        assert!(is_true(&conds, CONDITION_READY));
        assert!(!is_true(&conds, CONDITION_STALLED));
        assert_eq!(get(&conds, CONDITION_READY).map(|c| c.last_transition_time.clone()), Some(at(3)));
    }
}
