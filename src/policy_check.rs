//! At start: are the chart's admission policies in place? Without them, an AgentRollback's
//! `requestedBy`, an Agent's `agentops.dev/changed-by` and a rollback's record are whatever
//! the client wrote. The operator still acts on a record only as far as its spec and the
//! history allow (see `plan::rollback`), but who asked for what is no longer known: an admin
//! must hear of it when the operator starts, not find out from an audit.

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::{Api, Client};
use tracing::{info, warn};

/// What was found of the policy that guards the rollbacks' records, the one the chart always
/// installs when its admission policies are on (with the others beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policies {
    /// The policy and its binding exist.
    Installed,
    /// None was named: the chart was installed with `admissionPolicies.enabled=false`, or the
    /// operator runs outside the chart.
    NotNamed,
    /// The named policy or its binding is missing.
    Missing(String),
    /// They could not be read (the message says why).
    Unknown(String),
}

/// Looks for the ValidatingAdmissionPolicy `name` and its binding of the same name.
pub async fn check(client: &Client, name: Option<&str>) -> Policies {
    let Some(name) = name else { return Policies::NotNamed };
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    match (policies.get_opt(name).await, bindings.get_opt(name).await) {
        (Ok(Some(_)), Ok(Some(_))) => Policies::Installed,
        (Ok(None), _) => Policies::Missing(format!("ValidatingAdmissionPolicy {name} does not exist")),
        (_, Ok(None)) => Policies::Missing(format!("ValidatingAdmissionPolicyBinding {name} does not exist")),
        (Err(e), _) | (_, Err(e)) => Policies::Unknown(e.to_string()),
    }
}

/// Logs what `check` found: a warning unless the policies are installed.
pub fn report(found: &Policies) {
    const WITHOUT: &str = "requestedBy, changed-by and the rollbacks' records are whatever clients write; \
        install the chart with admissionPolicies.enabled=true";
    match found {
        Policies::Installed => info!("The admission policies that stamp who did what are installed"),
        Policies::NotNamed => warn!("Running without admission policies: {WITHOUT}"),
        Policies::Missing(what) => warn!("The admission policies are not installed ({what}): {WITHOUT}"),
        Policies::Unknown(why) => warn!("Could not check the admission policies ({why}); without them {WITHOUT}"),
    }
}
