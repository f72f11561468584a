//! A field-by-field diff of two snapshots, for people deciding whether to roll back.
//! Nested fields are named by path (`steps[1].prompt`); a list that changed length shows each
//! item added or removed.

use std::collections::BTreeMap;

use agent_operator::api::AgentDefinition;
use serde_json::Value;

use crate::terminal::escape;

/// One changed field.
#[derive(Debug, PartialEq)]
pub enum Change {
    Added(String, Value),
    Removed(String, Value),
    Changed(String, Value, Value),
}

/// The fields that differ from `from` to `to`, in path order.
pub fn changes(from: &AgentDefinition, to: &AgentDefinition) -> Vec<Change> {
    let (a, b) = (flatten(from), flatten(to));
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| match (a.get(path), b.get(path)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(Change::Changed(path.clone(), x.clone(), y.clone())),
            (Some(x), None) => Some(Change::Removed(path.clone(), x.clone())),
            (None, Some(y)) => Some(Change::Added(path.clone(), y.clone())),
            (None, None) => None,
        })
        .collect()
}

/// The changes as text, one line each.
pub fn render(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "No differences.\n".into();
    }
    changes
        .iter()
        .map(|c| match c {
            Change::Added(path, v) => format!("+ {}: {v}\n", escape(path)),
            Change::Removed(path, v) => format!("- {}: {v}\n", escape(path)),
            Change::Changed(path, Value::String(a), Value::String(b)) if a.contains('\n') || b.contains('\n') => {
                format!("~ {}:\n{}", escape(path), lines_changed(a, b))
            }
            Change::Changed(path, a, b) => format!("~ {}: {a} -> {b}\n", escape(path)),
        })
        .collect()
}

/// A text of several lines that changed, as the lines removed and added, each run under the
/// number of its first line in the older text: a long prompt changes in a few lines, which the
/// whole text shown twice would bury.
fn lines_changed(a: &str, b: &str) -> String {
    let (old, new): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
    let prefix = old.iter().zip(&new).take_while(|(x, y)| x == y).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (old_mid, new_mid) = (&old[prefix..old.len() - suffix], &new[prefix..new.len() - suffix]);
    let mut out = String::new();
    let mut line = prefix + 1;
    let mut hunk_open = false;
    for op in line_ops(old_mid, new_mid) {
        match op {
            LineOp::Same => {
                line += 1;
                hunk_open = false;
                continue;
            }
            _ if !hunk_open => {
                out.push_str(&format!("  @@ line {line}\n"));
                hunk_open = true;
            }
            _ => {}
        }
        match op {
            LineOp::Removed(text) => {
                out.push_str(&format!("  - {}\n", escape(text)));
                line += 1;
            }
            LineOp::Added(text) => out.push_str(&format!("  + {}\n", escape(text))),
            LineOp::Same => {}
        }
    }
    out
}

enum LineOp<'a> {
    Same,
    Removed(&'a str),
    Added(&'a str),
}

/// The shortest edit from `old` to `new`, line by line (Myers' greedy algorithm: its cost grows
/// with the lines changed, not with the length of the text); past a thousand lines changed,
/// every old line removed and every new one added.
fn line_ops<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<LineOp<'a>> {
    const MAX_EDITS: isize = 1000;
    let (n, m) = (old.len() as isize, new.len() as isize);
    let max = (n + m).min(MAX_EDITS);
    let at = |k: isize| (k + max + 1) as usize;
    // furthest[k]: how far along `old` the furthest path on diagonal k (x - y) reaches.
    let mut furthest = vec![0isize; 2 * max as usize + 3];
    let mut trace = Vec::new();
    for d in 0..=max {
        trace.push(furthest.clone());
        for k in (-d..=d).step_by(2) {
            let down = k == -d || (k != d && furthest[at(k - 1)] < furthest[at(k + 1)]);
            let mut x = if down { furthest[at(k + 1)] } else { furthest[at(k - 1)] + 1 };
            let mut y = x - k;
            while x < n && y < m && old[x as usize] == new[y as usize] {
                (x, y) = (x + 1, y + 1);
            }
            furthest[at(k)] = x;
            if x >= n && y >= m {
                return backtrack(old, new, &trace, max);
            }
        }
    }
    old.iter().map(|l| LineOp::Removed(l)).chain(new.iter().map(|l| LineOp::Added(l))).collect()
}

/// The edit that `trace` (the furthest points before each step of `line_ops`) ends with.
fn backtrack<'a>(old: &[&'a str], new: &[&'a str], trace: &[Vec<isize>], max: isize) -> Vec<LineOp<'a>> {
    let at = |k: isize| (k + max + 1) as usize;
    let (mut x, mut y) = (old.len() as isize, new.len() as isize);
    let mut ops = Vec::new();
    for (d, furthest) in trace.iter().enumerate().rev() {
        let (d, k) = (d as isize, x - y);
        let down = k == -d || (k != d && furthest[at(k - 1)] < furthest[at(k + 1)]);
        let previous_k = if down { k + 1 } else { k - 1 };
        let previous_x = furthest[at(previous_k)];
        let previous_y = previous_x - previous_k;
        while x > previous_x && y > previous_y {
            ops.push(LineOp::Same);
            (x, y) = (x - 1, y - 1);
        }
        if d > 0 {
            if down {
                ops.push(LineOp::Added(new[(y - 1) as usize]));
                y -= 1;
            } else {
                ops.push(LineOp::Removed(old[(x - 1) as usize]));
                x -= 1;
            }
        }
    }
    ops.reverse();
    ops
}

fn flatten(definition: &AgentDefinition) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(value) = serde_json::to_value(definition) {
        walk(&value, String::new(), &mut out);
    }
    out
}

fn walk(value: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let next = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                walk(item, next, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(value: Value) -> AgentDefinition {
        serde_json::from_value(value).expect("definition")
    }

    #[test]
    fn changed_added_and_removed_fields_are_named_by_path() {
        let a = definition(
            json!({"model": "auto", "temperature": 1.0, "steps": [{"name": "greet"}], "knowledgeBaseFiles": ["faq.md"]}),
        );
        let b = definition(
            json!({"model": "auto", "temperature": 0.3, "steps": [{"name": "greet"}, {"name": "refund", "x": 1}]}),
        );
        assert_eq!(
            render(&changes(&a, &b)),
            "- knowledgeBaseFiles[0]: \"faq.md\"\n+ steps[1].name: \"refund\"\n+ steps[1].x: 1\n~ temperature: 1.0 -> 0.3\n"
        );
    }

    #[test]
    fn instructions_of_several_lines_show_only_the_lines_that_changed() {
        let policy: Vec<String> = (1..=2000).map(|i| format!("rule {i}: be exact")).collect();
        let mut edited = policy.clone();
        edited[9] = "rule 10: be exact, and kind".into();
        edited.insert(1500, "rule 1500b: cite sources".into());
        edited.pop();
        let a = definition(json!({"instructions": policy.join("\n")}));
        let b = definition(json!({"instructions": edited.join("\n")}));
        assert_eq!(
            render(&changes(&a, &b)),
            "~ instructions:\n  @@ line 10\n  - rule 10: be exact\n  + rule 10: be exact, and kind\n  @@ line 1501\n  \
             + rule 1500b: cite sources\n  @@ line 2000\n  - rule 2000: be exact\n"
        );
        // One line to 2,000: the one removed, every one added.
        let short = definition(json!({"instructions": "be kind"}));
        assert_eq!(render(&changes(&short, &a)).lines().count(), 3 + 2000, "one line became 2000");
        // One line to another stays on one line.
        let kinder = definition(json!({"instructions": "be kind."}));
        assert_eq!(render(&changes(&short, &kinder)), "~ instructions: \"be kind\" -> \"be kind.\"\n");
    }

    #[test]
    fn equal_snapshots_have_no_differences() {
        let a = definition(json!({"instructions": "be kind"}));
        assert_eq!(render(&changes(&a, &a.clone())), "No differences.\n");
    }
}
