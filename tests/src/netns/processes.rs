//! What runs in the pods: any process (killed on drop, its log kept), a
//! plain HTTP app, the control plane in a pod of its own, and sidecars.

use super::*;

/// A process in a pod, killed on drop.
pub struct PodProcess {
    pub(super) child: Option<Child>,
    pub(super) what: String,
    pub(super) log: PathBuf,
}

impl PodProcess {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.what,
                self.log_text()
            );
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for exit (bounded); returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        crate::proxy::terminate(&mut self.child)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `python3 -m http.server` in a pod.
pub struct PodApp {
    pub process: PodProcess,
    pub port: u16,
}

impl PodApp {
    /// The app's request log lines for `GET path`.
    pub fn requests(&self, path: &str) -> Vec<String> {
        let needle = format!("\"GET {path} ");
        self.process
            .log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }
}

/// `bulkhead-control` (in-memory store) in a pod, on the pod's address.
pub struct PodControlPlane {
    pub pod: Pod,
    pub url: String,
    process: PodProcess,
    ca_path: PathBuf,
}

impl PodControlPlane {
    pub fn start(pod: &Pod, ca: &TestCa) -> Self {
        let listen = SocketAddr::from((pod.ip, CONTROL_GRPC_PORT)).to_string();
        let admin = SocketAddr::from((pod.ip, CONTROL_ADMIN_PORT)).to_string();
        let file = |name: &str| ca.file(name).display().to_string();
        let (cert, key, bundle) = (file("issuer.crt"), file("issuer.key"), file("bundle.crt"));
        let mut args = vec!["--store", "memory"];
        for (flag, value) in [
            ("--trust-domain", ca.trust_domain.as_str()),
            ("--issuer-cert", &cert),
            ("--issuer-key", &key),
            ("--trust-bundle", &bundle),
            ("--listen", &listen),
            ("--admin", &admin),
            ("--log-level", "info,bulkhead_control=debug"),
        ] {
            args.extend([flag, value]);
        }
        let mut process = pod.spawn("control", bin("bulkhead-control"), &args);
        let ready = format!("http://{admin}/ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        while pod.curl(&ready).status != Some(200) {
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "bulkhead-control in pod {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                pod.name,
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            pod: pod.clone(),
            url: format!("https://{listen}"),
            process,
            ca_path: ca.path.clone(),
        }
    }

    /// `bulkheadctl ARGS` as the operator, from inside the control pod.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.pod.command(None, bin("bulkheadctl"), args);
        cmd.env("BULKHEAD_CONTROL", &self.url)
            .env("BULKHEAD_CREDENTIALS", &self.ca_path)
            .env("XDG_CONFIG_HOME", &self.ca_path);
        cmd.output().expect("run bulkheadctl")
    }

    /// `bulkheadctl apply -f` with `yaml`; panics when it is refused.
    pub fn apply(&self, yaml: &str) {
        let file = tempfile::NamedTempFile::new().expect("yaml file");
        std::fs::write(file.path(), yaml).expect("write yaml");
        let out = self.ctl(&["apply", "-f", &file.path().display().to_string()]);
        assert!(
            out.status.success(),
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Kills the control plane: an outage (its memory store goes with it).
    pub fn stop(&mut self) {
        self.process.kill();
    }
}

/// How to run a sidecar in a pod.
#[derive(Clone, Debug)]
pub struct PodSidecarSpec {
    pub namespace: String,
    pub service: String,
    pub version: String,
    /// The app's port on the pod's loopback (`--app 127.0.0.1:PORT`).
    pub app_port: Option<u16>,
    pub uid: u32,
    pub inbound: SocketAddr,
    /// Registered address (default: the pod's IPv4 address).
    pub advertise: Option<IpAddr>,
    pub outbound: Vec<SocketAddr>,
    pub extra: Vec<String>,
}

impl PodSidecarSpec {
    /// As injected: UID 2102, inbound `[::]:4143` (IPv4 and IPv6),
    /// capture listeners `127.0.0.1:4140,[::1]:4140`.
    pub fn new(namespace: &str, service: &str) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            version: "1.0.0".into(),
            app_port: None,
            uid: PROXY_UID,
            inbound: "[::]:4143".parse().expect("addr"),
            advertise: None,
            outbound: vec![
                "127.0.0.1:4140".parse().expect("addr"),
                "[::1]:4140".parse().expect("addr"),
            ],
            extra: vec![],
        }
    }

    pub fn app(mut self, port: u16) -> Self {
        self.app_port = Some(port);
        self
    }

    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = uid;
        self
    }

    pub fn advertise(mut self, ip: IpAddr) -> Self {
        self.advertise = Some(ip);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.into());
        self
    }
}

/// `bulkhead-proxy run` in a pod, as `spec.uid`; killed on drop.
pub struct PodSidecar {
    pub pod: Pod,
    /// The SPIFFE ID its token names.
    pub identity: String,
    process: PodProcess,
    /// How it was started, for [`PodSidecar::restart`].
    uid: u32,
    name: String,
    args: Vec<String>,
    /// Its `--state-dir`.
    pub state_dir: PathBuf,
}

impl PodSidecar {
    /// Starts it with a fresh one-time token for `namespace/service`;
    /// does not wait (see [`PodSidecar::wait_ready`]).
    pub fn start(pod: &Pod, ca: &TestCa, cp: &PodControlPlane, spec: PodSidecarSpec) -> Self {
        let ns_sa = format!("{}/{}", spec.namespace, spec.service);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sidecar-{}-{}",
            spec.service,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = pod.dir().join(&name);
        std::fs::create_dir(&dir).expect("sidecar dir");
        let token = dir.join("token");
        let bundle = dir.join("bundle.crt");
        std::fs::write(&token, ca.token(&ns_sa, "10m", true)).expect("token");
        std::fs::copy(ca.file("bundle.crt"), &bundle).expect("bundle");
        let state_dir = dir.join("state");
        let state = state_dir.clone();
        std::fs::create_dir(&state).expect("state dir");
        for path in [&dir, &token, &bundle, &state] {
            std::os::unix::fs::chown(path, Some(spec.uid), Some(spec.uid)).expect("chown");
        }
        let outbound = spec
            .outbound
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let advertise = spec.advertise.unwrap_or(IpAddr::V4(pod.ip)).to_string();
        let inbound = spec.inbound.to_string();
        // As injected: on every address, for the kubelet and Prometheus.
        let admin = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)).to_string();
        let (token, bundle, state) = (
            token.display().to_string(),
            bundle.display().to_string(),
            state.display().to_string(),
        );
        let app = spec.app_port.map(|p| format!("127.0.0.1:{p}"));
        let mut args = vec!["run"];
        for (flag, value) in [
            ("--control", cp.url.as_str()),
            ("--trust-bundle", &bundle),
            ("--token-file", &token),
            ("--namespace", &spec.namespace),
            ("--service", &spec.service),
            ("--version", &spec.version),
            ("--inbound", &inbound),
            ("--advertise", &advertise),
            ("--admin", &admin),
            ("--node", &pod.node),
            ("--state-dir", &state),
            ("--log-level", "info,bulkhead_proxy=debug"),
        ] {
            args.extend([flag, value]);
        }
        if !outbound.is_empty() {
            args.extend(["--outbound", &outbound]);
        }
        if let Some(app) = &app {
            args.extend(["--app", app]);
        }
        args.extend(spec.extra.iter().map(String::as_str));
        let process = pod.spawn_as(spec.uid, &name, bin("bulkhead-proxy"), &args);
        Self {
            pod: pod.clone(),
            identity: format!(
                "spiffe://{}/ns/{}/sa/{}",
                ca.trust_domain, spec.namespace, spec.service
            ),
            process,
            uid: spec.uid,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            name,
            state_dir,
        }
    }

    /// Kills the sidecar and starts it again with the same flags and state
    /// dir, as the kubelet restarts a crashed container (the pod and its
    /// emptyDir stay). Its log continues in the same file. Does not wait.
    pub fn restart(&mut self) {
        self.process.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = self
            .pod
            .spawn_as(self.uid, &self.name, bin("bulkhead-proxy"), &args);
    }

    /// Waits for `/ready` (certificate, config, app).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.admin("/ready").status != Some(200) {
            self.process.assert_running();
            assert!(
                Instant::now() < deadline,
                "sidecar in pod {} not ready after {READY_TIMEOUT:?}; log:\n{}",
                self.pod.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin port, from inside the pod.
    pub fn admin(&self, path: &str) -> Curl {
        self.pod
            .curl(&format!("http://127.0.0.1:{ADMIN_PORT}{path}"))
    }

    pub fn metrics(&self) -> String {
        self.admin("/metrics").body
    }

    /// The sum of `name`'s samples that carry every label in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::prom::metric(&self.metrics(), name, labels)
    }

    /// Waits (bounded) until [`PodSidecar::metric`] reaches `at_least`;
    /// panics with the metrics and the log when it does not.
    pub fn wait_metric(&mut self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.process.assert_running();
            let text = self.metrics();
            if crate::prom::metric(&text, name, labels) >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar in pod {}: {name}{labels:?} below {at_least} after {READY_TIMEOUT:?}; metrics:\n{text}\nlog:\n{}",
                self.pod.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// SIGTERM (the kubelet stopping the container), then wait for exit
    /// (bounded); returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.process.terminate()
    }
}
