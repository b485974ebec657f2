//! Changing persistence on a running broker.
//!
//! A StatefulSet's volume claim templates cannot be changed in place. When
//! `spec.persistence` turns on or off, or its size grows, the controller
//! deletes the StatefulSet with `propagationPolicy: Orphan` (its pods keep
//! running), grows the existing claims (`data-<pod>`) to the new size, and
//! creates the StatefulSet again; it adopts the pods and rolls them onto
//! the new template. This module decides when that is needed, and refuses
//! what cannot be done: a smaller size, or another StorageClass while
//! claims exist.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::statefulset::DATA_VOLUME;
use super::{quantity, Context, PlanError};

/// What the claim template of a StatefulSet asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The requested size.
    pub size: Quantity,
    /// The StorageClass, if named.
    pub storage_class: Option<String>,
}

/// The `data` claim template of `stateful_set`, if it has one.
pub fn claim(stateful_set: &StatefulSet) -> Option<Claim> {
    let template: &PersistentVolumeClaim = stateful_set
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|claim| claim.metadata.name.as_deref() == Some(DATA_VOLUME))?;
    let spec = template.spec.as_ref()?;
    Some(Claim {
        size: spec
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")?
            .clone(),
        storage_class: spec.storage_class_name.clone(),
    })
}

/// Whether the StatefulSet must be replaced for `desired`'s volume claims:
/// persistence turned on or off, or a new size.
pub fn needs_replacement(desired: &StatefulSet, observed: &StatefulSet) -> bool {
    claim(desired) != claim(observed)
}

/// Refuses a persistence change that cannot be made: a size below the
/// current one, or another StorageClass once claims exist.
pub(super) fn check_change(
    ctx: &Context<'_>,
    observed: Option<&StatefulSet>,
) -> Result<(), PlanError> {
    let persistence = &ctx.spec.persistence;
    let Some(current) = observed.and_then(claim) else {
        return Ok(());
    };
    if !persistence.enabled {
        return Ok(());
    }
    let (Some(wanted), Some(existing)) = (
        quantity::to_units(&persistence.size),
        quantity::to_units(&current.size),
    ) else {
        return Err(PlanError::invalid(
            "persistence.size",
            format!("`{}` is not a storage size", persistence.size.0),
        ));
    };
    if wanted < existing {
        return Err(PlanError::invalid(
            "persistence.size",
            format!(
                "volumes cannot shrink: the claims have {}, {} was asked for",
                current.size.0, persistence.size.0
            ),
        ));
    }
    if persistence.storage_class_name.is_some()
        && persistence.storage_class_name != current.storage_class
    {
        return Err(PlanError::invalid(
            "persistence.storageClassName",
            format!(
                "the claims use StorageClass {}: it cannot change while they exist (turn \
                 persistence off, delete the claims data-{}-*, then turn it on again)",
                current
                    .storage_class
                    .as_deref()
                    .unwrap_or("(the cluster's default)"),
                ctx.names.broker
            ),
        ));
    }
    Ok(())
}

/// Whether the claim `claim` requests less than `size`.
pub fn is_smaller(claim: &PersistentVolumeClaim, size: &Quantity) -> bool {
    let requested = claim
        .spec
        .as_ref()
        .and_then(|spec| spec.resources.as_ref())
        .and_then(|resources| resources.requests.as_ref())
        .and_then(|requests| requests.get("storage"))
        .and_then(quantity::to_units);
    match (requested, quantity::to_units(size)) {
        (Some(requested), Some(size)) => requested < size,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{broker_yaml, now};
    use crate::plan::{plan, Observed, Settings};

    fn planned(spec: &str) -> StatefulSet {
        crate::plan::testing::plan_fresh(&broker_yaml(spec)).stateful_set
    }

    fn plan_over(spec: &str, observed: &StatefulSet) -> Result<(), PlanError> {
        let observed = Observed {
            stateful_set: Some(observed.clone()),
            ..Observed::default()
        };
        plan(&broker_yaml(spec), &observed, &Settings::default(), now()).map(|_| ())
    }

    #[test]
    fn turning_on_off_and_growing_replace_the_stateful_set() {
        let off = planned("{}");
        let on = planned("persistence: {enabled: true, size: 5Gi}");
        let bigger = planned("persistence: {enabled: true, size: 10Gi}");
        assert_eq!(claim(&off), None);
        assert_eq!(
            claim(&on),
            Some(Claim {
                size: Quantity("5Gi".into()),
                storage_class: None
            })
        );
        assert!(needs_replacement(&on, &off));
        assert!(needs_replacement(&off, &on));
        assert!(needs_replacement(&bigger, &on));
        assert!(!needs_replacement(&on, &on));
        // Other changes roll the pods in place.
        assert!(!needs_replacement(
            &planned("logging: {level: debug}"),
            &off
        ));
    }

    #[test]
    fn shrinking_or_changing_the_class_is_refused() {
        let on = planned("persistence: {enabled: true, size: 5Gi, storageClassName: gp3}");
        assert!(plan_over(
            "persistence: {enabled: true, size: 8Gi, storageClassName: gp3}",
            &on
        )
        .is_ok());
        assert!(plan_over("persistence: {enabled: true, size: 5120Mi}", &on).is_ok());
        assert_eq!(
            plan_over(
                "persistence: {enabled: true, size: 4Gi, storageClassName: gp3}",
                &on
            )
            .unwrap_err()
            .to_string(),
            "spec.persistence.size: volumes cannot shrink: the claims have 5Gi, 4Gi was asked for"
        );
        let error = plan_over(
            "persistence: {enabled: true, size: 5Gi, storageClassName: ssd}",
            &on,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("spec.persistence.storageClassName: the claims use StorageClass gp3"),
            "{error}"
        );
        // Turning it off is always possible (the claims stay).
        assert!(plan_over("persistence: {enabled: false}", &on).is_ok());
    }

    #[test]
    fn claims_smaller_than_the_size_are_grown() {
        let claim_of = |size: &str| {
            let mut claim = planned("persistence: {enabled: true}")
                .spec
                .unwrap()
                .volume_claim_templates
                .unwrap()
                .remove(0);
            claim
                .spec
                .as_mut()
                .unwrap()
                .resources
                .as_mut()
                .unwrap()
                .requests = Some([("storage".to_owned(), Quantity(size.into()))].into());
            claim
        };
        assert!(is_smaller(&claim_of("1Gi"), &Quantity("2Gi".into())));
        assert!(!is_smaller(&claim_of("2Gi"), &Quantity("2Gi".into())));
        assert!(!is_smaller(&claim_of("2048Mi"), &Quantity("2Gi".into())));
    }
}
