//! The cluster-wide admission objects, as the cluster holds them: the operator reads them,
//! never writes them.

use kube::api::Api;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use ft_core::admission::{Fixed, fixed};
use ft_core::placement::Confinement;

/// What is missing or differs among the fixed admission objects, one line each.
pub async fn problems(client: &Client, confinement: Confinement) -> Vec<String> {
    let Fixed {
        validating_admission_policies,
        validating_admission_policy_bindings,
        mutating_admission_policies,
        mutating_admission_policy_bindings,
    } = fixed();
    let mut problems = Vec::new();
    check(client, &validating_admission_policies, &mut problems).await;
    check(client, &validating_admission_policy_bindings, &mut problems).await;
    if confinement == Confinement::Native {
        check(client, &mutating_admission_policies, &mut problems).await;
        check(client, &mutating_admission_policy_bindings, &mut problems).await;
    }
    problems
}

async fn check<K>(client: &Client, wanted: &[K], problems: &mut Vec<String>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    for want in wanted {
        let name = want.meta().name.clone().unwrap_or_default();
        let key = format!("{}/{name}", K::kind(&()));
        match api.get_opt(&name).await {
            Ok(Some(have)) => {
                let (Ok(w), Ok(h)) = (serde_json::to_value(want), serde_json::to_value(&have))
                else {
                    continue;
                };
                if ft_core::applied::differs(
                    &serde_json::json!({"spec": w["spec"]}),
                    &serde_json::json!({"spec": h["spec"]}),
                ) {
                    problems.push(format!("{key} differs from admission/"));
                }
            }
            Ok(None) => problems.push(format!("{key} is missing")),
            Err(e) => problems.push(format!("{key} cannot be read: {e}")),
        }
    }
}
