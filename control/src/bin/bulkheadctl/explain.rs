//! `bulkheadctl explain`: can A call B, and why. Answers with the sidecar's
//! own decision code (`bulkhead_proto::policy`), against the live
//! configuration or, with `-f`, against files offline (CI tests a policy
//! change before it is applied).

use bulkhead_control::explain::{
    PortError, Question, allowed_callers, answer, declared_port, parse_caller, report, targeting,
};
use bulkhead_proto::model::{AllowList, Kind, Protocol, Resource, Service, parse_documents};
use bulkhead_proto::pb;
use bulkhead_proto::policy::{Call, Explanation, Verdict};
use clap::ValueEnum;
use serde_json::Value;

use crate::rollout::{colour, paint};
use crate::settings::Settings;
use crate::{CliError, CliResult};

#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The caller: NAMESPACE/SERVICE-ACCOUNT or a SPIFFE ID. Left out, the
    /// command lists who may call --to, on what.
    #[arg(long, value_name = "NS/SA|SPIFFE-ID")]
    from: Option<String>,
    /// The service called.
    #[arg(long, value_name = "NS/SERVICE")]
    to: String,
    /// The declared port called (needed when --to declares several).
    #[arg(long)]
    port: Option<u16>,
    /// The request's method (default GET when --path is given).
    #[arg(long, requires = "path")]
    method: Option<String>,
    /// The request path as the client sends it: normalized (or refused)
    /// as the sidecar does. Without it, identity and port are checked.
    #[arg(long)]
    path: Option<String>,
    /// An end user's verified claim, as a gateway passes it on (for rules
    /// with `claims`): NAME=VALUE, repeatable (a name given twice is a
    /// list). Only meaningful with --from naming a gateway (gateway-*).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// Offline: Services and AllowLists from these files (`-` for stdin;
    /// repeatable) instead of the control plane.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    files: Vec<String>,
    /// The mesh's trust domain (default: the credentials' bundle.crt names
    /// it, else cluster.local).
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Yaml,
}

pub(crate) const EXAMPLES: &str = "\
Exit status: 0 allowed (or audit-only), 1 denied, 2 usage error.

Examples:
  bulkheadctl explain --from shop/web --to shop/inventory --method GET --path /v1/stock/x
  bulkheadctl explain --from shop/web --to shop/inventory --port 8080
  bulkheadctl explain --from spiffe://cluster.local/ns/ops/sa/debug --to shop/ledger
  bulkheadctl explain --to shop/inventory                 # who may call it, on what
  bulkheadctl explain --from shop/gateway-public --to shop/orders --method POST \\
      --path /orders --claim scope=orders:write          # an end user via the gateway
  bulkheadctl explain -f services.yaml -f policy.yaml --from shop/web --to shop/inventory \\
      --path /v1/stock/x -o json | jq .decision          # offline, in CI";

/// `--claim NAME=VALUE`s as the claims a gateway would pass on; `None`
/// without any.
fn claims_of(args: &[String]) -> Result<Option<bulkhead_proto::model::Claims>, CliError> {
    let mut claims = bulkhead_proto::model::Claims::new();
    for arg in args {
        let (name, value) = arg.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--claim {arg}: expected NAME=VALUE, e.g. --claim scope=orders:write"
            ))
        })?;
        let value = Value::from(value);
        match claims.get_mut(name) {
            None => {
                claims.insert(name.to_owned(), value);
            }
            Some(Value::Array(list)) => list.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
        }
    }
    Ok((!claims.is_empty()).then_some(claims))
}

pub(crate) async fn run(settings: &Settings, args: ExplainArgs) -> CliResult {
    let (namespace, name) = args.to.split_once('/').ok_or_else(|| {
        CliError::usage(format!(
            "--to {}: expected NAMESPACE/SERVICE, e.g. --to shop/{}",
            args.to, args.to
        ))
    })?;
    if args.from.is_none() && args.path.is_some() {
        return Err(CliError::usage(
            "--path needs --from: pass the caller (NS/SA or a SPIFFE ID), or leave --path out to list who may call --to",
        ));
    }
    let trust_domain = crate::certs::trust_domain_for(settings, args.trust_domain.clone())?;
    let (services, lists) = if args.files.is_empty() {
        live(settings, namespace).await?
    } else {
        offline(&args.files)?
    };
    let where_from = if args.files.is_empty() {
        "in the control plane".to_owned()
    } else {
        format!("in {}", args.files.join(", "))
    };
    let service = services
        .iter()
        .find(|s| s.metadata.namespace == namespace && s.metadata.name == name)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--to {}: no Service {where_from}; check the name{}",
                args.to,
                if args.files.is_empty() {
                    ""
                } else {
                    ", or add the file declaring it with -f"
                }
            ))
        })?;
    let lists = targeting(lists, namespace, name);
    let Some(from) = &args.from else {
        return list_callers(&args, &lists);
    };
    let peer = parse_caller(from, &trust_domain).map_err(|why| {
        CliError::usage(format!(
            "--from {from}: expected NAMESPACE/SERVICE-ACCOUNT (e.g. shop/web) or a SPIFFE ID \
             (spiffe://{trust_domain}/ns/shop/sa/web): {why}"
        ))
    })?;
    let (port, protocol) = declared_port(service, args.port).map_err(|e| match e {
        PortError::NotDeclared { port, to, declared } => CliError::usage(format!(
            "--port {port}: {to} declares port(s) {declared}; pass one of them (rules name declared ports, not the app's)"
        )),
        PortError::Ambiguous { .. } => CliError::usage(format!("--port is needed: {e}")),
    })?;
    let method = args.method.as_deref().unwrap_or("GET");
    let call = match (protocol, &args.path) {
        (Protocol::Tcp, _) => Call::Tcp,
        (_, Some(path)) => Call::Http { method, path },
        (_, None) => Call::AnyHttp,
    };
    let claims = claims_of(&args.claims)?;
    let question = Question {
        from: &peer,
        to: &args.to,
        claims: claims.as_ref(),
        port,
        protocol,
        call,
        path: args.path.as_deref(),
    };
    let e = answer(&lists, &question, &trust_domain);
    let value = report(&lists, &question, &e);
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&value).unwrap_or_default()),
        Format::Table => print!("{}", text(&question, &e, &value, colour())),
    }
    if e.lets_through() {
        Ok(())
    } else {
        Err(CliError::quiet(crate::FAILURE))
    }
}

async fn live(
    settings: &Settings,
    namespace: &str,
) -> Result<(Vec<Service>, Vec<AllowList>), CliError> {
    let mut client = crate::ops::client(settings)?;
    let mut fetch = async |kind: Kind| -> Result<Vec<Resource>, CliError> {
        let resp = client
            .get(pb::GetRequest {
                kind: kind.to_string(),
                namespace: namespace.to_owned(),
                name: String::new(),
            })
            .await?
            .into_inner();
        crate::ops::parse_resources(&resp.resources)
    };
    let mut resources = fetch(Kind::Service).await?;
    resources.extend(fetch(Kind::AllowList).await?);
    Ok(split(resources))
}

fn offline(files: &[String]) -> Result<(Vec<Service>, Vec<AllowList>), CliError> {
    let mut resources = Vec::new();
    for file in files {
        let text = crate::ops::read_input(file)?;
        let parsed = parse_documents(file, &text)
            .map_err(|e| CliError::usage(format!("-f {file}: not a valid resource file:\n{e}")))?;
        resources.extend(parsed);
    }
    Ok(split(resources))
}

fn split(resources: Vec<Resource>) -> (Vec<Service>, Vec<AllowList>) {
    let (mut services, mut lists) = (Vec::new(), Vec::new());
    for r in resources {
        match r {
            Resource::Service(s) => services.push(s),
            Resource::AllowList(l) => lists.push(l),
            _ => {}
        }
    }
    (services, lists)
}

/// The answer as text, from its JSON (the same reasons, in order).
fn text(q: &Question<'_>, e: &Explanation, value: &Value, colour: bool) -> String {
    let (word, code) = match e.verdict {
        Verdict::Allow => ("ALLOWED", "32"),
        Verdict::AuditAllow => ("AUDIT (would be denied; let through)", "33"),
        Verdict::Deny => ("DENIED", "31"),
    };
    let what = match q.call {
        Call::Http { method, path } => format!(" {method} {path}"),
        Call::Tcp => " (tcp connection)".to_owned(),
        Call::AnyHttp => " (any method and path)".to_owned(),
    };
    let mut out = format!(
        "{}  {} → {}:{}{what}\n",
        paint(word, code, colour),
        q.from,
        q.to,
        q.port
    );
    if let (Some(normal), Call::Http { path, .. }) = (&e.normalized_path, q.call)
        && normal != path
    {
        out.push_str(&format!("  path normalized: {path} → {normal}\n"));
    }
    if let Some((list, index)) = &e.allowed_by {
        out.push_str(&format!("  by AllowList {list}, rule #{index}\n"));
    } else if e.reason != Explanation::BAD_PATH {
        out.push_str(&format!("  reason: {}\n", e.reason));
    }
    let mut last_rule = None;
    for r in value["reasons"].as_array().into_iter().flatten() {
        let message = r["message"].as_str().unwrap_or_default();
        match (&r["allowList"], &r["rule"]) {
            (Value::String(list), Value::Number(index)) if r["code"] == "mismatch" => {
                if last_rule.is_none() {
                    out.push_str("  closest rules, and the fields they fail:\n");
                }
                let rule = format!("{list}#{index}");
                if last_rule.as_ref() != Some(&rule) {
                    out.push_str(&format!("    {rule}\n"));
                    last_rule = Some(rule);
                }
                out.push_str(&format!("      {message}\n"));
            }
            _ => out.push_str(&format!("  {message}\n")),
        }
    }
    out
}

/// `explain --to` alone: one line per rule that lets someone in.
fn list_callers(args: &ExplainArgs, lists: &[AllowList]) -> CliResult {
    let rows = allowed_callers(lists, args.port);
    let any = |v: Option<Vec<String>>| v.map_or_else(|| "*".to_owned(), |v| v.join(","));
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&rows).unwrap_or_default()),
        Format::Table => {
            if rows.is_empty() {
                eprintln!(
                    "no AllowList rule lets anyone call {}{}: default deny",
                    args.to,
                    args.port
                        .map(|p| format!(" on port {p}"))
                        .unwrap_or_default()
                );
                return Ok(());
            }
            let strings = |v: &Value| -> Option<Vec<String>> {
                v.as_array().map(|a| {
                    a.iter()
                        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                        .collect()
                })
            };
            let mut table = vec![
                [
                    "ALLOWLIST",
                    "RULE",
                    "MODE",
                    "CALLERS",
                    "PORTS",
                    "PROTOCOL",
                    "METHODS",
                    "PATHS",
                    "CLAIMS",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            for r in &rows {
                table.push(vec![
                    r["allowList"].as_str().unwrap_or_default().to_owned(),
                    r["rule"].to_string(),
                    r["mode"].as_str().unwrap_or_default().to_owned(),
                    any(strings(&r["callers"])),
                    any(strings(&r["ports"])),
                    if r["httpOnly"] == true { "http" } else { "any" }.to_owned(),
                    any(strings(&r["methods"])),
                    any(strings(&r["paths"])),
                    any(strings(&r["claims"])),
                ]);
            }
            crate::ops::print_table(&table);
        }
    }
    Ok(())
}
