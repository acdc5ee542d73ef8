//! `bulkhead-proxy`, the sidecar beside every workload.
//!
//! A request's path, outbound: [`outbound`] (the app's plain call on an
//! `--upstream` listener, a mesh-DNS listener or [`capture`]) → [`route`]
//! (version) → [`balance`] (endpoint) → [`pool`] (mTLS to that endpoint's
//! sidecar, [`wire`] preface) → inbound there: [`inbound`] (TLS, identity)
//! → [`policy`] (AllowList, path) → app.
//!
//! At the edge: [`gateway`] (`bulkhead-proxy gateway`) takes outside HTTP,
//! authenticates end users and sends requests the same outbound way.
//!
//! Around it: [`run`] assembles the sidecar from [`config`]; every
//! listener runs [`accept`]'s loop, holds to [`limits`] (connections,
//! handshakes, head size and time, streams, resets, pending requests) and
//! shuts down through [`drain`];
//! [`identity`] keeps the certificate, [`trust`] the bundle in force,
//! [`control_client`] the [`state`]
//! (subscribed to what [`subscriptions`] asks for, grown on demand);
//! [`admin`] serves /metrics, /ready, /live, /config; [`dns`] answers mesh
//! names; [`egress`] decides which captured connections may leave the
//! mesh (`Egress` rules, SNI/Host, resolved addresses); [`telemetry`] holds request metrics and this version's inbound
//! aggregates (reported by [`control_client`]); [`events`] what this
//! sidecar tells the mesh event stream (ejections, aggregated denials),
//! never blocking the data path; [`http`] the plumbing both
//! directions share; [`upgrade`] carries HTTP `Upgrade` (WebSocket) across.
//!
//! Public only what other crates use: [`cli::main`] (the binary, and the
//! demo's sidecars), and [`policy`], [`wire`] and `fuzz` (entry points into
//! every parser of untrusted bytes) for the fuzz targets.

mod accept;
mod admin;
mod balance;
mod capture;
pub mod cli;
mod config;
mod control_client;
mod dns;
mod drain;
mod egress;
mod events;
#[doc(hidden)]
pub mod fuzz;
mod gateway;
mod http;
mod identity;
mod inbound;
mod limits;
mod outbound;
pub mod policy;
mod pool;
mod route;
mod run;
mod state;
mod subscriptions;
mod telemetry;
mod trust;
mod upgrade;
pub mod wire;
