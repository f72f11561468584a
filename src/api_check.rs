//! `agent-operator check-api`: waits until the API server admits a create of every kind the
//! chart serves, with the chart's admission policies applied, by server-side dry-run creates.
//!
//! Right after its CRDs are created, an API server answers creates of the new kinds with 503
//! "Resource kind ... not found" while its MutatingAdmissionPolicy support has not yet learned
//! their schemas (it polls for them every few seconds). The chart runs this as a post-install
//! and post-upgrade hook, so `helm install --wait` returns only once a create would succeed.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, Status};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::{Agent, AgentChannel, AgentPromotion, AgentRollback, AgentVersion, keys};

/// Which of the chart's admission policies the cluster has, and so what a create must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policies {
    /// MutatingAdmissionPolicy: who did what is stamped with the caller's name.
    Mutating,
    /// ValidatingAdmissionPolicy only: a forged name is refused.
    Validating,
    /// No policies: a create is admitted.
    None,
}

/// The name every probe object carries; nothing is stored (dry run).
const PROBE: &str = "agent-operator-api-check";
/// A value no API server authenticates anyone as: a username has no spaces in any
/// authenticator the project knows, and this one names itself.
const FORGED: &str = "forged by agent-operator check-api";

/// What one dry-run create showed.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Admitted, with the policies applied.
    Admitted,
    /// Not yet: the API server's own answer, to retry.
    NotYet(String),
    /// An answer that waiting cannot change (a forbidden create, an invalid probe).
    Permanent(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("asking the API server who this is (SelfSubjectReview): {0}")]
    WhoAmI(#[source] kube::Error),
    #[error("{kind}: {message}")]
    Permanent { kind: &'static str, message: String },
    #[error(
        "gave up after {waited:?}: {kind} is still not admitted ({last}). Check that the CRDs are \
         Established (kubectl get crd agents.agentops.dev agentversions.agentops.dev \
         agentchannels.agentops.dev agentrollbacks.agentops.dev agentpromotions.agentops.dev) and that the admission policies and their bindings exist \
         (kubectl get validatingadmissionpolicies,mutatingadmissionpolicies), then run helm \
         upgrade again"
    )]
    GaveUp { waited: Duration, kind: &'static str, last: String },
}

/// One kind to probe.
struct Probe {
    kind: &'static str,
    resource: ApiResource,
    /// The object to create, in the namespace.
    object: Value,
    expect: Expect,
}

/// What a probe's create must meet.
enum Expect {
    /// Admitted, and the created object shows the policies' work (or says why not, given the
    /// caller's name).
    Admitted(fn(&Value, &str) -> Result<(), String>),
    /// Refused by a validating policy: it carries a forged name.
    RefusedByPolicy,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)
    }
}

fn object_of<K: Resource<DynamicType = ()>>(namespace: &str, name: &str, annotations: Value, spec: Value) -> Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": spec,
    })
}

fn admitted(_: &Value, _: &str) -> Result<(), String> {
    Ok(())
}

fn changed_by_is_caller(created: &Value, caller: &str) -> Result<(), String> {
    let stamped = created["metadata"]["annotations"][keys::CHANGED_BY_ANNOTATION].as_str();
    match stamped {
        Some(name) if name == caller => Ok(()),
        other => Err(format!(
            "admitted, but the changed-by policy has not applied yet ({} is {other:?}, not {caller:?})",
            keys::CHANGED_BY_ANNOTATION
        )),
    }
}

fn requested_by_is_caller(created: &Value, caller: &str) -> Result<(), String> {
    match created["spec"]["requestedBy"].as_str() {
        Some(name) if name == caller => Ok(()),
        other => Err(format!(
            "admitted, but the requested-by policy has not applied yet (spec.requestedBy is {other:?}, not {caller:?})"
        )),
    }
}

/// A probe of kind `K`: the object `name` in `namespace` with these annotations and spec.
fn probe<K: Resource<DynamicType = ()>>(
    label: &'static str,
    namespace: &str,
    name: &str,
    (annotations, spec): (Value, Value),
    expect: Expect,
) -> Probe {
    let object = object_of::<K>(namespace, name, annotations, spec);
    Probe { kind: label, resource: ApiResource::erase::<K>(&()), object, expect }
}

/// The probes for `policies`: a version, an Agent, a channel, a rollback and a promotion. With
/// mutating policies, the Agent, the rollback and the promotion carry forged names that the
/// policies must overwrite; with validating ones the rollback and the promotion name their
/// `caller`, as the policy demands, and forged names must be refused as well.
fn probes(namespace: &str, policies: Policies, caller: &str) -> Vec<Probe> {
    let mutating = policies == Policies::Mutating;
    let forged_annotations = if mutating { json!({keys::CHANGED_BY_ANNOTATION: FORGED}) } else { json!({}) };
    let mut rollback_spec = json!({"agentName": PROBE, "strategy": "Previous"});
    let mut promotion_spec = json!({"channel": PROBE, "version": 1});
    for spec in [&mut rollback_spec, &mut promotion_spec] {
        match policies {
            Policies::Mutating => spec["requestedBy"] = json!(FORGED),
            Policies::Validating => spec["requestedBy"] = json!(caller),
            Policies::None => {}
        }
    }
    let version = json!({"agentName": PROBE, "version": 1, "snapshot": {}, "snapshotHash": "0".repeat(64)});
    let checked = |check| Expect::Admitted(if mutating { check } else { admitted });
    let mut probes = vec![
        probe::<AgentVersion>(
            "AgentVersion",
            namespace,
            &format!("{PROBE}-v1"),
            (json!({}), version),
            Expect::Admitted(admitted),
        ),
        probe::<Agent>("Agent", namespace, PROBE, (forged_annotations, json!({})), checked(changed_by_is_caller)),
        probe::<AgentChannel>(
            "AgentChannel",
            namespace,
            PROBE,
            (json!({}), json!({"agentName": PROBE})),
            Expect::Admitted(admitted),
        ),
        probe::<AgentRollback>(
            "AgentRollback",
            namespace,
            PROBE,
            (json!({}), rollback_spec),
            checked(requested_by_is_caller),
        ),
        probe::<AgentPromotion>(
            "AgentPromotion",
            namespace,
            PROBE,
            (json!({}), promotion_spec),
            checked(requested_by_is_caller),
        ),
    ];
    // Until a forged name is refused, the validating policies have not reached the admission
    // chain.
    if policies == Policies::Validating {
        probes.push(probe::<Agent>(
            "Agent (forged changed-by)",
            namespace,
            PROBE,
            (json!({keys::CHANGED_BY_ANNOTATION: FORGED}), json!({})),
            Expect::RefusedByPolicy,
        ));
        probes.push(probe::<AgentRollback>(
            "AgentRollback (forged requestedBy)",
            namespace,
            PROBE,
            (json!({}), json!({"agentName": PROBE, "strategy": "Previous", "requestedBy": FORGED})),
            Expect::RefusedByPolicy,
        ));
        probes.push(probe::<AgentPromotion>(
            "AgentPromotion (forged requestedBy)",
            namespace,
            PROBE,
            (json!({}), json!({"channel": PROBE, "version": 1, "requestedBy": FORGED})),
            Expect::RefusedByPolicy,
        ));
    }
    probes
}

/// Classifies the API server's answer to a dry-run create that should be admitted.
pub fn classify(result: Result<Value, kube::Error>, check: impl Fn(&Value) -> Result<(), String>) -> Answer {
    match result {
        Ok(created) => match check(&created) {
            Ok(()) => Answer::Admitted,
            Err(why) => Answer::NotYet(why),
        },
        Err(kube::Error::Api(status)) => classify_refusal(&status),
        // The connection, TLS, a timeout: the API server may be starting.
        Err(other) => Answer::NotYet(other.to_string()),
    }
}

/// A refusal: the API server's transient answers (429, 5xx), and a kind not served yet (404 while
/// the CRD is not Established), are worth waiting for; any other is permanent.
fn classify_refusal(status: &Status) -> Answer {
    let said = format!("{} {}: {}", status.code, status.reason, status.message);
    match status.code {
        404 | 429 | 500..=599 => Answer::NotYet(said),
        _ => Answer::Permanent(said),
    }
}

/// Classifies the answer to a forged create that the validating policies should refuse.
pub fn classify_forged(result: Result<Value, kube::Error>) -> Answer {
    match result {
        Ok(_) => Answer::NotYet("a forged name was admitted: the validating policy has not applied yet".into()),
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => {
            if status.message.contains("admission") || status.message.contains("Policy") {
                Answer::Admitted
            } else {
                Answer::Permanent(format!("{} {}: {}", status.code, status.reason, status.message))
            }
        }
        Err(kube::Error::Api(status)) => classify_refusal(&status),
        Err(other) => Answer::NotYet(other.to_string()),
    }
}

/// The caller's username, as the API server authenticated it.
async fn caller(client: &Client) -> Result<String, CheckError> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review =
        reviews.create(&PostParams::default(), &SelfSubjectReview::default()).await.map_err(CheckError::WhoAmI)?;
    Ok(review.status.and_then(|s| s.user_info).and_then(|u| u.username).unwrap_or_default())
}

async fn dry_run_create(client: &Client, namespace: &str, probe: &Probe) -> Result<Value, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &probe.resource);
    let object: DynamicObject = serde_json::from_value(probe.object.clone()).map_err(kube::Error::SerdeError)?;
    let params = PostParams { dry_run: true, field_manager: Some(PROBE.into()) };
    let created = api.create(&params, &object).await?;
    serde_json::to_value(created).map_err(kube::Error::SerdeError)
}

/// Waits until every kind is admitted with `policies` applied, printing each change of answer.
/// `client` should not retry on its own, so that each answer is seen.
pub async fn wait(client: &Client, namespace: &str, policies: Policies, timeout: Duration) -> Result<(), CheckError> {
    let start = Instant::now();
    let caller = caller(client).await?;
    // Each probe not yet admitted, with the last answer printed (each change is printed once).
    let mut pending: Vec<(Probe, Option<String>)> =
        probes(namespace, policies, &caller).into_iter().map(|p| (p, None)).collect();
    let mut pause = Duration::from_millis(100);
    loop {
        let mut waiting = None;
        let mut admitted = Vec::new();
        for (i, (probe, last)) in pending.iter_mut().enumerate() {
            let result = dry_run_create(client, namespace, probe).await;
            let answer = match probe.expect {
                Expect::Admitted(check) => classify(result, |v| check(v, &caller)),
                Expect::RefusedByPolicy => classify_forged(result),
            };
            match answer {
                Answer::Admitted => {
                    let outcome = match probe.expect {
                        Expect::Admitted(_) => "admitted",
                        Expect::RefusedByPolicy => "refused by the policy, as it should be,",
                    };
                    println!("{}: {outcome} after {:.1?}", probe.kind, start.elapsed());
                    admitted.push(i);
                }
                Answer::Permanent(message) => return Err(CheckError::Permanent { kind: probe.kind, message }),
                Answer::NotYet(why) => {
                    if last.as_deref() != Some(&why) {
                        println!("{}: not yet ({why})", probe.kind);
                    }
                    waiting.get_or_insert((probe.kind, why.clone()));
                    *last = Some(why);
                }
            }
        }
        for i in admitted.into_iter().rev() {
            pending.remove(i);
        }
        let Some((kind, why)) = waiting else {
            println!(
                "The API server admits every agentops.dev kind with the admission policies applied ({:.1?})",
                start.elapsed()
            );
            return Ok(());
        };
        if start.elapsed() >= timeout {
            return Err(CheckError::GaveUp { waited: start.elapsed(), kind, last: why });
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(start.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, reason: &str, message: &str) -> Result<Value, kube::Error> {
        Err(kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code))))
    }

    #[test]
    fn transient_refusals_are_waited_for_and_permanent_ones_end_the_check() {
        let kind_not_found = "Resource kind agentops.dev/v1alpha1, Kind=Agent not found. There can be a delay";
        assert!(
            matches!(classify(refused(503, "ServiceUnavailable", kind_not_found), |_| Ok(())), Answer::NotYet(m) if m.contains("Kind=Agent"))
        );
        assert!(matches!(classify(refused(429, "TooManyRequests", "slow down"), |_| Ok(())), Answer::NotYet(_)));
        assert!(matches!(
            classify(refused(404, "NotFound", "the server could not find"), |_| Ok(())),
            Answer::NotYet(_)
        ));
        assert!(matches!(classify(refused(403, "Forbidden", "cannot create"), |_| Ok(())), Answer::Permanent(_)));
        assert!(matches!(classify(refused(422, "Invalid", "spec.x"), |_| Ok(())), Answer::Permanent(_)));
        assert_eq!(classify(Ok(json!({})), |_| Ok(())), Answer::Admitted);
    }

    #[test]
    fn an_admitted_create_counts_only_once_the_mutating_policies_stamped_the_caller() {
        let ns = "agent-operator-system";
        let [_, agent, _, rollback, promotion] = <[Probe; 5]>::try_from(probes(ns, Policies::Mutating, "me")).unwrap();
        let Expect::Admitted(agent_check) = agent.expect else { panic!("the Agent is to be admitted") };
        // Unstamped, the dry run returns what was sent: the forged names.
        assert!(matches!(classify(Ok(agent.object.clone()), |v| agent_check(v, "me")), Answer::NotYet(_)));
        let mut stamped = agent.object.clone();
        stamped["metadata"]["annotations"][keys::CHANGED_BY_ANNOTATION] = json!("me");
        assert_eq!(classify(Ok(stamped), |v| agent_check(v, "me")), Answer::Admitted);
        for record in [rollback, promotion] {
            let Expect::Admitted(check) = record.expect else { panic!("{record:?} is to be admitted") };
            assert!(matches!(classify(Ok(record.object.clone()), |v| check(v, "me")), Answer::NotYet(_)));
            let mut stamped = record.object.clone();
            stamped["spec"]["requestedBy"] = json!("me");
            assert_eq!(classify(Ok(stamped), |v| check(v, "me")), Answer::Admitted, "{record:?}");
        }
    }

    #[test]
    fn a_forged_name_must_be_refused_by_a_policy_before_validating_policies_count() {
        assert!(matches!(classify_forged(Ok(json!({}))), Answer::NotYet(_)));
        let denied = "agentrollbacks.agentops.dev \"x\" is forbidden: ValidatingAdmissionPolicy 'agent-operator-requested-by' with binding 'agent-operator-requested-by' denied request: spec.requestedBy: must be the caller";
        assert_eq!(classify_forged(refused(403, "Forbidden", denied)), Answer::Admitted);
        assert!(matches!(classify_forged(refused(503, "ServiceUnavailable", "x")), Answer::NotYet(_)));
        assert!(matches!(classify_forged(refused(403, "Forbidden", "User cannot create")), Answer::Permanent(_)));
    }

    #[test]
    fn probes_name_the_namespace_and_carry_their_kind() {
        for probe in probes("team-a", Policies::Validating, "me") {
            assert_eq!(probe.object["metadata"]["namespace"], "team-a");
            assert!(probe.kind.starts_with(probe.object["kind"].as_str().unwrap()), "{probe:?}");
        }
    }
}
