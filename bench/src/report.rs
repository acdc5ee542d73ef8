//! Results: medians over rounds, added latency over direct in the same
//! round, ratios against direct and HAProxy, the targets, and their
//! forms on disk: `results/<date>.json`, `results/<date>.md`, and the table
//! between the markers in `bench/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::control;
use crate::procs::Memory;
use crate::rounds::{Profile, Sample, Test};
use crate::setup::PathId;

/// One figure of one path: the median over rounds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Figure {
    pub test: Option<Test>,
    pub path: Option<PathId>,
    pub rounds: usize,
    pub errors: u64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// Median over rounds of (this path − direct), same round, same test.
    pub added_p50_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    pub added_p999_us: Option<f64>,
    pub per_second: Option<f64>,
    pub gbps: Option<f64>,
    /// CPU seconds of both proxies per 1,000 requests (per GB for bulk).
    pub cpu_s_per_1k: Option<f64>,
    pub cpu_s_per_gb: Option<f64>,
    /// Context switches of both proxies per request.
    pub switches_per_request: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProcMemory {
    pub name: String,
    pub idle: Memory,
    pub after: Memory,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub pass: Option<bool>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub loadavg_before: [f64; 3],
    pub cpu_busy_before_percent: f64,
    pub loadavg_after: [f64; 3],
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub date: String,
    pub mode: String,
    pub forced: bool,
    pub warnings: Vec<String>,
    pub machine: Machine,
    pub tools: BTreeMap<String, String>,
    pub profile: Profile,
    pub paths: BTreeMap<String, String>,
    pub allowlist_probe: String,
    pub figures: Vec<Figure>,
    pub targets: Vec<Verdict>,
    pub memory: Vec<ProcMemory>,
    pub control_plane: Option<control::Results>,
    pub errors: Vec<String>,
    pub wall_seconds: f64,
    pub plot: Option<String>,
    pub samples: Vec<Sample>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn summarize(samples: &[Sample]) -> Vec<Figure> {
    let mut groups: BTreeMap<(Test, PathId), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups.entry((s.test, s.path)).or_default().push(s);
    }
    let direct = |test: Test, round: usize| {
        samples
            .iter()
            .find(|s| s.test == test && s.path == PathId::Direct && s.round == round)
    };
    groups
        .into_iter()
        .map(|((test, path), runs)| {
            let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
                median(runs.iter().filter_map(|s| f(s)).collect())
            };
            let added = |pick: fn(&crate::loadgen::Percentiles) -> f64| {
                median(
                    runs.iter()
                        .filter_map(|s| {
                            let own = pick(s.latency_us.as_ref()?);
                            let base = pick(direct(test, s.round)?.latency_us.as_ref()?);
                            Some(own - base)
                        })
                        .collect(),
                )
            };
            let proxied = path != PathId::Direct;
            Figure {
                test: Some(test),
                path: Some(path),
                rounds: runs.len(),
                errors: runs.iter().map(|s| s.errors).sum(),
                p50_us: of(&|s| s.latency_us.as_ref().map(|l| l.p50)),
                p90_us: of(&|s| s.latency_us.as_ref().map(|l| l.p90)),
                p99_us: of(&|s| s.latency_us.as_ref().map(|l| l.p99)),
                p999_us: of(&|s| s.latency_us.as_ref().map(|l| l.p999)),
                added_p50_us: if proxied { added(|l| l.p50) } else { None },
                added_p99_us: if proxied { added(|l| l.p99) } else { None },
                added_p999_us: if proxied { added(|l| l.p999) } else { None },
                per_second: of(&|s| s.per_second),
                gbps: of(&|s| s.gbps),
                cpu_s_per_1k: if proxied {
                    of(&|s| (s.requests > 0).then(|| s.cpu_total_s / s.requests as f64 * 1000.0))
                } else {
                    None
                },
                switches_per_request: if proxied {
                    of(
                        &|s| {
                            (s.requests > 0).then(|| s.context_switches as f64 / s.requests as f64)
                        },
                    )
                } else {
                    None
                },
                cpu_s_per_gb: if proxied {
                    of(&|s| {
                        s.bytes
                            .filter(|b| *b > 0)
                            .map(|b| s.cpu_total_s / (b as f64 / 1e9))
                    })
                } else {
                    None
                },
            }
        })
        .collect()
}

fn find(figs: &[Figure], test: Test, path: PathId) -> Option<&Figure> {
    figs.iter()
        .find(|f| f.test == Some(test) && f.path == Some(path))
}

const MB: f64 = 1024.0;

/// The targets, checked on this run's medians.
pub fn targets(
    figs: &[Figure],
    memory: &[ProcMemory],
    cp: Option<&control::Results>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let pairs = [
        (PathId::Bulkhead, PathId::HaproxyHttp, "HTTP"),
        (PathId::BulkheadTcp, PathId::HaproxyTcp, "TCP"),
    ];
    let mut ratio_target = |target: String,
                            bh: Option<f64>,
                            ha: Option<f64>,
                            unit: &str,
                            ok: &dyn Fn(f64, f64) -> bool| {
        let (measured, pass) = match (bh, ha) {
            (Some(b), Some(h)) => (
                format!("{} vs {} {unit} ({})", num(b), num(h), ratio(b, h)),
                Some(ok(b, h)),
            ),
            _ => ("not measured".into(), None),
        };
        out.push(Verdict {
            target,
            measured,
            pass,
        });
    };
    for (test, rate) in [(Test::Rate1k, "1,000"), (Test::Rate5k, "5,000")] {
        for (bh, ha, mode) in pairs {
            for (name, pick) in [
                (
                    "p50",
                    (|f: &Figure| f.added_p50_us) as fn(&Figure) -> Option<f64>,
                ),
                ("p99", |f: &Figure| f.added_p99_us),
            ] {
                ratio_target(
                    format!("{mode}: added {name} at {rate} req/s ≤ 0.5 × HAProxy's"),
                    find(figs, test, bh).and_then(pick),
                    find(figs, test, ha).and_then(pick),
                    "µs",
                    &|b, h| b <= 0.5 * h,
                );
            }
        }
    }
    for (bh, ha, mode) in pairs {
        ratio_target(
            format!("{mode}: max HTTP/1.1 throughput ≥ 1.5 × HAProxy's"),
            find(figs, Test::Http1Max, bh).and_then(|f| f.per_second),
            find(figs, Test::Http1Max, ha).and_then(|f| f.per_second),
            "req/s",
            &|b, h| b >= 1.5 * h,
        );
    }
    ratio_target(
        "bulk TCP ≥ 1.2 × HAProxy's (mode tcp)".into(),
        find(figs, Test::BulkTcp, PathId::BulkheadTcp).and_then(|f| f.gbps),
        find(figs, Test::BulkTcp, PathId::HaproxyTcp).and_then(|f| f.gbps),
        "Gbit/s",
        &|b, h| b >= 1.2 * h,
    );
    for (test, what) in [
        (Test::Rate5k, "at 5,000 req/s"),
        (Test::Http1Max, "at max HTTP/1.1 throughput"),
    ] {
        for (bh, ha, mode) in pairs {
            ratio_target(
                format!("{mode}: CPU per request (both proxies) {what} ≤ 0.6 × HAProxy's"),
                find(figs, test, bh).and_then(|f| f.cpu_s_per_1k),
                find(figs, test, ha).and_then(|f| f.cpu_s_per_1k),
                "CPU-s/1k req",
                &|b, h| b <= 0.6 * h,
            );
        }
    }
    for m in memory.iter().filter(|m| m.name.starts_with("sidecar")) {
        let idle = m.idle.rss_kb as f64 / MB;
        let peak = m.after.hwm_kb as f64 / MB;
        out.push(Verdict {
            target: format!("{}: RSS ≤ 6 MB idle", m.name),
            measured: format!(
                "{idle:.1} MB (anon {:.1}, file {:.1}, PSS {:.1})",
                m.idle.anon_kb as f64 / MB,
                m.idle.file_kb as f64 / MB,
                m.idle.pss_kb as f64 / MB
            ),
            pass: Some(idle <= 6.0),
        });
        out.push(Verdict {
            target: format!("{}: RSS ≤ 10 MB under load (peak)", m.name),
            measured: format!(
                "{peak:.1} MB (after load: anon {:.1}, file {:.1})",
                m.after.anon_kb as f64 / MB,
                m.after.file_kb as f64 / MB
            ),
            pass: Some(peak <= 10.0),
        });
    }
    let thousand = cp.and_then(|c| c.fanout.iter().find(|f| f.watchers == 1000));
    out.push(Verdict {
        target: "endpoint change reaches 1,000 watchers, p99 ≤ 100 ms".into(),
        measured: thousand
            .map(|f| format!("p99 {:.1} ms (p50 {:.1} ms)", f.p99_ms, f.p50_ms))
            .unwrap_or_else(|| "not measured".into()),
        pass: thousand.map(|f| f.p99_ms <= 100.0 && f.missing == 0),
    });
    let issuance = cp.map(|c| &c.issuance).filter(|i| i.issued > 0);
    out.push(Verdict {
        target: "≥ 2,000 certificate issuances per second".into(),
        measured: issuance
            .map(|i| format!("{:.0}/s", i.per_second))
            .unwrap_or_else(|| "not measured".into()),
        pass: issuance.map(|i| i.per_second >= 2000.0),
    });
    out
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separated for readability.
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.4}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b.abs() < 1e-12 {
        "—".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

fn cell(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

type Pick = fn(&Figure) -> Option<f64>;

fn table(out: &mut String, figs: &[Figure], paths: [PathId; 3], tcp: bool) {
    let [d, b, h] = paths;
    let _ = writeln!(
        out,
        "| figure | {} | {} | {} | {} / direct | {} / {} |",
        d.name(),
        b.name(),
        h.name(),
        b.name(),
        b.name(),
        h.name()
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, Test, Pick, bool)> = Vec::new();
    for (test, rate) in [(Test::Rate1k, "1,000"), (Test::Rate5k, "5,000")] {
        rows.push((
            format!("latency p50 at {rate} req/s (µs)"),
            test,
            |f| f.p50_us,
            true,
        ));
        rows.push((
            format!("latency p99 at {rate} req/s (µs)"),
            test,
            |f| f.p99_us,
            true,
        ));
        rows.push((
            format!("latency p99.9 at {rate} req/s (µs)"),
            test,
            |f| f.p999_us,
            true,
        ));
        rows.push((
            format!("added p50 over direct at {rate} req/s (µs)"),
            test,
            |f| f.added_p50_us,
            false,
        ));
        rows.push((
            format!("added p99 over direct at {rate} req/s (µs)"),
            test,
            |f| f.added_p99_us,
            false,
        ));
        rows.push((
            format!("added p99.9 over direct at {rate} req/s (µs)"),
            test,
            |f| f.added_p999_us,
            false,
        ));
    }
    rows.push((
        "max HTTP/1.1 keep-alive (req/s, wrk -t1 -c32)".into(),
        Test::Http1Max,
        |f| f.per_second,
        true,
    ));
    if !tcp {
        rows.push((
            "max HTTP/2 (req/s, h2load -t1)".into(),
            Test::Http2Max,
            |f| f.per_second,
            true,
        ));
    }
    rows.push((
        "new connections (conn/s, 1 request each)".into(),
        Test::NewConnections,
        |f| f.per_second,
        true,
    ));
    if tcp {
        rows.push((
            "bulk TCP (Gbit/s, iperf3)".into(),
            Test::BulkTcp,
            |f| f.gbps,
            true,
        ));
    }
    rows.push((
        "CPU s per 1k requests, both proxies, at 1,000 req/s".into(),
        Test::Rate1k,
        |f| f.cpu_s_per_1k,
        false,
    ));
    rows.push((
        "CPU s per 1k requests, both proxies, at 5,000 req/s".into(),
        Test::Rate5k,
        |f| f.cpu_s_per_1k,
        false,
    ));
    rows.push((
        "CPU s per 1k requests, both proxies, at max HTTP/1.1".into(),
        Test::Http1Max,
        |f| f.cpu_s_per_1k,
        false,
    ));
    rows.push((
        "CPU s per 1k new connections, both proxies".into(),
        Test::NewConnections,
        |f| f.cpu_s_per_1k,
        false,
    ));
    if tcp {
        rows.push((
            "CPU s per GB bulk TCP, both proxies".into(),
            Test::BulkTcp,
            |f| f.cpu_s_per_gb,
            false,
        ));
    }
    rows.push((
        "context switches per request, both proxies, at 5,000 req/s".into(),
        Test::Rate5k,
        |f| f.switches_per_request,
        false,
    ));
    rows.push((
        "context switches per request, both proxies, at max HTTP/1.1".into(),
        Test::Http1Max,
        |f| f.switches_per_request,
        false,
    ));
    for (label, test, pick, vs_direct) in rows {
        let v = |p: PathId| find(figs, test, p).and_then(pick);
        let (dv, bv, hv) = (v(d), v(b), v(h));
        let errs: u64 = [d, b, h]
            .iter()
            .filter_map(|p| find(figs, test, *p))
            .map(|f| f.errors)
            .sum();
        let mark = if errs > 0 { " ⚠ errors" } else { "" };
        let r = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {label}{mark} | {} | {} | {} | {} | {} |",
            cell(dv),
            cell(bv),
            cell(hv),
            if vs_direct { r(bv, dv) } else { "—".into() },
            r(bv, hv)
        );
    }
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Results: {} run of {} ({} rounds, medians)\n",
        r.mode, r.date, r.profile.rounds
    );
    if r.forced {
        let _ = writeln!(
            out,
            "> **⚠ FORCED RUN ON A BUSY MACHINE** — load average before the run {:.2} / {:.2} / {:.2}, CPU busy {:.0} % (2 cores), after {:.2}. Other work shared the CPUs: absolute figures are pessimistic and noisy; ratios within a round are more robust, but treat every figure as indicative only.\n",
            r.machine.loadavg_before[0],
            r.machine.loadavg_before[1],
            r.machine.loadavg_before[2],
            r.machine.cpu_busy_before_percent,
            r.machine.loadavg_after[0]
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "> ⚠ {w}\n");
    }
    if !r.errors.is_empty() {
        let _ = writeln!(
            out,
            "> **⚠ {} ERROR(S) IN THIS RUN** — figures marked ⚠ come from runs that had errors; do not quote them. See `errors` in the JSON.\n",
            r.errors.len()
        );
    }
    let _ = writeln!(
        out,
        "Machine: {} cores, {}, Linux {}. Wall time {:.0} s.{}\n",
        r.machine.cores,
        r.machine.cpu,
        r.machine.kernel,
        r.wall_seconds,
        if r.mode == "sanity" {
            String::new()
        } else {
            format!(" Raw data: [`results/{0}.json`](results/{0}.json).", r.date)
        }
    );
    let _ = writeln!(
        out,
        "#### HTTP mode (Bulkhead HTTP Service vs HAProxy `mode http`)\n"
    );
    table(
        &mut out,
        &r.figures,
        [PathId::Direct, PathId::Bulkhead, PathId::HaproxyHttp],
        false,
    );
    let _ = writeln!(
        out,
        "\n#### TCP mode (Bulkhead `tcp` Service port vs HAProxy `mode tcp`)\n"
    );
    table(
        &mut out,
        &r.figures,
        [PathId::Direct, PathId::BulkheadTcp, PathId::HaproxyTcp],
        true,
    );
    let _ = writeln!(out, "\n#### Memory per proxy process (MB)\n");
    let _ = writeln!(
        out,
        "RSS counts the pages of the binary a process has touched (file-backed, shared by every process running that binary) as well as its own heap and stacks (anonymous); PSS divides shared pages among the processes sharing them.\n"
    );
    let _ = writeln!(
        out,
        "| process | RSS idle (before load) | anon / file | PSS idle | RSS after load | anon / file | PSS after | peak RSS (VmHWM) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &r.memory {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} |",
            m.name,
            m.idle.rss_kb as f64 / MB,
            m.idle.anon_kb as f64 / MB,
            m.idle.file_kb as f64 / MB,
            m.idle.pss_kb as f64 / MB,
            m.after.rss_kb as f64 / MB,
            m.after.anon_kb as f64 / MB,
            m.after.file_kb as f64 / MB,
            m.after.pss_kb as f64 / MB,
            m.after.hwm_kb as f64 / MB
        );
    }
    if let Some(cp) = &r.control_plane {
        let _ = writeln!(out, "\n#### Control plane (memory store, one process)\n");
        let _ = writeln!(
            out,
            "| watchers | changes | delivered | missing | p50 (ms) | p99 (ms) | max (ms) | last watcher p50 / p99 (ms) | subscribe all (s) | control-plane RSS (MB) |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &cp.fanout {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} | {:.1} |",
                f.watchers,
                f.changes,
                f.delivered,
                f.missing,
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.last_p50_ms,
                f.last_p99_ms,
                f.subscribe_s,
                f.rss_kb as f64 / MB
            );
        }
        let i = &cp.issuance;
        let e = &cp.endpoints;
        let _ = writeln!(
            out,
            "\n- certificate issuances: **{:.0}/s** ({} in {:.1} s, {} concurrent Certify calls, {} errors; control plane used {:.2} CPU-s = {:.0} µs CPU per certificate)",
            i.per_second,
            i.issued,
            i.seconds,
            i.concurrency,
            i.errors,
            i.cpu_s,
            if i.issued > 0 {
                i.cpu_s / i.issued as f64 * 1e6
            } else {
                0.0
            }
        );
        let _ = writeln!(
            out,
            "- control-plane RSS: **{:.1} MB** idle; {:.1} MB before and **{:.1} MB** after registering {} endpoints ({} ok, {} errors, {:.0} registrations/s); peak {:.1} MB",
            cp.rss_idle_kb as f64 / MB,
            e.rss_before.rss_kb as f64 / MB,
            e.rss_after.rss_kb as f64 / MB,
            e.count,
            e.registered,
            e.errors,
            e.per_second,
            e.rss_after.hwm_kb as f64 / MB
        );
        let _ = writeln!(
            out,
            "- a new watcher of that service receives its {}-endpoint snapshot in {:.0} ms",
            e.snapshot_endpoints, e.snapshot_ms
        );
    }
    let _ = writeln!(out, "\n#### Targets (issue 5)\n");
    let _ = writeln!(out, "| target | measured (bulkhead vs haproxy) | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    for v in &r.targets {
        let verdict = match v.pass {
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
            None => "—",
        };
        let _ = writeln!(out, "| {} | {} | {verdict} |", v.target, v.measured);
    }
    if let Some(plot) = &r.plot {
        let _ = writeln!(
            out,
            "\nLatency percentiles per path (all rounds merged): [{plot}]({plot})\n\n![latency percentiles]({plot})"
        );
    }
    out
}

pub const BEGIN: &str = "<!-- bench:results:begin -->";
pub const END: &str = "<!-- bench:results:end -->";

/// Replaces the results block of `bench/README.md` (or appends one).
pub fn update_readme(readme: &Path, block: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(readme).unwrap_or_default();
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{BEGIN}\n{block}\n{END}{}",
            &text[..b],
            &text[e + END.len()..]
        ),
        _ => format!("{text}\n## Latest results\n\n{BEGIN}\n{block}\n{END}\n"),
    };
    std::fs::write(readme, new).map_err(|e| format!("{}: {e}", readme.display()))
}

/// `YYYY-MM-DDTHH-MM-SSZ` for now (UTC), from the Unix clock.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::Percentiles;

    fn sample(round: usize, path: PathId, p50: f64, requests: u64, cpu: f64) -> Sample {
        Sample {
            round,
            test: Test::Rate1k,
            path,
            seconds: 1.0,
            requests,
            errors: 0,
            per_second: Some(requests as f64),
            gbps: None,
            bytes: None,
            latency_us: Some(Percentiles {
                p50,
                p99: p50 * 2.0,
                ..Default::default()
            }),
            cpu_s: BTreeMap::new(),
            cpu_total_s: cpu,
            context_switches: 0,
            memory_after: BTreeMap::new(),
            error_text: vec![],
        }
    }

    #[test]
    fn added_latency_is_against_direct_in_the_same_round() {
        let samples = vec![
            sample(1, PathId::Direct, 100.0, 1000, 0.0),
            sample(1, PathId::Bulkhead, 150.0, 1000, 0.5),
            sample(2, PathId::Direct, 200.0, 1000, 0.0),
            sample(2, PathId::Bulkhead, 260.0, 1000, 0.7),
            sample(3, PathId::Direct, 100.0, 1000, 0.0),
            sample(3, PathId::Bulkhead, 170.0, 1000, 0.6),
        ];
        let figs = summarize(&samples);
        let b = find(&figs, Test::Rate1k, PathId::Bulkhead).unwrap();
        assert_eq!(b.added_p50_us, Some(60.0));
        assert_eq!(b.p50_us, Some(170.0));
        assert!((b.cpu_s_per_1k.unwrap() - 0.6).abs() < 1e-9);
        let d = find(&figs, Test::Rate1k, PathId::Direct).unwrap();
        assert_eq!(d.added_p50_us, None);
        assert_eq!(d.cpu_s_per_1k, None);
    }

    #[test]
    fn readme_block_is_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("bench-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        std::fs::write(&readme, format!("# A\n{BEGIN}\nold\n{END}\ntail\n")).unwrap();
        update_readme(&readme, "new").unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert_eq!(text, format!("# A\n{BEGIN}\nnew\n{END}\ntail\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(-1500.0), "-1,500");
        assert_eq!(num(42.25), "42.2");
        assert_eq!(num(0.01234), "0.0123");
        assert!(timestamp().ends_with('Z'));
    }
}
