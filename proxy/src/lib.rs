//! `bulkhead-proxy`, the sidecar beside every workload.
//!
//! A request's path, outbound: [`outbound`] (app's plain call on a
//! `--upstream` listener) → [`route`] (version) → [`balance`] (endpoint) →
//! [`pool`] (mTLS to that endpoint's sidecar, [`wire`] preface) → inbound
//! there: [`inbound`] (TLS, identity) → [`policy`] (AllowList, path) → app.
//! [`identity`] keeps the certificate, [`control_client`] the [`state`];
//! [`admin`] serves /metrics, /ready, /live, /config; [`run`] assembles it.

pub mod admin;
pub mod balance;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control_client;
pub mod dns;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod policy;
pub mod pool;
pub mod route;
pub mod run;
pub mod state;
pub mod telemetry;
pub mod wire;
