//! The policy's retrains as status and its RetrainJobs record them (pure): the names of a
//! trigger and its RetrainJob, sequence numbers, the last retrain. Shared by `observe` (the
//! statistics since the last retrain) and `decide`.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::context::LABEL_TRIGGER_SEQ;
use crate::api::feedback_policy::{FeedbackPolicy, FeedbackPolicyStatus};
use crate::api::retrain_job::RetrainJob;

/// The name of the RetrainJob of a policy's `seq`-th trigger: short enough that its Jobs'
/// names (`<retrainjob>-<attempt>`) stay within the 63 characters of a label value.
pub fn retrain_job_name(policy: &str, seq: i64) -> String {
    let suffix = format!("-{seq}");
    let room = 59usize.saturating_sub(suffix.len());
    let mut head: String = policy.chars().take(room).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// The identifier of a policy's `seq`-th trigger.
pub fn trigger_id(seq: i64) -> String {
    format!("trigger-{seq}")
}

/// The trigger sequence number of a RetrainJob the policy made.
pub fn seq_of(rtj: &RetrainJob) -> Option<i64> {
    rtj.labels().get(LABEL_TRIGGER_SEQ).and_then(|s| s.parse().ok())
}

pub fn seq_of_trigger(id: &str) -> Option<i64> {
    id.strip_prefix("trigger-").and_then(|s| s.parse().ok())
}

pub fn time_of(rtj: &RetrainJob) -> Option<Timestamp> {
    rtj.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

pub fn recorded_seq(status: &FeedbackPolicyStatus) -> i64 {
    status.last_trigger.as_ref().and_then(|t| seq_of_trigger(&t.id)).unwrap_or(0)
}

/// A RetrainJob this policy created but did not record (a crash between the two), if any.
pub fn unrecorded<'a>(status: &FeedbackPolicyStatus, rtjs: &'a [RetrainJob]) -> Option<&'a RetrainJob> {
    rtjs.last().filter(|latest| seq_of(latest).unwrap_or(0) > recorded_seq(status))
}

/// The last retrain: the last trigger that created a RetrainJob (kept for good; the list of
/// recent retrains only covers 24 hours), or a RetrainJob found but not yet recorded.
pub fn last_retrain(policy: &FeedbackPolicy, rtjs: &[RetrainJob]) -> Option<Timestamp> {
    let status = policy.status.clone().unwrap_or_default();
    let recorded = status.last_trigger.as_ref().filter(|t| t.retrain_job.is_some()).map(|t| t.time.0);
    let adopted = unrecorded(&status, rtjs).and_then(time_of);
    recorded.into_iter().chain(status.recent_retrains.iter().map(|t| t.0)).chain(adopted).max()
}
