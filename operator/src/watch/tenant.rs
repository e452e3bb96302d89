//! The tenants' own watch: a tenant that cannot be read is reported, not dropped.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use ft_core::api::FranceTravailTenant;
use ft_core::status::{self};

use crate::context::Context;
use crate::observe::Cache;

/// The tenants as the controller sees them. A tenant the API server holds but these types
/// cannot read (a value another version's schema let in) is reported on its own status and
/// kept as last read, if it ever was: every other tenant goes on being reconciled.
pub(crate) fn tenant_watch(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Send,
    known: Cache<FranceTravailTenant>,
    unreadable: futures::channel::mpsc::UnboundedSender<Unreadable>,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<FranceTravailTenant>>> + Send {
    events.filter_map(move |event| {
        let read = |object: DynamicObject| match read_tenant(&object) {
            Ok(tenant) => Some(tenant),
            Err(error) => {
                let _ = unreadable.unbounded_send(Unreadable { object, error });
                None
            }
        };
        let last_read = |object: &DynamicObject| {
            known
                .get(&ObjectRef::new(&object.name_any()))
                .map(Arc::unwrap_or_clone)
        };
        futures::future::ready(match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => Some(Ok(watcher::Event::Init)),
            Ok(watcher::Event::InitDone) => Some(Ok(watcher::Event::InitDone)),
            // An unreadable update leaves the store as it was.
            Ok(watcher::Event::Apply(o)) => read(o).map(|t| Ok(watcher::Event::Apply(t))),
            // A relist keeps the last version read of an unreadable tenant.
            Ok(watcher::Event::InitApply(o)) => {
                let fallback = last_read(&o);
                read(o)
                    .or(fallback)
                    .map(|t| Ok(watcher::Event::InitApply(t)))
            }
            Ok(watcher::Event::Delete(o)) => {
                let fallback = last_read(&o);
                read_tenant(&o)
                    .ok()
                    .or(fallback)
                    .map(|t| Ok(watcher::Event::Delete(t)))
            }
        })
    })
}

/// A tenant these types cannot read, and why, naming the field.
pub struct Unreadable {
    pub object: DynamicObject,
    pub error: String,
}

/// Reads a tenant, or says which field is in the way.
pub fn read_tenant(object: &DynamicObject) -> std::result::Result<FranceTravailTenant, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// Reports each unreadable tenant once per version: a Warning Event, a log line, and the
/// conditions Ready False and Degraded True on its status, naming the field.
pub(crate) async fn report_unreadable(
    ctx: Arc<Context>,
    mut unreadable: futures::channel::mpsc::UnboundedReceiver<Unreadable>,
) {
    let mut reported: HashMap<String, String> = HashMap::new();
    let api: Api<DynamicObject> = Api::all_with(
        ctx.client.clone(),
        &ApiResource::erase::<FranceTravailTenant>(&()),
    );
    while let Some(Unreadable { object, error }) = unreadable.next().await {
        let name = object.name_any();
        let version = object.resource_version().unwrap_or_default();
        if reported.get(&name) == Some(&version) {
            continue;
        }
        ctx.metrics.failed("unreadable");
        warn!(tenant = %name, %error, "tenant unreadable: it keeps what was last applied, and is not reconciled until fixed");
        let message = format!(
            "the operator cannot read this tenant ({error}); what was last applied stays in place and nothing else is done for it until the field is fixed"
        );
        let conditions = unreadable_conditions(&object, &message, &Time(jiff::Timestamp::now()));
        let patch = json!({ "status": { "conditions": conditions } });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                ctx.metrics.write("FranceTravailTenant", "status");
                reported.insert(name, version);
            }
            Err(e) => warn!(tenant = %name, error = %e, "cannot report the tenant unreadable"),
        }
        let target = ObjectReference {
            api_version: Some(FranceTravailTenant::api_version(&()).into()),
            kind: Some(FranceTravailTenant::kind(&()).into()),
            name: Some(object.name_any()),
            uid: object.uid(),
            ..Default::default()
        };
        ctx.publish_on(&target, EventType::Warning, "Unreadable", message)
            .await;
    }
}

/// The conditions of a tenant the operator cannot read: Ready False and Degraded True, the
/// others as they were.
pub fn unreadable_conditions(
    object: &DynamicObject,
    message: &str,
    now: &Time,
) -> Vec<serde_json::Value> {
    let mut conditions: Vec<serde_json::Value> = object.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (type_, status) in [(status::READY, "False"), (status::DEGRADED, "True")] {
        let previous = conditions
            .iter()
            .position(|c| c["type"] == type_)
            .map(|i| conditions.remove(i));
        let since = previous
            .filter(|c| c["status"] == status)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now));
        conditions.push(json!({
            "type": type_,
            "status": status,
            "reason": "Unreadable",
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": object.metadata.generation,
        }));
    }
    conditions
}
