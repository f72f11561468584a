//! A minimal agent runtime, for the demo and the tests: it serves the definition the operator
//! delivers, the `agent.json` of the Agent's ConfigMap mounted at `AGENT_DIR` (default
//! `/etc/agent`), over HTTP on `LISTEN` (default `0.0.0.0:8080`), with the version in the
//! `X-Agent-Version` header. It reads the files on every request, so a ConfigMap the kubelet
//! refreshes is served without a restart. Standard library only: it builds into a tiny static
//! image (`scripts/image.sh runtime`).

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
    let (status, body, version) = match (read("agent.json"), read("version")) {
        (Ok(body), Ok(version)) => ("200 OK", body, version),
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
