//! What every Bulkhead binary does as a process, once: command-line errors
//! as one line, durations on the command line, logs, and stop signals.
//! `bulkhead-control`, `bulkheadctl` and `bulkhead-proxy` behave alike here
//! because they share this code, not because three copies agree.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// `--log-format`: text for terminals, JSON for machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber, on stderr. `level` is an
/// `EnvFilter` directive such as `info` or `bulkhead_control=debug`;
/// `RUST_LOG`, when set, wins. Colour only on a terminal without
/// `NO_COLOR`. A second call is a no-op.
pub fn init_logs(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A clap error as one line for the user: the message (with any list of
/// missing arguments folded in), without the usage page.
pub fn usage_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
        .collect();
    format!(
        "{} (see --help)",
        parts.join(" ").trim_start_matches("error: ")
    )
}

/// Parses `args` (the first is the program name) as `P`, the way every
/// Bulkhead binary does: `--help` and `--version` print and exit 0; a bad
/// command line prints one line, `<program>: <what is wrong> (see --help)`,
/// and exits 2. `Err` carries the exit code for `main` to return.
pub fn parse_args<P: clap::Parser>(
    program: &str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<P, std::process::ExitCode> {
    match P::try_parse_from(args) {
        Ok(parsed) => Ok(parsed),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{program}: {}", usage_line(&e));
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// Durations such as `90s`, `10m`, `24h`, `1h30m`; zero is refused (every
/// duration flag is a timeout, an interval or a lifetime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like 30s, 10m or 24h ({e})"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

/// Resolves on SIGTERM or SIGINT. Without signal handlers (they could not
/// be installed) it never resolves: the process then runs until killed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct Args {
        #[arg(long, value_parser = parse_duration)]
        wait: Duration,
        #[arg(long)]
        name: String,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            "must be greater than zero"
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .starts_with("expected a duration")
        );
    }

    #[test]
    fn a_usage_error_is_one_line_naming_the_flag() {
        let e = Args::try_parse_from(["t", "--wait", "0s", "--name", "x"]).unwrap_err();
        let line = usage_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--wait") && line.contains("greater than zero"),
            "{line}"
        );
        assert!(line.ends_with("(see --help)"), "{line}");
        let e = Args::try_parse_from(["t"]).unwrap_err();
        let line = usage_line(&e);
        assert!(line.contains("--wait") && line.contains("--name"), "{line}");
        assert!(!line.contains("Usage:"), "{line}");
    }
}
