//! Bulkhead's benchmark harness: the data path and the control plane
//! measured against a direct call and two-hop HAProxy mTLS, in one
//! interleaved run (see bench/README.md; `bench/run` is the entry point).
//!
//! [`setup`] starts the paths, [`rounds`] measures them in turn with the
//! open-loop [`loadgen`] and the independent [`tools`] (wrk, h2load,
//! iperf3), reading CPU and memory through [`procs`]; [`control`] measures
//! the control plane; [`report`] and [`plot`] write the results.

pub mod control;
pub mod loadgen;
pub mod plot;
pub mod procs;
pub mod report;
pub mod rounds;
pub mod setup;
pub mod tools;
