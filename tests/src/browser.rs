//! A real browser for the dashboard's tests: headless Chromium driven
//! over WebDriver (W3C protocol, JSON over HTTP) by `chromedriver` on a
//! free port — Debian's `chromium` and `chromium-driver`, which
//! `scripts/test` installs when missing. Enough of the protocol to load a
//! page, find elements by CSS, read their text, click, type, run a line
//! of script and save screenshots (PNG) for people to look at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::control::{free_port, http_exchange};

/// Where Debian installs them.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one WebDriver command may take (a navigation waits for the
/// page's load event).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium session; the driver and browser stop on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless session; screenshots go to
    /// `shots` (created).
    pub fn start(shots: &Path) -> Self {
        for needed in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(needed).exists(),
                "{needed} not found: the dashboard tests need Debian's chromium and chromium-driver \
                 (scripts/test installs them as root: apt-get install chromium chromium-driver)"
            );
        }
        std::fs::create_dir_all(shots).expect("screenshot folder");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
            shots: shots.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .raw("GET", "/status", None)
                .ok()
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = browser
            .raw(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1400,1000"],
                    },
                }}})),
            )
            .expect("new WebDriver session");
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command: the parsed answer, or the error it named.
    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http_exchange(self.addr, method, path, &[], &body, COMMAND_TIMEOUT)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {value}"));
        }
        Ok(value)
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .map(|v| v["value"].clone())
    }

    /// Loads `url` (returns after its load event).
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})))
            .expect("navigate");
    }

    /// The elements matching `css` (WebDriver element ids).
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .command(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .unwrap_or_default();
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_object()?.values().next()?.as_str().map(String::from))
            .collect()
    }

    pub fn count(&self, css: &str) -> usize {
        self.find_all(css).len()
    }

    /// The rendered text of every element matching `css`. The page
    /// redraws as events arrive: when an element found is gone before its
    /// text is read (stale), the query is made again on the new page.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let mut tries = 0;
        loop {
            let read: Result<Vec<String>, String> = self
                .find_all(css)
                .iter()
                .map(|id| {
                    self.command("GET", &format!("/element/{id}/text"), None)
                        .map(|v| v.as_str().unwrap_or_default().to_owned())
                })
                .collect();
            match read {
                Ok(texts) => return texts,
                Err(_) if tries < 10 => tries += 1,
                Err(_) => return Vec::new(),
            }
        }
    }

    /// The texts of `css`'s elements joined by newlines ("" when none).
    pub fn text(&self, css: &str) -> String {
        self.texts(css).join("\n")
    }

    /// Clicks the first element matching `css` (scrolled into view).
    pub fn click(&self, css: &str) -> Result<(), String> {
        self.on_first(css, |id| {
            self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
        })
    }

    /// Types `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        self.on_first(css, |id| {
            self.command(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({"text": text})),
            )
        })
    }

    /// Does `act` on the first element matching `css`, finding it again
    /// when a redraw replaced it in between (stale element).
    fn on_first(
        &self,
        css: &str,
        act: impl Fn(&str) -> Result<Value, String>,
    ) -> Result<(), String> {
        let mut tries = 0;
        loop {
            let id = self
                .find_all(css)
                .into_iter()
                .next()
                .ok_or_else(|| format!("nothing matches {css}"))?;
            match act(&id) {
                Ok(_) => return Ok(()),
                Err(e) if e.contains("stale element") && tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `script` (a function body: `return ...;`) in the page.
    pub fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .expect("execute script")
    }

    /// Saves a screenshot of the window as `NAME.png` and prints where.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .command("GET", "/screenshot", None)
            .expect("screenshot");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("base64 PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// Polls until `check` returns Some (every 200 ms, at most `within`);
    /// on timeout saves a screenshot named after `what` and panics with
    /// the page's main text.
    pub fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("timeout-{}", slug(what)));
                panic!(
                    "{what}: not within {within:?} (screenshot {}); page says:\n{}",
                    shot.display(),
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the text of `css` contains `needle`, and returns it.
    pub fn wait_text(&self, css: &str, needle: &str, within: Duration) -> String {
        self.wait(&format!("{css} to show {needle:?}"), within, |b| {
            let text = b.text(css);
            text.contains(needle).then_some(text)
        })
    }
}

fn slug(what: &str) -> String {
    what.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
