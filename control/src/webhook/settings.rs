//! How sidecars are made: images, the control plane's in-cluster URL, the
//! trust bundle ConfigMap, the proxy's UID, ports and resources. Checked
//! once, when the [`Injector`](super::Injector) is built.

/// How sidecars are made. Defaults suit the Helm chart's install.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectorSettings {
    /// The sidecar (`bulkhead-proxy run`).
    pub proxy_image: String,
    /// The capture init container (`bulkhead-proxy init-iptables`); the
    /// same image by default.
    pub init_image: String,
    /// `imagePullPolicy` of both containers; None: Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// The control plane as sidecars reach it (in-cluster URL).
    pub control_url: String,
    /// ConfigMap (in the pod's namespace) whose `bundle.crt` is the trust
    /// bundle; used only when `trust_bundle_pem` is None.
    pub trust_bundle_config_map: String,
    /// The trust bundle itself (PEM), injected inline as
    /// `BULKHEAD_TRUST_BUNDLE_PEM`: the control plane sets it, so pods in any
    /// namespace start without a ConfigMap there.
    pub trust_bundle_pem: Option<String>,
    /// UID (and GID) the proxy runs as; init-iptables exempts its traffic.
    pub proxy_uid: i64,
    pub ports: ProxyPorts,
    /// Redirect the pod's DNS (UDP/TCP 53) to the sidecar's DNS server.
    pub redirect_dns: bool,
    pub resources: ProxyResources,
    /// The proxy's `--log-level`.
    pub log_level: String,
}

/// The sidecar's ports (DESIGN.md "Ports"; `dns` only with DNS redirect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
    pub dns: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            inbound: 4143,
            outbound: 4140,
            admin: 4191,
            dns: 4153,
        }
    }
}

/// The proxy container's resources, as Kubernetes quantities; None: unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyResources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        Self {
            cpu_request: Some("10m".into()),
            memory_request: Some("32Mi".into()),
            // No CPU limit: throttling a proxy adds latency to every call.
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// The proxy image this build of Bulkhead goes with.
pub fn default_proxy_image() -> String {
    format!(
        "ghcr.io/bulkhead/bulkhead-proxy:{}",
        env!("CARGO_PKG_VERSION")
    )
}

impl Default for InjectorSettings {
    fn default() -> Self {
        Self {
            proxy_image: default_proxy_image(),
            init_image: default_proxy_image(),
            image_pull_policy: None,
            control_url: "https://bulkhead-control.bulkhead.svc:8443".into(),
            trust_bundle_config_map: "bulkhead-trust-bundle".into(),
            trust_bundle_pem: None,
            proxy_uid: 2102,
            ports: ProxyPorts::default(),
            redirect_dns: false,
            resources: ProxyResources::default(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {problem}")]
pub struct SettingsError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        setting,
        problem: problem.into(),
    }
}

impl InjectorSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        for (setting, image) in [
            ("proxy image", &self.proxy_image),
            ("init image", &self.init_image),
        ] {
            if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(setting, format!("{image:?} is not an image reference")));
            }
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err(bad(
                "image pull policy",
                format!("{policy:?}: expected Always, IfNotPresent or Never"),
            ));
        }
        let url_ok = self
            .control_url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !url_ok {
            return Err(bad(
                "control URL",
                format!("{:?}: expected https://HOST[:PORT]", self.control_url),
            ));
        }
        if !is_dns_subdomain(&self.trust_bundle_config_map) {
            return Err(bad(
                "trust bundle ConfigMap",
                format!("{:?} is not a ConfigMap name", self.trust_bundle_config_map),
            ));
        }
        if self.proxy_uid <= 0 || self.proxy_uid > i64::from(u32::MAX) {
            return Err(bad(
                "proxy UID",
                format!("{}: expected a non-root UID", self.proxy_uid),
            ));
        }
        let p = self.ports;
        let mut ports = vec![p.inbound, p.outbound, p.admin];
        if self.redirect_dns {
            ports.push(p.dns);
        }
        if ports.contains(&0) {
            return Err(bad("ports", "0 is not a port"));
        }
        ports.sort_unstable();
        if ports.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("ports", format!("{p:?}: every port must differ")));
        }
        let r = &self.resources;
        for (setting, q) in [
            ("proxy CPU request", &r.cpu_request),
            ("proxy memory request", &r.memory_request),
            ("proxy CPU limit", &r.cpu_limit),
            ("proxy memory limit", &r.memory_limit),
        ] {
            if let Some(q) = q
                && !is_quantity(q)
            {
                return Err(bad(
                    setting,
                    format!("{q:?} is not a quantity like 100m, 0.5 or 64Mi"),
                ));
            }
        }
        if self.log_level.is_empty() || self.log_level.contains(char::is_whitespace) {
            return Err(bad(
                "log level",
                format!("{:?}: expected e.g. info or debug", self.log_level),
            ));
        }
        Ok(())
    }
}

/// A Kubernetes quantity: a decimal number and an optional suffix.
fn is_quantity(q: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && SUFFIXES.contains(&suffix)
}

/// RFC 1123 subdomain, lower case: names of ConfigMaps, workloads and
/// webhook configurations, and the DNS names of Services.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
