//! `bulkhead-control` configuration: flags, each also readable from
//! `BULKHEAD_<FLAG>` (flag wins over env). Parsed once, here, at the edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use bulkhead_process::{LogFormat, parse_duration, usage_line};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded, in-memory: for demos and development; state dies with the process.
    Memory,
    /// etcd: production; several replicas may share one etcd cluster.
    Etcd,
}

/// The Bulkhead control plane: workload CA, endpoint registry and config push.
#[derive(Debug, Clone, Parser)]
#[command(name = "bulkhead-control", version, about, after_help = EXAMPLES)]
pub struct ControlArgs {
    /// Where mesh state lives.
    #[arg(long, env = "BULKHEAD_STORE", value_enum, default_value = "etcd")]
    pub store: StoreKind,

    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "BULKHEAD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URL,..."
    )]
    pub etcd_endpoints: Vec<String>,

    /// CA certificate (PEM) of etcd's TLS; use with https:// endpoints.
    #[arg(long, env = "BULKHEAD_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's client-certificate auth.
    #[arg(long, env = "BULKHEAD_ETCD_CERT", value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,

    /// Key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "BULKHEAD_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,

    /// Prefix of every key Bulkhead writes in the store.
    #[arg(long, env = "BULKHEAD_PREFIX", default_value = "/bulkhead/")]
    pub prefix: String,

    /// gRPC listen address (TLS; mTLS for everything but bootstrap).
    #[arg(
        long,
        env = "BULKHEAD_LISTEN",
        default_value = "127.0.0.1:8443",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Admin listen address: /metrics, /ready, /live.
    #[arg(
        long,
        env = "BULKHEAD_ADMIN",
        default_value = "127.0.0.1:9990",
        value_name = "ADDR"
    )]
    pub admin: SocketAddr,

    /// Once every listener is bound, write their addresses here as JSON
    /// (`{"grpc": ..., "admin": ...}`): for listeners given port 0, so tests
    /// and tools learn the ports chosen.
    #[arg(long, env = "BULKHEAD_ADDRESSES_FILE", value_name = "FILE")]
    pub addresses_file: Option<std::path::PathBuf>,

    /// Admission webhook listener (HTTPS, path /inject); served when given,
    /// or when --webhook-cert is (then on 0.0.0.0:9443).
    #[arg(long, env = "BULKHEAD_WEBHOOK", value_name = "ADDR")]
    pub webhook: Option<SocketAddr>,

    /// The webhook's serving certificate (PEM, chain), as the API server will
    /// verify it: bring your own (e.g. cert-manager's; read again when the
    /// files change). Without it the control plane makes its own from the
    /// mesh issuer and renews it.
    #[arg(
        long,
        env = "BULKHEAD_WEBHOOK_CERT",
        value_name = "FILE",
        requires = "webhook_key"
    )]
    pub webhook_cert: Option<PathBuf>,

    /// Key (PEM) of --webhook-cert.
    #[arg(
        long,
        env = "BULKHEAD_WEBHOOK_KEY",
        value_name = "FILE",
        requires = "webhook_cert"
    )]
    pub webhook_key: Option<PathBuf>,

    /// DNS names of the webhook certificate the control plane makes itself,
    /// comma separated or repeated [default: bulkhead-control.<--namespace>.svc,
    /// the name the API server checks for a Service reference].
    #[arg(
        long,
        env = "BULKHEAD_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        value_name = "NAME,...",
        conflicts_with = "webhook_cert"
    )]
    pub webhook_dns_names: Vec<String>,

    /// Lifetime of the webhook certificate the control plane makes itself;
    /// renewed at about 70 % of it.
    #[arg(long, env = "BULKHEAD_WEBHOOK_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub webhook_cert_lifetime: Duration,

    /// MutatingWebhookConfiguration whose webhooks' clientConfig.caBundle
    /// the control plane keeps equal to the trust bundle (via --k8s-api;
    /// needs get and patch on that one object).
    #[arg(
        long,
        env = "BULKHEAD_WEBHOOK_CONFIGURATION",
        value_name = "NAME",
        requires = "k8s_api",
        conflicts_with = "webhook_cert"
    )]
    pub webhook_configuration: Option<String>,

    /// How often --webhook-configuration is checked when nothing changed
    /// here (`helm upgrade` re-renders it and may blank the caBundle).
    #[arg(long, env = "BULKHEAD_WEBHOOK_CONFIGURATION_RESYNC", default_value = "30s", value_parser = parse_duration)]
    pub webhook_configuration_resync: Duration,

    /// How this replica names itself in `bulkheadctl ca status` [default:
    /// the host name; in a pod, its name].
    #[arg(long, env = "BULKHEAD_REPLICA_NAME", value_name = "NAME")]
    pub replica_name: Option<String>,

    /// The namespace the control plane runs in (in a pod: from the downward
    /// API); names the webhook certificate's default DNS name.
    #[arg(long, env = "BULKHEAD_NAMESPACE", default_value = "bulkhead")]
    pub namespace: String,

    /// Sidecar image the webhook injects.
    #[arg(long, env = "BULKHEAD_PROXY_IMAGE", value_name = "IMAGE")]
    pub proxy_image: Option<String>,

    /// Control-plane URL injected sidecars use (in-cluster).
    #[arg(long, env = "BULKHEAD_INJECT_CONTROL_URL", value_name = "URL")]
    pub inject_control_url: Option<String>,

    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Issuer (intermediate CA) certificate, PEM.
    #[arg(long, env = "BULKHEAD_ISSUER_CERT", value_name = "FILE")]
    pub issuer_cert: PathBuf,

    /// Issuer private key, PEM. Read from a file (a Kubernetes Secret), never from the store.
    #[arg(long, env = "BULKHEAD_ISSUER_KEY", value_name = "FILE")]
    pub issuer_key: PathBuf,

    /// The next issuer of a root rotation (`bulkheadctl ca rotate prepare`
    /// writes it), PEM; may be absent until then. Read again every
    /// --issuer-reload, as are --issuer-cert and --issuer-key: the store's
    /// trust record says which issuer signs [default: next-issuer.crt beside
    /// --issuer-cert].
    #[arg(long, env = "BULKHEAD_NEXT_ISSUER_CERT", value_name = "FILE")]
    pub next_issuer_cert: Option<PathBuf>,

    /// Key (PEM) of --next-issuer-cert [default: next-issuer.key beside
    /// --issuer-key].
    #[arg(long, env = "BULKHEAD_NEXT_ISSUER_KEY", value_name = "FILE")]
    pub next_issuer_key: Option<PathBuf>,

    /// How often the issuer files are read again (a Secret updated in place
    /// counts without a restart).
    #[arg(long, env = "BULKHEAD_ISSUER_RELOAD", default_value = "10s", value_parser = parse_duration)]
    pub issuer_reload: Duration,

    /// Trust bundle: the root certificate(s), PEM. Seeds the store's trust
    /// record when it has none; after that the store's roots are in force
    /// (`bulkheadctl ca rotate` changes them).
    #[arg(long, env = "BULKHEAD_TRUST_BUNDLE", value_name = "FILE")]
    pub trust_bundle: PathBuf,

    /// Identities allowed to use the admin API, besides bulkhead/operator:
    /// `ns/sa` or `spiffe://...`, comma separated.
    #[arg(
        long,
        env = "BULKHEAD_OPERATORS",
        value_delimiter = ',',
        value_name = "ID,..."
    )]
    pub operators: Vec<String>,

    /// Lifetime of issued workload certificates.
    #[arg(long, env = "BULKHEAD_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,

    /// TTL of endpoint registrations (registrants renew well within it).
    #[arg(long, env = "BULKHEAD_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// TTL of the lease of the replica that drives rollouts: when it dies,
    /// another replica takes over within this.
    #[arg(long, env = "BULKHEAD_LEADER_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub leader_lease_ttl: Duration,

    /// How often sidecars report their endpoint's traffic (requests,
    /// failures, latency, in flight), at least 500ms. Rollout gates and the
    /// per-version metrics see traffic this late at most.
    #[arg(long, env = "BULKHEAD_REPORT_INTERVAL", default_value = "5s", value_parser = parse_report_interval)]
    pub report_interval: Duration,

    /// How long what sidecars report stays in the store, at least 1m: the
    /// longest window rollout gates and `bulkheadctl stat` can look back.
    #[arg(long, env = "BULKHEAD_STATS_RETENTION", default_value = "15m", value_parser = parse_stats_retention)]
    pub stats_retention: Duration,

    /// How long mesh events stay in the store, at least 1m (`bulkheadctl
    /// events`, `WatchEvents`, `GET /v1/events` can look back this far).
    #[arg(long, env = "BULKHEAD_EVENTS_RETENTION", default_value = "26h", value_parser = parse_events_retention)]
    pub events_retention: Duration,

    /// Most mesh events kept in the store, at least 100: beyond it the
    /// oldest are deleted (consumers behind are told what they lost).
    #[arg(long, env = "BULKHEAD_EVENTS_MAX", default_value = "100000", value_parser = clap::value_parser!(u64).range(100..))]
    pub events_max: u64,

    /// DNS names for the control plane's own serving certificate, comma separated.
    #[arg(
        long,
        env = "BULKHEAD_DNS_NAMES",
        value_delimiter = ',',
        default_value = "localhost,bulkhead-control,bulkhead-control.bulkhead.svc"
    )]
    pub dns_names: Vec<String>,

    /// Kubernetes service-account issuer keys (JWKS JSON, e.g. from
    /// `kubectl get --raw /openid/v1/jwks`): accept projected tokens as attestation.
    #[arg(
        long,
        env = "BULKHEAD_K8S_JWKS",
        value_name = "FILE|URL",
        requires = "k8s_issuer"
    )]
    pub k8s_jwks: Option<String>,

    /// The Kubernetes API server (e.g. https://kubernetes.default.svc), for
    /// Node topology (--node-topology) and --webhook-configuration.
    #[arg(long, env = "BULKHEAD_K8S_API", value_name = "URL")]
    pub k8s_api: Option<String>,

    /// With --k8s-api, registering endpoints get the zone and region of
    /// their Node's topology.kubernetes.io labels (needs `get` on nodes).
    #[arg(
        long,
        env = "BULKHEAD_NODE_TOPOLOGY",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub node_topology: bool,

    /// CA (PEM) of the API server, for an https:// --k8s-jwks and --k8s-api.
    #[arg(
        long,
        env = "BULKHEAD_K8S_API_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub k8s_api_ca: PathBuf,

    /// Bearer token for an https:// --k8s-jwks and --k8s-api (re-read at each fetch).
    #[arg(
        long,
        env = "BULKHEAD_K8S_API_TOKEN",
        value_name = "FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub k8s_api_token: PathBuf,

    /// The cluster's service-account token issuer (`iss`), e.g. https://kubernetes.default.svc.cluster.local.
    #[arg(
        long,
        env = "BULKHEAD_K8S_ISSUER",
        value_name = "URL",
        requires = "k8s_jwks"
    )]
    pub k8s_issuer: Option<String>,

    /// Audience projected tokens must carry.
    #[arg(long, env = "BULKHEAD_K8S_AUDIENCE", default_value = "bulkhead")]
    pub k8s_audience: String,

    /// Log format.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (RUST_LOG syntax).
    #[arg(long, env = "BULKHEAD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

fn at_least(text: &str, min: Duration, min_text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < min {
        return Err(format!("must be at least {min_text}"));
    }
    Ok(d)
}

fn parse_report_interval(text: &str) -> Result<Duration, String> {
    at_least(text, crate::measure::MIN_REPORT_INTERVAL, "500ms")
}

fn parse_stats_retention(text: &str) -> Result<Duration, String> {
    at_least(text, crate::measure::MIN_RETENTION, "1m")
}

fn parse_events_retention(text: &str) -> Result<Duration, String> {
    at_least(text, crate::events::MIN_RETENTION, "1m")
}

const EXAMPLES: &str = "\
Examples:
  bulkheadctl ca init --trust-domain cluster.local --out ./ca
  bulkhead-control --store etcd --etcd-endpoints http://10.0.0.5:2379 \\
      --issuer-cert ./ca/issuer.crt --issuer-key ./ca/issuer.key --trust-bundle ./ca/bundle.crt
  bulkhead-control --store memory --issuer-cert ./ca/issuer.crt --issuer-key ./ca/issuer.key \\
      --trust-bundle ./ca/bundle.crt
  # In a pod: the webhook with a certificate made and renewed from the issuer, its
  # caBundle kept in the webhook configuration.
  bulkhead-control ... --webhook 0.0.0.0:9443 --namespace bulkhead \\
      --k8s-api https://kubernetes.default.svc --webhook-configuration bulkhead-bulkhead-injector";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ControlArgs, clap::Error> {
        let base = [
            "bulkhead-control",
            "--issuer-cert",
            "i.crt",
            "--issuer-key",
            "i.key",
            "--trust-bundle",
            "b.crt",
        ];
        ControlArgs::try_parse_from(base.iter().chain(args))
    }

    #[test]
    fn defaults_follow_design() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(a.admin.to_string(), "127.0.0.1:9990");
        assert_eq!(a.prefix, "/bulkhead/");
        assert_eq!(a.trust_domain, "cluster.local");
        assert_eq!(a.cert_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(a.store, StoreKind::Etcd);
        assert_eq!(a.webhook, None, "no webhook unless asked for");
        assert_eq!(a.webhook_cert_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(a.webhook_configuration_resync, Duration::from_secs(30));
        assert_eq!(a.namespace, "bulkhead");
        assert!(a.node_topology);
        assert_eq!(a.issuer_reload, Duration::from_secs(10));
        assert_eq!(a.report_interval, Duration::from_secs(5));
        assert_eq!(a.stats_retention, Duration::from_secs(15 * 60));
        assert_eq!(
            a.next_issuer_cert, None,
            "beside --issuer-cert unless given"
        );
    }

    #[test]
    fn webhook_flags_fit_together() {
        let a = parse(&[
            "--webhook",
            "0.0.0.0:9443",
            "--webhook-dns-names",
            "c.mesh.svc,c.mesh.svc.cluster.local",
            "--webhook-dns-names",
            "c",
            "--k8s-api",
            "https://kubernetes.default.svc",
            "--webhook-configuration",
            "bulkhead-mesh-injector",
            "--node-topology=false",
        ])
        .unwrap();
        assert_eq!(
            a.webhook_dns_names,
            ["c.mesh.svc", "c.mesh.svc.cluster.local", "c"]
        );
        assert!(!a.node_topology);
        // The caBundle is kept through the API server ...
        let e = parse(&["--webhook-configuration", "x"]).unwrap_err();
        assert!(e.to_string().contains("--k8s-api"), "{e}");
        // ... and only for a certificate made here: a given one's CA is
        // not known to the control plane.
        let given = ["--webhook-cert", "c.pem", "--webhook-key", "k.pem"];
        for extra in [
            &["--webhook-dns-names", "a.b.svc"][..],
            &["--k8s-api", "https://k", "--webhook-configuration", "x"][..],
        ] {
            let args: Vec<&str> = given.iter().chain(extra).copied().collect();
            let e = parse(&args).unwrap_err();
            assert!(e.to_string().contains("cannot be used with"), "{e}");
        }
    }

    #[test]
    fn lists_and_durations() {
        let a = parse(&[
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--operators",
            "ci/deployer,spiffe://cluster.local/ns/x/sa/y",
            "--lease-ttl",
            "5s",
        ])
        .unwrap();
        assert_eq!(a.etcd_endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(a.operators.len(), 2);
        assert_eq!(a.lease_ttl, Duration::from_secs(5));
        assert!(parse(&["--lease-ttl", "0s"]).is_err());
        let a = parse(&["--report-interval", "500ms", "--stats-retention", "1h"]).unwrap();
        assert_eq!(a.report_interval, Duration::from_millis(500));
        assert_eq!(a.stats_retention, Duration::from_secs(3600));
        let e = parse(&["--report-interval", "100ms"]).unwrap_err();
        assert!(e.to_string().contains("at least 500ms"), "{e}");
        let a = parse(&["--events-retention", "2h", "--events-max", "500"]).unwrap();
        assert_eq!(a.events_retention, Duration::from_secs(7200));
        assert_eq!(a.events_max, 500);
        assert!(parse(&["--events-max", "5"]).is_err());
        assert!(parse(&["--events-retention", "5s"]).is_err());
        let e = parse(&["--stats-retention", "30s"]).unwrap_err();
        assert!(e.to_string().contains("at least 1m"), "{e}");
        assert!(parse(&["--listen", "nonsense"]).is_err());
        assert!(parse(&["--store", "zookeeper"]).is_err());
    }
}
