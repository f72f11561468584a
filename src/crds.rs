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
