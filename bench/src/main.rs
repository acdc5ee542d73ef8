//! `bulkhead-bench`: the command line of the harness (bench/run checks the
//! tools, builds, and starts it). Order of work: refuse a busy machine, start
//! the paths, warm up, interleaved rounds, control plane, results.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

use bulkhead_bench::report::{self, Machine, ProcMemory, Report};
use bulkhead_bench::rounds::{self, Profile, Sample, Test};
use bulkhead_bench::setup::{self, Bins, DataPath, PathId, Traffic};
use bulkhead_bench::{control, loadgen, plot, procs, tools};

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead-bench",
    about = "Bulkhead against a direct call and two-hop HAProxy mTLS (run it through bench/run)",
    after_help = "Exit codes: 0 clean run, 1 errors (a path returned errors, or setup failed), 2 usage, 3 refused: the machine is busy (see --force)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Smoke figures in under 3 minutes (short runs, 3 rounds).
    #[arg(long, conflicts_with = "sanity")]
    quick: bool,
    /// The smallest run that touches every path and tool once; exits 1 if
    /// anything returned an error. Writes no results and leaves the README alone.
    #[arg(long)]
    sanity: bool,
    /// Run even on a busy machine; the results then carry a loud warning.
    #[arg(long)]
    force: bool,
    /// Refuse to start when the 1-minute load average is above this (bench/run
    /// measures it before building and passes it in BULKHEAD_BENCH_LOADAVG).
    #[arg(long, default_value_t = 1.0)]
    max_load: f64,
    /// Refuse to start when the CPUs are busier than this (percent, sampled 2 s).
    #[arg(long, default_value_t = 25.0)]
    max_busy: f64,
    /// Rounds (default: 3; 1 for --sanity).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only the data path, or only the control plane.
    #[arg(long, value_parser = ["data", "control"])]
    only: Option<String>,
    /// Do not rewrite the results block of bench/README.md.
    #[arg(long)]
    no_readme: bool,
    /// Keep the scratch folder (configs, certificates, process logs).
    #[arg(long, global = true)]
    keep: bool,
    /// Where bulkhead-proxy, bulkhead-control and bulkheadctl are (default: beside this binary).
    #[arg(long, value_name = "DIR", global = true)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The open-loop load generator alone: fixed rate, full histogram.
    Loadgen {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// Start every path and keep it up for manual experiments (curl, perf,
    /// valgrind, memory watching); prints addresses and process ids.
    Up {
        /// How long to stay up (then everything is stopped).
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Profile the proxies of one path under one test with `perf record`
    /// (call graphs from DWARF unwinding); writes the perf data and a text
    /// report to bench/results/profile-<date>-<path>-<test>.{data,txt}.
    Profile {
        /// bulkhead | bulkhead-tcp | haproxy-http | haproxy-tcp
        #[arg(long, default_value = "bulkhead")]
        path: String,
        /// rate-1k | rate-5k | http1-max | http2-max | new-connections | bulk-tcp
        #[arg(long, default_value = "http1-max")]
        test: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Samples per second per CPU.
        #[arg(long, default_value_t = 499)]
        frequency: u32,
        /// perf (CPU samples with call graphs) or strace (syscall counts, `strace -c -f`).
        #[arg(long, default_value = "perf", value_parser = ["perf", "strace"])]
        tool: String,
    },
}

const TOOLS: [(&str, &str); 6] = [
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("iperf3", "iperf3"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("openssl", "openssl"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn profile(cli: &Cli) -> Profile {
    let mut p = if cli.sanity {
        Profile {
            mode: "sanity",
            rounds: 1,
            rate_s: 1,
            wrk_s: 1,
            h2_s: 1,
            new_connections_s: 1,
            bulk_s: 1,
            rate_connections: 16,
            wrk_connections: 32,
            new_connection_clients: 16,
            h2_clients: 32,
            h2_streams: 10,
        }
    } else if cli.quick {
        Profile {
            mode: "quick",
            rounds: 3,
            rate_s: 2,
            wrk_s: 1,
            h2_s: 1,
            new_connections_s: 1,
            bulk_s: 1,
            rate_connections: 16,
            wrk_connections: 32,
            new_connection_clients: 16,
            h2_clients: 32,
            h2_streams: 10,
        }
    } else {
        Profile {
            mode: "full",
            rounds: 3,
            rate_s: 10,
            wrk_s: 10,
            h2_s: 8,
            new_connections_s: 5,
            bulk_s: 8,
            rate_connections: 16,
            wrk_connections: 32,
            new_connection_clients: 16,
            h2_clients: 32,
            h2_streams: 10,
        }
    };
    if let Some(r) = cli.rounds {
        p.rounds = r.max(1);
    }
    p
}

fn control_plan(mode: &str) -> control::Plan {
    match mode {
        "sanity" => control::Plan {
            watchers: vec![10],
            changes: 3,
            issuance: Duration::from_secs(1),
            issuance_concurrency: 16,
            endpoints: 1000,
        },
        "quick" => control::Plan {
            watchers: vec![10, 100, 1000],
            changes: 10,
            issuance: Duration::from_secs(2),
            issuance_concurrency: 32,
            endpoints: 10_000,
        },
        _ => control::Plan {
            watchers: vec![10, 100, 1000],
            changes: 40,
            issuance: Duration::from_secs(5),
            issuance_concurrency: 32,
            endpoints: 10_000,
        },
    }
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu,
        kernel,
        ..Default::default()
    }
}

fn main() -> ExitCode {
    let cli: Cli = match bulkhead_process::parse_args("bulkhead-bench", std::env::args_os()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    bulkhead_tls::install_default_provider();
    if let Some(Command::Loadgen {
        addr,
        path,
        rate,
        seconds,
        connections,
    }) = &cli.command
    {
        let r = loadgen::run(&loadgen::FixedRate {
            addr: *addr,
            path: path.clone(),
            rate: *rate,
            duration: Duration::from_secs(*seconds),
            connections: *connections,
            timeout: Duration::from_secs(5),
        });
        let p = loadgen::Percentiles::of(&r.hist);
        println!(
            "{} ok, {} errors {:?}; latency µs: p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
            r.ok, r.errors, r.error_kinds, p.p50, p.p90, p.p99, p.p999, p.max
        );
        return if r.errors == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(Command::Up { seconds }) = &cli.command {
        return match up(&cli, *seconds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Profile {
        path,
        test,
        seconds,
        frequency,
        tool,
    }) = &cli.command
    {
        return match profile_path(&cli, path, test, *seconds, *frequency, tool) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_tools() -> Result<(), String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(t, pkg)| format!("{t} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {}; bench/run installs them with apt-get when run as root, or: sudo apt-get install wrk nghttp2-client iperf3 haproxy nginx-light openssl fonts-dejavu-core",
            missing.join(", ")
        ));
    }
    Ok(())
}

fn bins(cli: &Cli) -> Result<Bins, String> {
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or("cannot find this binary's folder: pass --bin-dir")?,
    };
    Bins::in_dir(&bin_dir)
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let wall = Instant::now();
    check_tools()?;
    let bins = bins(cli)?;
    let profile = profile(cli);

    // Figures from a busy machine mislead: refuse unless forced.
    let mut machine = machine();
    // bench/run checks the load average before it builds and passes it on:
    // the build itself raises the average for minutes, so after it only the
    // CPU sample below tells whether other work is running.
    let checked_before_build: Option<[f64; 3]> =
        std::env::var("BULKHEAD_BENCH_LOADAVG").ok().and_then(|v| {
            let n: Vec<f64> = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (n.len() == 3).then(|| [n[0], n[1], n[2]])
        });
    machine.loadavg_before = checked_before_build.unwrap_or_else(procs::loadavg);
    machine.cpu_busy_before_percent = procs::cpu_busy_percent(Duration::from_secs(2));
    let busy =
        machine.loadavg_before[0] > cli.max_load || machine.cpu_busy_before_percent > cli.max_busy;
    let mut warnings = Vec::new();
    if busy {
        let what = format!(
            "the machine is busy: 1-minute load average {:.2} (limit {:.2}), CPUs {:.0} % busy over 2 s (limit {:.0} %)",
            machine.loadavg_before[0], cli.max_load, machine.cpu_busy_before_percent, cli.max_busy
        );
        if !cli.force {
            eprintln!(
                "bench: refusing to start: {what}. Figures from a loaded machine mislead; wait for it to calm down, or pass --force for a development run (its results carry a warning)."
            );
            return Ok(ExitCode::from(3));
        }
        eprintln!("bench: ##########################################################");
        eprintln!("bench: ## WARNING: --force: {what}");
        eprintln!("bench: ## The figures of this run are NOT representative.");
        eprintln!("bench: ##########################################################");
        warnings.push(format!("--force: {what}"));
    }

    let scratch = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    eprintln!(
        "bench: {} run, {} rounds; scratch folder {}",
        profile.mode,
        profile.rounds,
        scratch.display()
    );

    let mut errors: Vec<String> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut hists: BTreeMap<(Test, PathId), Histogram<u64>> = BTreeMap::new();
    let mut memory = Vec::new();
    let mut allowlist_probe = String::new();
    if cli.only.as_deref() != Some("control") {
        match data_path(
            &bins,
            &scratch,
            &profile,
            &mut samples,
            &mut hists,
            &mut memory,
        ) {
            Ok(probe) => allowlist_probe = probe,
            Err(e) => errors.push(format!("data path: {e}")),
        }
    }
    for s in &samples {
        if s.errors > 0 {
            errors.push(format!(
                "round {} {} {}: {} errors: {}",
                s.round,
                s.test.name(),
                s.path.name(),
                s.errors,
                s.error_text.join("; ")
            ));
        }
    }
    let mut control_plane = None;
    if cli.only.as_deref() != Some("data") {
        match control::run(&bins, &scratch, &control_plan(profile.mode)) {
            Ok(cp) => {
                errors.extend(cp.errors.iter().map(|e| format!("control plane: {e}")));
                control_plane = Some(cp);
            }
            Err(e) => errors.push(format!("control plane: {e}")),
        }
    }
    machine.loadavg_after = procs::loadavg();

    let date = report::timestamp();
    let figures = report::summarize(&samples);
    let targets = report::targets(&figures, &memory, control_plane.as_ref());
    let results_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let persist = profile.mode != "sanity";
    let mut plot_rel = None;
    if persist && !hists.is_empty() {
        std::fs::create_dir_all(&results_dir).map_err(|e| e.to_string())?;
        let name = format!("{date}-latency.png");
        let title = format!(
            "Bulkhead bench {date} ({} run{})",
            profile.mode,
            if cli.force {
                ", FORCED on a busy machine"
            } else {
                ""
            }
        );
        match plot::latency_png(&results_dir.join(&name), &hists, &title) {
            Ok(()) => plot_rel = Some(format!("results/{name}")),
            Err(e) => warnings.push(format!("no plot: {e}")),
        }
    }
    let report = Report {
        date: date.clone(),
        mode: profile.mode.to_owned(),
        forced: busy && cli.force,
        warnings,
        machine,
        tools: TOOLS
            .iter()
            .map(|(t, _)| ((*t).to_owned(), tools::version(t)))
            .collect(),
        profile: profile.clone(),
        paths: PathId::ALL
            .iter()
            .map(|p| (p.name().to_owned(), p.describe().to_owned()))
            .collect(),
        allowlist_probe,
        figures,
        targets,
        memory,
        control_plane,
        errors: errors.clone(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        plot: plot_rel,
        samples,
    };
    let md = report::markdown(&report);
    println!("{md}");
    if persist {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        let json_path = results_dir.join(format!("{date}.json"));
        std::fs::write(&json_path, json).map_err(|e| e.to_string())?;
        std::fs::write(results_dir.join(format!("{date}.md")), &md).map_err(|e| e.to_string())?;
        eprintln!("bench: wrote {}", json_path.display());
        if errors.is_empty() && !cli.no_readme {
            let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
            report::update_readme(&readme, &md)?;
            eprintln!("bench: updated the results block of {}", readme.display());
        }
    }
    if cli.keep {
        eprintln!("bench: kept {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if errors.is_empty() {
        eprintln!("bench: clean run: no path returned an error");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "bench: {} ERROR(S) — do not quote figures from this run:",
            errors.len()
        );
        for e in &errors {
            eprintln!("bench:   {e}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Starts the paths, warms them, runs the rounds; returns the AllowList probe.
fn data_path(
    bins: &Bins,
    scratch: &Path,
    profile: &Profile,
    samples: &mut Vec<Sample>,
    hists: &mut BTreeMap<(Test, PathId), Histogram<u64>>,
    memory: &mut Vec<ProcMemory>,
) -> Result<String, String> {
    let mut dp = DataPath::start(bins, scratch)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<(String, procs::Memory)> = dp
        .all_proxies()
        .iter()
        .map(|p| (p.name.clone(), p.memory()))
        .collect();

    eprintln!("bench: warm-up: every path at 500 req/s for 1 s");
    for path in PathId::ALL {
        if let Some(addr) = dp.addr(path, Traffic::Http1) {
            let r = loadgen::run(&loadgen::FixedRate {
                addr,
                path: setup::REQUEST_PATH.into(),
                rate: 500.0,
                duration: Duration::from_secs(1),
                connections: profile.rate_connections,
                timeout: Duration::from_secs(5),
            });
            if r.errors > 0 {
                return Err(format!(
                    "warm-up through {}: {} errors {:?}",
                    path.name(),
                    r.errors,
                    r.error_kinds
                ));
            }
        }
    }

    for round in 1..=profile.rounds {
        let load = procs::loadavg();
        eprintln!(
            "bench: round {round}/{} (load average {:.2})",
            profile.rounds, load[0]
        );
        for test in Test::ALL {
            for path in PathId::ALL {
                let Some((sample, hist)) =
                    rounds::measure(&dp, test, path, round, profile, scratch)
                else {
                    continue;
                };
                eprintln!(
                    "bench:   {:<16} {:<13} {}",
                    test.name(),
                    path.name(),
                    brief(&sample)
                );
                if let Some(h) = hist {
                    let merged = hists
                        .entry((test, path))
                        .or_insert_with(loadgen::new_histogram);
                    let _ = merged.add(&h);
                }
                samples.push(sample);
                // Let sockets and CPU settle between runs.
                std::thread::sleep(Duration::from_millis(200));
            }
            dp.check_alive()?;
        }
    }
    for p in dp.all_proxies() {
        let idle = idle
            .iter()
            .find(|(n, _)| *n == p.name)
            .map(|(_, m)| *m)
            .unwrap_or_default();
        memory.push(ProcMemory {
            name: p.name.clone(),
            idle,
            after: p.memory(),
        });
    }
    Ok(dp.denied_probe.clone())
}

fn brief(s: &Sample) -> String {
    let mut out = String::new();
    if let Some(l) = &s.latency_us {
        out += &format!(
            "p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  ",
            l.p50, l.p99, l.p999
        );
    } else if let Some(g) = s.gbps {
        out += &format!("{g:.2} Gbit/s  ");
    } else if let Some(r) = s.per_second {
        out += &format!("{r:.0}/s  ");
    }
    if s.requests > 0 && s.cpu_total_s > 0.0 {
        out += &format!(
            "cpu {:.4} s/1k  {:.1} ctx-sw/req  ",
            s.cpu_total_s / s.requests as f64 * 1000.0,
            s.context_switches as f64 / s.requests as f64
        );
    }
    if s.errors > 0 {
        out += &format!("ERRORS {} ({})", s.errors, s.error_text.join("; "));
    }
    out
}

/// `profile`: one path, one test, `perf record` on its two proxies.
fn profile_path(
    cli: &Cli,
    path: &str,
    test: &str,
    seconds: u64,
    frequency: u32,
    tool: &str,
) -> Result<(), String> {
    check_tools()?;
    if !on_path(tool) {
        return Err(format!(
            "{tool} is missing (Debian: linux-perf or strace); valgrind --tool=callgrind is another way, see bench/README.md"
        ));
    }
    let bins = bins(cli)?;
    let path = PathId::ALL
        .into_iter()
        .find(|p| p.name() == path && *p != PathId::Direct)
        .ok_or_else(|| {
            format!("--path {path}: expected bulkhead, bulkhead-tcp, haproxy-http or haproxy-tcp")
        })?;
    let test = Test::ALL
        .into_iter()
        .find(|t| t.name() == test)
        .ok_or_else(|| format!("--test {test}: expected one of rate-1k, rate-5k, http1-max, http2-max, new-connections, bulk-tcp"))?;
    let mut prof = profile(cli);
    prof.rate_s = seconds;
    prof.wrk_s = seconds;
    prof.h2_s = seconds;
    prof.new_connections_s = seconds;
    prof.bulk_s = seconds;
    let scratch = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let dp = DataPath::start(&bins, &scratch)?;
    if dp.addr(path, test.traffic()).is_none() {
        return Err(format!("{} does not carry {}", path.name(), test.name()));
    }
    // Warm up the path (pooled connections, allocator) before sampling.
    if let Some(addr) = dp.addr(path, Traffic::Http1) {
        let _ = loadgen::run(&loadgen::FixedRate {
            addr,
            path: setup::REQUEST_PATH.into(),
            rate: 1000.0,
            duration: Duration::from_secs(1),
            connections: 16,
            timeout: Duration::from_secs(5),
        });
    }
    let pids: Vec<String> = dp
        .proxies(path, test.traffic())
        .iter()
        .map(|p| p.pid().to_string())
        .collect();
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    // Raw perf data is large: it stays in target/, the text report in results/.
    let raw = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-profiles");
    std::fs::create_dir_all(&results).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&raw).map_err(|e| e.to_string())?;
    let stem = format!(
        "{tool}-{}-{}-{}",
        report::timestamp(),
        path.name(),
        test.name()
    );
    let data = raw.join(format!("{stem}.data"));
    let mut recorder = if tool == "strace" {
        let mut strace = std::process::Command::new("timeout");
        strace.args([
            "-s",
            "INT",
            &(seconds + 1).to_string(),
            "strace",
            "-c",
            "-f",
        ]);
        for pid in &pids {
            strace.args(["-p", pid]);
        }
        strace.arg("-o").arg(&data);
        procs::Proc::spawn("strace", strace, &scratch)?
    } else {
        let mut perf = std::process::Command::new("perf");
        perf.args([
            "record",
            "-F",
            &frequency.to_string(),
            "--call-graph",
            "dwarf,16384",
        ])
        .args(["-p", &pids.join(",")])
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &(seconds + 1).to_string()]);
        procs::Proc::spawn("perf-record", perf, &scratch)?
    };
    std::thread::sleep(Duration::from_millis(500));
    let (sample, _) = rounds::measure(&dp, test, path, 1, &prof, &scratch)
        .ok_or("the path does not carry this test")?;
    eprintln!("bench: {} {}: {}", test.name(), path.name(), brief(&sample));
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while recorder.check_alive().is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut text = format!(
        "# {tool} profile: {} through {} ({} s), proxies {:?}\n# {}\n\n",
        test.name(),
        path.name(),
        seconds,
        dp.proxies(path, test.traffic())
            .iter()
            .map(|p| format!("{} pid {}", p.name, p.pid()))
            .collect::<Vec<_>>(),
        brief(&sample)
    );
    if tool == "strace" {
        let counts = std::fs::read_to_string(&data).unwrap_or_default();
        text += &format!(
            "## System calls (strace -c -f; {} requests in the run)\n\n{counts}\n",
            sample.requests
        );
    }
    for (title, args) in [
        (
            "Self time by shared object and symbol",
            vec![
                "--no-children",
                "--sort",
                "dso,symbol",
                "-g",
                "none",
                "--percent-limit",
                "0.4",
            ],
        ),
        (
            "Inclusive time (children) by symbol",
            vec![
                "--children",
                "--sort",
                "symbol",
                "-g",
                "none",
                "--percent-limit",
                "1",
            ],
        ),
    ] {
        if tool != "perf" {
            break;
        }
        let mut cmd = std::process::Command::new("perf");
        cmd.arg("report")
            .arg("-i")
            .arg(&data)
            .arg("--stdio")
            .args(&args);
        let out = procs::run_bounded(cmd, Duration::from_secs(600), &scratch)?;
        // perf pads its columns to the longest symbol: squeeze them.
        let squeezed: String = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut s = l.split_whitespace().collect::<Vec<_>>().join(" ");
                if let Some(x) = s.strip_suffix(" - -") {
                    s = x.to_owned();
                }
                format!("{s}\n")
            })
            .collect();
        text += &format!("## {title}\n\n```\n{squeezed}```\n\n");
    }
    let txt = results.join(format!("{stem}.txt"));
    std::fs::write(&txt, text).map_err(|e| e.to_string())?;
    eprintln!("bench: wrote {} and {}", txt.display(), data.display());
    drop(dp);
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// `up`: every path running, described on stdout, for `seconds`.
fn up(cli: &Cli, seconds: u64) -> Result<(), String> {
    check_tools()?;
    let bins = bins(cli)?;
    let scratch = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let dp = DataPath::start(&bins, &scratch)?;
    for path in PathId::ALL {
        for (traffic, what) in [
            (Traffic::Http1, "http/1.1"),
            (Traffic::Http2, "h2c"),
            (Traffic::Bulk, "iperf3"),
        ] {
            if let Some(addr) = dp.addr(path, traffic) {
                println!("path {:<13} {what:<8} {addr}", path.name());
            }
        }
    }
    for p in dp.all_proxies() {
        println!("process {:<15} pid {}", p.name, p.pid());
    }
    println!("scratch {}", scratch.display());
    println!("ready: up for {seconds} s (Ctrl-C stops everything)");
    std::thread::sleep(Duration::from_secs(seconds));
    drop(dp);
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}
