//! How far a workload's rollout has come, as `kubectl rollout status` judges it: the delivery
//! waits for it, and reports a rollout that stopped progressing.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

use super::delivery::Rollout;

/// As `kubectl rollout status` judges a Deployment.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let Some(status) = d.status.as_ref() else { return Rollout::Progressing("no status yet".into()) };
    if status.observed_generation < d.metadata.generation {
        return Rollout::Progressing("the new template is not yet observed".into());
    }
    let stuck = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if stuck {
        return Rollout::Stuck("rollout exceeded its progress deadline".into());
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        Rollout::Progressing(format!("{updated} of {wanted} replicas updated"))
    } else if total > updated {
        Rollout::Progressing(format!("{} old replicas pending termination", total - updated))
    } else if available < updated {
        Rollout::Progressing(format!("{available} of {updated} updated replicas available"))
    } else {
        Rollout::Done
    }
}

/// As `kubectl rollout status` judges a StatefulSet with rolling updates.
pub fn statefulset_rollout(s: &StatefulSet) -> Rollout {
    let Some(status) = s.status.as_ref() else { return Rollout::Progressing("no status yet".into()) };
    if status.observed_generation < s.metadata.generation {
        return Rollout::Progressing("the new template is not yet observed".into());
    }
    let wanted = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < wanted {
        Rollout::Progressing(format!("{updated} of {wanted} pods updated"))
    } else if status.update_revision.is_some() && status.current_revision != status.update_revision {
        Rollout::Progressing("pods not yet on the current revision".into())
    } else if ready < wanted {
        Rollout::Progressing(format!("{ready} of {wanted} pods ready"))
    } else {
        Rollout::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, replicas: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("a Deployment")
    }

    fn statefulset(generation: i64, replicas: i32, status: serde_json::Value) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "serviceName": "s", "template": {}},
            "status": status,
        }))
        .expect("a StatefulSet")
    }

    fn progressing(text: &str) -> Rollout {
        Rollout::Progressing(text.into())
    }

    #[test]
    fn deployments_as_kubectl_rollout_status_judges_them() {
        let deadline =
            serde_json::json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        let cases = [
            ("no status", deployment(2, 2, serde_json::Value::Null), progressing("no status yet")),
            (
                "template not observed",
                deployment(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
                ),
                progressing("the new template is not yet observed"),
            ),
            (
                "past its deadline",
                deployment(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "conditions": deadline}),
                ),
                Rollout::Stuck("rollout exceeded its progress deadline".into()),
            ),
            (
                "updating",
                deployment(
                    2,
                    3,
                    serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}),
                ),
                progressing("1 of 3 replicas updated"),
            ),
            (
                "old replicas terminating",
                deployment(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
                ),
                progressing("1 old replicas pending termination"),
            ),
            (
                "not yet available",
                deployment(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
                ),
                progressing("1 of 2 updated replicas available"),
            ),
            (
                "done",
                deployment(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
                ),
                Rollout::Done,
            ),
            ("scaled to zero", deployment(2, 0, serde_json::json!({"observedGeneration": 2})), Rollout::Done),
        ];
        for (case, deployment, want) in cases {
            assert_eq!(deployment_rollout(&deployment), want, "{case}");
        }
    }

    #[test]
    fn statefulsets_as_kubectl_rollout_status_judges_them() {
        let cases = [
            ("no status", statefulset(2, 2, serde_json::Value::Null), progressing("no status yet")),
            (
                "template not observed",
                statefulset(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}),
                ),
                progressing("the new template is not yet observed"),
            ),
            (
                "updating",
                statefulset(
                    2,
                    3,
                    serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 1}),
                ),
                progressing("1 of 3 pods updated"),
            ),
            (
                "not yet on the update revision",
                statefulset(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                    "currentRevision": "s-1", "updateRevision": "s-2"}),
                ),
                progressing("pods not yet on the current revision"),
            ),
            (
                "not yet ready",
                statefulset(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2,
                    "currentRevision": "s-2", "updateRevision": "s-2"}),
                ),
                progressing("1 of 2 pods ready"),
            ),
            (
                "done",
                statefulset(
                    2,
                    2,
                    serde_json::json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                    "currentRevision": "s-2", "updateRevision": "s-2"}),
                ),
                Rollout::Done,
            ),
        ];
        for (case, statefulset, want) in cases {
            assert_eq!(statefulset_rollout(&statefulset), want, "{case}");
        }
    }
}
