//! `bulkheadctl explain`: can A call B, and why. Answers with the sidecar's
//! own decision code (`bulkhead_proto::policy`), against the live
//! configuration or, with `-f`, against files offline (CI tests a policy
//! change before it is applied).

use bulkhead_proto::SpiffeId;
use bulkhead_proto::model::{
    AllowList, AllowRule, Kind, Principal, Protocol, Resource, Service, parse_documents,
};
use bulkhead_proto::pb;
use bulkhead_proto::policy::{Call, Explanation, Verdict, explain_with_claims};
use clap::ValueEnum;
use serde_json::{Value, json};

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
    let mut lists: Vec<AllowList> = lists
        .into_iter()
        .filter(|l| l.metadata.namespace == namespace && l.spec.target == name)
        .collect();
    lists.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let Some(from) = &args.from else {
        return list_callers(&args, &lists);
    };
    let peer = caller(from, &trust_domain)?;
    let (port, protocol) = port_of(service, args.port, &args.to)?;
    let method = args.method.as_deref().unwrap_or("GET");
    let call = match (protocol, &args.path) {
        (Protocol::Tcp, _) => Call::Tcp,
        (_, Some(path)) => Call::Http { method, path },
        (_, None) => Call::AnyHttp,
    };
    let claims = claims_of(&args.claims)?;
    let e = explain_with_claims(&lists, &peer, port, call, claims.as_ref(), &trust_domain);
    let report = Report {
        args: &args,
        peer: &peer,
        port,
        protocol,
        call,
        lists: &lists,
        e: &e,
    };
    let value = report.json();
    match args.output {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&value).unwrap_or_default()),
        Format::Table => print!("{}", report.text(&value, colour())),
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

/// `--from`: `ns/sa` in the mesh's trust domain, or a full SPIFFE ID.
fn caller(from: &str, trust_domain: &str) -> Result<SpiffeId, CliError> {
    let parsed = if from.starts_with("spiffe://") {
        from.parse().map_err(|e| format!("{e}"))
    } else {
        match from.split_once('/') {
            Some((ns, sa)) => SpiffeId::new(trust_domain, ns, sa).map_err(|e| format!("{e}")),
            None => Err("no namespace".to_owned()),
        }
    };
    parsed.map_err(|why| {
        CliError::usage(format!(
            "--from {from}: expected NAMESPACE/SERVICE-ACCOUNT (e.g. shop/web) or a SPIFFE ID \
             (spiffe://{trust_domain}/ns/shop/sa/web): {why}"
        ))
    })
}

/// The declared port called and its protocol.
fn port_of(service: &Service, port: Option<u16>, to: &str) -> Result<(u16, Protocol), CliError> {
    let declared = &service.spec.ports;
    let list = || {
        declared
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (port, declared.as_slice()) {
        (Some(port), _) => declared
            .iter()
            .find(|p| p.port == port)
            .map(|p| (p.port, p.protocol))
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--port {port}: {to} declares port(s) {}; pass one of them (rules name declared ports, not the app's)",
                    list()
                ))
            }),
        (None, [only]) => Ok((only.port, only.protocol)),
        (None, _) => Err(CliError::usage(format!(
            "--port is needed: {to} declares ports {}; pass one of them",
            list()
        ))),
    }
}

/// One explanation, as JSON (the shape scripts rely on) and as text.
struct Report<'a> {
    args: &'a ExplainArgs,
    peer: &'a SpiffeId,
    port: u16,
    protocol: Protocol,
    call: Call<'a>,
    lists: &'a [AllowList],
    e: &'a Explanation,
}

impl Report<'_> {
    fn decision(&self) -> &'static str {
        match self.e.verdict {
            Verdict::Allow => "allowed",
            Verdict::AuditAllow => "audit",
            Verdict::Deny => "denied",
        }
    }

    /// `{"decision", "allowList", "rule", "normalizedPath", "reasons"}` and
    /// what was asked. Every reason has the same keys (null when they do
    /// not apply): code, message, allowList, rule, field, got, expected.
    fn json(&self) -> Value {
        let e = self.e;
        let (method, path) = match self.call {
            Call::Http { method, path } => (Some(method), Some(path)),
            Call::Tcp | Call::AnyHttp => (None, None),
        };
        json!({
            "decision": self.decision(),
            "allowList": e.allowed_by.as_ref().map(|(list, _)| list),
            "rule": e.allowed_by.as_ref().map(|(_, index)| index),
            "normalizedPath": e.normalized_path,
            "reasons": self.reasons(),
            "label": e.reason,
            "from": self.peer.to_string(),
            "to": self.args.to,
            "port": self.port,
            "protocol": self.protocol.as_str(),
            "method": method,
            "path": path,
        })
    }

    fn reasons(&self) -> Vec<Value> {
        let reason = |code: &str, message: String| {
            json!({"code": code, "message": message, "allowList": null, "rule": null,
                   "field": null, "got": null, "expected": null})
        };
        let to = &self.args.to;
        let mut out = Vec::new();
        if self.protocol == Protocol::Tcp && self.args.path.is_some() {
            out.push(reason(
                "tcp-port",
                format!(
                    "port {} of {to} is tcp: the sidecar sees an opaque connection, so --method and --path do not apply",
                    self.port
                ),
            ));
        }
        if let Some(error) = self.e.path_error {
            let mut r = reason(
                Explanation::BAD_PATH,
                format!(
                    "the sidecar refuses this path with 400 before any rule is tried: {error} ({})",
                    error.reason()
                ),
            );
            r["field"] = json!("path");
            r["got"] = json!(self.args.path);
            out.push(r);
            return out;
        }
        if let Some((list, index)) = &self.e.allowed_by {
            if self.call == Call::AnyHttp {
                out.extend(self.not_checked(list, *index));
            }
            return out;
        }
        if self.lists.is_empty() {
            out.push(reason(
                self.e.reason,
                format!("no AllowList targets {to}: default deny, nobody may call it"),
            ));
            return out;
        }
        if self.e.verdict == Verdict::AuditAllow {
            out.push(reason(
                self.e.reason,
                format!(
                    "no rule matches, but every AllowList targeting {to} is in audit mode: let through and counted in bulkhead_authz_audit_total"
                ),
            ));
        }
        for rule in self.e.closest() {
            for m in &rule.failed {
                out.push(json!({
                    "code": "mismatch",
                    "message": m.to_string(),
                    "allowList": rule.list,
                    "rule": rule.index,
                    "field": m.field.as_str(),
                    "got": m.got,
                    "expected": m.expected,
                }));
            }
        }
        out
    }

    /// With no --path, what the allowing rule still limits.
    fn not_checked(&self, list: &str, index: usize) -> Vec<Value> {
        let Some(http) = self
            .lists
            .iter()
            .find(|l| l.metadata.name == list)
            .and_then(|l| l.spec.rules.get(index))
            .and_then(|r| r.http.as_ref())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let limits = [
            ("method", http.methods.clone(), "--method"),
            (
                "path",
                http.paths
                    .as_ref()
                    .map(|p| p.iter().map(ToString::to_string).collect()),
                "--path",
            ),
        ];
        for (field, expected, flag) in limits {
            if let Some(expected) = expected {
                out.push(json!({
                    "code": "not-checked",
                    "message": format!("the rule allows only {field}s [{}]; pass {flag} to check a request", expected.join(", ")),
                    "allowList": list, "rule": index, "field": field, "got": null,
                    "expected": expected,
                }));
            }
        }
        out
    }

    fn text(&self, value: &Value, colour: bool) -> String {
        let e = self.e;
        let (word, code) = match e.verdict {
            Verdict::Allow => ("ALLOWED", "32"),
            Verdict::AuditAllow => ("AUDIT (would be denied; let through)", "33"),
            Verdict::Deny => ("DENIED", "31"),
        };
        let what = match self.call {
            Call::Http { method, path } => format!(" {method} {path}"),
            Call::Tcp => " (tcp connection)".to_owned(),
            Call::AnyHttp => " (any method and path)".to_owned(),
        };
        let mut out = format!(
            "{}  {} → {}:{}{what}\n",
            paint(word, code, colour),
            self.peer,
            self.args.to,
            self.port
        );
        if let (Some(normal), Call::Http { path, .. }) = (&e.normalized_path, self.call)
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
}

/// `explain --to` alone: one line per rule that lets someone in.
fn list_callers(args: &ExplainArgs, lists: &[AllowList]) -> CliResult {
    let rules: Vec<(&AllowList, usize, &AllowRule)> = lists
        .iter()
        .flat_map(|l| l.spec.rules.iter().enumerate().map(move |(i, r)| (l, i, r)))
        .filter(|(_, _, r)| args.port.is_none_or(|p| r.matches_port(p)))
        .collect();
    let any = |v: Option<Vec<String>>| v.map_or_else(|| "*".to_owned(), |v| v.join(","));
    let rows: Vec<Value> = rules
        .iter()
        .map(|(list, index, rule)| {
            let callers: Vec<String> = rule
                .from
                .iter()
                .map(|p| match p {
                    Principal::ServiceAccount(sa) => format!("{}/{sa}", list.metadata.namespace),
                    other => other.to_string(),
                })
                .collect();
            let ports = rule
                .ports
                .as_ref()
                .map(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>());
            let methods = rule.http.as_ref().and_then(|h| h.methods.clone());
            let paths = rule.http.as_ref().and_then(|h| {
                h.paths
                    .as_ref()
                    .map(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())
            });
            let claims = rule.claims.as_ref().map(|c| {
                c.iter()
                    .map(|c| format!("{}={}", c.name, c.value))
                    .collect::<Vec<_>>()
            });
            json!({
                "allowList": list.metadata.name, "rule": index, "mode": list.mode().as_str(),
                "callers": callers, "ports": ports, "httpOnly": rule.http.is_some(),
                "methods": methods, "paths": paths, "claims": claims,
            })
        })
        .collect();
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
                ]);
            }
            crate::ops::print_table(&table);
        }
    }
    Ok(())
}
