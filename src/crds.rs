//! Every CRD the operator serves, as generated from the Rust types: printed by
//! `agent-operator crds`, written to `crds/` and the chart, and compared by the drift test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{Agent, AgentRollback, AgentVersion};

/// The CRDs, each with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("agents.agentops.dev.yaml", Agent::crd()),
        ("agentversions.agentops.dev.yaml", AgentVersion::crd()),
        ("agentrollbacks.agentops.dev.yaml", AgentRollback::crd()),
    ]
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
    fn every_crd_has_status_printer_columns_and_the_agentops_category() {
        for (file, crd) in all() {
            let version = &crd.spec.versions[0];
            assert!(version.additional_printer_columns.as_ref().is_some_and(|c| c.len() >= 4), "{file}");
            assert_eq!(crd.spec.names.categories.as_deref(), Some(&["agentops".to_string()][..]), "{file}");
            assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{file}");
        }
    }
}
