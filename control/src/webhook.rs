//! Sidecar injection: the mutating admission webhook (`/inject`, HTTPS) and
//! the offline `bulkheadctl inject`, which share one pure [`Injector`].
//!
//! One review's path: [`serve`] accepts, completes TLS and reads a bounded
//! POST body → [`Injector::review`] checks the `AdmissionReview` v1 envelope
//! ([`review`]) → [`Injector::plan`] decides for the pod and builds an
//! RFC 6902 JSON Patch ([`inject`]) from the containers and volumes that
//! [`sidecar`] describes → the response carries the patch as base64 of its
//! JSON, `patchType: JSONPatch`.
//!
//! Which pods get here is the API server's business (the webhook
//! configuration's `namespaceSelector` / `objectSelector`); the injector
//! injects every pod it is asked about unless the pod opts out
//! (`bulkhead.dev/inject: disabled`), is already injected, or uses the
//! host's network. The annotations it reads are listed in [`inject`]; how
//! the app's kubelet probes survive inbound capture is in [`probes`].
//!
//! The listener's certificate is given as files (bring your own, e.g.
//! cert-manager's) or made and renewed here from the mesh issuer
//! ([`certificate`]); then [`ca_bundle`] keeps the webhook configuration's
//! `caBundle` equal to the trust bundle, so the API server trusts it.

pub mod ca_bundle;
pub mod certificate;
pub mod inject;
pub mod probes;
pub mod review;
mod server;
pub mod settings;
pub mod sidecar;

#[cfg(test)]
mod tests;

pub use inject::{Action, InvalidPod, Outcome, Unchanged};
pub use review::{MalformedReview, ReviewError, Reviewed, Verdict};
pub use server::{MAX_BODY_BYTES, serve, server_config};
pub use settings::{
    InjectorSettings, ProxyPorts, ProxyResources, SettingsError, default_proxy_image,
    is_dns_subdomain,
};

/// Decides injection for pods and answers admission reviews. Cheap to
/// share: build it once from [`InjectorSettings`] and put it in an `Arc`.
#[derive(Clone, Debug)]
pub struct Injector {
    settings: InjectorSettings,
}

impl Injector {
    /// Checks the settings; every bad value is reported with its name.
    pub fn new(settings: InjectorSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(Self { settings })
    }

    pub fn settings(&self) -> &InjectorSettings {
        &self.settings
    }
}
