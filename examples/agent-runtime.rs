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
//! For trying the operator's judgement of versions, a definition can ask it to misbehave:
//! `advancedSettings: {runtime.exitAfterSeconds: "N"}` has it exit (status 3) N seconds after
//! it starts with that definition, so its container restarts.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = std::env::var("AGENT_DIR").unwrap_or_else(|_| "/etc/agent".into());
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
    // The request line and headers, up to the blank line; every path gets the definition.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let delivered = definition(dir);
    let (status, body, version) = match delivered {
        Ok((body, version)) => ("200 OK", body, version),
        _ => ("503 Service Unavailable", "{\"error\":\"no agent definition delivered yet\"}".into(), String::new()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Agent-Version: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        version.trim(),
        body.len()
    )?;
    stream.flush()
}
