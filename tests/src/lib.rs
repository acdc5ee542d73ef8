//! Test support: starts real etcd servers, real `bulkhead-control`
//! processes and real clients, and cleans them up on drop. Tests read like
//! the scenario they check.

pub mod control;
pub mod etcd;
pub mod netns;
pub mod prom;
pub mod proxy;
