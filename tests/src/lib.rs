//! Test support: starts real etcd servers, real `bulkhead-control`
//! processes, real sidecars and real clients, and cleans them up on drop.
//! Tests read like the scenario they check.
//!
//! - [`control`]: the CA, the control plane process, gRPC clients, waits.
//! - [`etcd`]: etcd servers and clusters on free ports.
//! - [`events`]: the mesh event stream as scripts read it, and waits for an event.
//! - [`proxy`]: sidecar processes and in-process sample apps.
//! - [`mesh`]: the one mesh setup (CA, control plane, resources, sidecars).
//! - [`shop`]: the resilience scenarios' shop and load helpers.
//! - [`security`]: hostile certificates and a hand-driven mesh client.
//! - [`certify`]: Certify/Renew scenario helpers.
//! - [`admission`]: AdmissionReview fixtures and the webhook listener.
//! - [`attack`]: hand-written attackers (raw HTTP/2 frames, slow and idle
//!   clients) and a sidecar's memory and descriptors.
//! - [`gateway`]: end-user tokens signed with each algorithm, forged ones,
//!   JWKS servers that rotate or stop, and the shop behind a gateway.
//! - [`netns`]: network-namespace "nodes" and "pods" for capture tests.
//! - [`prom`]: the one Prometheus text reader.
//! - [`rollout`]: Rollout documents, canary apps that fail on purpose, status reads.
//! - [`rotation`]: a second root, the trust record, what sidecars trust.
//! - [`browser`]: headless Chromium over WebDriver, for the dashboard.
//! - [`dashboard`]: the dashboard process, its raw event stream, and
//!   events published as a sidecar would.
//! - [`apiserver`]: a stand-in Kubernetes API server (HTTPS, bearer token;
//!   GET, and JSON Patch of the objects it holds).
//!
//! Every binary is started on port 0 and reports the ports it bound
//! (`--addresses-file`), so no test picks a port another can take.

pub mod admission;
pub mod apiserver;
pub mod attack;
pub mod browser;
pub mod certify;
pub mod control;
pub mod dashboard;
pub mod etcd;
pub mod events;
pub mod gateway;
pub mod mesh;
pub mod netns;
pub mod prom;
pub mod proxy;
pub mod rollout;
pub mod rotation;
pub mod security;
pub mod shop;
