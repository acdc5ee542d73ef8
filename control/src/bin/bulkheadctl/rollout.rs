//! `bulkheadctl rollout status|promote|pause|resume|abort|retry`: watch and
//! steer progressive rollouts.

use std::io::IsTerminal;
use std::time::Duration;

use bulkhead_control::rollout::status::{IntervalReport, Verdict};
use bulkhead_control::rollout::{Phase, RolloutStatus};
use bulkhead_proto::model::Rollout;
use bulkhead_proto::pb;
use clap::Subcommand;

use crate::settings::Settings;
use crate::{CliError, CliResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Phase, step, weight, the last intervals' measurements beside each
    /// gate, and why the last decision was taken. With -w, follows it
    /// until it ends (exit 0 when promoted, 1 when failed or aborted).
    Status {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Follow the rollout live.
        #[arg(short = 'w', long)]
        watch: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Skip the rest of the current step (a pause, or its analysis); with
    /// --full, the canary gets all traffic now.
    Promote {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        full: bool,
    },
    /// Hold the rollout at its current weight.
    Pause {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Go on after `pause` (or past a `pause` step).
    Resume {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Send all traffic back to stable at once; the rollout ends Aborted.
    Abort {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Start a Failed or Aborted rollout again from its first step.
    Retry {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

pub(crate) const EXAMPLES: &str = "\
Examples:
  bulkheadctl apply -f rollout.yaml
  bulkheadctl rollout status inventory -n shop -w
  bulkheadctl rollout status inventory -n shop -o json | jq .phase
  bulkheadctl rollout promote inventory -n shop          # past a pause step
  bulkheadctl rollout abort inventory -n shop";

pub(crate) async fn run(settings: &Settings, command: RolloutCommand) -> CliResult {
    let (namespace, name, action, full) = match command {
        RolloutCommand::Status {
            name,
            namespace,
            watch,
            output,
        } => return status(settings, &namespace, &name, watch, output).await,
        RolloutCommand::Promote {
            name,
            namespace,
            full,
        } => (namespace, name, "promote", full),
        RolloutCommand::Pause { name, namespace } => (namespace, name, "pause", false),
        RolloutCommand::Resume { name, namespace } => (namespace, name, "resume", false),
        RolloutCommand::Abort { name, namespace } => (namespace, name, "abort", false),
        RolloutCommand::Retry { name, namespace } => (namespace, name, "retry", false),
    };
    let state = crate::ops::client(settings)?
        .act_on_rollout(pb::RolloutActionRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            action: action.to_owned(),
            full,
        })
        .await?
        .into_inner();
    let (_, status) = decode(&state)?;
    match status {
        Some(s) => println!(
            "rollout {namespace}/{name}: {} at {} % to {}: {}",
            s.phase.as_str(),
            s.canary_weight,
            s.canary,
            s.reason
        ),
        None => println!("rollout {namespace}/{name}: {action} done"),
    }
    Ok(())
}

fn decode(state: &pb::RolloutState) -> Result<(Rollout, Option<RolloutStatus>), CliError> {
    bulkhead_control::rollout::view::decode(state).map_err(CliError::failure)
}

/// How long `status` waits for a just-applied rollout's first status.
const FIRST_STATUS_WAIT: Duration = Duration::from_secs(5);
const WATCH_POLL: Duration = Duration::from_secs(1);

async fn status(
    settings: &Settings,
    namespace: &str,
    name: &str,
    watch: bool,
    output: Output,
) -> CliResult {
    let mut client = crate::ops::client(settings)?;
    let request = || pb::RolloutRequest {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let started = tokio::time::Instant::now();
    let mut last_shown: Option<RolloutStatus> = None;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let state = client.get_rollout(request()).await?.into_inner();
        let (rollout, status) = decode(&state)?;
        let Some(status) = status else {
            if started.elapsed() < FIRST_STATUS_WAIT || watch {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            return Err(CliError::failure(format!(
                "rollout {namespace}/{name} has no status yet: no control-plane replica has acted on it \
                 (one leads rollouts when the bulkhead_rollout_leader gauge is 1 on it)"
            )));
        };
        if last_shown.as_ref() != Some(&status) {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&status).unwrap_or_default()),
                Output::Yaml => {
                    let value = serde_json::to_value(&status).unwrap_or_default();
                    print!("{}", serde_saphyr::to_string(&value).unwrap_or_default());
                    if watch {
                        println!("---");
                    }
                }
                Output::Table | Output::Wide => {
                    if watch && terminal {
                        // Redraw in place.
                        print!("\x1b[2J\x1b[H");
                    }
                    print!(
                        "{}",
                        table(&rollout, &status, output == Output::Wide, colour())
                    );
                    if watch && !terminal {
                        println!();
                    }
                }
            }
            last_shown = Some(status.clone());
        }
        if !watch {
            return Ok(());
        }
        if status.phase.is_terminal() {
            return match status.phase {
                Phase::Promoted => Ok(()),
                phase => Err(CliError::failure(format!(
                    "rollout {namespace}/{name} ended {}: {}",
                    phase.as_str(),
                    status.reason
                ))),
            };
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// Colour only on a terminal, and never with NO_COLOR set.
pub(crate) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn paint(text: &str, code: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// The steps as a progress bar: done, current (with its phase), to come.
fn progress(rollout: &Rollout, status: &RolloutStatus, colour: bool) -> String {
    let plan = bulkhead_control::rollout::view::step_labels(rollout);
    let current = status.step as usize;
    let failed = matches!(status.phase, Phase::Failed | Phase::Aborted);
    let parts: Vec<String> = plan
        .iter()
        .enumerate()
        .map(|(i, label)| {
            if i < current || status.phase == Phase::Promoted {
                paint(&format!("■ {label}"), "32", colour)
            } else if i == current {
                if failed {
                    paint(&format!("✗ {label}"), "31", colour)
                } else {
                    paint(&format!("▶ {label}"), "1;33", colour)
                }
            } else {
                format!("□ {label}")
            }
        })
        .collect();
    parts.join(" ── ")
}

fn phase_colour(phase: Phase) -> &'static str {
    match phase {
        Phase::Promoted => "32",
        Phase::Failed | Phase::Aborted => "31",
        Phase::Paused | Phase::InsufficientData => "33",
        Phase::Progressing => "36",
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn time_of(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    let text = humantime::format_rfc3339_seconds(t).to_string();
    // HH:MM:SS is enough beside each other.
    text.get(11..19).unwrap_or(&text).to_owned()
}

fn gates(interval: &IntervalReport) -> String {
    interval
        .gates
        .iter()
        .filter(|g| g.gate != "minRequests")
        .map(|g| {
            let mark = match (g.judged, g.passed) {
                (false, _) => "n/a",
                (true, true) => "ok",
                (true, false) => "FAIL",
            };
            format!("{} {}/{} {mark}", g.gate, opt(g.measured, 3), g.threshold)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(rollout: &Rollout, status: &RolloutStatus, wide: bool, colour: bool) -> String {
    let meta = &rollout.metadata;
    // Counted from 1, as the dashboard shows them; the last step is the
    // canary at 100 %.
    let steps = bulkhead_control::rollout::view::step_labels(rollout).len();
    let mut out = format!(
        "Rollout {}/{}  {} {} -> {}  stable now {}\nPhase:  {}   step {} of {}   canary weight {} %\n",
        meta.namespace,
        meta.name,
        rollout.spec.strategy.as_str(),
        rollout.spec.stable,
        rollout.spec.canary,
        status.stable,
        paint(status.phase.as_str(), phase_colour(status.phase), colour),
        (status.step as usize + 1).min(steps),
        steps,
        status.canary_weight,
    );
    out.push_str(&format!("Steps:  {}\n", progress(rollout, status, colour)));
    out.push_str(&format!("Reason: {}\n", status.reason));
    if let Some(action) = &status.last_action {
        out.push_str(&format!(
            "Action: {} by {} at {}: {}\n",
            action.action,
            action.by,
            time_of(action.at_unix_ms),
            action.outcome
        ));
    }
    if status.intervals.is_empty() {
        out.push_str("No interval judged yet.\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<9} {:>4} {:>6} {:>8} {:>8} {:>9} {:>8} {:>9}  {:<17} GATES (measured/threshold)\n",
        "ENDED", "STEP", "WEIGHT", "REQUESTS", "SUCCESS", "P99 MS", "STABLE", "STBL P99", "VERDICT"
    ));
    for i in &status.intervals {
        let verdict = match i.verdict {
            Verdict::Passed => paint("passed", "32", colour),
            Verdict::Failed => paint("failed", "31", colour),
            Verdict::InsufficientData => paint("insufficient-data", "33", colour),
        };
        let pad = 17usize.saturating_sub(i.verdict.as_str().len());
        out.push_str(&format!(
            "{:<9} {:>4} {:>5}% {:>8} {:>8} {:>9} {:>8} {:>9}  {verdict}{}  {}\n",
            time_of(i.end_unix_ms),
            i.step,
            i.canary_weight,
            i.requests,
            opt(i.success_rate, 4),
            opt(i.p99_ms, 1),
            opt(i.stable.as_ref().and_then(|s| s.success_rate), 4),
            opt(i.stable.as_ref().and_then(|s| s.p99_ms), 1),
            " ".repeat(pad),
            gates(i),
        ));
        if wide {
            out.push_str(&format!("          {}\n", i.reason));
        }
    }
    out
}
