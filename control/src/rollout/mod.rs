//! Progressive delivery: the rollout controller. One replica at a time
//! ([`leader`]) steps each `Rollout` through its steps ([`machine`]),
//! judging each interval ([`judge`]) on what sidecars report about their
//! inbound traffic ([`crate::measure`]), and writes the service's
//! `TrafficSplit` to match ([`controller`]). The status it keeps
//! ([`status`]) is what `bulkheadctl rollout status` shows; operators
//! steer with commands the admin API queues for the leader.

pub(crate) mod controller;
pub mod judge;
pub(crate) mod leader;
pub mod machine;
pub mod status;
pub mod view;

pub use status::{Phase, RolloutStatus};
