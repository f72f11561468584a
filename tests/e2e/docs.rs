//! The docs stay honest: every relative link in README.md, BENCHMARKS.md and docs/ resolves,
//! inside the repository, to a file and heading that exist; every `docs/` page the code cites
//! exists; every YAML example in docs/ passes a server-side dry run on the real control plane;
//! the `agentops_` metrics the docs name are exactly those the operator serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rollback::{setup, setup_without_operator};
use crate::support::{kubectl, repo};

/// README.md, BENCHMARKS.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 5, "docs/ holds the reference, architecture, operations, GitOps and delivery pages");
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text outside fenced code blocks, where a `](` is a link.
fn prose(markdown: &str) -> String {
    let mut fenced = false;
    let mut text = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The targets of inline links: `[text](target)`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchors of a page's headings, as GitHub makes them: lower case, punctuation dropped,
/// spaces as hyphens.
fn anchors(markdown: &str) -> BTreeSet<String> {
    prose(markdown)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_relative_link_resolves_inside_the_repository() {
    let root = repo().canonicalize().unwrap();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').map_or((target.as_str(), None), |(p, a)| (p, Some(a)));
            let file = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            let file =
                file.canonicalize().unwrap_or_else(|e| panic!("{}: link {target} leads nowhere ({e})", page.display()));
            assert!(file.starts_with(&root), "{}: link {target} leaves the repository", page.display());
            if let Some(anchor) = anchor {
                assert!(
                    anchors(&read(&file)).contains(anchor),
                    "{}: link {target}: {} has no heading #{anchor}",
                    page.display(),
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} links found: is the parser still reading the pages?");
    println!("docs: {checked} relative links resolve");
}

/// Every `docs/<page>.md` that code, tests, scripts or the chart mention exists.
#[test]
fn every_docs_page_the_code_cites_exists() {
    let mut cited = BTreeSet::new();
    let mut stack: Vec<PathBuf> =
        ["src", "tests", "benches", "scripts", "charts", "examples"].iter().map(|d| repo().join(d)).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (at, _) in text.match_indices("docs/") {
            let name: String =
                text[at + 5..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
            if text[at + 5 + name.len()..].starts_with(".md") {
                cited.insert((format!("docs/{name}.md"), path.clone()));
            }
        }
    }
    assert!(!cited.is_empty(), "the code cites docs/ pages");
    for (page, by) in &cited {
        assert!(repo().join(page).is_file(), "{} cites {page}, which does not exist", by.display());
    }
}

/// The YAML blocks of docs/ (README.md shows none).
fn yaml_examples() -> Vec<(PathBuf, String)> {
    let mut examples = Vec::new();
    for page in pages().into_iter().filter(|p| p.parent().is_some_and(|d| d.ends_with("docs"))) {
        let mut block: Option<String> = None;
        for line in read(&page).lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
                (Some(_), l) if l.starts_with("```") => examples.push((page.clone(), block.take().unwrap())),
                (Some(text), _) => {
                    text.push_str(line);
                    text.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    examples
}

#[tokio::test]
async fn every_yaml_example_in_the_docs_passes_a_server_side_dry_run() {
    let s = setup_without_operator("e2e-docs").await;
    let examples = yaml_examples();
    assert!(examples.len() >= 5, "only {} YAML examples found", examples.len());
    for (page, manifest) in &examples {
        // Creates of a custom kind can meet a 503 while the API server's admission policies
        // learn its schema (see docs/operations.md); anything else is the example's fault.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = kubectl(&["apply", "--dry-run=server", "-n", &s.ns, "-f", "-"], Some(manifest));
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                break;
            }
            assert!(
                stderr.contains("There can be a delay") && Instant::now() < deadline,
                "{}: this example is refused by the API server: {stderr}\n{manifest}",
                page.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("docs: {} YAML examples pass a server-side dry run", examples.len());
}

/// A metric's family name, without the suffixes of its samples.
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count", "_created"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Every `agentops_` name in the text.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("agentops_")
        .filter(|(at, _)| !text[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(at, _)| text[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>())
        // The bare prefix, where a page speaks of all of them.
        .filter(|name| name != "agentops_")
        .collect()
}

#[tokio::test]
async fn the_metrics_the_docs_name_are_the_ones_served() {
    let s = setup("e2e-docs-metrics").await;
    let operator = s.operator.as_ref().unwrap();
    let body = crate::support::eventually(Duration::from_secs(30), || async {
        operator.get("/metrics").await.filter(|(code, _)| *code == 200).map(|(_, body)| body)
    })
    .await;
    // The families, from their TYPE lines: a counter's or histogram's family is served before
    // its first sample.
    let served: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("agentops_"))
        .map(str::to_string)
        .collect();
    assert!(!served.is_empty(), "no agentops_ metric served:\n{body}");
    let documented: BTreeSet<String> = pages()
        .iter()
        .flat_map(|p| metric_names(&read(p)))
        .map(|n| if served.contains(&n) { n } else { family(&n).to_string() })
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in the docs: {undocumented:?}");
    assert!(not_served.is_empty(), "in the docs but not served: {not_served:?}");
    println!("docs: the {} agentops_ metrics served are the ones documented", served.len());
}
