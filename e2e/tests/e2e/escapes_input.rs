//! End-to-end: the API server itself refuses the tenant input the operator would refuse or
//! silently override (address blocks, quantities, encryption profiles and their parameters, an
//! egress flow to every address), each naming the field. Server-side dry runs: nothing is
//! created.
//!
//! Ignored by a plain `cargo test` (the reason says how to run them); `.ci/run` runs them where
//! an API server is reachable.

use ft_e2e::{
    Edit, assert_refused, cluster, dry_run_create_tenant, example_tenant, install_crds, unique,
};
use serde_json::json;

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn the_api_server_refuses_input_the_operator_cannot_honour() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let valid = serde_json::to_value(example_tenant("tenant.yaml", &unique("e2e-input"))?)?;
    // The valid example passes the same checks.
    dry_run_create_tenant(&client, valid.clone()).await?;

    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "an address block with a prefix longer than the address",
            Box::new(|t| {
                t["spec"]["network"]["egress"][0]["to"][0]["cidr"] = json!("10.20.0.0/33")
            }),
            &["spec.network.egress[0].to[0].cidr", "IPv4 or IPv6 block"],
        ),
        (
            "an ingress source that is no address block",
            Box::new(|t| t["spec"]["network"]["ingress"][0]["from"] = json!([{"cidr": "nowhere"}])),
            &["spec.network.ingress[0].from[0].cidr", "IPv4 or IPv6 block"],
        ),
        (
            "an exception that is no address block",
            Box::new(|t| {
                t["spec"]["network"]["egress"][0]["to"][0]["except"] = json!(["10.20.1.0/33"])
            }),
            &["spec.network.egress[0].to[0].except", "IPv4 or IPv6 block"],
        ),
        (
            "an exception outside its block",
            Box::new(|t| {
                t["spec"]["network"]["egress"][0]["to"][0]["except"] = json!(["10.30.0.0/24"])
            }),
            &["spec.network.egress[0].to[0].except", "strictly inside"],
        ),
        (
            "a quota that is no quantity",
            Box::new(|t| t["spec"]["environments"][0]["quota"]["cpu"] = json!("lots")),
            &["spec.environments[0].quota.cpu", "quantity"],
        ),
        (
            "a quota below zero, as a number",
            Box::new(|t| t["spec"]["environments"][0]["quota"]["memory"] = json!(-1)),
            &["spec.environments[0].quota.memory", "quantity"],
        ),
        (
            "a quota below zero, as text",
            Box::new(|t| t["spec"]["environments"][1]["quota"]["storage"] = json!("-50Gi")),
            &["spec.environments[1].quota.storage", "quantity"],
        ),
        (
            "a container default that is no quantity",
            Box::new(|t| {
                t["spec"]["environments"][1]["containerDefaults"] =
                    json!({"requestMemory": "a little"})
            }),
            &[
                "spec.environments[1].containerDefaults.requestMemory",
                "quantity",
            ],
        ),
        (
            "a largest volume that is no quantity",
            Box::new(|t| t["spec"]["storage"]["maxVolumeSize"] = json!("huge")),
            &["spec.storage.maxVolumeSize", "quantity"],
        ),
        (
            "an encryption profile outside the catalogue",
            Box::new(|t| t["spec"]["storage"]["profile"] = json!("plain-disk")),
            &[
                "spec.storage.profile",
                "Unsupported value",
                "\"longhorn\"",
                "\"azure-disk\"",
            ],
        ),
        (
            "a parameter that turns the profile's encryption off",
            Box::new(|t| t["spec"]["storage"]["parameters"] = json!({"encrypted": "false"})),
            &[
                "spec.storage.parameters",
                "spec.storage.parameters.encrypted",
                "CLD-21",
            ],
        ),
        (
            "an egress flow to every address, not acknowledged",
            Box::new(|t| t["spec"]["network"]["egress"][1]["to"] = json!([{"cidr": "0.0.0.0/0"}])),
            &["spec.network.egress[1].to", "acknowledgeAnyDestination"],
        ),
        (
            "an IPv6 egress flow to every address, not acknowledged",
            Box::new(|t| t["spec"]["network"]["egress"][0]["to"] = json!([{"cidr": "::/0"}])),
            &["spec.network.egress[0].to", "acknowledgeAnyDestination"],
        ),
    ];
    assert_refused(&client, &valid, cases).await;

    let accepted: Vec<(&str, Edit)> = vec![
        (
            "an acknowledged egress flow to every address",
            Box::new(|t| {
                let flow = &mut t["spec"]["network"]["egress"][1];
                flow["to"] = json!([{"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}]);
                flow["acknowledgeAnyDestination"] = json!(true);
            }),
        ),
        (
            "ingress from every address, for a public front end",
            Box::new(|t| {
                t["spec"]["network"]["ingress"][0]["from"] = json!([{"cidr": "0.0.0.0/0"}])
            }),
        ),
        (
            "quantities as numbers, and a parameter the profile leaves alone",
            Box::new(|t| {
                t["spec"]["environments"][0]["quota"]["cpu"] = json!(16);
                t["spec"]["storage"]["parameters"] = json!({"dataLocality": "best-effort"});
            }),
        ),
    ];
    for (case, edit) in accepted {
        let mut tenant = valid.clone();
        edit(&mut tenant);
        if let Err(e) = dry_run_create_tenant(&client, tenant).await {
            panic!("{case}: refused: {e}");
        }
        eprintln!("e2e: accepted ({case})");
    }
    Ok(())
}
