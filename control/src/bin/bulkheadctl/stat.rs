//! `bulkheadctl stat`: golden metrics per service and version — requests
//! per second, success rate, p50/p95/p99 latency, the mesh's own errors —
//! from what the sidecars report to the control plane (the aggregates
//! rollout gates use; no Prometheus). With `--from`/`--to`, the edges:
//! who calls whom.

use std::io::IsTerminal;
use std::time::Duration;

use bulkhead_control::golden::{self, GoldenRow as Row, short_caller as short};
use bulkhead_proto::pb;

use crate::settings::Settings;
use crate::{CliError, CliResult, Output};

/// What `stat` was asked.
pub(crate) struct StatArgs<'a> {
    pub service: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub window: Duration,
    /// Callers: `ns/sa`, `sa` (in `namespace`) or a SPIFFE ID.
    pub from: Option<&'a str>,
    /// A target service: `name` (in `namespace`) or `ns/name`.
    pub to: Option<&'a str>,
    pub watch: bool,
    pub output: Output,
}

pub(crate) const EXAMPLES: &str = "\
Examples:
  bulkheadctl stat -n shop
  bulkheadctl stat inventory -n shop --window 1m
  bulkheadctl stat --to shop/inventory          # who calls inventory
  bulkheadctl stat --from shop/web -o json      # what web calls
  bulkheadctl stat -n shop -w";

/// Whether `caller` (a SPIFFE ID) is what `--from` names.
fn caller_matches(wanted: &str, caller: &str, namespace: Option<&str>) -> bool {
    if wanted.starts_with("spiffe://") {
        return wanted == caller;
    }
    let short = short(caller);
    match wanted.split_once('/') {
        Some(_) => short == wanted,
        None => short == format!("{}/{wanted}", namespace.unwrap_or("default")),
    }
}

fn rows(args: &StatArgs<'_>, resp: &pb::StatsResponse) -> Vec<Row> {
    match args.from {
        None if args.to.is_none() => golden::version_rows(resp),
        _ => golden::edge_rows(resp, |caller| {
            args.from
                .is_none_or(|f| caller_matches(f, caller, args.namespace))
        }),
    }
}

/// The service and namespace to ask for: `--to ns/name` wins, then the
/// positional SERVICE and `-n`.
fn target<'a>(args: &StatArgs<'a>) -> Result<(Option<&'a str>, Option<&'a str>), CliError> {
    match args.to {
        Some(to) => match to.split_once('/') {
            Some((ns, name)) => Ok((Some(ns), Some(name))),
            None => Ok((args.namespace, Some(to))),
        },
        None => Ok((args.namespace, args.service)),
    }
}

pub(crate) async fn run(settings: &Settings, args: StatArgs<'_>) -> CliResult {
    if args.window < Duration::from_secs(1) || args.window > Duration::from_secs(3600) {
        return Err(CliError::usage(
            "--window: expected a duration from 1s to 1h, such as 10s or 5m",
        ));
    }
    if let (Some(_), Some(service)) = (args.to, args.service) {
        return Err(CliError::usage(format!(
            "give the target once: SERVICE ({service}) or --to, not both"
        )));
    }
    let (namespace, service) = target(&args)?;
    let mut client = crate::ops::client(settings)?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let resp = client
            .get_stats(pb::StatsRequest {
                namespace: namespace.unwrap_or_default().to_owned(),
                service: service.unwrap_or_default().to_owned(),
                window_ms: u32::try_from(args.window.as_millis()).unwrap_or(u32::MAX),
            })
            .await?
            .into_inner();
        let rows = rows(&args, &resp);
        match args.output {
            Output::Json => println!("{}", serde_json::to_string(&rows).unwrap_or_default()),
            Output::Yaml => {
                let value = serde_json::to_value(&rows).unwrap_or_default();
                print!("{}", serde_saphyr::to_string(&value).unwrap_or_default());
            }
            Output::Table | Output::Wide => {
                if args.watch && terminal {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table(&rows, args.window, args.output == Output::Wide));
            }
        }
        if !args.watch {
            return Ok(());
        }
        if args.output == Output::Yaml {
            println!("---");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn table(rows: &[Row], window: Duration, wide: bool) -> String {
    if rows.is_empty() {
        return format!(
            "No requests reported in the last {} (sidecars report every few seconds).\n",
            humantime::format_duration(window)
        );
    }
    let edges = rows.iter().any(|r| r.from.is_some());
    let mut out = String::new();
    if edges {
        out.push_str(&format!("{:<28} ", "FROM"));
    }
    out.push_str(&format!(
        "{:<14} {:<20} {:<12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "NAMESPACE",
        "SERVICE",
        "VERSION",
        "RPS",
        "SUCCESS",
        "P50 MS",
        "P95 MS",
        "P99 MS",
        "MESH ERR"
    ));
    if wide {
        out.push_str(&format!(" {:>9} {:>9}", "REQUESTS", "FAILURES"));
    }
    out.push('\n');
    for r in rows {
        if edges {
            out.push_str(&format!("{:<28} ", r.from.as_deref().unwrap_or("-")));
        }
        out.push_str(&format!(
            "{:<14} {:<20} {:<12} {:>9.2} {:>8} {:>8} {:>8} {:>8} {:>9}",
            r.namespace,
            r.service,
            r.version,
            r.rps,
            r.success_rate
                .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
            opt(r.p50_ms, 1),
            opt(r.p95_ms, 1),
            opt(r.p99_ms, 1),
            r.mesh_errors,
        ));
        if wide {
            out.push_str(&format!(" {:>9} {:>9}", r.requests, r.failures));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::stats::LatencyHistogram;

    #[test]
    fn callers_match_as_operators_write_them() {
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        assert!(caller_matches("shop/web", web, None));
        assert!(caller_matches("web", web, Some("shop")));
        assert!(!caller_matches("web", web, None));
        assert!(caller_matches(web, web, None));
        assert!(!caller_matches("shop/cart", web, None));
        assert_eq!(short(web), "shop/web");
    }

    #[test]
    fn rows_from_stats() {
        let mut latency = LatencyHistogram::default();
        for _ in 0..100 {
            latency.record(8.0);
        }
        let v = pb::VersionStats {
            namespace: "shop".into(),
            service: "inventory".into(),
            version: "3.0.0".into(),
            requests: 100,
            failures: 2,
            latency_counts: latency.counts().to_vec(),
            mesh_errors: 1,
            callers: vec![pb::CallerCounts {
                caller: "spiffe://cluster.local/ns/shop/sa/web".into(),
                requests: 100,
                failures: 2,
                mesh_errors: 1,
                latency_counts: latency.counts().to_vec(),
            }],
            ..Default::default()
        };
        let resp = pb::StatsResponse {
            from_unix_ms: 0,
            to_unix_ms: 10_000,
            versions: vec![v],
        };
        let args = |from, to| StatArgs {
            service: None,
            namespace: Some("shop"),
            window: Duration::from_secs(10),
            from,
            to,
            watch: false,
            output: Output::Json,
        };
        let versions = rows(&args(None, None), &resp);
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].rps, 10.0);
        assert_eq!(versions[0].success_rate, Some(0.98));
        assert!((7.5..=10.0).contains(&versions[0].p99_ms.unwrap()));
        let json = serde_json::to_value(&versions).unwrap();
        for field in [
            "namespace",
            "service",
            "version",
            "rps",
            "successRate",
            "p50Ms",
            "p95Ms",
            "p99Ms",
            "requests",
        ] {
            assert!(json[0].get(field).is_some(), "{field}: {json}");
        }
        let edges = rows(&args(Some("web"), None), &resp);
        assert_eq!(edges[0].from.as_deref(), Some("shop/web"));
        assert!(rows(&args(Some("cart"), None), &resp).is_empty());
    }
}
