//! Outages: the API server restarted, etcd paused, the operator cut off from the API server.
//! Afterwards every rollback is terminal, none ran twice, no version is missing or duplicated;
//! each test prints how long recovery took. They disturb the whole control plane, so
//! `scripts/test.sh` runs them alone, one at a time.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::rollback::{Setup, setup, setup_without_operator};
use crate::support::reference::{History, Request, published};
use crate::support::{Operator, chart_identity, control_plane, kubectl, wait_for_mutating_policies};

/// A uid no one else on the machine uses: the operator runs as it in the cut-off test, so
/// that iptables can single out its connections (the chart's image runs as the same one).
const OPERATOR_UID: u32 = 65532;

fn signal(pid: &str, name: &str) {
    let status = Command::new("bash").arg("-c").arg(format!("kill -{name} {pid}")).status().expect("bash runs");
    assert!(status.success(), "kill -{name} {pid}");
}

fn pid_file(name: &str) -> String {
    let path = control_plane().dir.join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until the API server answers /readyz; returns when it did.
fn wait_ready(timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if kubectl(&["get", "--raw=/readyz", "--request-timeout=1s"], None).status.success() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the API server is not ready again after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates the rollbacks; returns them in creation order with their requests.
async fn create_all(s: &Setup, prefix: &str, requests: &[Request]) -> Vec<(u64, String, Request)> {
    let mut created = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let name = format!("{prefix}-{i}");
        let rb = s.create_rollback(&name, "support", request.strategy, request.target).await;
        created.push((rb.resource_version().unwrap().parse().unwrap(), name, request.clone()));
    }
    created.sort_by_key(|(rv, _, _)| *rv);
    created
}

/// Waits for every rollback to end and checks it against the reference, in creation order;
/// then that the history is the reference's and no rollback made more than one version.
async fn check_all(s: &Setup, expected: &mut History, created: &[(u64, String, Request)]) {
    for (_, name, request) in created {
        s.expect_outcome(name, expected.apply(request), &format!("{request:?}")).await;
    }
    assert_eq!(s.history("support").await, expected.versions);
    let versions = s.versions("support").await;
    for (_, name, _) in created {
        let made = versions.iter().filter(|v| v.spec.rollback_name.as_deref() == Some(name.as_str())).count();
        assert!(made <= 1, "{name} made {made} versions");
    }
}

/// Waits until every rollback is terminal; returns when the last one was seen so.
async fn all_terminal(s: &Setup, created: &[(u64, String, Request)]) -> Instant {
    for (_, name, _) in created {
        s.terminal(name).await;
    }
    Instant::now()
}

fn mixed() -> Vec<Request> {
    vec![
        Request { strategy: "Previous", target: None },
        Request { strategy: "Restore", target: Some(1) },
        Request { strategy: "Pop", target: None },
        Request { strategy: "Restore", target: Some(99) },
        Request { strategy: "Previous", target: None },
        Request { strategy: "Pop", target: None },
    ]
}

#[tokio::test]
async fn a_rollback_created_right_after_the_api_server_restarts_finishes_within_5_seconds() {
    let s = setup("e2e-outage-restart").await;
    s.agent_with_versions("support", 2, 100).await;
    let mut expected = published(2);
    // A graceful stop first (it drains requests for up to a minute), then two crashes.
    for (round, how) in ["TERM", "KILL", "KILL"].into_iter().enumerate() {
        let pid = pid_file("kube-apiserver.pid");
        let down = Instant::now();
        signal(&pid, how);
        while alive(&pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready = wait_ready(Duration::from_secs(120));
        // Until the chart's mutating policies know the kinds' schemas again (the API server
        // polls for them every 5 s), it refuses their creates with 503; what is timed is the
        // operator's part, from when a rollback can be created at all.
        wait_for_mutating_policies();
        let admitted = Instant::now();
        let created = create_all(&s, &format!("r{round}"), &[Request { strategy: "Previous", target: None }]).await;
        let done = all_terminal(&s, &created).await;
        let took = done - admitted;
        println!(
            "API server restart {round} (SIG{how}): down and up again in {:.1?}, admitting rollbacks {:.1?} later; \
             a rollback created then took {took:.1?}",
            ready - down,
            admitted - ready
        );
        assert!(took < Duration::from_secs(5), "round {round}: {took:?}");
        check_all(&s, &mut expected, &created).await;
    }
}

#[tokio::test]
async fn etcd_paused_for_20_seconds_while_rollbacks_run_loses_and_duplicates_nothing() {
    let s = setup("e2e-outage-etcd").await;
    s.agent_with_versions("support", 3, 100).await;
    let mut expected = published(3);
    let created = create_all(&s, "e", &mixed()).await;
    let etcd = pid_file("etcd.pid");
    signal(&etcd, "STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal(&etcd, "CONT");
    let resumed = Instant::now();
    let done = all_terminal(&s, &created).await;
    println!("etcd paused 20 s: every rollback terminal {:.1?} after it resumed", done - resumed);
    check_all(&s, &mut expected, &created).await;
}

/// iptables rules, removed when dropped (also when the test fails).
struct Rules(Vec<Vec<String>>);

impl Rules {
    fn add(rules: &[&[&str]]) -> Self {
        let rules: Vec<Vec<String>> = rules.iter().map(|r| r.iter().map(|a| a.to_string()).collect()).collect();
        for rule in &rules {
            let status = Command::new("iptables").arg("-A").args(rule).status().expect("iptables runs");
            assert!(status.success(), "iptables -A {rule:?}");
        }
        Self(rules)
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        for rule in &self.0 {
            let _ = Command::new("iptables").arg("-D").args(rule).status();
        }
    }
}

/// The chart identity's kubeconfig, and the CA it names, in a directory the operator's uid
/// can read (the test control plane's is root's only).
fn readable_kubeconfig() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agent-operator-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.crt");
    std::fs::copy(control_plane().pki.join("ca.crt"), &ca).unwrap();
    let text = std::fs::read_to_string(&chart_identity().kubeconfig).unwrap();
    let text = text
        .lines()
        .map(|l| match l.trim().strip_prefix("certificate-authority:") {
            Some(_) => format!("    certificate-authority: {}", ca.display()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for path in [&dir, &ca, &kubeconfig] {
        let mode = if path == &dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    kubeconfig
}

#[tokio::test]
async fn the_operator_cut_off_from_the_api_server_for_30_seconds_catches_up() {
    let mut s = setup_without_operator("e2e-outage-cut").await;
    let mark = "0x6a6f";
    // Every connection the operator opens is marked, so that both directions can be dropped.
    let _marking =
        Rules::add(&[&["OUTPUT", "-m", "owner", "--uid-owner", "65532", "-j", "CONNMARK", "--set-mark", mark]]);
    s.operator = Some(Operator::start_as_uid(&readable_kubeconfig(), &s.ns, OPERATOR_UID));
    s.agent_with_versions("support", 3, 100).await;
    let mut expected = published(3);

    let requests = mixed();
    let mut created = create_all(&s, "before", &requests[..2]).await;
    let cut = Rules::add(&[
        &["OUTPUT", "-m", "connmark", "--mark", mark, "-j", "DROP"],
        &["INPUT", "-m", "connmark", "--mark", mark, "-j", "DROP"],
    ]);
    let started = Instant::now();
    created.extend(create_all(&s, "during", &requests[2..]).await);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(started.elapsed())).await;
    drop(cut);
    let reconnected = Instant::now();
    let done = all_terminal(&s, &created).await;
    println!("operator cut off 30 s: every rollback terminal {:.1?} after it was reconnected", done - reconnected);
    let operator = s.operator.as_mut().unwrap();
    assert!(operator.exited().is_none(), "the operator exited: {:?}", operator.exited());
    created.sort_by_key(|(rv, _, _)| *rv);
    check_all(&s, &mut expected, &created).await;
}
