//! `bulkhead-proxy run` configuration: flags, each also readable from
//! `BULKHEAD_<FLAG>`; parsed and checked once, here, into a plain
//! [`Config`] the rest of the proxy reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use bulkhead_process::{LogFormat, parse_duration};
use bulkhead_proto::identity::validate_name;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::limits::Limits;

#[derive(Debug, Parser)]
#[command(name = "bulkhead-proxy", version, about = "The Bulkhead sidecar proxy", after_help = EXAMPLES, args_override_self = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the sidecar beside one workload.
    Run(Box<RunArgs>),
    /// Install transparent capture in this network namespace (the pod's init container).
    InitIptables(crate::capture::InitArgs),
    /// Run an API gateway: outside HTTP in, routed into the mesh by a Gateway resource.
    Gateway(Box<crate::gateway::GatewayArgs>),
}

const EXAMPLES: &str = "\
Examples:
  bulkhead-proxy run --control https://bulkhead-control:8443 --trust-bundle bundle.crt \\
      --token-file token --namespace shop --service cart --version 2.0.1 \\
      --app 127.0.0.1:8080 --upstream inventory=127.0.0.1:9001 --node node-1 --zone a";

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Control-plane URL.
    #[arg(
        long,
        env = "BULKHEAD_CONTROL",
        default_value = "https://127.0.0.1:8443",
        value_name = "URL"
    )]
    pub control: String,
    /// Trust bundle (root certificates, PEM) to verify the control plane and peers.
    #[arg(
        long,
        env = "BULKHEAD_TRUST_BUNDLE",
        value_name = "FILE",
        required_unless_present = "trust_bundle_pem"
    )]
    pub trust_bundle: Option<PathBuf>,
    /// The trust bundle itself (PEM text), instead of --trust-bundle (the
    /// admission webhook injects it this way).
    #[arg(
        long,
        env = "BULKHEAD_TRUST_BUNDLE_PEM",
        value_name = "PEM",
        hide_env_values = true,
        conflicts_with = "trust_bundle"
    )]
    pub trust_bundle_pem: Option<String>,
    /// Bootstrap token for the first certificate (later ones renew with the current certificate).
    #[arg(long, env = "BULKHEAD_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,
    /// What --token-file holds: a bootstrap token, or a Kubernetes projected
    /// service-account token (re-read at each use: the kubelet rotates it).
    #[arg(
        long,
        env = "BULKHEAD_ATTESTATION",
        value_enum,
        default_value = "token"
    )]
    pub attestation: Attestation,
    /// Trust domain (default: the one the bundle's roots name, else cluster.local).
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    #[arg(long, env = "BULKHEAD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The service this workload serves (required for `run`; a gateway's
    /// is `gateway-<name>`).
    #[arg(long, env = "BULKHEAD_SERVICE")]
    pub service: Option<String>,
    /// The workload's version (registered; TrafficSplits route by it).
    #[arg(long, env = "BULKHEAD_VERSION", default_value = "0.0.0")]
    pub version: String,
    /// Service account the certificate must name (default: the service
    /// name); the sidecar refuses to start under any other identity.
    #[arg(long, env = "BULKHEAD_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The local app the inbound side forwards to: `ADDR` for every
    /// declared port, or `PORT=ADDR` per declared port (repeatable; in the
    /// environment, comma-separated). A port no `PORT=` names goes to the
    /// bare `ADDR`, else to the only app given.
    #[arg(
        long,
        env = "BULKHEAD_APP",
        value_name = "[PORT=]ADDR",
        value_delimiter = ','
    )]
    pub app: Vec<String>,
    #[arg(
        long,
        env = "BULKHEAD_APP_PROTOCOL",
        value_enum,
        default_value = "http"
    )]
    pub app_protocol: AppProtocol,
    /// Inbound mTLS listener (the default takes IPv4 and IPv6; on a host
    /// without IPv6 it falls back to 0.0.0.0:4143).
    #[arg(
        long,
        env = "BULKHEAD_INBOUND",
        default_value = "[::]:4143",
        value_name = "ADDR"
    )]
    pub inbound: SocketAddr,
    /// Address registered for this endpoint (default: the inbound IP, or 127.0.0.1 when that is unspecified).
    #[arg(long, env = "BULKHEAD_ADVERTISE", value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Transparent-capture listeners (where init-iptables redirects the pod's
    /// outbound TCP), e.g. 127.0.0.1:4140,[::1]:4140. None by default.
    #[arg(
        long = "outbound",
        env = "BULKHEAD_OUTBOUND",
        value_delimiter = ',',
        value_name = "ADDR,..."
    )]
    pub outbound: Vec<SocketAddr>,
    /// Captured connections to destinations outside the mesh: refuse (default) or allow.
    /// Only for a service no `Egress` resource names; one that is named gets its rules.
    #[arg(long, env = "BULKHEAD_EGRESS", value_enum, default_value = "deny")]
    pub egress: Egress,
    /// The resolver configuration `Egress` host rules are resolved with (the pod's).
    #[arg(
        long,
        env = "BULKHEAD_RESOLV_CONF",
        default_value = "/etc/resolv.conf",
        value_name = "FILE"
    )]
    pub resolv_conf: PathBuf,
    /// Admin listener: /metrics, /ready, /live, /config.
    #[arg(
        long,
        env = "BULKHEAD_ADMIN",
        default_value = "127.0.0.1:4191",
        value_name = "ADDR"
    )]
    pub admin: SocketAddr,
    /// Local listener for a service: NAME[.NS][:PORT]=ADDR (repeatable).
    #[arg(
        long = "upstream",
        env = "BULKHEAD_UPSTREAM",
        value_delimiter = ',',
        value_name = "NAME[.NS][:PORT]=ADDR"
    )]
    pub upstreams: Vec<String>,
    /// DNS server for mesh names (optional; several addresses, comma
    /// separated, e.g. 127.0.0.1:4153,[::1]:4153 for both families).
    #[arg(
        long,
        env = "BULKHEAD_DNS",
        value_name = "ADDR,...",
        value_delimiter = ','
    )]
    pub dns: Vec<SocketAddr>,
    /// The cluster's DNS domain (for <svc>.<ns>.svc.<domain> names).
    #[arg(long, env = "BULKHEAD_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, env = "BULKHEAD_NODE", default_value = "")]
    pub node: String,
    #[arg(long, env = "BULKHEAD_ZONE", default_value = "")]
    pub zone: String,
    #[arg(long, env = "BULKHEAD_REGION", default_value = "")]
    pub region: String,
    /// Where the last good config is kept, to start without a control plane.
    #[arg(long, env = "BULKHEAD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Once every listener is bound, write their addresses here as JSON
    /// (for listeners given port 0: tests and tools learn the ports chosen).
    #[arg(long, env = "BULKHEAD_ADDRESSES_FILE", value_name = "FILE")]
    pub addresses_file: Option<PathBuf>,
    /// Longest a request may take end to end.
    #[arg(long, env = "BULKHEAD_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Opaque TCP streams with no data either way for this long are closed.
    #[arg(long, env = "BULKHEAD_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, env = "BULKHEAD_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long inbound keeps accepting once deregistered,
    /// so the deregistration reaches callers first (at most half of
    /// --drain-timeout).
    #[arg(long, env = "BULKHEAD_DEREGISTER_DELAY", default_value = "2s", value_parser = parse_delay)]
    pub deregister_delay: Duration,
    /// Connections each inbound, outbound (`--upstream`, mesh DNS) and
    /// capture listener holds at once; past it a new connection is closed
    /// at once and counted.
    #[arg(long, env = "BULKHEAD_MAX_CONNECTIONS", default_value = "10000", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Connections the admin port holds at once (probes and scrapes).
    #[arg(long, env = "BULKHEAD_MAX_ADMIN_CONNECTIONS", default_value = "64", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_admin_connections: u32,
    /// TCP connections the mesh DNS server (`--dns`) holds at once.
    #[arg(long, env = "BULKHEAD_MAX_DNS_CONNECTIONS", default_value = "64", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_dns_connections: u32,
    /// Inbound connections whose TLS handshake is not finished, at once;
    /// past it a new connection is closed at once and counted.
    #[arg(long, env = "BULKHEAD_MAX_HANDSHAKES", default_value = "256", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_handshakes: u32,
    /// How long an HTTP/1 client (the app, a probe on the admin port) may
    /// take to send a request's headers; an idle keep-alive connection is
    /// closed after as long.
    #[arg(long, env = "BULKHEAD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// The largest request or response head in bytes, counted as HTTP/2
    /// does (name + value + 32 per field): the caller's sidecar answers
    /// 431 to a larger request. Give every sidecar the same value.
    #[arg(long, env = "BULKHEAD_MAX_HEADER_BYTES", default_value = "65536", value_name = "BYTES", value_parser = clap::value_parser!(u32).range(4096..=262_144))]
    pub max_header_bytes: u32,
    /// Streams one HTTP/2 connection (from the app, or from another
    /// sidecar) may have open at once.
    #[arg(long, env = "BULKHEAD_MAX_CONCURRENT_STREAMS", default_value = "1024", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_concurrent_streams: u32,
    /// Inbound requests waiting for, or in flight to, the app at once; past
    /// it a request is answered 503 with `x-bulkhead-error: overloaded`.
    #[arg(long, env = "BULKHEAD_MAX_PENDING_REQUESTS", default_value = "1024", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_pending_requests: u32,
    /// An HTTP/2 connection (from the app, or from another sidecar) with no
    /// request for this long is closed (GOAWAY).
    #[arg(long, env = "BULKHEAD_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// An HTTP/2 connection (from the app, or another sidecar's) silent
    /// this long is sent a PING; one not answered in 10 s is closed.
    #[arg(long = "http2-keepalive", env = "BULKHEAD_HTTP2_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive: Duration,
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[arg(long, env = "BULKHEAD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Threads serving traffic (1-64). One keeps a request's hops on one
    /// thread, which costs the least CPU per request; raise it only for a
    /// workload that needs more than one core of proxying.
    #[arg(long, env = "BULKHEAD_WORKERS", default_value = "1", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Check every flag and BULKHEAD_* value, print the effective
    /// configuration as JSON and exit (0: valid, 2: not); reads no file and
    /// starts nothing. For manifests and CI: what the injector writes is
    /// checked this way.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Attestation {
    /// A token from `bulkheadctl token create`.
    Token,
    /// A Kubernetes projected service-account token (audience `bulkhead`).
    K8sJwt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Egress {
    /// Refuse and count connections to unknown destinations.
    Deny,
    /// Pass them through unchanged (plain TCP, not mesh traffic).
    Allow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AppProtocol {
    Http,
    Grpc,
    Tcp,
}

/// One `--app`: where calls to a declared port (or to any port) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AppPort {
    /// The Service's declared port; `None`: every port no other `--app`
    /// names.
    pub port: Option<u16>,
    pub addr: SocketAddr,
}

impl AppPort {
    /// Parses `[PORT=]ADDR`.
    fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (port, addr) = match spec.split_once('=') {
            Some((port, addr)) => {
                let port = port
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{spec:?}: port {port:?} is not 1-65535"))?;
                (Some(port), addr)
            }
            None => (None, spec),
        };
        let addr = addr.trim().parse().map_err(|_| {
            format!("{spec:?}: expected [PORT=]IP:PORT, such as 8080=127.0.0.1:8080")
        })?;
        Ok(Self { port, addr })
    }

    /// Every `--app`, checked together: one bare `ADDR` at most, each
    /// declared port once.
    fn parse_all(specs: &[String]) -> Result<Vec<Self>, String> {
        let mut apps: Vec<Self> = Vec::with_capacity(specs.len());
        for spec in specs.iter().filter(|s| !s.trim().is_empty()) {
            let app = Self::parse(spec)?;
            if let Some(other) = apps.iter().find(|a| a.port == app.port) {
                return Err(match app.port {
                    Some(port) => {
                        format!("{spec:?}: port {port} is already sent to {}", other.addr)
                    }
                    None => format!(
                        "{spec:?}: only one --app may omit PORT= (already {})",
                        other.addr
                    ),
                });
            }
            apps.push(app);
        }
        Ok(apps)
    }
}

impl std::fmt::Display for AppPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{port}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Where the trust bundle comes from.
#[derive(Clone, Debug)]
pub(crate) enum TrustSource {
    File(PathBuf),
    Pem(String),
}

impl TrustSource {
    /// The PEM text and a name for it in errors.
    pub(crate) fn read(&self) -> Result<(Vec<u8>, String), String> {
        match self {
            Self::File(path) => std::fs::read(path)
                .map(|pem| (pem, path.display().to_string()))
                .map_err(|e| format!("--trust-bundle {}: {e}", path.display())),
            Self::Pem(pem) => Ok((
                pem.clone().into_bytes(),
                "BULKHEAD_TRUST_BUNDLE_PEM".to_owned(),
            )),
        }
    }
}

/// A local listener for one service (`--upstream`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub service: String,
    pub namespace: String,
    /// The Service's declared port; `None`: its only port.
    pub port: Option<u16>,
    pub listen: SocketAddr,
}

impl Upstream {
    /// The target as `--upstream` names it: `NAME.NS[:PORT]`.
    pub(crate) fn target(&self) -> String {
        match self.port {
            Some(port) => format!("{}.{}:{port}", self.service, self.namespace),
            None => format!("{}.{}", self.service, self.namespace),
        }
    }

    /// Parses `NAME[.NS][:PORT]=ADDR`; the namespace defaults to ours.
    pub(crate) fn parse(spec: &str, own_namespace: &str) -> Result<Self, String> {
        let (target, addr) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected NAME[.NS][:PORT]=ADDR"))?;
        let listen: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{spec:?}: {addr:?} is not an IP:PORT listen address"))?;
        let (name, port) = match target.rsplit_once(':') {
            Some((name, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{spec:?}: port {port:?} is not 1-65535"))?;
                (name, Some(port))
            }
            None => (target, None),
        };
        let (service, namespace) = name.split_once('.').unwrap_or((name, own_namespace));
        validate_name("service", service).map_err(|e| format!("{spec:?}: {e}"))?;
        validate_name("namespace", namespace).map_err(|e| format!("{spec:?}: {e}"))?;
        Ok(Self {
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            port,
            listen,
        })
    }
}

/// The sidecar's settings, validated.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub control: String,
    pub trust_bundle: TrustSource,
    pub token_file: PathBuf,
    pub attestation: Attestation,
    pub trust_domain: Option<String>,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub service_account: String,
    pub app: Vec<AppPort>,
    pub app_protocol: AppProtocol,
    pub inbound: SocketAddr,
    pub advertise: IpAddr,
    pub admin: SocketAddr,
    pub outbound: Vec<SocketAddr>,
    pub egress: Egress,
    pub resolv_conf: PathBuf,
    pub upstreams: Vec<Upstream>,
    pub dns: Vec<SocketAddr>,
    pub cluster_domain: String,
    pub locality: bulkhead_proto::model::Locality,
    pub state_dir: Option<PathBuf>,
    pub addresses_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub deregister_delay: Duration,
    pub limits: Limits,
    pub log_format: LogFormat,
    pub log_level: String,
    pub workers: usize,
}

impl Config {
    /// The effective configuration as `--check-config` prints it: every
    /// field, durations as humantime text, the trust bundle by source only
    /// (never its text).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let display = |v: &[SocketAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        serde_json::json!({
            "control": self.control,
            "trustBundle": match &self.trust_bundle {
                TrustSource::File(path) => serde_json::json!({"file": path}),
                TrustSource::Pem(pem) => serde_json::json!({"pemBytes": pem.len()}),
            },
            "tokenFile": self.token_file,
            "attestation": self.attestation.to_possible_value().map(|v| v.get_name().to_owned()),
            "trustDomain": self.trust_domain,
            "namespace": self.namespace,
            "service": self.service,
            "version": self.version,
            "serviceAccount": self.service_account,
            "app": self.app.iter().map(AppPort::to_string).collect::<Vec<_>>(),
            "appProtocol": self.app_protocol.to_possible_value().map(|v| v.get_name().to_owned()),
            "inbound": self.inbound.to_string(),
            "advertise": self.advertise.to_string(),
            "admin": self.admin.to_string(),
            "outbound": display(&self.outbound),
            "egress": self.egress.to_possible_value().map(|v| v.get_name().to_owned()),
            "resolvConf": self.resolv_conf,
            "upstreams": self.upstreams.iter().map(|u| serde_json::json!({
                "service": u.service,
                "namespace": u.namespace,
                "port": u.port,
                "listen": u.listen.to_string(),
            })).collect::<Vec<_>>(),
            "dns": display(&self.dns),
            "clusterDomain": self.cluster_domain,
            "locality": {
                "node": self.locality.node,
                "zone": self.locality.zone,
                "region": self.locality.region,
            },
            "stateDir": self.state_dir,
            "addressesFile": self.addresses_file,
            "requestTimeout": duration(self.request_timeout),
            "tcpIdleTimeout": duration(self.tcp_idle_timeout),
            "drainTimeout": duration(self.drain_timeout),
            "deregisterDelay": duration(self.deregister_delay),
            "limits": {
                "maxConnections": self.limits.max_connections,
                "maxAdminConnections": self.limits.max_admin_connections,
                "maxDnsConnections": self.limits.max_dns_connections,
                "maxHandshakes": self.limits.max_handshakes,
                "headerReadTimeout": duration(self.limits.header_read_timeout),
                "maxHeaderBytes": self.limits.max_header_bytes,
                "maxConcurrentStreams": self.limits.max_concurrent_streams,
                "maxPendingRequests": self.limits.max_pending_requests,
                "idleTimeout": duration(self.limits.idle_timeout),
                "http2Keepalive": duration(self.limits.http2_keepalive),
            },
            "logFormat": self.log_format.to_possible_value().map(|v| v.get_name().to_owned()),
            "logLevel": self.log_level,
            "workers": self.workers,
        })
    }

    /// Checks every value; an error names the flag.
    pub(crate) fn from_args(a: RunArgs) -> Result<Self, String> {
        validate_name("namespace", &a.namespace).map_err(|e| format!("--namespace: {e}"))?;
        let service = a
            .service
            .clone()
            .ok_or("--service: required: the service this workload serves")?;
        validate_name("service", &service).map_err(|e| format!("--service: {e}"))?;
        let service_account = a.service_account.clone().unwrap_or_else(|| service.clone());
        validate_name("service account", &service_account)
            .map_err(|e| format!("--service-account: {e}"))?;
        bulkhead_process::check_log_filter(&a.log_level)
            .map_err(|e| format!("--log-level: {e}"))?;
        let version_ok = !a.version.is_empty()
            && a.version.len() <= 64
            && a.version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        if !version_ok {
            return Err(format!(
                "--version {:?}: expected 1-64 characters of A-Z a-z 0-9 . _ + -",
                a.version
            ));
        }
        for (flag, value) in [
            ("--node", &a.node),
            ("--zone", &a.zone),
            ("--region", &a.region),
        ] {
            if value.len() > 128 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!(
                    "{flag} {value:?}: expected up to 128 printable characters without spaces"
                ));
            }
        }
        if let Some(td) = &a.trust_domain {
            bulkhead_proto::identity::validate_trust_domain(td)
                .map_err(|e| format!("--trust-domain: {e}"))?;
        }
        let mut upstreams = Vec::new();
        for spec in &a.upstreams {
            let up = Upstream::parse(spec, &a.namespace).map_err(|e| format!("--upstream {e}"))?;
            // Port 0 asks for any free port: many may.
            if up.listen.port() != 0 && upstreams.iter().any(|u: &Upstream| u.listen == up.listen) {
                return Err(format!(
                    "--upstream {spec:?}: {} is already used by another upstream",
                    up.listen
                ));
            }
            upstreams.push(up);
        }
        let app = AppPort::parse_all(&a.app).map_err(|e| format!("--app {e}"))?;
        let advertise = a.advertise.unwrap_or_else(|| {
            if a.inbound.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                a.inbound.ip()
            }
        });
        Ok(Self {
            control: a.control,
            trust_bundle: match (a.trust_bundle, a.trust_bundle_pem) {
                (_, Some(pem)) => TrustSource::Pem(pem),
                (Some(path), None) => TrustSource::File(path),
                (None, None) => {
                    return Err(
                        "--trust-bundle: required (or BULKHEAD_TRUST_BUNDLE_PEM)".to_owned()
                    );
                }
            },
            token_file: a.token_file,
            attestation: a.attestation,
            trust_domain: a.trust_domain,
            namespace: a.namespace,
            service,
            version: a.version,
            service_account,
            app,
            app_protocol: a.app_protocol,
            inbound: a.inbound,
            advertise,
            admin: a.admin,
            outbound: a.outbound,
            egress: a.egress,
            resolv_conf: a.resolv_conf,
            upstreams,
            dns: a.dns,
            cluster_domain: a.cluster_domain,
            locality: bulkhead_proto::model::Locality {
                node: a.node,
                zone: a.zone,
                region: a.region,
            },
            state_dir: a.state_dir,
            addresses_file: a.addresses_file,
            request_timeout: a.request_timeout,
            tcp_idle_timeout: a.tcp_idle_timeout,
            drain_timeout: a.drain_timeout,
            deregister_delay: a.deregister_delay,
            limits: Limits {
                max_connections: a.max_connections as usize,
                max_admin_connections: a.max_admin_connections as usize,
                max_dns_connections: a.max_dns_connections as usize,
                max_handshakes: a.max_handshakes as usize,
                header_read_timeout: a.header_read_timeout,
                max_header_bytes: a.max_header_bytes as usize,
                max_concurrent_streams: a.max_concurrent_streams,
                max_pending_requests: a.max_pending_requests as usize,
                idle_timeout: a.idle_timeout,
                http2_keepalive: a.http2_keepalive,
            },
            log_format: a.log_format,
            log_level: a.log_level,
            workers: usize::from(a.workers),
        })
    }
}

/// A duration that may be zero (`0`, `0s`): "no delay".
fn parse_delay(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        other => parse_duration(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_specs() {
        let u = Upstream::parse("inventory=127.0.0.1:9001", "shop").unwrap();
        assert_eq!(
            (u.service.as_str(), u.namespace.as_str(), u.port),
            ("inventory", "shop", None)
        );
        let u = Upstream::parse("pricing.billing:9090=127.0.0.1:9002", "shop").unwrap();
        assert_eq!(
            (u.service.as_str(), u.namespace.as_str(), u.port),
            ("pricing", "billing", Some(9090))
        );
        for bad in [
            "inventory",
            "inventory=nowhere",
            "Inventory=127.0.0.1:1",
            "inv:0=127.0.0.1:1",
            "inv:x=127.0.0.1:1",
            "=127.0.0.1:1",
        ] {
            assert!(Upstream::parse(bad, "shop").is_err(), "{bad}");
        }
    }

    fn args(extra: &[&str]) -> Result<Config, String> {
        let base = [
            "bulkhead-proxy",
            "run",
            "--trust-bundle",
            "b",
            "--token-file",
            "t",
            "--service",
            "cart",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())?;
        let Command::Run(a) = cli.command else {
            return Err("not run".into());
        };
        Config::from_args(*a)
    }

    #[test]
    fn defaults_and_checks() {
        let c = args(&[]).unwrap();
        assert_eq!(c.inbound.to_string(), "[::]:4143");
        assert_eq!(c.admin.to_string(), "127.0.0.1:4191");
        assert_eq!(c.service_account, "cart");
        assert_eq!(c.advertise.to_string(), "127.0.0.1");
        assert!(
            args(&["--version", "1 0"])
                .unwrap_err()
                .contains("--version")
        );
        assert!(
            args(&["--namespace", "Shop"])
                .unwrap_err()
                .contains("--namespace")
        );
        assert!(args(&["--node", "a b"]).unwrap_err().contains("--node"));
        assert!(
            args(&["--upstream", "a=127.0.0.1:1", "--upstream", "b=127.0.0.1:1"])
                .unwrap_err()
                .contains("already used")
        );
        let c = args(&["--inbound", "198.18.0.5:4143"]).unwrap();
        assert_eq!(c.advertise.to_string(), "198.18.0.5");
    }

    #[test]
    fn app_ports() {
        assert!(args(&[]).unwrap().app.is_empty());
        let c = args(&["--app", "127.0.0.1:8080"]).unwrap();
        assert_eq!(c.app[0].port, None);
        assert_eq!(c.app[0].addr.to_string(), "127.0.0.1:8080");
        let c = args(&[
            "--app",
            "8080=127.0.0.1:8080",
            "--app",
            "9090=127.0.0.1:19090,127.0.0.1:7000",
        ])
        .unwrap();
        let shown: Vec<String> = c.app.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "8080=127.0.0.1:8080",
                "9090=127.0.0.1:19090",
                "127.0.0.1:7000"
            ]
        );
        for bad in [
            "8080",
            "0=127.0.0.1:1",
            "x=127.0.0.1:1",
            "8080=localhost:8080",
            "8080=127.0.0.1:1,8080=127.0.0.1:2",
            "127.0.0.1:1,127.0.0.1:2",
        ] {
            let e = args(&["--app", bad]).unwrap_err();
            assert!(e.starts_with("--app "), "{bad}: {e}");
        }
    }

    #[test]
    fn limits() {
        let defaults = args(&[]).unwrap().limits;
        let expected = Limits::default();
        assert_eq!(defaults.max_connections, expected.max_connections);
        assert_eq!(
            defaults.max_admin_connections,
            expected.max_admin_connections
        );
        assert_eq!(defaults.max_dns_connections, expected.max_dns_connections);
        assert_eq!(defaults.max_handshakes, expected.max_handshakes);
        assert_eq!(defaults.header_read_timeout, expected.header_read_timeout);
        assert_eq!(defaults.max_header_bytes, expected.max_header_bytes);
        assert_eq!(
            defaults.max_concurrent_streams,
            expected.max_concurrent_streams
        );
        assert_eq!(defaults.max_pending_requests, expected.max_pending_requests);
        assert_eq!(defaults.idle_timeout, expected.idle_timeout);
        let set = args(&[
            "--max-connections=50",
            "--max-handshakes=5",
            "--header-read-timeout=2s",
            "--max-header-bytes=16384",
            "--max-concurrent-streams=10",
            "--max-pending-requests=7",
            "--idle-timeout=30s",
        ])
        .unwrap()
        .limits;
        assert_eq!(
            (
                set.max_connections,
                set.max_handshakes,
                set.max_pending_requests
            ),
            (50, 5, 7)
        );
        assert_eq!(set.header_read_timeout, Duration::from_secs(2));
        assert_eq!(set.idle_timeout, Duration::from_secs(30));
        for (flag, bad) in [
            ("--max-connections", "0"),
            ("--max-admin-connections", "0"),
            ("--max-dns-connections", "x"),
            ("--max-handshakes", "-1"),
            ("--header-read-timeout", "0s"),
            ("--max-header-bytes", "100"),
            ("--max-concurrent-streams", "70000"),
            ("--max-pending-requests", "many"),
            ("--idle-timeout", "soon"),
        ] {
            let e = args(&[&format!("{flag}={bad}")]).unwrap_err();
            assert!(e.contains(flag), "{flag}={bad}: {e}");
        }
    }

    #[test]
    fn workers() {
        assert_eq!(args(&[]).unwrap().workers, 1);
        assert_eq!(args(&["--workers", "4"]).unwrap().workers, 4);
        for bad in ["0", "65", "-1", "two"] {
            let e = args(&[&format!("--workers={bad}")]).unwrap_err();
            assert!(e.contains("--workers"), "{bad}: {e}");
        }
    }
}
