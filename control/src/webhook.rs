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
pub use server::{MAX_BODY_BYTES, serve};
pub use settings::{
    InjectorSettings, ProxyPorts, ProxyResources, SettingsError, default_proxy_image,
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
