//! The broker's certificates through reconciles: renewal, CA rotation,
//! adopted CA Secrets, a team's CA and cert-manager.

use super::*;

#[tokio::test]
async fn an_expiring_certificate_is_renewed() {
    let test = Test::default();
    // The broker's objects as applied 340 days ago: the server
    // certificate (valid 365 days, renewed 30 days before) is due.
    let long_ago = Timestamp::now() - SignedDuration::from_hours(24 * 340);
    let broker = test.server.broker(BROKER);
    let old = plan::plan(
        &broker,
        &Observed::default(),
        &Settings::default(),
        long_ago,
    )
    .expect("plans");
    for (path, mut object) in OBJECTS.iter().zip(old.objects().expect("objects")) {
        stamp(&mut object);
        test.server.put(path, object);
    }
    let old_certificate = secret_text(&test.server.get(TLS).expect("tls"), TLS_CERT_KEY);
    let old_ca = secret_text(&test.server.get(CA).expect("ca"), CA_CERT_KEY);

    test.reconcile().await.expect("renews");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        applying(&[TLS], &[event_post(), event_post(), status_patch()])
    );
    let renewed = secret_text(&applied(&requests, TLS), TLS_CERT_KEY);
    assert_ne!(renewed, old_certificate);
    assert!(certs::is_signed_by(&renewed, &old_ca), "the CA is kept");
    let info = certs::inspect(&renewed).expect("a certificate");
    assert!(info.not_after > Timestamp::now() + SignedDuration::from_hours(24 * 364));
    assert_eq!(
        events(&requests),
        [
            event("Normal", "Updated", "updated Secret mq-tls"),
            event(
                "Normal",
                "CertificateRenewed",
                "issued the server certificate: the certificate was about to expire"
            ),
        ]
    );
    let status = written_status(&requests);
    assert_eq!(
        status.certificate.expect("certificate").not_after.0,
        info.not_after
    );
}

#[tokio::test]
async fn a_ca_rotation_keeps_the_old_ca_signing_for_the_overlap() {
    let test = Test::running().await;
    let old_ca = secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY);
    let served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);

    test.edit(|broker| {
        broker["metadata"]["annotations"] = json!({"kubemqtt.io/rotate-ca": "now"});
    });
    test.reconcile().await.expect("starts the rotation");
    let requests = test.server.take_requests();
    // The new CA joins the bundle; the served certificate stays.
    assert_eq!(
        lines(&requests),
        applying(
            &[CONFIG_MAP, CA, TLS],
            &[event_post(), event_post(), status_patch()]
        )
    );
    assert_eq!(
        secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY),
        served
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    let trusted = certs::pem_certificates(&bundle);
    assert_eq!(trusted.len(), 2);
    assert!(certs::same_certificate(&trusted[0], &old_ca));
    let status = written_status(&requests);
    let certificate = status.certificate.expect("certificate");
    let completes = certificate.ca_rotation_completes_at.expect("a rotation").0;
    let overlap = completes.duration_since(Timestamp::now());
    assert!(
        overlap > SignedDuration::from_hours(24 * 30 - 1),
        "{overlap:?}"
    );
    assert!(certificate.next_ca_not_after.is_some());
    let (_, reason, note) = &events(&requests)[1];
    assert_eq!(reason, "CaRotationStarted");
    assert!(note.contains("clients trust it from now on"), "{note}");

    // The overlap is over (as if 30 days went by).
    let mut ca = test.server.get(CA).unwrap();
    ca["metadata"]["annotations"]["kubemqtt.io/ca-rotation-completes-at"] =
        json!("2025-01-01T00:00:00Z");
    test.server.put(CA, ca);
    test.reconcile().await.expect("completes the rotation");
    let requests = test.server.take_requests();
    let new_ca = secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY);
    assert!(certs::same_certificate(&new_ca, &trusted[1]));
    let now_served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&now_served, &new_ca));
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(certs::pem_certificates(&bundle).len(), 1);
    assert!(events(&requests)
        .iter()
        .any(|(_, reason, _)| reason == "CaRotationCompleted"));
    let certificate = written_status(&requests).certificate.unwrap();
    assert_eq!(certificate.ca_rotation_completes_at, None);
}

#[tokio::test]
async fn the_ca_secrets_outlive_the_broker_and_are_adopted_again() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    let ca = test.server.get(CA).unwrap();
    let clients_ca = test.server.get(CLIENTS_CA).unwrap();
    assert!(ca["metadata"]["ownerReferences"].is_null());

    // The broker is deleted: the garbage collector takes what it owns.
    for path in OBJECTS.iter().filter(|p| ![CA, CLIENTS_CA].contains(p)) {
        test.server.remove(path);
    }
    test.server.remove(BROKER);
    // A broker of the same name comes back.
    let again = Test::default();
    for (path, object) in [(CA, &ca), (CLIENTS_CA, &clients_ca)] {
        again.server.put(path, object.clone());
    }
    again.reconcile().await.expect("creates");
    let requests = again.server.take_requests();
    assert!(
        !lines(&requests).contains(&format!("PATCH {CA}")),
        "the CA is kept as it is"
    );
    assert_eq!(
        secret_text(&again.server.get(CA).unwrap(), CA_CERT_KEY),
        secret_text(&ca, CA_CERT_KEY)
    );
    let served = secret_text(&again.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&served, &secret_text(&ca, CA_CERT_KEY)));
    assert!(events(&requests)
        .iter()
        .all(|(_, _, note)| !note.contains("CA certificate")));

    // Deleted with the broker when asked.
    let owned = Test::new(
        json!({"tls": {"ca": {"deleteWithBroker": true}}}),
        json!({}),
    );
    owned.reconcile().await.expect("creates");
    assert_eq!(
        owned.server.get(CA).unwrap()["metadata"]["ownerReferences"][0]["uid"],
        UID
    );
}

#[tokio::test]
async fn a_teams_ca_issues_the_certificate_and_is_labelled_for_the_watch() {
    let test = Test::new(json!({"tls": {"ca": {"secretName": "team-ca"}}}), json!({}));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "Degraded"),
        pair("True", "CaSecretInvalid")
    );
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("False", "CaSecretInvalid")
    );
    assert!(!requests
        .iter()
        .any(|r| r.method == Method::PATCH && r.path.starts_with(SECRETS)));

    let team_ca = certs::generate_ca(
        "Team CA",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let secret = |ca: &certs::CertifiedKeyPem| {
        let secret = Secret {
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let mut object = serde_json::to_value(secret).unwrap();
        object["metadata"] = json!({"name": "team-ca", "namespace": "iot", "uid": "team"});
        object
    };
    let path = "/api/v1/namespaces/iot/secrets/team-ca";
    test.server.put(path, secret(&team_ca));
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert!(lines(&requests).contains(&format!("PATCH {path} by kubemqtt-operator-references")));
    assert_eq!(
        test.server.get(path).unwrap()["metadata"]["labels"]["kubemqtt.io/referenced"],
        "true"
    );
    assert!(test.server.get(CA).is_none(), "no CA of the operator's");
    let served = secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY);
    assert!(certs::is_signed_by(&served, &team_ca.cert_pem));
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"].clone();
    assert!(certs::same_certificate(
        bundle.as_str().unwrap(),
        &team_ca.cert_pem
    ));

    // The team replaces its CA: the certificate the old one issued is
    // served for the overlap, both CAs trusted.
    let next_ca = certs::generate_ca(
        "Team CA 2",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let mut replaced = secret(&next_ca);
    replaced["metadata"]["labels"] = json!({"kubemqtt.io/referenced": "true"});
    test.server.put(path, replaced);
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert_eq!(
        secret_text(&test.server.get(TLS).unwrap(), TLS_CERT_KEY),
        served
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_owned();
    let trusted = certs::pem_certificates(&bundle);
    assert_eq!(trusted.len(), 2);
    assert!(certs::same_certificate(&trusted[0], &team_ca.cert_pem));
    assert!(certs::same_certificate(&trusted[1], &next_ca.cert_pem));
    let certificate = written_status(&requests).certificate.unwrap();
    assert!(certificate.ca_rotation_completes_at.is_some());
}

#[tokio::test]
async fn cert_manager_issues_the_certificate() {
    let test = Test::new(
        json!({"tls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}),
        json!({}),
    );
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let certificate = applied(&requests, CERTIFICATE);
    assert_eq!(certificate["spec"]["secretName"], "mq-tls");
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert!(certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .contains(&json!("mq.iot.svc")));
    assert!(test.server.get(TLS).is_none(), "cert-manager writes it");
    assert!(test.server.get(CA).is_none());
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("False", "SecretNotFound")
    );

    // cert-manager issues it, with its CA.
    let ca = certs::generate_ca(
        "Corp CA",
        Timestamp::now(),
        SignedDuration::from_hours(24 * 365),
    )
    .unwrap();
    let names = ["mq.iot.svc"]
        .iter()
        .map(|n| San::parse(n).unwrap())
        .collect();
    let server = certs::issue_server_cert(
        &ca,
        "mq",
        &names,
        Timestamp::now(),
        SignedDuration::from_hours(24 * 90),
    )
    .unwrap();
    let secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", &server.cert_pem),
                ("tls.key", &server.key_pem),
                ("ca.crt", &ca.cert_pem),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    let mut object = serde_json::to_value(secret).unwrap();
    object["metadata"] =
        json!({"name": "mq-tls", "namespace": "iot", "labels": plan::common_labels("mq")});
    test.server.put(TLS, object);
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("True", "IssuedByCertManager")
    );
    let bundle = test.server.get(CONFIG_MAP).unwrap()["data"]["ca.crt"].clone();
    assert!(certs::same_certificate(
        bundle.as_str().unwrap(),
        &ca.cert_pem
    ));

    // Without cert-manager in the cluster, the Certificate is refused.
    let without = Test::new(
        json!({"tls": {"certManager": {"issuerRef": {"name": "corp-ca"}}}}),
        json!({}),
    );
    without
        .server
        .fail_once(Method::PATCH, CERTIFICATE, true, 404, "NotFound");
    let action = without.reconcile().await.expect("reports");
    let status = written_status(&without.server.take_requests());
    assert_eq!(condition(&status, "Degraded"), pair("True", "Rejected"));
    assert!(status.conditions[3]
        .message
        .contains("install cert-manager"));
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));
}
