//! What `bulkhead-proxy init-iptables` installs in a pod's network
//! namespace (the init container).
//!
//! The rules own the pod's `nat` table (IPv4 and IPv6 alike), written with
//! `iptables-restore` in one transaction per family, so running the command
//! twice leaves exactly the same rules and a failure leaves none half
//! installed:
//!
//! ```text
//! PREROUTING -p tcp -> BULKHEAD_INBOUND
//!   --dport 4143 (already the sidecar), excluded ports  -> RETURN
//!   everything else                                     -> REDIRECT :4143
//! OUTPUT -> BULKHEAD_OUTPUT
//!   owner UID = the proxy's (2102)                       -> RETURN (no loops)
//!   -o lo (the pod talking to itself)                    -> RETURN
//!   udp/tcp --dport 53, when --redirect-dns PORT         -> REDIRECT :PORT
//!   tcp to excluded ports / CIDRs                        -> RETURN
//!   tcp                                                  -> REDIRECT :4140
//! ```
//!
//! Excluded by default: the admin port 4191 inbound. Anything that cannot be
//! installed is an error (non-zero exit): a pod must never start half
//! captured.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use clap::Args;

/// Ports never redirected inbound: the admin port, so probes reach it.
pub(super) const DEFAULT_EXCLUDED_INBOUND: &[u16] = &[4191];

#[derive(Debug, Clone, Args)]
pub(crate) struct InitArgs {
    /// UID the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "BULKHEAD_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The proxy's inbound (mTLS) port.
    #[arg(long, env = "BULKHEAD_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound capture port.
    #[arg(long, env = "BULKHEAD_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// More inbound ports to leave alone (the admin port 4191 always is).
    #[arg(long, env = "BULKHEAD_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports to leave alone.
    #[arg(long, env = "BULKHEAD_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations (CIDRs) to leave alone.
    #[arg(long, env = "BULKHEAD_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Redirect DNS (UDP and TCP 53) to the sidecar's DNS server on this port.
    #[arg(long, env = "BULKHEAD_REDIRECT_DNS", value_name = "PORT")]
    pub redirect_dns: Option<u16>,
    /// IPv4 only (default: IPv4 and IPv6).
    #[arg(long)]
    pub no_ipv6: bool,
    /// Print the rules instead of installing them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    fn restore_command(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// A CIDR as iptables takes it, checked (an address and a prefix length).
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("--exclude-outbound-cidrs {cidr:?}: not an IP/prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse()
            .map_err(|_| format!("--exclude-outbound-cidrs {cidr:?}: bad prefix length"))?
    };
    if len > max {
        return Err(format!(
            "--exclude-outbound-cidrs {cidr:?}: prefix longer than {max}"
        ));
    }
    Ok((ip, len))
}

/// The `iptables-restore` input for one family.
pub(super) fn rules(args: &InitArgs, family: Family) -> Result<String, String> {
    for (flag, port) in [
        ("--inbound-port", args.inbound_port),
        ("--outbound-port", args.outbound_port),
    ] {
        if port == 0 {
            return Err(format!("{flag}: port 0"));
        }
    }
    if args.inbound_port == args.outbound_port {
        return Err("--inbound-port and --outbound-port must differ".to_owned());
    }
    let mut out = String::new();
    let mut add = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    add("*nat".into());
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        add(format!(":{chain} ACCEPT [0:0]"));
    }
    add(":BULKHEAD_INBOUND - [0:0]".into());
    add(":BULKHEAD_OUTPUT - [0:0]".into());
    add("-A PREROUTING -p tcp -j BULKHEAD_INBOUND".into());
    add("-A OUTPUT -j BULKHEAD_OUTPUT".into());
    let mut inbound_excluded: Vec<u16> = vec![args.inbound_port];
    inbound_excluded.extend(DEFAULT_EXCLUDED_INBOUND);
    inbound_excluded.extend(&args.exclude_inbound_ports);
    inbound_excluded.sort_unstable();
    inbound_excluded.dedup();
    for port in inbound_excluded {
        add(format!(
            "-A BULKHEAD_INBOUND -p tcp --dport {port} -j RETURN"
        ));
    }
    add(format!(
        "-A BULKHEAD_INBOUND -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    add(format!(
        "-A BULKHEAD_OUTPUT -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    ));
    add("-A BULKHEAD_OUTPUT -o lo -j RETURN".into());
    if let Some(dns) = args.redirect_dns {
        for proto in ["udp", "tcp"] {
            add(format!(
                "-A BULKHEAD_OUTPUT -p {proto} --dport 53 -j REDIRECT --to-ports {dns}"
            ));
        }
    }
    for cidr in &args.exclude_outbound_cidrs {
        let (ip, len) = parse_cidr(cidr)?;
        let fits = matches!(
            (family, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        );
        if fits {
            add(format!("-A BULKHEAD_OUTPUT -d {ip}/{len} -j RETURN"));
        }
    }
    let mut outbound_excluded = args.exclude_outbound_ports.clone();
    outbound_excluded.sort_unstable();
    outbound_excluded.dedup();
    for port in outbound_excluded {
        add(format!(
            "-A BULKHEAD_OUTPUT -p tcp --dport {port} -j RETURN"
        ));
    }
    add(format!(
        "-A BULKHEAD_OUTPUT -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    add("COMMIT".into());
    Ok(out)
}

/// Installs (or prints) the rules; every failure is an error.
pub(crate) fn init_iptables(args: &InitArgs) -> Result<(), String> {
    let mut families = vec![Family::V4];
    if !args.no_ipv6 {
        families.push(Family::V6);
    }
    let plans: Vec<(Family, String)> = families
        .into_iter()
        .map(|f| rules(args, f).map(|r| (f, r)))
        .collect::<Result<_, _>>()?;
    if args.dry_run {
        for (family, rules) in plans {
            println!("# {} (nat table)", family.restore_command());
            print!("{rules}");
        }
        return Ok(());
    }
    // The IPv4 table as it was, to put back if IPv6 then fails: a pod must
    // never be left half captured.
    let saved_v4 = save_table("iptables-save")?;
    for (family, rules) in plans {
        if let Err(e) = restore(family.restore_command(), &rules) {
            if family == Family::V6 {
                match restore("iptables-restore", &saved_v4) {
                    Ok(()) => eprintln!(
                        "bulkhead-proxy init-iptables: IPv6 failed; IPv4 rules rolled back"
                    ),
                    Err(rollback) => {
                        return Err(format!("{e}; rolling IPv4 back also failed: {rollback}"));
                    }
                }
            }
            return Err(e);
        }
        eprintln!(
            "bulkhead-proxy init-iptables: {}: nat rules installed",
            family.restore_command()
        );
    }
    Ok(())
}

/// The current `nat` table, in `iptables-restore` form.
fn save_table(cmd: &str) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(["-t", "nat"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{cmd}: cannot run it ({e}); is iptables installed?"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // A namespace that never had a nat table prints nothing: putting that
    // back means an empty nat table.
    Ok(if text.trim().is_empty() {
        "*nat\nCOMMIT\n".to_owned()
    } else {
        text
    })
}

/// Feeds `rules` to `cmd` (iptables-restore or ip6tables-restore), one transaction.
fn restore(cmd: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .arg("--wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "{cmd}: cannot run it ({e}); is iptables installed, and do we have CAP_NET_ADMIN?"
            )
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| format!("{cmd}: no stdin"))?
        .write_all(rules.as_bytes())
        .map_err(|e| format!("{cmd}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd} failed ({}): {}", out.status, err.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        Cli::try_parse_from(std::iter::once("x").chain(extra.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn default_rules() {
        let r = rules(&args(&[]), Family::V4).unwrap();
        let expected = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:BULKHEAD_INBOUND - [0:0]
:BULKHEAD_OUTPUT - [0:0]
-A PREROUTING -p tcp -j BULKHEAD_INBOUND
-A OUTPUT -j BULKHEAD_OUTPUT
-A BULKHEAD_INBOUND -p tcp --dport 4143 -j RETURN
-A BULKHEAD_INBOUND -p tcp --dport 4191 -j RETURN
-A BULKHEAD_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A BULKHEAD_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A BULKHEAD_OUTPUT -o lo -j RETURN
-A BULKHEAD_OUTPUT -p tcp -j REDIRECT --to-ports 4140
COMMIT
";
        assert_eq!(r, expected);
    }

    #[test]
    fn exclusions_dns_and_families() {
        let a = args(&[
            "--exclude-inbound-ports",
            "9000,4191",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
            "--redirect-dns",
            "5353",
            "--proxy-uid",
            "999",
        ]);
        let v4 = rules(&a, Family::V4).unwrap();
        assert!(v4.contains("--dport 9000 -j RETURN"));
        assert_eq!(v4.matches("--dport 4191").count(), 1, "deduplicated");
        assert!(v4.contains("-d 10.0.0.0/8 -j RETURN") && !v4.contains("fd00::"));
        assert!(v4.contains("-p udp --dport 53 -j REDIRECT --to-ports 5353"));
        assert!(v4.contains("--uid-owner 999"));
        // The proxy's own traffic returns before DNS or anything else is redirected.
        assert!(v4.find("--uid-owner").unwrap() < v4.find("--dport 53").unwrap());
        let v6 = rules(&a, Family::V6).unwrap();
        assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("10.0.0.0"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(
            rules(
                &args(&["--exclude-outbound-cidrs", "10.0.0.0/33"]),
                Family::V4
            )
            .is_err()
        );
        assert!(rules(&args(&["--exclude-outbound-cidrs", "nonsense"]), Family::V4).is_err());
        assert!(rules(&args(&["--inbound-port", "4140"]), Family::V4).is_err());
        assert!(Cli::try_parse_from(["x", "--exclude-inbound-ports", "70000"]).is_err());
    }
}
