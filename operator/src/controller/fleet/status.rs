//! A fleet's status: its Ready condition, written only when it changed,
//! with an Event when Ready changes.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};

use super::{api_error, FleetContext, FleetError};
use crate::api::fleet::CONDITION_FLEET_READY;
use crate::api::{MqttDeviceFleet, MqttDeviceFleetStatus};

/// Sets the Ready condition, keeping its transition time when unchanged.
pub(super) fn set_ready(
    status: &mut MqttDeviceFleetStatus,
    ready: bool,
    reason: &str,
    message: &str,
) {
    let generation = status.observed_generation;
    crate::controller::status::set_condition(
        &mut status.conditions,
        CONDITION_FLEET_READY,
        ready,
        reason,
        message,
        generation,
    );
}

fn ready_of(status: &MqttDeviceFleetStatus) -> Option<(&str, &str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_FLEET_READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Writes the status if it changed; an Event when Ready changed.
pub(super) async fn publish_status(
    fleet: &MqttDeviceFleet,
    ctx: &FleetContext,
    old: &MqttDeviceFleetStatus,
    status: MqttDeviceFleetStatus,
) -> Result<(), FleetError> {
    if &status == old {
        return Ok(());
    }
    let api: Api<MqttDeviceFleet> =
        Api::namespaced(ctx.client.clone(), &fleet.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &fleet.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(api_error("write the status"))?;
    if ready_of(&status) == ready_of(old) {
        return Ok(());
    }
    let Some(condition) = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_FLEET_READY)
    else {
        return Ok(());
    };
    let ready = condition.status == "True";
    let event = Event {
        type_: if ready {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: condition.reason.clone(),
        note: Some(condition.message.chars().take(1000).collect()),
        action: if ready { "Ready" } else { "NotReady" }.into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(error) = recorder.publish(&event, &fleet.object_ref(&())).await {
        tracing::warn!(%error, "cannot publish an Event");
    }
    Ok(())
}
