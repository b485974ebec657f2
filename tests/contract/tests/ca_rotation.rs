//! Devices keep connecting across a rotation of the operator's CA.
//!
//! A device pins the CA bundle it got from its credentials Secret. The
//! operator rotates its CA in two steps: first the new CA joins the bundle
//! while the broker keeps serving the certificate the old CA issued, so a
//! device holding only the old bundle still connects, and one that fetched
//! the new bundle connects too; after the overlap the new CA issues the
//! server certificate (the broker reloads it from its files), and a device
//! with the new bundle still connects. Only a device that never fetched
//! the bundle during the overlap is turned away then.
//!
//! The real broker runs on the pod's files (see `common::cluster`); the
//! overlap's end is played by moving its recorded time into the past, as
//! `tests/broker.rs` plays the load balancer.

use crate::common;

use std::time::{Duration, Instant};

use kubemqtt_operator::api::ROTATE_CA_ANNOTATION;
use kubemqtt_operator::certs;
use kubemqtt_operator::plan::secrets::{ADMIN_USERNAME, PASSWORD_KEY};
use kubemqtt_operator::plan::tls::{CA_ROTATION_COMPLETES_AT_ANNOTATION, TLS_CERT_KEY};
use rumqttc::ConnectionError;

use common::cluster::{connect, Operator, Pod};
use common::{secret_text, tls_config, PATIENCE};

/// Connects as the admin user, trusting `bundle`.
async fn device(
    pod: &Pod,
    operator: &Operator,
    bundle: &str,
    id: &str,
) -> Result<(), ConnectionError> {
    let mut options = pod.options(id, tls_config(bundle));
    let password = secret_text(&operator.plan().auth_secret, PASSWORD_KEY);
    options.set_credentials(ADMIN_USERNAME, password);
    let (client, mut events) = connect(options).await?;
    client.disconnect().await.ok();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    Ok(())
}

#[tokio::test]
async fn devices_keep_connecting_across_a_ca_rotation_within_the_overlap() {
    let mut operator = Operator::new();
    let pod = Pod::start(operator.plan());
    let old_bundle = operator.trust_bundle();
    assert_eq!(certs::pem_certificates(&old_bundle).len(), 1);
    device(&pod, &operator, &old_bundle, "before")
        .await
        .expect("a device with the first bundle connects");

    // Step 1: the rotation starts (as when the CA nears its expiry, or at
    // once with the annotation). The served certificate stays.
    operator.annotate_broker(ROTATE_CA_ANNOTATION, "contract-test");
    let served = secret_text(
        operator.plan().server_secret.as_ref().unwrap(),
        TLS_CERT_KEY,
    );
    let plan = operator.reconcile_broker().clone();
    pod.update_certificate(&plan);
    assert_eq!(
        secret_text(plan.server_secret.as_ref().unwrap(), TLS_CERT_KEY),
        served
    );
    let both = operator.trust_bundle();
    let trusted = certs::pem_certificates(&both);
    assert_eq!(trusted.len(), 2, "the old and the new CA");
    let new_ca = trusted[1].clone();
    let completes = plan
        .certificate
        .as_ref()
        .and_then(|c| c.ca_rotation_completes_at)
        .expect("a rotation under way");
    assert!(
        completes
            > k8s_openapi::jiff::Timestamp::now()
                + k8s_openapi::jiff::SignedDuration::from_hours(24 * 29)
    );

    // Within the overlap: devices that did not fetch the new bundle yet,
    // and devices that did, all connect.
    device(&pod, &operator, &old_bundle, "old-bundle")
        .await
        .expect("a device with the old bundle connects during the overlap");
    device(&pod, &operator, &both, "new-bundle")
        .await
        .expect("a device with the new bundle connects during the overlap");

    // Step 2: the overlap is over; the new CA issues the certificate and
    // the broker reloads it from its files.
    operator
        .stored_ca_secret()
        .metadata
        .annotations
        .as_mut()
        .expect("the rotation's annotations")
        .insert(
            CA_ROTATION_COMPLETES_AT_ANNOTATION.to_owned(),
            "2025-01-01T00:00:00Z".to_owned(),
        );
    let plan = operator.reconcile_broker().clone();
    let reissued = secret_text(plan.server_secret.as_ref().unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&reissued, &new_ca));
    pod.update_certificate(&plan);
    let final_bundle = operator.trust_bundle();
    assert_eq!(certs::pem_certificates(&final_bundle).len(), 1);

    // Once the broker serves the new certificate, a device that never
    // fetched a bundle during the overlap is refused...
    let deadline = Instant::now() + PATIENCE;
    loop {
        match device(&pod, &operator, &old_bundle, "stale").await {
            Err(ConnectionError::Tls(_)) => break,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "the broker did not reload its certificate:\n{}",
                    pod.broker.log_text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("expected a TLS refusal, got {other:?}"),
        }
    }
    // ... while devices with the bundle of the overlap keep connecting, and
    // so do those with the final one.
    device(&pod, &operator, &both, "overlap-bundle")
        .await
        .expect("a device with the overlap's bundle connects after the rotation");
    device(&pod, &operator, &final_bundle, "final-bundle")
        .await
        .expect("a device with the final bundle connects");
}
