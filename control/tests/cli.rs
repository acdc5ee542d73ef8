//! Usage errors of both binaries: one clear line naming the flag or file,
//! exit code 2. (Also makes `cargo test` build the binaries the end-to-end
//! tests in `tests/` run.)

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("BULKHEAD_CREDENTIALS")
        .env_remove("BULKHEAD_CONTROL")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONTROL: &str = env!("CARGO_BIN_EXE_bulkhead-control");
const CTL: &str = env!("CARGO_BIN_EXE_bulkheadctl");

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    lines[0]
}

#[test]
fn control_plane_bad_flag_value_is_one_line_naming_the_flag() {
    let (code, err) = run(
        CONTROL,
        &[
            "--listen",
            "nonsense",
            "--issuer-cert",
            "a",
            "--issuer-key",
            "b",
            "--trust-bundle",
            "c",
        ],
    );
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--listen"), "{err}");
}

#[test]
fn control_plane_unknown_flag_and_missing_required_flag() {
    let (code, err) = run(CONTROL, &["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--frobnicate"), "{err}");
    let (code, err) = run(CONTROL, &[]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--issuer-cert"), "{err}");
}

#[test]
fn control_plane_unreadable_file_names_the_file() {
    let (code, err) = run(
        CONTROL,
        &[
            "--store",
            "memory",
            "--issuer-cert",
            "/nonexistent/issuer.crt",
            "--issuer-key",
            "/nonexistent/issuer.key",
            "--trust-bundle",
            "/nonexistent/bundle.crt",
        ],
    );
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("/nonexistent/issuer.crt"), "{err}");
}

#[test]
fn control_plane_flags_come_from_env_too() {
    let out = Command::new(CONTROL)
        .env("BULKHEAD_ISSUER_CERT", "/nonexistent/from-env.crt")
        .env("BULKHEAD_ISSUER_KEY", "/nonexistent/k")
        .env("BULKHEAD_TRUST_BUNDLE", "/nonexistent/b")
        .env("BULKHEAD_STORE", "memory")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/from-env.crt"), "{err}");
    let out = Command::new(CONTROL)
        .env("BULKHEAD_LEASE_TTL", "forever")
        .args([
            "--issuer-cert",
            "a",
            "--issuer-key",
            "b",
            "--trust-bundle",
            "c",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lease-ttl"));
}

#[test]
fn control_plane_bad_operator_identity() {
    let (code, err) = run(
        CONTROL,
        &[
            "--operators",
            "not an identity",
            "--issuer-cert",
            "a",
            "--issuer-key",
            "b",
            "--trust-bundle",
            "c",
        ],
    );
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--operators"), "{err}");
}

#[test]
fn ctl_usage_errors_exit_2() {
    let (code, _) = run(CTL, &["get"]);
    assert_eq!(code, 2);
    let (code, err) = run(CTL, &["get", "widgets"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("widgets"), "{err}");
    let (code, err) = run(CTL, &["get", "services"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--credentials"), "{err}");
    let (code, err) = run(
        CTL,
        &[
            "token",
            "create",
            "--identity",
            "just-a-name",
            "--issuer-key",
            "/nonexistent/key",
        ],
    );
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--identity"), "{err}");
}

#[test]
fn ctl_ca_init_refuses_an_existing_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = run(
        CTL,
        &["ca", "init", "--out", dir.path().to_str().expect("utf-8")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(dir.path().to_str().expect("utf-8")), "{err}");
}

#[test]
fn versions_and_help() {
    for bin in [CONTROL, CTL] {
        let out = Command::new(bin).arg("--version").output().expect("run");
        assert!(out.status.success());
        let out = Command::new(bin).arg("--help").output().expect("run");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
    }
}

#[test]
fn ctl_reads_control_and_credentials_from_a_config_file_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds-from-file");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "control: http://from-file:1\ncredentials: {}\n",
            creds.display()
        ),
    )
    .expect("write");
    let run = |args: &[&str]| {
        let out = Command::new(CTL)
            .args(args)
            .env_remove("BULKHEAD_CREDENTIALS")
            .env_remove("BULKHEAD_CONTROL")
            .env("XDG_CONFIG_HOME", dir.path())
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The file's credentials folder is used (and named when it is missing).
    let config_arg = config.to_str().expect("utf-8");
    let (code, err) = run(&["--config", config_arg, "get", "services"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("creds-from-file"), "{err}");
    // Credentials from a flag win over the file; then the file's URL is used.
    std::fs::create_dir_all(dir.path().join("ca")).expect("mkdir");
    let (code, err) = run(&[
        "--config",
        config_arg,
        "--credentials",
        "/nonexistent/flag-creds",
        "get",
        "services",
    ]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("/nonexistent/flag-creds"), "{err}");
    // An unknown key in the file is an error naming the file.
    std::fs::write(&config, "contorl: https://typo:8443\n").expect("write");
    let (code, err) = run(&["--config", config_arg, "get", "services"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("config.yaml"), "{err}");
}
