//! A minimal agent runtime, for the demo and the tests: it serves the definition the operator
//! delivers, from the ConfigMap (an Agent's or a channel's) mounted at `AGENT_DIR` (default
//! `/etc/agent`), over HTTP on `LISTEN` (default `0.0.0.0:8080`), with the version in the
//! `X-Agent-Version` header. A pod learns its version from its template's
//! `agentops.dev/active-version` annotation (`AGENT_VERSION`, by the downward API) and serves
//! that version's own key, `agent-v<N>.json`, so its definition never changes under it during a
//! rollout; without one it serves `agent.json`, whatever the ConfigMap holds now. It reads the
//! files on every request, so a ConfigMap the kubelet refreshes is served without a restart.
//! Standard library only: it builds into a tiny static image (`scripts/image.sh runtime`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = std::env::var("AGENT_DIR").unwrap_or_else(|_| "/etc/agent".into());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("serving {dir}/agent.json on {addr}");
    for stream in listener.incoming().flatten() {
        if let Err(error) = answer(stream, Path::new(&dir)) {
            eprintln!("request failed: {error}");
        }
    }
    Ok(())
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    // The request line and headers, up to the blank line; every path gets the definition.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let own = std::env::var("AGENT_VERSION").ok().filter(|v| !v.is_empty());
    let delivered = match own {
        Some(version) => read(&format!("agent-v{version}.json")).map(|body| (body, version)),
        None => read("agent.json").and_then(|body| Ok((body, read("version")?))),
    };
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
