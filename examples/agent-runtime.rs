//! A minimal agent runtime, for the demo and the tests: it serves the definition the operator
//! delivers, from the ConfigMap (an Agent's or a channel's) mounted at `AGENT_DIR` (default
//! `/etc/agent`), over HTTP on `LISTEN` (default `0.0.0.0:8080`), with the version in the
//! `X-Agent-Version` header. A pod learns its version from its template's
//! `agentops.dev/active-version` annotation (`AGENT_VERSION`, by the downward API) and serves
//! that version's own key, `agent-v<N>.json`, so its definition never changes under it during a
//! rollout; without one it serves `agent.json`, whatever the ConfigMap holds now. It reads the
//! files on every request, so a ConfigMap the kubelet refreshes is served without a restart.
//! Standard library only: it builds into a tiny static image (`scripts/image.sh runtime`).
//!
//! `/metrics` serves, in Prometheus's text format, `agent_requests_total` and
//! `agent_errors_total` by `version` (the pod's own), and `/healthz` whether its definition is
//! delivered, for the readiness probe (neither is counted as a request).
//!
//! For trying the operator's judgement of versions, a definition can ask it to misbehave:
//! `advancedSettings: {runtime.exitAfterSeconds: "N"}` has it exit (status 3) N seconds after
//! it starts with that definition, so its container restarts; `runtime.failRequests: "true"`
//! has it answer every request with an error (500).
//!
//! `agent-runtime evaluate` is its evaluation mode, for a channel's `job` check: it checks the
//! snapshot at `$AGENT_DIR/agent.json` against a small golden set (instructions present, no
//! step without a prompt, and not `runtime.failEvaluation: "true"`), prints what passed, and
//! on a failure writes why to its termination message and exits 1.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests answered with the definition, and those answered with an error.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

fn main() -> std::io::Result<()> {
    let dir = std::env::var("AGENT_DIR").unwrap_or_else(|_| "/etc/agent".into());
    if std::env::args().nth(1).as_deref() == Some("evaluate") {
        evaluate(Path::new(&dir));
    }
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("serving {dir}/agent.json on {addr}");
    let exit_after = definition(Path::new(&dir)).ok().and_then(|(body, _)| setting(&body, EXIT_AFTER_SECONDS));
    if let Some(seconds) = exit_after.and_then(|s| s.parse::<u64>().ok()) {
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(seconds));
            eprintln!("exiting as {EXIT_AFTER_SECONDS} asks, after {seconds} s");
            std::process::exit(3);
        });
    }
    for stream in listener.incoming().flatten() {
        if let Err(error) = answer(stream, Path::new(&dir)) {
            eprintln!("request failed: {error}");
        }
    }
    Ok(())
}

/// The `advancedSettings` key that has the runtime exit, to restart its container.
const EXIT_AFTER_SECONDS: &str = "runtime.exitAfterSeconds";
/// The `advancedSettings` key that has the runtime answer every request with an error.
const FAIL_REQUESTS: &str = "runtime.failRequests";
/// The `advancedSettings` key that has the evaluation fail.
const FAIL_EVALUATION: &str = "runtime.failEvaluation";

/// The evaluation mode: the snapshot against the golden set; exits 0 if every case passes,
/// else 1 with the failed cases in the termination message.
fn evaluate(dir: &Path) -> ! {
    let version = std::env::var("AGENT_VERSION").unwrap_or_default();
    let snapshot = std::fs::read_to_string(dir.join("agent.json")).unwrap_or_default();
    let instructions = setting(&snapshot, "instructions").unwrap_or_default();
    let cases = [
        ("instructions are present", !instructions.trim().is_empty()),
        // Every step object of the canonical JSON has its prompt: as many as names.
        ("every step has a prompt", snapshot.matches("\"name\":").count() <= snapshot.matches("\"prompt\":").count()),
        ("it does not ask to fail", setting(&snapshot, FAIL_EVALUATION).as_deref() != Some("true")),
    ];
    let failed: Vec<&str> = cases.iter().filter(|(_, passed)| !passed).map(|(case, _)| *case).collect();
    if failed.is_empty() {
        println!("version {version}: {} of {} golden cases passed", cases.len(), cases.len());
        std::process::exit(0);
    }
    let message =
        format!("version {version}: {} of {} golden cases failed: {}", failed.len(), cases.len(), failed.join("; "));
    eprintln!("{message}");
    let _ = std::fs::write("/dev/termination-log", &message);
    std::process::exit(1);
}

/// The definition this pod serves and its version: its own version's key, else `agent.json`.
fn definition(dir: &Path) -> std::io::Result<(String, String)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    match std::env::var("AGENT_VERSION").ok().filter(|v| !v.is_empty()) {
        Some(version) => read(&format!("agent-v{version}.json")).map(|body| (body, version)),
        None => read("agent.json").and_then(|body| Ok((body, read("version")?))),
    }
}

/// The string value of `key` in the definition's JSON, found as text: setting keys are unique
/// enough in a definition, and the runtime stays free of dependencies.
fn setting(definition: &str, key: &str) -> Option<String> {
    let after = &definition[definition.find(&format!("\"{key}\""))? + key.len() + 2..];
    let value = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    // The request line, then the headers up to the blank line.
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let own = std::env::var("AGENT_VERSION").unwrap_or_default();
    let (status, content_type, body, version) = match path {
        // Ready once its definition is delivered.
        "/healthz" => match definition(dir) {
            Ok(_) => ("200 OK", "text/plain", "ok\n".to_string(), own),
            Err(_) => ("503 Service Unavailable", "text/plain", "no agent definition delivered yet\n".to_string(), own),
        },
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(&own), own),
        _ => match definition(dir) {
            Ok((body, version)) if setting(&body, FAIL_REQUESTS).as_deref() == Some("true") => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                let error = format!("{{\"error\":\"version {} asks to fail ({FAIL_REQUESTS})\"}}", version.trim());
                ("500 Internal Server Error", "application/json", error, version)
            }
            Ok((body, version)) => {
                REQUESTS.fetch_add(1, Ordering::Relaxed);
                ("200 OK", "application/json", body, version)
            }
            Err(_) => {
                let error = "{\"error\":\"no agent definition delivered yet\"}".to_string();
                ("503 Service Unavailable", "application/json", error, String::new())
            }
        },
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nX-Agent-Version: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        version.trim(),
        body.len()
    )?;
    stream.flush()
}

/// The counters, in Prometheus's text format, by the pod's own version.
fn metrics(version: &str) -> String {
    let version = if version.is_empty() { "unknown" } else { version };
    let mut text = String::new();
    for (name, help, value) in [
        ("agent_requests_total", "Requests answered with the definition.", &REQUESTS),
        ("agent_errors_total", "Requests answered with an error.", &ERRORS),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{version=\"{version}\"}} {}\n",
            value.load(Ordering::Relaxed)
        ));
    }
    text
}
