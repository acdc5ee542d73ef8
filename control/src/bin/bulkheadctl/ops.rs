//! Resource and registry commands against the admin API (operators only).

use std::io::Read;

use bulkhead_proto::model::{EgressDestination, Resource};
use bulkhead_proto::pb;
use bulkhead_proto::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::settings::Settings;
use crate::{CliError, CliResult, Output};

/// Largest file `apply` sends (the control plane refuses more anyway).
const MAX_APPLY_BYTES: u64 = 1024 * 1024;

pub(crate) fn client(settings: &Settings) -> Result<AdminClient<Channel>, CliError> {
    let (bundle, slot) = settings.operator_identity()?;
    let channel = bulkhead_tls::channel(&settings.control, &bundle, Some(slot))
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
}

pub(crate) fn read_input(file: &str) -> Result<String, CliError> {
    let mut text = String::new();
    let result = if file == "-" {
        std::io::stdin()
            .take(MAX_APPLY_BYTES + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_APPLY_BYTES + 1).read_to_string(&mut text))
    };
    result.map_err(|e| CliError::usage(format!("{file}: {e}")))?;
    if text.len() as u64 > MAX_APPLY_BYTES {
        return Err(CliError::usage(format!(
            "{file}: larger than {MAX_APPLY_BYTES} bytes"
        )));
    }
    Ok(text)
}

pub(crate) async fn apply(settings: &Settings, file: &str, dry_run: bool) -> CliResult {
    let yaml = read_input(file)?;
    let resp = client(settings)?
        .apply(pb::ApplyRequest {
            source: file.to_owned(),
            yaml,
            dry_run,
        })
        .await?
        .into_inner();
    let suffix = if dry_run { " (dry run)" } else { "" };
    for r in resp.results {
        println!(
            "{}/{} {}/{} {}{suffix}",
            r.kind.to_lowercase(),
            r.name,
            r.namespace,
            r.name,
            r.outcome
        );
    }
    Ok(())
}

pub(crate) fn parse_resources(resources: &[pb::Resource]) -> Result<Vec<Resource>, CliError> {
    resources
        .iter()
        .map(|r| {
            Resource::try_from(r)
                .map_err(|e| CliError::failure(format!("control plane sent a bad {}: {e}", r.kind)))
        })
        .collect()
}

pub(crate) async fn get(
    settings: &Settings,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    output: Output,
) -> CliResult {
    let kind: bulkhead_proto::model::Kind = kind.parse().map_err(|_| {
        CliError::usage(format!(
            "unknown kind {kind:?}: expected service, allowlist, trafficsplit, rollout or gateway"
        ))
    })?;
    let resp = client(settings)?
        .get(pb::GetRequest {
            kind: kind.to_string(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.unwrap_or_default().to_owned(),
        })
        .await?
        .into_inner();
    let resources = parse_resources(&resp.resources)?;
    match output {
        Output::Yaml => {
            let docs: Vec<String> = resources.iter().map(|r| r.to_yaml()).collect();
            print!("{}", docs.join("---\n"));
        }
        Output::Json => {
            let values: Vec<serde_json::Value> = resources
                .iter()
                .map(|r| serde_json::from_str(&r.to_json()).unwrap_or(serde_json::Value::Null))
                .collect();
            let text = if name.is_some() && values.len() == 1 {
                serde_json::to_string_pretty(&values[0])
            } else {
                serde_json::to_string_pretty(&values)
            };
            println!("{}", text.unwrap_or_default());
        }
        Output::Table | Output::Wide => {
            if resources.is_empty() {
                eprintln!("no {kind} resources found");
                return Ok(());
            }
            let mut rows = vec![vec![
                "NAMESPACE".to_owned(),
                "NAME".to_owned(),
                "SUMMARY".to_owned(),
            ]];
            for r in &resources {
                rows.push(vec![
                    r.namespace().to_owned(),
                    r.name().to_owned(),
                    summary(r),
                ]);
            }
            print_table(&rows);
        }
    }
    Ok(())
}

pub(crate) async fn delete(
    settings: &Settings,
    kind: &str,
    name: &str,
    namespace: &str,
) -> CliResult {
    let kind: bulkhead_proto::model::Kind = kind.parse().map_err(|_| {
        CliError::usage(format!(
            "unknown kind {kind:?}: expected service, allowlist, trafficsplit, rollout or gateway"
        ))
    })?;
    client(settings)?
        .delete(pb::DeleteRequest {
            kind: kind.to_string(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
        .await?;
    println!(
        "{}/{name} {namespace}/{name} deleted",
        kind.to_string().to_lowercase()
    );
    Ok(())
}

/// Which endpoints `bulkheadctl endpoints` lists.
pub(crate) struct EndpointFilter<'a> {
    pub(crate) service: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    /// Unready ones too.
    pub(crate) all: bool,
}

pub(crate) async fn endpoints(
    settings: &Settings,
    filter: EndpointFilter<'_>,
    output: Output,
) -> CliResult {
    let resp = client(settings)?
        .list_endpoints(pb::ListEndpointsRequest {
            service: filter.service.unwrap_or_default().to_owned(),
            namespace: filter.namespace.unwrap_or_default().to_owned(),
            all: filter.all,
        })
        .await?
        .into_inner();
    if output == Output::Json || output == Output::Yaml {
        let values: Vec<serde_json::Value> = resp
            .endpoints
            .iter()
            .map(|e| {
                let loc = e.locality.clone().unwrap_or_default();
                serde_json::json!({
                    "namespace": e.namespace, "service": e.service, "version": e.version,
                    "address": e.address, "inboundPort": e.inbound_port,
                    "ports": e.ports.iter().map(|p| serde_json::json!({"port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                    "locality": {"node": loc.node, "zone": loc.zone, "region": loc.region},
                    "identity": e.identity,
                    "ready": e.ready.unwrap_or(true),
                    "leaseAgeSeconds": (resp.now_unix_ms - e.registered_unix_ms).max(0) / 1000,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&values).unwrap_or_default()
        );
        return Ok(());
    }
    if resp.endpoints.is_empty() {
        if filter.all {
            eprintln!("no endpoints registered");
        } else {
            eprintln!("no ready endpoints (--all lists unready ones too)");
        }
        return Ok(());
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "SERVICE",
            "VERSION",
            "ADDRESS",
            "PORTS",
            "LOCALITY",
            "IDENTITY",
            "READY",
            "AGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for e in &resp.endpoints {
        let loc = e.locality.clone().unwrap_or_default();
        let ports: Vec<String> = e
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        let age = std::time::Duration::from_secs(
            ((resp.now_unix_ms - e.registered_unix_ms).max(0) / 1000) as u64,
        );
        rows.push(vec![
            e.namespace.clone(),
            e.service.clone(),
            e.version.clone(),
            format!("{}:{}", e.address, e.inbound_port),
            ports.join(","),
            format!("{}/{}/{}", loc.region, loc.zone, loc.node),
            e.identity.clone(),
            e.ready.unwrap_or(true).to_string(),
            humantime::format_duration(age).to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// One line of what a resource says, for tables.
fn summary(r: &Resource) -> String {
    match r {
        Resource::Service(s) => {
            let ports: Vec<String> = s
                .spec
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
                .collect();
            let mut out = format!(
                "ports={} accounts={}",
                ports.join(","),
                s.service_accounts().join(",")
            );
            if let Some(vip) = s.spec.vip {
                out.push_str(&format!(" vip={vip}"));
            }
            out
        }
        Resource::AllowList(a) => format!(
            "target={} mode={:?} rules={}",
            a.spec.target,
            a.mode(),
            a.spec.rules.len()
        )
        .to_lowercase(),
        Resource::TrafficSplit(t) => {
            let backends: Vec<String> = t
                .spec
                .backends
                .iter()
                .map(|b| format!("{}={}", b.version, b.weight))
                .collect();
            format!("service={} {}", t.spec.service, backends.join(" "))
        }
        Resource::Rollout(ro) => format!(
            "service={} stable={} canary={} interval={}",
            ro.spec.service,
            ro.spec.stable,
            ro.spec.canary,
            ro.spec.interval.as_str()
        ),
        Resource::Gateway(g) => {
            let routes: Vec<&str> = g
                .spec
                .routes
                .iter()
                .map(|r| r.path_prefix.as_str())
                .collect();
            format!(
                "routes={} jwt={}",
                routes.join(","),
                g.spec.jwt.as_ref().map_or(0, Vec::len)
            )
        }
        Resource::Egress(e) => {
            let to: Vec<String> = e
                .spec
                .to
                .iter()
                .map(|r| {
                    let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
                    match &r.destination {
                        EgressDestination::Host(h) => format!("{h}:{}", ports.join(",")),
                        EgressDestination::Cidr(c) => format!("{c}:{}", ports.join(",")),
                    }
                })
                .collect();
            format!("from={} to={}", e.spec.from.join(","), to.join(" "))
        }
    }
}
