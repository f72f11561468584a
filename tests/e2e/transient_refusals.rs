//! The API server's transient refusals: 429, and 503 with no Retry-After, which kubectl does not
//! retry. An API server refuses creates of a kind it has only just learned with 503 for a few
//! seconds (its MutatingAdmissionPolicy support polls for custom kinds' schemas every 5 s). The
//! project's own clients retry such refusals with a bounded backoff and never retry a permanent
//! one; `agent-operator check-api`, the chart's start-up hook, waits until creates are admitted.
//!
//! Which refusal comes when is made exact by an admission webhook of the test's own
//! (`tests/support/refusing_webhook.py`): the real API server answers with the status the
//! webhook gives it. The race itself is shown on fresh control planes: below for check-api, and
//! by `tests/first-install.sh` for the chart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::plugin::plugin_on;
use crate::support::{
    OwnControlPlane, client, client_for, control_plane, install_crds, kubectl, kubectl_as, kubectl_once, namespace,
    repo, served_api_versions, wait_crd_established,
};

/// The test's webhook, registered for creates of the operator's kinds in one namespace.
struct RefusingWebhook {
    dir: PathBuf,
    server: Child,
    name: String,
}

impl RefusingWebhook {
    fn start(namespace: &str) -> Self {
        let cp = control_plane();
        let dir = std::env::temp_dir().join(format!("agent-operator-webhook-{}-{namespace}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // user-cert.sh signs with its directory's CA: the control plane's, which the API server trusts.
        std::fs::copy(cp.pki.join("ca.crt"), dir.join("ca.crt")).unwrap();
        std::fs::copy(cp.pki.join("ca.key"), dir.join("ca.key")).unwrap();
        let issued = Command::new("bash")
            .arg(repo().join("tests/control-plane/user-cert.sh"))
            .arg(&dir)
            .arg("serving")
            .arg("/CN=refusing-webhook")
            .arg("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
            .status()
            .unwrap();
        assert!(issued.success(), "serving certificate issued");
        let server = Command::new("python3")
            .arg(repo().join("tests/support/refusing_webhook.py"))
            .arg(dir.join("serving.crt"))
            .arg(dir.join("serving.key"))
            .arg(&dir)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(dir.join("port")) {
                break port;
            }
            assert!(Instant::now() < deadline, "the webhook never listened");
            std::thread::sleep(Duration::from_millis(50));
        };
        let ca = std::fs::read(cp.pki.join("ca.crt")).unwrap();
        let ca = base64(&ca);
        let name = format!("refusing-{namespace}");
        let config = format!(
            r#"{{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{{"name":"{name}"}},
"webhooks":[{{"name":"refusing.tests.agentops.dev","admissionReviewVersions":["v1"],"sideEffects":"None","failurePolicy":"Fail","timeoutSeconds":5,
"clientConfig":{{"url":"https://127.0.0.1:{port}/","caBundle":"{ca}"}},
"namespaceSelector":{{"matchLabels":{{"kubernetes.io/metadata.name":"{namespace}"}}}},
"rules":[{{"apiGroups":["agentops.dev"],"apiVersions":["*"],"operations":["CREATE"],"resources":["agents","agentversions","agentrollbacks"]}}]}}]}}"#
        );
        let out = kubectl(&["apply", "-f", "-"], Some(&config));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let webhook = Self { dir, server, name };
        // The API server calls a new webhook a moment after it is registered.
        let deadline = Instant::now() + Duration::from_secs(30);
        while webhook.log().is_empty() {
            assert!(Instant::now() < deadline, "the API server never called the webhook");
            let probe = format!(
                r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"probe","namespace":"{namespace}"}},"spec":{{}}}}"#
            );
            let _ = kubectl_once(&control_plane().kubeconfig, &["create", "--dry-run=server", "-f", "-"], Some(&probe));
            std::thread::sleep(Duration::from_millis(100));
        }
        webhook.plan(&[]);
        std::fs::write(webhook.dir.join("log"), "").unwrap();
        webhook
    }

    /// The status codes of the next refusals, in order; requests beyond them are allowed.
    fn plan(&self, codes: &[u16]) {
        let text: String = codes.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(self.dir.join("plan"), text).unwrap();
        std::fs::write(self.dir.join("log"), "").unwrap();
    }

    /// What each request since the last plan was answered: "503 Agent support", "200 ...".
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for RefusingWebhook {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "validatingwebhookconfiguration", &self.name], None);
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn agent(ns: &str, name: &str) -> String {
    format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"Agent","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"instructions":"v1"}}}}"#
    )
}

fn check_api(kubeconfig: &Path, ns: &str, policies: &str, timeout: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent-operator"))
        .args(["check-api", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--namespace", ns, "--policies", policies, "--timeout", timeout])
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn the_tests_kubectl_kubectl_agent_and_check_api_retry_429_and_503_and_nothing_else() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = namespace(&admin, "refusals").await;
    let webhook = RefusingWebhook::start(&ns);
    let kubeconfig = &control_plane().kubeconfig;

    // 503 with no Retry-After (which kubectl itself gives up on), then 429.
    webhook.plan(&[503, 503, 429]);
    let created = kubectl_as(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "support")));
    assert!(created.status.success(), "{}", text(&created));
    assert_eq!(webhook.log(), ["503 Agent support", "503 Agent support", "429 Agent support", "200 Agent support"]);

    webhook.plan(&[503, 429, 503]);
    let out = plugin_on(kubeconfig, &ns, &["rollback", "support", "--previous", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = webhook.log();
    assert_eq!(log.iter().map(|l| &l[..3]).collect::<Vec<_>>(), ["503", "429", "503", "200"], "{log:?}");
    assert!(log.iter().all(|l| l.contains("AgentRollback")), "{log:?}");

    webhook.plan(&[503, 429]);
    let out = check_api(kubeconfig, &ns, "none", "30");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("AgentVersion: not yet (503 ServiceUnavailable: admission webhook"), "{said}");
    assert!(said.contains("Agent: not yet (429 TooManyRequests: admission webhook"), "{said}");
    assert!(said.contains("AgentRollback: admitted"), "{said}");

    // Bounded: refused for longer than its timeout, it gives up and says with what.
    webhook.plan(&[503; 200]);
    let started = Instant::now();
    let out = check_api(kubeconfig, &ns, "none", "2");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("gave up after") && said.contains("AgentVersion is still not admitted (503"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // A permanent refusal comes back at once, tried once.
    for code in [403, 422] {
        webhook.plan(&[code, code, code]);
        let out = kubectl_as(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "other")));
        assert!(!out.status.success(), "{}", text(&out));
        assert_eq!(webhook.log().len(), 1, "the tests' kubectl retried {code}: {:?}", webhook.log());

        webhook.plan(&[code, code, code]);
        let out = plugin_on(kubeconfig, &ns, &["rollback", "support", "--previous", "--no-wait"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(&format!("refused by the test's webhook with {code}")), "{}", text(&out));
        assert_eq!(webhook.log().len(), 1, "kubectl agent retried {code}: {:?}", webhook.log());

        webhook.plan(&[code, code, code]);
        let out = check_api(kubeconfig, &ns, "none", "30");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(webhook.log().len(), 1, "check-api retried {code}: {:?}", webhook.log());
    }
}

/// The chart's admission policies, as `helm install` renders them for this control plane.
fn install_policies(kubeconfig: &Path) {
    let rendered = Command::new(&control_plane().helm)
        .args(["template", "agent-operator"])
        .arg(repo().join("charts/agent-operator"))
        .args(["--show-only", "templates/admission-policies.yaml"])
        .args(served_api_versions(kubeconfig))
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let applied = kubectl_as(kubeconfig, &["apply", "-f", "-"], Some(&String::from_utf8_lossy(&rendered.stdout)));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

/// On an API server that has never served the kinds, right after their CRDs and the chart's
/// policies are created: once check-api returns, a plain create of each kind (no retry) is
/// admitted and stamped by the mutating policies.
#[tokio::test]
async fn after_check_api_a_fresh_api_server_admits_plain_creates_with_the_policies_applied() {
    let own = OwnControlPlane::start("fresh-kinds", &[]);
    let kubeconfig = &own.cp.kubeconfig;
    let client = client_for(kubeconfig).await;
    let ns = namespace(&client, "fresh-kinds").await;
    install_policies(kubeconfig);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in agent_operator::crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("agent-operator-tests").force(), &Patch::Apply(&crd)).await.unwrap();
        wait_crd_established(&crds, &name).await;
    }

    let out = check_api(kubeconfig, &ns, "mutating", "60");
    assert!(out.status.success(), "{}", text(&out));
    println!("{}", text(&out));

    let created = kubectl_once(kubeconfig, &["create", "-f", "-"], Some(&agent(&ns, "support")));
    assert!(created.status.success(), "{}", text(&created));
    let rollback = format!(
        r#"{{"apiVersion":"agentops.dev/v1alpha1","kind":"AgentRollback","metadata":{{"name":"back","namespace":"{ns}"}},"spec":{{"agentName":"support","strategy":"Previous"}}}}"#
    );
    let created =
        kubectl_once(kubeconfig, &["create", "-o", "jsonpath={.spec.requestedBy}", "-f", "-"], Some(&rollback));
    assert!(created.status.success(), "{}", text(&created));
    assert_eq!(String::from_utf8_lossy(&created.stdout), "admin");
}
