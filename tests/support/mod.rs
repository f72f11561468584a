//! Test fixture: one real control plane per test binary, a client, a namespace per test, the
//! CRDs, and the operator as a separate process.
//!
//! The control plane is the one named by `AGENT_OPERATOR_TEST_KUBECONFIG` (what
//! `scripts/test.sh` starts), or else one this fixture starts with
//! `tests/control-plane/run.sh --exit-with-parent`, which stops when the test binary exits.

#![allow(dead_code)] // Each test module uses a different part of the fixture.

pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub struct ControlPlane {
    /// run.sh's directory: logs, and the node's state under `node/`.
    pub dir: PathBuf,
    /// Whether a node runs beside it (run.sh --node), so that pods run.
    pub node: bool,
    pub kubeconfig: PathBuf,
    pub pki: PathBuf,
    /// kubectl and the other Kubernetes binaries.
    pub bin: PathBuf,
    pub helm: PathBuf,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_env_file(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("export {key}=")).map(str::to_string))
}

/// The control plane for this test binary, started on first use.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        if let Ok(kubeconfig) = std::env::var("AGENT_OPERATOR_TEST_KUBECONFIG") {
            let kubeconfig = PathBuf::from(kubeconfig);
            let dir = kubeconfig.parent().expect("kubeconfig has a directory").to_path_buf();
            let pki = std::env::var("AGENT_OPERATOR_TEST_PKI").map(PathBuf::from).unwrap_or(dir.join("pki"));
            let env = dir.join("env");
            let bin = read_env_file(&env, "K8S_BIN").map(PathBuf::from).expect("env file names K8S_BIN");
            let helm = read_env_file(&env, "HELM_BIN")
                .map(|d| PathBuf::from(d).join("helm"))
                .expect("env file names HELM_BIN");
            let node = read_env_file(&env, "AGENT_OPERATOR_TEST_NODE").is_some_and(|v| !v.is_empty());
            return ControlPlane { dir, node, kubeconfig, pki, bin, helm };
        }
        let dir = std::env::temp_dir().join(format!("agent-operator-test-{}", std::process::id()));
        // As root, with a node, so that the in-cluster tests run too.
        let root = std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
        // Not waited for: run.sh --exit-with-parent stops the control plane when this test
        // binary exits, which no destructor of a static could do.
        let flags: Vec<String> = root.then(|| "--node".to_string()).into_iter().collect();
        start_control_plane(&dir, &flags).1
    })
}

/// Starts `run.sh --exit-with-parent FLAGS DIR` (stopped when this test binary exits, if not
/// before) and waits until its API server is ready.
fn start_control_plane(dir: &Path, flags: &[String]) -> (Child, ControlPlane) {
    let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
    let child = Command::new("bash")
        .arg(repo().join("tests/control-plane/run.sh"))
        .arg("--exit-with-parent")
        .args(flags)
        .arg(dir)
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("control plane starts");
    // The first run may build the binaries (minutes); later ones start in seconds.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !dir.join("ready").exists() {
        assert!(Instant::now() < deadline, "control plane not ready; see {}", dir.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    let env = dir.join("env");
    let bin = read_env_file(&env, "K8S_BIN").map(PathBuf::from).expect("env file names K8S_BIN");
    let helm = read_env_file(&env, "HELM_BIN").map(|d| PathBuf::from(d).join("helm")).expect("env file names HELM_BIN");
    let node = read_env_file(&env, "AGENT_OPERATOR_TEST_NODE").is_some_and(|v| !v.is_empty());
    let dir = dir.to_path_buf();
    (child, ControlPlane { kubeconfig: dir.join("admin.kubeconfig"), pki: dir.join("pki"), bin, helm, node, dir })
}

/// A control plane of one test's own, configured unlike the shared one (extra kube-apiserver
/// flags); stopped when dropped.
pub struct OwnControlPlane {
    pub cp: ControlPlane,
    child: Child,
}

impl OwnControlPlane {
    pub fn start(name: &str, api_flags: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("agent-operator-test-{}-{name}", std::process::id()));
        let flags: Vec<String> = api_flags.iter().map(|f| format!("--api-flag={f}")).collect();
        let (child, cp) = start_control_plane(&dir, &flags);
        Self { cp, child }
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        // run.sh stops what it started on SIGTERM.
        let _ = Command::new("bash").arg("-c").arg(format!("kill -TERM {}", self.child.id())).status();
        let _ = self.child.wait();
    }
}

/// An admin client for the test control plane (never the user's current context).
pub async fn client() -> Client {
    client_for(&control_plane().kubeconfig).await
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let config = Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await.expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

/// A fresh namespace named after the test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
    name
}

/// Installs (server-side apply) the operator's CRDs and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in agent_operator::crds::all() {
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(&name, &PatchParams::apply("agent-operator-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("CRD applied");
        wait_crd_established(&api, &name).await;
    }
}

pub async fn wait_crd_established(api: &Api<CustomResourceDefinition>, name: &str) {
    eventually(Duration::from_secs(30), || async {
        let crd = api.get(name).await.ok()?;
        let conditions = crd.status?.conditions?;
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await;
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the control plane's kubectl with the admin kubeconfig (or `kubeconfig`).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_as(&control_plane().kubeconfig, args, stdin)
}

/// Runs kubectl as `kubeconfig`'s user. The API server's transient refusals (429, and 503 such
/// as a new kind's "Resource kind ... not found"), which kubectl retries only with a Retry-After,
/// are retried here with a bounded backoff; every other answer is returned as it came.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(100);
    loop {
        let out = kubectl_once(kubeconfig, args, stdin);
        if out.status.success()
            || !transient_refusal(&String::from_utf8_lossy(&out.stderr))
            || Instant::now() >= deadline
        {
            return out;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Whether kubectl's error output is only the API server's transient refusals.
pub fn transient_refusal(stderr: &str) -> bool {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error from server")).collect();
    !errors.is_empty()
        && errors.iter().all(|l| {
            l.starts_with("Error from server (ServiceUnavailable)")
                || l.starts_with("Error from server (TooManyRequests)")
        })
}

/// Runs kubectl once, as a user's pipeline does: no retry.
pub fn kubectl_once(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(control_plane().bin.join("kubectl"))
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin written");
    }
    drop(input);
    child.wait_with_output().expect("kubectl finishes")
}

/// A kubeconfig for a non-admin user: a client certificate signed by the control plane's CA.
pub fn user_kubeconfig(user: &str, groups: &[&str]) -> PathBuf {
    control_plane().user_kubeconfig(user, groups)
}

impl ControlPlane {
    /// A kubeconfig for a non-admin user of this control plane: a client certificate signed
    /// by its CA.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let cp = self;
        let mut subject = format!("/CN={user}");
        for g in groups {
            subject.push_str(&format!("/O={g}"));
        }
        let status = Command::new("bash")
            .arg(repo().join("tests/control-plane/user-cert.sh"))
            .arg(&cp.pki)
            .arg(user)
            .arg(&subject)
            .status()
            .expect("user-cert.sh runs");
        assert!(status.success(), "user certificate issued");
        let admin = std::fs::read_to_string(&cp.kubeconfig).expect("admin kubeconfig");
        let text = admin.replace(&format!("{}/admin.", cp.pki.display()), &format!("{}/{user}.", cp.pki.display()));
        let text =
            text.replace("- name: admin", &format!("- name: {user}")).replace("user: admin", &format!("user: {user}"));
        let path = cp.pki.join(format!("{user}.kubeconfig"));
        std::fs::write(&path, text).expect("user kubeconfig written");
        path
    }
}

/// Where the chart's identity for the operator processes lives. A release of its own, so that
/// the in-cluster tests can `helm install` the chart as users do, as `agent-operator` in
/// `agent-operator-system`, beside it.
pub const RELEASE_NAMESPACE: &str = "agent-operator-tests";
/// The release's name, and so its fullname: the name of its leader Lease, the only Lease its
/// identity may take.
pub const RELEASE: &str = "agent-operator-tests";

/// The identity the chart gives the operator.
pub struct ChartIdentity {
    /// A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token).
    pub kubeconfig: PathBuf,
    pub service_account: String,
}

static CHART_IDENTITY: OnceLock<ChartIdentity> = OnceLock::new();

/// Renders the chart, applies all of it but the Deployment (its ServiceAccount and RBAC are
/// what matter here; the operator runs as a test process), and returns a kubeconfig for its
/// ServiceAccount.
pub fn chart_identity() -> &'static ChartIdentity {
    CHART_IDENTITY.get_or_init(|| {
        let cp = control_plane();
        let rendered = Command::new(&cp.helm)
            .args(["template", RELEASE])
            .arg(repo().join("charts/agent-operator"))
            .args(["--namespace", RELEASE_NAMESPACE])
            .args(served_api_versions(&cp.kubeconfig))
            .output()
            .expect("helm runs");
        assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
        let _ = kubectl(&["create", "namespace", RELEASE_NAMESPACE], None);
        let rendered = String::from_utf8_lossy(&rendered.stdout);
        // The operator runs as a process; the start-up check is a hook Job for a cluster with a node.
        let without_deployment: Vec<&str> = rendered
            .split("\n---")
            .filter(|doc| !doc.contains("\nkind: Deployment\n") && !doc.contains("helm.sh/hook:"))
            .collect();
        let applied = kubectl(&["apply", "-f", "-"], Some(&without_deployment.join("\n---")));
        assert!(applied.status.success(), "chart applied: {}", String::from_utf8_lossy(&applied.stderr));
        wait_for_mutating_policies();

        let service_account = RELEASE.to_string();
        let kubeconfig = service_account_kubeconfig(RELEASE_NAMESPACE, &service_account);
        ChartIdentity { kubeconfig, service_account }
    })
}

/// Waits until a dry-run create of an Agent and of an AgentRollback comes back stamped by the
/// chart's mutating policies. They take a moment to reach the admission chain, and a new kind's
/// schema a moment more to reach their type checker: until then a create is refused with 503
/// "Resource kind ... not found". The API server refreshes that schema list every 5 s, so the
/// same wait follows each of its restarts. Returns at once where the cluster serves no
/// MutatingAdmissionPolicy (the chart then installs none).
pub fn wait_for_mutating_policies() {
    if served_api_versions(&control_plane().kubeconfig).is_empty() {
        return;
    }
    let ns = RELEASE_NAMESPACE;
    let agent = format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"admission-probe","namespace":"{ns}"}},"spec":{{}}}}"#
    );
    let rollback = format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentRollback","metadata":{{"name":"admission-probe","namespace":"{ns}"}},"spec":{{"agentName":"admission-probe","strategy":"Previous","requestedBy":"nobody"}}}}"#
    );
    let stamped = |manifest: &str, check: &dyn Fn(&str) -> bool| {
        let out = kubectl(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(manifest));
        out.status.success() && check(&String::from_utf8_lossy(&out.stdout))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(stamped(&agent, &|json| json.contains("agentops.dev/changed-by"))
        && stamped(&rollback, &|json| json.contains("\"requestedBy\"") && !json.contains("\"nobody\"")))
    {
        assert!(Instant::now() < deadline, "the chart's mutating admission policies never took effect");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token, 4 hours).
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> PathBuf {
    let cp = control_plane();
    let token = kubectl(&["create", "token", name, "-n", namespace, "--duration=4h"], None);
    assert!(token.status.success(), "token: {}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let admin = std::fs::read_to_string(&cp.kubeconfig).expect("admin kubeconfig");
    let field = |key: &str| {
        admin.lines().find_map(|l| l.trim().strip_prefix(key).map(str::trim)).expect("kubeconfig field").to_string()
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context: {{cluster: local, user: sa}}\ncurrent-context: local\n",
        field("server:"),
        field("certificate-authority:"),
    );
    let kubeconfig = cp.pki.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&kubeconfig, text).expect("ServiceAccount kubeconfig written");
    kubeconfig
}

/// `helm template` flags that tell the chart what the control plane serves, as `helm install`
/// learns it from discovery: which admission policies it renders.
pub fn served_api_versions(kubeconfig: &Path) -> Vec<String> {
    let discovery = kubectl_as(kubeconfig, &["get", "--raw", "/apis/admissionregistration.k8s.io/v1"], None);
    let text = String::from_utf8_lossy(&discovery.stdout);
    if text.contains("\"kind\":\"MutatingAdmissionPolicy\"") {
        vec!["--api-versions".into(), "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy".into()]
    } else {
        Vec::new()
    }
}

/// A plain HTTP answer.
pub struct HttpResponse {
    pub code: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

/// GETs `path` over plain HTTP/1.1 (no client library: the operator's endpoints and the example
/// runtime both speak it); `None` if the server cannot be reached within 2 s.
pub async fn http_get(host: &str, port: u16, path: &str) -> Option<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange).await.ok()??;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    Some(HttpResponse { code, head: head.to_string(), body: body.to_string() })
}

/// The operator, running as its own process (as a user would run it).
pub struct Operator {
    child: Child,
    http_port: u16,
}

impl Operator {
    /// Starts `agent-operator run` watching `namespace`, authenticated as the chart's
    /// ServiceAccount: every test that runs the operator also proves the chart's RBAC is enough.
    pub fn start(namespace: &str) -> Self {
        Self::start_as(&chart_identity().kubeconfig, namespace)
    }

    pub fn start_as(kubeconfig: &Path, namespace: &str) -> Self {
        Self::start_with(kubeconfig, namespace, &[])
    }

    /// A free 127.0.0.1 port for the operator's HTTP endpoints.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
    }

    /// Starts the operator with extra flags; its HTTP endpoints on a free port (see `get`).
    pub fn start_with(kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Self {
        Self::start_logged(kubeconfig, namespace, extra, "info,agent_operator=debug")
    }

    /// Like `start_with`, with this log filter (benchmarks log little).
    pub fn start_logged(kubeconfig: &Path, namespace: &str, extra: &[&str], filter: &str) -> Self {
        Self::spawn(kubeconfig, namespace, extra, filter, None)
    }

    /// Starts the operator as user `uid`, so that firewall rules can single out its traffic;
    /// the kubeconfig and what it names must be readable by that user.
    pub fn start_as_uid(kubeconfig: &Path, namespace: &str, uid: u32) -> Self {
        Self::spawn(kubeconfig, namespace, &[], "info,agent_operator=debug", Some(uid))
    }

    fn spawn(kubeconfig: &Path, namespace: &str, extra: &[&str], filter: &str, uid: Option<u32>) -> Self {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("agent-operator-{namespace}.log")))
            .expect("operator log");
        let http_port = Self::free_port();
        // The benchmark sets AGENT_OPERATOR_BIN to the image's static binary: the one users run.
        let binary =
            std::env::var_os("AGENT_OPERATOR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_agent-operator").into());
        let mut command = Command::new(binary);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command
            .args(["run", "--namespace", namespace])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--http-addr=127.0.0.1:{http_port}"))
            .args(extra)
            .env("RUST_LOG", filter)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("operator starts");
        Self { child, http_port }
    }

    /// GETs a path of the operator's HTTP endpoints: status code and body.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get("127.0.0.1", self.http_port, path).await.map(|r| (r.code, r.body))
    }

    /// The sum of every series of /metrics whose line starts with `prefix` (a name, and
    /// labels if wanted); 0 if none is served.
    pub async fn metric_sum(&self, prefix: &str) -> f64 {
        let body = self.get("/metrics").await.map(|(_, body)| body).unwrap_or_default();
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // bash's built-in kill: no dependency on a kill binary being installed.
        let _ = Command::new("bash").arg("-c").arg(format!("kill -TERM {}", self.child.id())).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in bytes and CPU seconds used so far, from /proc.
    pub fn usage(&self) -> Option<(u64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let rss_kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        Some((rss_kb * 1024, cpu_seconds(&stat)?.1))
    }
}

/// A process's command name and CPU seconds (user and system) from its `/proc/<pid>/stat`.
pub fn cpu_seconds(stat: &str) -> Option<(&str, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks as f64 / 100.0))
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
