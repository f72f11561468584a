//! Every CRD the operator serves, as generated from the Rust types: printed by
//! `agent-operator crds`, written to `crds/` and the chart, and compared by the drift test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{Agent, AgentChannel, AgentPromotion, AgentRollback, AgentVersion};

/// The CRDs, each with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("agents.agentops.dev.yaml", with_prose_descriptions(Agent::crd())),
        ("agentversions.agentops.dev.yaml", with_prose_descriptions(AgentVersion::crd())),
        ("agentchannels.agentops.dev.yaml", with_prose_descriptions(AgentChannel::crd())),
        ("agentrollbacks.agentops.dev.yaml", with_prose_descriptions(AgentRollback::crd())),
        ("agentpromotions.agentops.dev.yaml", with_prose_descriptions(AgentPromotion::crd())),
    ]
}

/// Every description as `kubectl explain` should print it: doc comments wrap at 100 columns,
/// and kubectl prints their line breaks as they are, in the middle of sentences.
fn with_prose_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    for_each_description(&mut value, &mut |text| *text = prose(text));
    serde_json::from_value(value).expect("a CRD with other descriptions deserializes")
}

/// Calls `f` on every `description` string in a CRD (schemas, printer columns).
fn for_each_description(value: &mut serde_json::Value, f: &mut impl FnMut(&mut String)) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" => f(text),
                    _ => for_each_description(value, f),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|item| for_each_description(item, f)),
        _ => {}
    }
}

/// Joins the lines of each paragraph; paragraphs (blank lines) and list items stay apart.
fn prose(text: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            open = false;
            continue;
        }
        let item = line.starts_with("- ") || line.starts_with("* ");
        match paragraphs.last_mut() {
            Some(paragraph) if open => {
                paragraph.push(if item { '\n' } else { ' ' });
                paragraph.push_str(line);
            }
            _ => paragraphs.push(line.to_string()),
        }
        open = true;
    }
    paragraphs.join("\n\n")
}

/// One CRD as the YAML text committed to the repository.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both committed copies (crds/ and the chart's) are what the types generate.
    #[test]
    fn committed_crds_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["crds", "charts/agent-operator/crds"] {
            for (file, crd) in all() {
                let committed = std::fs::read_to_string(root.join(dir).join(file)).unwrap_or_default();
                let generated = to_yaml(&crd).expect("CRD serializes");
                assert!(
                    committed == generated,
                    "{dir}/{file} is out of date: run scripts/generate.sh and commit the result"
                );
            }
        }
    }

    #[test]
    fn descriptions_are_prose_with_paragraphs_and_list_items_kept() {
        assert_eq!(prose("one\ntwo\n  three"), "one two three");
        assert_eq!(prose("first\nline\n\nsecond"), "first line\n\nsecond");
        assert_eq!(prose("items:\n- a\n  wrapped\n- b"), "items:\n- a wrapped\n- b");
        assert_eq!(prose("single"), "single");
        assert_eq!(prose("a\n\n\n- b\n- c"), "a\n\n- b\n- c");
    }

    /// `kubectl explain` prints a description's line breaks as they are: none may break a
    /// sentence.
    #[test]
    fn no_committed_description_breaks_a_line_inside_a_paragraph() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, _) in all() {
            let text = std::fs::read_to_string(root.join("crds").join(file)).expect("committed CRD");
            let mut value: serde_json::Value = serde_saphyr::from_str(&text).expect("committed CRD parses");
            for_each_description(&mut value, &mut |text| {
                for paragraph in text.split("\n\n") {
                    for line in paragraph.lines().skip(1) {
                        assert!(line.starts_with("- ") || line.starts_with("* "), "{file}: {text:?}");
                    }
                }
            });
        }
    }

    #[test]
    fn every_crd_has_status_printer_columns_and_the_agentops_category() {
        for (file, crd) in all() {
            let version = &crd.spec.versions[0];
            assert!(version.additional_printer_columns.as_ref().is_some_and(|c| c.len() >= 4), "{file}");
            assert_eq!(crd.spec.names.categories.as_deref(), Some(&["agentops".to_string()][..]), "{file}");
            assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{file}");
        }
    }
}
