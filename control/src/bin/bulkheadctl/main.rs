//! `bulkheadctl`: the operator CLI — CA set-up, bootstrap tokens,
//! certificates for workloads outside the mesh, and kubectl-like resource
//! management against the control plane's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod certs;
mod check;
mod dashboard;
mod events;
mod explain;
mod inject;
mod ops;
mod rollout;
mod rotate;
mod settings;
mod stat;

/// Exit codes (DESIGN.md, "Conventions users expect").
pub(crate) const FAILURE: u8 = 1;
const USAGE: u8 = 2;

/// An error for the user: a message and the exit code that goes with it.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub(crate) fn failure(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: FAILURE,
        }
    }

    /// Exit with `code` and no message: the output already said it all
    /// (`explain` printing a denial).
    pub(crate) fn quiet(code: u8) -> Self {
        Self {
            message: String::new(),
            code,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: USAGE,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let what = match status.code() {
            tonic::Code::Unavailable => "control plane unreachable",
            tonic::Code::PermissionDenied => "permission denied",
            tonic::Code::Unauthenticated => "not authenticated",
            tonic::Code::InvalidArgument => "invalid input",
            tonic::Code::NotFound => "not found",
            tonic::Code::FailedPrecondition => "refused",
            _ => "control plane error",
        };
        Self::failure(format!("{what}: {}", status.message()))
    }
}

pub(crate) type CliResult = Result<(), CliError>;

#[derive(Debug, Parser)]
#[command(name = "bulkheadctl", version, about = "Operate a Bulkhead service mesh", after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// Control-plane URL.
    #[arg(long, global = true, env = "BULKHEAD_CONTROL", value_name = "URL")]
    control: Option<String>,

    /// Folder with operator.crt, operator.key and bundle.crt (as `ca init` writes).
    #[arg(long, global = true, env = "BULKHEAD_CREDENTIALS", value_name = "DIR")]
    credentials: Option<PathBuf>,

    /// Config file with `control:` and `credentials:` (default ~/.config/bulkhead/config.yaml).
    #[arg(long, global = true, env = "BULKHEAD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  bulkheadctl --credentials ./ca check
  bulkheadctl ca init --trust-domain cluster.local --out ./ca
  bulkheadctl --credentials ./ca token create --identity shop/cart --ttl 1h --once
  bulkheadctl cert request --control https://127.0.0.1:8443 --trust-bundle ./ca/bundle.crt \\
      --token \"$TOKEN\" --out ./cart-certs
  bulkheadctl --credentials ./ca apply -f shop.yaml
  bulkheadctl --credentials ./ca get allowlists -n shop -o yaml
  bulkheadctl --credentials ./ca endpoints inventory -n shop
  bulkheadctl --credentials ./ca rollout status inventory -n shop -w
  bulkheadctl --credentials ./ca explain --from shop/web --to shop/inventory --path /v1/stock/x
  bulkheadctl --credentials ./ca events -n shop --since 10m -w";

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificate authority set-up.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Bootstrap tokens for workloads.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificates for workloads outside the mesh (VMs, CI jobs).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Create or update resources from a YAML file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        /// Validate and show what would change, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources: KIND is service, allowlist, trafficsplit, rollout or gateway.
    Get {
        kind: String,
        name: Option<String>,
        /// Namespace (default: all namespaces when listing, `default` for a named resource).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// What the registry holds now: endpoints whose app is ready (callers
    /// are sent only to those), or with --all every registration.
    Endpoints {
        service: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Also list endpoints whose app is not ready (READY false).
        #[arg(long)]
        all: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Golden metrics per service and version (requests per second,
    /// success rate, p50/p95/p99, mesh errors), from what sidecars report;
    /// with --from/--to, who calls whom.
    #[command(after_help = stat::EXAMPLES)]
    Stat {
        service: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// How far back to average.
        #[arg(long, default_value = "10s", value_parser = bulkhead_control::config::parse_duration)]
        window: std::time::Duration,
        /// Only calls from this caller (ns/sa, sa in -n, or a SPIFFE ID); shows edges.
        #[arg(long, value_name = "CALLER")]
        from: Option<String>,
        /// Only calls to this service (name in -n, or ns/name); shows edges.
        #[arg(long, value_name = "SERVICE")]
        to: Option<String>,
        /// Refresh every two seconds.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Watch and steer progressive rollouts (Rollout resources).
    #[command(subcommand, after_help = rollout::EXAMPLES)]
    Rollout(rollout::RolloutCommand),
    /// Can A call B, and why: allowed, denied or audit-only, the rule that
    /// allows or the closest rules and the field each fails (the sidecar's
    /// own decision code). With --to alone, who may call it, on what.
    #[command(after_help = explain::EXAMPLES)]
    Explain(Box<explain::ExplainArgs>),
    /// The web dashboard on 127.0.0.1: topology, services, rollouts (with
    /// promote, pause and abort), live, as this operator.
    #[command(after_help = dashboard::EXAMPLES)]
    Dashboard {
        /// Port on the loopback address (0: any free port; the URL is printed).
        #[arg(long, default_value_t = bulkhead_control::dashboard::DEFAULT_PORT)]
        port: u16,
        /// Loopback address to listen on (anything else is refused).
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Do not open a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// What happened in the mesh: registrations, expiries, ejections,
    /// certificates, applies, rollout steps, denials. `-o json` prints one
    /// CloudEvent per line; `-w` follows, resuming by itself after a
    /// disconnect.
    #[command(after_help = events::EXAMPLES)]
    Events(events::EventsArgs),
    /// Add the sidecar to manifests offline, as the webhook would (`-` for stdin).
    Inject {
        #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
        file: String,
        #[command(flatten)]
        options: Box<inject::InjectArgs>,
    },
    /// Preflight: is everything the mesh rests on healthy? One line each
    /// (ok, warn or fail, with what to do); exit 0 only if none failed.
    #[command(after_help = check::EXAMPLES)]
    Check {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a root, an issuer, the trust bundle and an operator certificate.
    Init {
        #[arg(long, default_value = bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Folder to create (refused if it exists).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The trust in force: roots, issuers and their expiry, a root
    /// rotation's stage, how many registered endpoints hold certificates of
    /// each root, and which issuer keys each control-plane replica holds.
    #[command(
        after_help = "Examples:\n  bulkheadctl ca status\n  bulkheadctl ca status -o json | jq .workloads"
    )]
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Rotate the root in three stages, each a command of its own (run
    /// again after an interruption, it picks up where it stopped).
    #[command(subcommand, after_help = ROTATE_EXAMPLES)]
    Rotate(RotateCommand),
}

const ROTATE_EXAMPLES: &str = "\
Examples:
  bulkheadctl ca rotate prepare --generate
  bulkheadctl ca status            # every replica holds the next issuer's key?
  bulkheadctl ca rotate activate --renew-within 60s
  bulkheadctl ca status            # every workload on the new root?
  bulkheadctl ca rotate retire";

#[derive(Debug, Subcommand)]
enum RotateCommand {
    /// Stage 1: a new root joins the trust bundle beside the old one; its
    /// issuer is written as next-issuer.crt/.key in the credentials
    /// folder, with a new operator certificate and the two-root bundle.
    Prepare {
        /// Make the new root here (written as next-root.crt/.key: keep
        /// the key offline).
        #[arg(
            long,
            required_unless_present = "root_cert",
            conflicts_with = "root_cert"
        )]
        generate: bool,
        /// A new root made elsewhere; the new issuer is signed with --root-key.
        #[arg(long, value_name = "FILE", requires = "root_key")]
        root_cert: Option<PathBuf>,
        /// The key of --root-cert (read, never copied).
        #[arg(long, value_name = "FILE", requires = "root_cert")]
        root_key: Option<PathBuf>,
    },
    /// Stage 2: replicas sign with the new issuer (refused while one lacks
    /// its key); sidecars renew onto it within --renew-within, spread out.
    Activate {
        #[arg(long, default_value = "60s", value_parser = bulkhead_control::config::parse_duration)]
        renew_within: std::time::Duration,
    },
    /// Stage 3: the old root leaves the bundle (refused, naming who, while
    /// a registered endpoint still holds a certificate of it).
    Retire,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a bootstrap token bound to one identity, signed with the issuer key.
    Create {
        /// NAMESPACE/SERVICE-ACCOUNT
        #[arg(long, value_name = "NS/SA")]
        identity: String,
        /// How long the token stays valid, e.g. 10m, 1h.
        #[arg(long, value_parser = bulkhead_control::config::parse_duration, default_value = "1h")]
        ttl: std::time::Duration,
        /// The control plane accepts the token once only.
        #[arg(long)]
        once: bool,
        /// Issuer key (default: issuer.key in the credentials folder).
        #[arg(long, value_name = "FILE")]
        issuer_key: Option<PathBuf>,
        /// Trust domain (default: the one named by the credentials' bundle.crt).
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN")]
        trust_domain: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Make a key pair here, send a CSR with a bootstrap token, write the certificate.
    Request {
        /// Trust bundle to verify the control plane with.
        #[arg(long, value_name = "FILE")]
        trust_bundle: PathBuf,
        /// Bootstrap token (or `@FILE` to read it from a file).
        #[arg(long, env = "BULKHEAD_TOKEN")]
        token: String,
        /// Folder for tls.crt, tls.key and bundle.crt (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files in DIR.
        #[arg(long)]
        force: bool,
        /// Trust domain (default: the one named by the trust bundle).
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN")]
        trust_domain: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match bulkhead_process::parse_args("bulkheadctl", std::env::args_os()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    bulkhead_tls::install_default_provider();
    bulkhead_control::telemetry::init_logs(bulkhead_control::telemetry::LogFormat::Text, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulkheadctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("bulkheadctl: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let settings = settings::Settings::resolve(
        cli.control.clone(),
        cli.credentials.clone(),
        cli.config.clone(),
    )?;
    match cli.command {
        Command::Ca(CaCommand::Init { trust_domain, out }) => certs::ca_init(&trust_domain, &out),
        Command::Ca(CaCommand::Status { output }) => rotate::status(&settings, output).await,
        Command::Ca(CaCommand::Rotate(RotateCommand::Prepare {
            generate: _,
            root_cert,
            root_key,
        })) => {
            let root = match (root_cert, root_key) {
                (Some(cert), Some(key)) => rotate::NewRoot::Given { cert, key },
                _ => rotate::NewRoot::Generate,
            };
            rotate::prepare(&settings, root).await
        }
        Command::Ca(CaCommand::Rotate(RotateCommand::Activate { renew_within })) => {
            rotate::activate(&settings, renew_within).await
        }
        Command::Ca(CaCommand::Rotate(RotateCommand::Retire)) => rotate::retire(&settings).await,
        Command::Token(TokenCommand::Create {
            identity,
            ttl,
            once,
            issuer_key,
            trust_domain,
        }) => certs::token_create(&settings, &identity, ttl, once, issuer_key, trust_domain),
        Command::Cert(CertCommand::Request {
            trust_bundle,
            token,
            out,
            force,
            trust_domain,
        }) => {
            certs::cert_request(&settings, &trust_bundle, &token, &out, force, trust_domain).await
        }
        Command::Apply { file, dry_run } => ops::apply(&settings, &file, dry_run).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            ops::get(
                &settings,
                &kind,
                name.as_deref(),
                namespace.as_deref(),
                output,
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            namespace,
        } => ops::delete(&settings, &kind, &name, &namespace).await,
        Command::Endpoints {
            service,
            namespace,
            all,
            output,
        } => {
            let filter = ops::EndpointFilter {
                service: service.as_deref(),
                namespace: namespace.as_deref(),
                all,
            };
            ops::endpoints(&settings, filter, output).await
        }
        Command::Rollout(command) => rollout::run(&settings, command).await,
        Command::Stat {
            service,
            namespace,
            window,
            from,
            to,
            watch,
            output,
        } => {
            let args = stat::StatArgs {
                service: service.as_deref(),
                namespace: namespace.as_deref(),
                window,
                from: from.as_deref(),
                to: to.as_deref(),
                watch,
                output,
            };
            stat::run(&settings, args).await
        }
        Command::Explain(args) => explain::run(&settings, *args).await,
        Command::Dashboard {
            port,
            address,
            no_open,
        } => dashboard::run(&settings, address, port, !no_open).await,
        Command::Events(args) => events::run(&settings, args).await,
        Command::Inject { file, options } => inject::run(&file, *options),
        Command::Check { output } => check::run(&settings, output).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bulkheadctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
