//! `bulkheadctl events`: the mesh event stream, as a table or one
//! CloudEvent JSON object per line; with -w it follows, reconnecting and
//! resuming after the last id by itself.

use std::io::Write;
use std::time::Duration;

use bulkhead_proto::pb;
use clap::Args;

use crate::rollout::{colour, paint};
use crate::settings::Settings;
use crate::{CliError, CliResult, Output};

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only events about this namespace (mesh-wide ones such as "events
    /// lost" always show).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Only these types: a full type or a prefix after `dev.bulkhead.`,
    /// e.g. `endpoint` or `certificate.refused` (repeat for several).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// How far back to start.
    #[arg(long, default_value = "1h", value_parser = bulkhead_control::config::parse_duration)]
    since: Duration,
    /// Start after this event id instead (how a script resumes).
    #[arg(long, value_name = "ID")]
    after: Option<i64>,
    /// Keep following new events (reconnects and resumes by itself).
    #[arg(short = 'w', long)]
    watch: bool,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

pub(crate) const EXAMPLES: &str = "\
Examples:
  bulkheadctl events                                 # the last hour
  bulkheadctl events -n shop --type endpoint --since 10m
  bulkheadctl events -w -o json | jq -c 'select(.type == \"dev.bulkhead.authz.denied\")'
  bulkheadctl events --after 4211 -o json            # resume after id 4211";

/// Longest wait between reconnection attempts of -w.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(crate) async fn run(settings: &Settings, args: EventsArgs) -> CliResult {
    let since_ms = now_ms() - args.since.as_millis() as i64;
    let mut after = args.after.unwrap_or(0);
    let mut printer = Printer {
        output: args.output,
        colour: colour(),
        header: false,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let request = pb::WatchEventsRequest {
            after_id: after,
            since_unix_ms: if after > 0 { 0 } else { since_ms.max(1) },
            namespace: args.namespace.clone().unwrap_or_default(),
            types: args.types.clone(),
            follow: args.watch,
        };
        let mut client = crate::ops::client(settings)?;
        let result = async {
            let mut stream = client.watch_events(request).await?.into_inner();
            while let Some(event) = stream.message().await? {
                after = after.max(event.id);
                printer.print(&event).map_err(Interrupted::Output)?;
                backoff = Duration::from_millis(200);
            }
            Ok::<(), Interrupted>(())
        }
        .await;
        match result {
            Ok(()) if !args.watch => return Ok(()),
            Ok(()) => {}
            Err(Interrupted::Output(e)) => return Err(e),
            Err(Interrupted::Status(status)) if !args.watch || !transient(&status) => {
                return Err(status.into());
            }
            Err(Interrupted::Status(status)) => eprintln!(
                "bulkheadctl: event stream interrupted ({}); resuming after id {after} in {backoff:?}",
                status.message()
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Interrupted {
    Status(tonic::Status),
    Output(CliError),
}

impl From<tonic::Status> for Interrupted {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// What -w rides out: the control plane going away or cutting a slow
/// consumer off; not a refusal.
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable
            | Unknown
            | Internal
            | ResourceExhausted
            | Cancelled
            | DeadlineExceeded
            | Aborted
    )
}

struct Printer {
    output: Output,
    colour: bool,
    header: bool,
}

impl Printer {
    fn print(&mut self, event: &pb::MeshEvent) -> CliResult {
        let mut out = std::io::stdout().lock();
        let written = match self.output {
            Output::Json => writeln!(out, "{}", event.cloudevent_json),
            Output::Yaml => {
                let value: serde_json::Value =
                    serde_json::from_str(&event.cloudevent_json).unwrap_or_default();
                let yaml = serde_saphyr::to_string(&value).unwrap_or_default();
                write!(out, "---\n{yaml}")
            }
            Output::Table | Output::Wide => {
                let header = if self.header {
                    String::new()
                } else {
                    self.header = true;
                    format!(
                        "{:<24}  {:<26}  {:<12}  {:<36}  DETAIL\n",
                        "TIME", "TYPE", "NAMESPACE", "SUBJECT"
                    )
                };
                let value: serde_json::Value =
                    serde_json::from_str(&event.cloudevent_json).unwrap_or_default();
                let kind = event
                    .r#type
                    .strip_prefix("dev.bulkhead.")
                    .unwrap_or(&event.r#type);
                let painted = match kind {
                    k if k.ends_with("refused") || k.ends_with("denied") || k.ends_with("lost") => {
                        paint(kind, "31", self.colour)
                    }
                    k if k.ends_with("expired")
                        || k.ends_with("ejected")
                        || k.ends_with("unready") =>
                    {
                        paint(kind, "33", self.colour)
                    }
                    _ => kind.to_owned(),
                };
                // Padding counts the visible text only.
                let pad = 26usize.saturating_sub(kind.chars().count());
                writeln!(
                    out,
                    "{header}{:<24}  {painted}{}  {:<12}  {:<36}  {}",
                    value["time"].as_str().unwrap_or("-"),
                    " ".repeat(pad),
                    if event.namespace.is_empty() {
                        "-"
                    } else {
                        &event.namespace
                    },
                    value["subject"].as_str().unwrap_or("-"),
                    detail(&value["data"], self.output == Output::Wide),
                )
            }
        };
        written
            .and_then(|()| out.flush())
            .map_err(|e| CliError::failure(format!("cannot write to stdout: {e}")))
    }
}

/// The data as `key=value` pairs (short: the first few, strings cut).
fn detail(data: &serde_json::Value, wide: bool) -> String {
    let Some(map) = data.as_object() else {
        return String::new();
    };
    let pairs = map.iter().map(|(k, v)| {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let v = if !wide && v.chars().count() > 60 {
            format!("{}…", v.chars().take(59).collect::<String>())
        } else {
            v
        };
        format!("{k}={v}")
    });
    if wide {
        pairs.collect::<Vec<_>>().join(" ")
    } else {
        pairs.take(6).collect::<Vec<_>>().join(" ")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
