//! The README's first command: `bulkhead-demo` runs the shop with real
//! sidecar processes, shows the split, locality and denials, runs a
//! rollout that is promoted and one that is rolled back, and leaves nothing
//! behind.

use std::process::Command;

use bulkhead_tests::control::bin;

#[test]
fn the_demo_runs_the_shop_and_cleans_up() {
    let out = Command::new(bin("bulkhead-demo"))
        .args(["--duration", "6s"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // The last table: every call row, the 90/10 split, denials counted.
    let last = stdout.rsplit("CALL").next().expect("a table");
    let row = |name: &str| {
        last.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}:\n{last}"))
            .to_owned()
    };
    let web_cart = row("web → cart");
    assert!(
        web_cart.contains("100.0%"),
        "web → cart must all succeed: {web_cart}"
    );
    let inventory = row("cart → inventory");
    assert!(
        inventory.contains("3.0.0") && inventory.contains("3.1.0"),
        "{inventory}"
    );
    let forbidden = row("web → inventory (forbidden)");
    assert!(
        forbidden.contains("0.0%"),
        "the forbidden call never succeeds: {forbidden}"
    );
    // The releases: a good version promoted, a bad one rolled back on its own.
    assert!(stdout.contains("promoted: 3.1.0 is now stable"), "{stdout}");
    assert!(
        stdout.contains("rolled back after 1 failed interval") && stdout.contains("minSuccessRate"),
        "{stdout}"
    );
    assert!(stdout.contains("done: nothing left running"), "{stdout}");
    // No sidecar outlived the demo.
    let ps = Command::new("pgrep")
        .args(["-f", "bulkhead-demo sidecar run"])
        .output()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "sidecars left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
