//! What every Bulkhead binary does as a process, once: command-line errors
//! as one line, durations on the command line, logs, stop signals, the
//! [`Backoff`] every retry loop waits with, when a certificate is renewed
//! ([`renewal_delay`]), and the metrics recorder.
//! `bulkhead-control`, `bulkheadctl` and `bulkhead-proxy` behave alike here
//! because they share this code, not because three copies agree.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

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

/// The levels a bare `--log-level` directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `--log-level` value before it is used: every comma-separated
/// directive is a level (`warn`) or `TARGET=LEVEL` (`bulkhead_proxy=debug`).
/// A bare word that is no level (`warning`) would otherwise be read as a
/// target name and silence every log line.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let levels = LEVELS.join(", ");
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None if directive.contains('[') => continue,
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{directive:?} is not a level: use one of {levels}, or TARGET=LEVEL"
            ));
        }
    }
    EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?}: {e}"))
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

/// Upper bounds of the request-latency buckets, in seconds: 1 ms to 10 s,
/// roughly ×2.5 apart, so `histogram_quantile` over many pods gives a p99
/// within one bucket's width of the truth.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for how long connections last (`*_connection_duration_seconds`):
/// 10 ms to a day.
pub const CONNECTION_BUCKETS: [f64; 10] = [
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Installs the global Prometheus recorder every binary exports with:
/// histograms are Prometheus histograms with buckets (aggregatable across
/// pods), not summaries (which are not).
pub fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Suffix("_connection_duration_seconds".into()),
                &CONNECTION_BUCKETS,
            )
        })
        .map_err(|e| format!("bad histogram buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// Durations such as `90s`, `10m`, `24h`, `1h30m`; zero is refused. The
/// same parser reads durations in resources (`bulkhead_proto`).
pub use bulkhead_proto::parse_duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of the current step (so that many clients that failed together do not
/// retry together), the step doubles up to `max`, and [`Backoff::reset`]
/// starts over after a success. The one backoff of every retry loop in
/// the mesh: reconnects, registrations, renewals, accept errors, store
/// retries.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next delay to wait, and one step further for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current.mul_f64(rand::random_range(0.5..=1.0));
        self.current = (self.current * 2).min(self.max);
        delay.max(self.min / 2)
    }

    /// Sleeps for [`Backoff::next_delay`], returning what it waited.
    pub async fn wait(&mut self) -> Duration {
        let delay = self.next_delay();
        tokio::time::sleep(delay).await;
        delay
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// When to renew a certificate that expires at `not_after` (sidecars'
/// workload certificates, the control plane's webhook certificate): at
/// about 70 % of what is left, 65-75 % so that a fleet started together
/// does not renew together. Measured from `now` (receipt), not from
/// `not_before`: CAs backdate that for clock skew, which would make short
/// lifetimes due at once. At least a second, so that a nearly expired
/// certificate does not spin.
pub fn renewal_delay(not_after: SystemTime, now: SystemTime) -> Duration {
    let remaining = not_after.duration_since(now).unwrap_or_default();
    let share = rand::random_range(0.65..0.75);
    remaining.mul_f64(share).max(Duration::from_secs(1))
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
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.windows(2).all(|w| w[1] >= w[0] / 2), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[9] >= Duration::from_millis(2_500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_waits_what_it_says() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let started = tokio::time::Instant::now();
        let mut said = Duration::ZERO;
        for _ in 0..4 {
            said += backoff.wait().await;
        }
        // The timer works in whole milliseconds.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= said && elapsed <= said + Duration::from_millis(4),
            "{elapsed:?} vs {said:?}"
        );
        assert!(said >= Duration::from_millis(500 + 1000 + 2000 + 2000));
        assert!(said <= Duration::from_secs(1 + 2 + 4 + 4));
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

#[cfg(test)]
mod renewal_tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::renewal_delay;

    #[test]
    fn renewal_comes_at_about_seventy_percent_of_what_is_left() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for lifetime in [Duration::from_secs(120), Duration::from_secs(24 * 3600)] {
            let delays: Vec<Duration> = (0..200)
                .map(|_| renewal_delay(now + lifetime, now))
                .collect();
            let (low, high) = (lifetime.mul_f64(0.65), lifetime.mul_f64(0.75));
            assert!(
                delays.iter().all(|d| *d >= low && *d <= high),
                "{lifetime:?}: {delays:?}"
            );
            // Jittered: a fleet started together spreads out.
            assert!(delays.iter().any(|d| *d != delays[0]));
        }
    }

    #[test]
    fn an_expired_or_nearly_expired_certificate_renews_within_a_second_not_in_a_spin() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expired = now - Duration::from_secs(10);
        assert_eq!(renewal_delay(expired, now), Duration::from_secs(1));
        let nearly = now + Duration::from_millis(500);
        assert_eq!(renewal_delay(nearly, now), Duration::from_secs(1));
    }
}

#[cfg(test)]
mod log_filter_tests {
    use super::check_log_filter;

    #[test]
    fn levels_and_targets_pass_and_bare_words_do_not() {
        for ok in [
            "info",
            "WARN",
            "info,bulkhead_proxy=debug",
            "off",
            "h2=warn,hyper=error",
            "",
        ] {
            assert!(check_log_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["warning", "info,verbose", "bulkhead_proxy=loud"] {
            let err = check_log_filter(bad).unwrap_err();
            assert!(
                err.contains("not a level") && err.contains("warn"),
                "{bad}: {err}"
            );
        }
    }
}
