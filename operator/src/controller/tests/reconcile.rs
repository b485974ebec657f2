//! Reconciles of a broker: what the first one creates, what a steady one
//! reads, updates, repairs, refusals and errors, pausing and deletion.

use super::*;

#[tokio::test]
async fn first_reconcile_creates_everything_and_reports() {
    let test = Test::default();
    let action = test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();

    assert_eq!(
        lines(&requests),
        applying(
            &OBJECTS,
            &[event_post(), event_post(), event_post(), status_patch()]
        )
    );
    // Every object: server-side apply, one field manager, forced, stamped
    // with its hash; owned by the broker, but the CA Secrets.
    for request in requests.iter().filter(|r| r.method == Method::PATCH) {
        assert!(
            request.query.contains("fieldManager=kubemqtt-operator")
                && request.query.contains("force=true"),
            "{}: {}",
            request.path,
            request.query
        );
        if request.path == BROKER_STATUS {
            continue;
        }
        assert!(request.body["metadata"]["annotations"]["kubemqtt.io/applied-hash"].is_string());
        let owners = &request.body["metadata"]["ownerReferences"];
        if [CA, CLIENTS_CA].contains(&request.path.as_str()) {
            assert!(owners.is_null(), "{} outlives the broker", request.path);
        } else {
            assert_eq!(owners[0]["uid"], UID, "{}", request.path);
            assert_eq!(owners[0]["controller"], true, "{}", request.path);
        }
    }

    let status = written_status(&requests);
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(condition(&status, "Ready"), pair("False", "PodsNotReady"));
    assert_eq!(
        condition(&status, "Available"),
        pair("False", "NoPodsReady")
    );
    assert_eq!(
        condition(&status, "Progressing"),
        pair("True", "RollingOut")
    );
    assert_eq!(condition(&status, "Degraded"), pair("False", "Reconciled"));
    assert_eq!(
        condition(&status, "CertificatesReady"),
        pair("True", "Issued")
    );
    // No load balancer address yet: no endpoint to tell.
    assert_eq!(status.endpoint, None);
    assert_eq!(status.listeners.len(), 2);
    assert_eq!(status.listeners[1].internal, "mqtts://mq.iot.svc:8883");
    let tls = test.server.get(TLS).expect("stored certificate");
    let issued = certs::inspect(&secret_text(&tls, TLS_CERT_KEY)).expect("a certificate");
    let certificate = status.certificate.expect("certificate");
    assert_eq!(certificate.not_after.0, issued.not_after);
    let ca = certs::inspect(&secret_text(&test.server.get(CA).unwrap(), CA_CERT_KEY)).unwrap();
    assert_eq!(certificate.ca_not_after.map(|t| t.0), Some(ca.not_after));
    let credentials = status.credentials.expect("credentials");
    assert_eq!(
        (credentials.revision, credentials.confirmed_revision),
        (1, None)
    );

    assert_eq!(
        events(&requests),
        [
            event(
                "Normal",
                "Created",
                "created ConfigMap mq-config, Secret mq-ca, Secret mq-tls, Secret mq-clients-ca, \
                 Secret mq-auth, Service mq-headless, Service mq, Service mq-external, \
                 StatefulSet mq"
            ),
            event(
                "Normal",
                "CertificateIssued",
                "issued the CA certificate: no certificate existed"
            ),
            event(
                "Normal",
                "CertificateIssued",
                "issued the server certificate: no certificate existed"
            ),
        ]
    );
    // No pod to push the credentials to yet: back soon, with backoff.
    assert_eq!(action, Action::requeue(FIRST_RETRY));
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"applied\"} 1"));

    // Nothing changed since: the objects are read, nothing is written.
    let action = test.reconcile().await.expect("reconciles again");
    assert_eq!(lines(&test.server.take_requests()), reads());
    assert_eq!(action, Action::requeue(backoff(2)));
}

#[tokio::test]
async fn a_steady_broker_reads_seven_times_and_writes_nothing() {
    let test = Test::running().await;
    let action = test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), reads());
    assert_eq!(requests.len(), 7);
    assert!(requests.iter().all(|r| r.method == Method::GET));
    assert!(test.pushes.take().is_empty(), "the pod has the credentials");
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn ready_means_reachable_at_the_advertised_address_with_credentials() {
    let test = Test::default();
    test.reconcile().await.expect("creates");
    test.server.take_requests();

    // The pod is ready, but the load balancer has no address yet.
    test.pod(0);
    test.pods_ready(1);
    test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(
        condition(&status, "Ready"),
        pair("False", "LoadBalancerPending")
    );
    assert_eq!(condition(&status, "Available"), pair("True", "PodsReady"));
    let pushes = test.pushes.take();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].url, "http://10.0.0.7:8080/api/v1/credentials");
    assert_eq!(status.credentials.unwrap().confirmed_revision, Some(1));

    // The address comes: the certificate covers it, the endpoint says it.
    test.load_balancer("203.0.113.7");
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(status.endpoint.as_deref(), Some("mqtts://203.0.113.7:8883"));
    assert_eq!(
        status.conditions[0].message,
        "the broker accepts connections at mqtts://203.0.113.7:8883"
    );
    assert_eq!(
        status.listeners[1].external.as_deref(),
        Some("mqtts://203.0.113.7:8883")
    );
    assert_eq!(
        status.listeners[0].external, None,
        "plain MQTT stays inside"
    );
    let endpoints = status.endpoints.expect("endpoints");
    assert_eq!(endpoints.internal, "mq.iot.svc");
    assert_eq!(endpoints.external.as_deref(), Some("203.0.113.7"));
    let certificate = secret_text(&applied(&requests, TLS), TLS_CERT_KEY);
    let info = certs::inspect(&certificate).expect("a certificate");
    assert!(info.sans.contains(&San::Ip("203.0.113.7".parse().unwrap())));
    assert!(info.sans.contains(&San::Dns("mq.iot.svc".to_owned())));
    assert_eq!(
        events(&requests),
        [
            event("Normal", "Updated", "updated Secret mq-tls"),
            event(
                "Normal",
                "CertificateRenewed",
                "issued the server certificate: the names to cover changed"
            ),
        ]
    );

    // The broker restarts in its pod: it forgot the push. Not Ready
    // until it confirms the credentials again.
    test.pod(1);
    test.pushes
        .unreachable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(
        condition(&status, "Ready"),
        pair("False", "CredentialsNotPushed")
    );
    assert_eq!(
        status.conditions[0].message,
        "0 of 1 broker pods confirmed credentials revision 1; retrying"
    );
    assert_eq!(test.pushes.take().len(), 1);
    assert_eq!(action, Action::requeue(FIRST_RETRY));
    // Retries back off while the pod cannot be reached.
    let action = test.reconcile().await.expect("reconciles");
    assert_eq!(action, Action::requeue(FIRST_RETRY * 2));
    let action = test.reconcile().await.expect("reconciles");
    assert_eq!(action, Action::requeue(FIRST_RETRY * 4));
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_credential_pushes_total{result=\"unreachable\"} 3"));
    test.server.take_requests();

    test.pushes
        .unreachable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let action = test.reconcile().await.expect("reconciles");
    let status = written_status(&test.server.take_requests());
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn an_update_applies_only_what_changed_and_says_so() {
    let test = Test::running().await;
    let checksum = |sts: &Value| {
        sts["spec"]["template"]["metadata"]["annotations"]["kubemqtt.io/config-checksum"].clone()
    };
    let before = checksum(&test.server.get(STATEFUL_SET).expect("statefulset"));

    // The log level: the broker re-reads the file, no pod restarts.
    test.edit(|broker| broker["spec"]["logging"] = json!({"level": "debug"}));
    let action = test.reconcile().await.expect("updates");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        applying(&[CONFIG_MAP], &[event_post(), status_patch()])
    );
    let config = applied(&requests, CONFIG_MAP);
    let broker_toml = config["data"]["broker.toml"].as_str().expect("broker.toml");
    assert!(broker_toml.contains("level = \"debug\""), "{broker_toml}");
    assert_eq!(
        checksum(&test.server.get(STATEFUL_SET).expect("statefulset")),
        before
    );
    assert_eq!(
        events(&requests),
        [event("Normal", "Updated", "updated ConfigMap mq-config")]
    );
    assert_eq!(action, an_hour());

    // A key the broker reads only at start ($SYS interval): the pods roll.
    test.edit(|broker| broker["spec"]["config"] = json!({"sys": {"interval_secs": 0}}));
    let action = test.reconcile().await.expect("updates");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        applying(&[CONFIG_MAP, STATEFUL_SET], &[event_post(), status_patch()])
    );
    assert_ne!(checksum(&applied(&requests, STATEFUL_SET)), before);
    assert_eq!(
        events(&requests),
        [event(
            "Normal",
            "Updated",
            "updated ConfigMap mq-config, StatefulSet mq"
        )]
    );
    let status = written_status(&requests);
    assert_eq!(status.observed_generation, Some(3));
    // The pod still serves on the old revision while the new one rolls.
    assert_eq!(condition(&status, "Ready"), pair("True", "Ready"));
    assert_eq!(
        condition(&status, "Progressing"),
        pair("True", "RollingOut")
    );
    assert_eq!(action, an_hour());
}

#[tokio::test]
async fn an_object_edited_by_someone_else_is_restored() {
    let test = Test::running().await;
    let mut config = test.server.get(CONFIG_MAP).expect("config map");
    let original = config["data"]["broker.toml"].clone();
    config["data"]["broker.toml"] = json!("# edited by hand\n");
    test.server.put(CONFIG_MAP, config);

    test.reconcile().await.expect("restores");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), applying(&[CONFIG_MAP], &[event_post()]));
    assert_eq!(
        test.server.get(CONFIG_MAP).unwrap()["data"]["broker.toml"],
        original
    );
    assert_eq!(
        events(&requests),
        [event("Normal", "Updated", "updated ConfigMap mq-config")]
    );
    // Restored: quiet again.
    test.reconcile().await.expect("reconciles");
    assert_eq!(lines(&test.server.take_requests()), reads());
}

#[tokio::test]
async fn persistence_is_turned_on_and_grown_without_recreating_the_broker() {
    let test = Test::running().await;
    test.edit(|broker| broker["spec"]["persistence"] = json!({"enabled": true, "size": "1Gi"}));
    test.reconcile().await.expect("turns persistence on");
    let requests = test.server.take_requests();
    let lines = lines(&requests);
    let dry_runs = [CONFIG_MAP].map(|p| format!("PATCH {p} (dry run)"));
    let mut expected = reads();
    expected.extend(dry_runs);
    expected.extend([
        "GET /api/v1/namespaces/iot/persistentvolumeclaims?app.kubernetes.io/instance=mq,app.kubernetes.io/name=kubemqtt-broker".to_owned(),
        format!("DELETE {STATEFUL_SET}"),
        format!("PATCH {CONFIG_MAP}"),
        format!("PATCH {STATEFUL_SET}"),
        event_post(),
        event_post(),
        status_patch(),
    ]);
    assert_eq!(lines, expected);
    let delete = requests
        .iter()
        .find(|r| r.method == Method::DELETE)
        .unwrap();
    assert_eq!(delete.body["propagationPolicy"], "Orphan");
    assert!(
        delete.body["preconditions"]["uid"].is_string() || delete.body["preconditions"].is_object()
    );
    let (_, reason, _) = &events(&requests)[1];
    assert_eq!(reason, "StatefulSetReplaced");
    let sts = test.server.get(STATEFUL_SET).unwrap();
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );

    // The StatefulSet controller made the pod's claim; it is grown.
    let claim = "/api/v1/namespaces/iot/persistentvolumeclaims/data-mq-0";
    test.server.put(
        claim,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-mq-0", "namespace": "iot", "labels": plan::selector_labels("mq")},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}},
        }),
    );
    test.edit(|broker| broker["spec"]["persistence"]["size"] = json!("5Gi"));
    test.reconcile().await.expect("grows");
    let requests = test.server.take_requests();
    assert!(super::lines(&requests).contains(&format!("PATCH {claim}")));
    assert_eq!(
        test.server.get(claim).unwrap()["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );

    // Shrinking is refused, nothing applied.
    test.edit(|broker| broker["spec"]["persistence"]["size"] = json!("2Gi"));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
    assert!(!requests.iter().any(|r| r.method == Method::DELETE));
}

#[tokio::test]
async fn a_plain_listener_open_to_the_world_is_warned_about_once() {
    let test = Test::new(
        json!({"listeners": {"mqtt": {"external": true}}}),
        json!({}),
    );
    test.reconcile().await.expect("reconciles");
    let requests = test.server.take_requests();
    let warnings: Vec<_> = events(&requests)
        .into_iter()
        .filter(|(type_, _, _)| type_ == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].1, "PlainTextExposed");
    let external = applied(&requests, EXTERNAL);
    assert_eq!(external["spec"]["ports"][0]["name"], "mqtt");
    // Not repeated on the next reconcile.
    test.reconcile().await.expect("reconciles");
    assert_eq!(lines(&test.server.take_requests()), reads());
}

#[tokio::test]
async fn an_api_error_is_reported_and_retried_with_backoff() {
    let test = Test::default();
    test.server
        .fail_once(Method::PATCH, TLS, true, 503, "ServiceUnavailable");
    let error = test.reconcile().await.expect_err("fails");
    let requests = test.server.take_requests();

    assert!(
        matches!(&error, Error::Apply(ApplyError::Api { object, .. }) if object.name == "mq-tls"),
        "{error}"
    );
    // Stopped during the dry run: nothing was written but the report.
    let mut expected = reads();
    expected.extend([CONFIG_MAP, CA, TLS].map(|p| format!("PATCH {p} (dry run)")));
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "ApplyFailed"));
    assert_eq!(condition(&status, "Ready"), pair("False", "ApplyFailed"));
    let events = events(&requests);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "ApplyFailed")
    );
    assert!(
        events[0].2.starts_with("cannot apply Secret mq-tls:"),
        "{}",
        events[0].2
    );

    // Retries back off while it keeps failing, and start over after a
    // success.
    let broker = Arc::new(test.server.broker(BROKER));
    let retry = |ctx: &Arc<Context>| error_policy(broker.clone(), &error, ctx.clone());
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(5)));
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(10)));
    test.reconcile().await.expect("the API is back");
    let status = written_status(&test.server.take_requests());
    assert_eq!(condition(&status, "Degraded"), pair("False", "Reconciled"));
    assert_eq!(retry(&test.ctx), Action::requeue(Duration::from_secs(5)));

    let metrics = test.metrics();
    for line in [
        "kubemqtt_operator_reconcile_errors_total{stage=\"apply\"} 1",
        "kubemqtt_operator_reconciles_total{result=\"error\"} 1",
        "kubemqtt_operator_reconciles_total{result=\"applied\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing() {
    let test = Test::new(json!({"listeners": {"mqtts": {"port": 1883}}}), json!({}));
    let action = test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();

    let mut expected = reads();
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let message = "spec.listeners.mqtts.port: port 1883 is already used by listeners.mqtt";
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "InvalidSpec"));
    assert_eq!(condition(&status, "Ready"), pair("False", "InvalidSpec"));
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.message == message));
    assert_eq!(
        events(&requests),
        [event(
            "Warning",
            "InvalidSpec",
            &format!("nothing was applied: {message}")
        )]
    );
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));

    // Still invalid: read again, but the same status is not rewritten and
    // the same Warning is not repeated.
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), reads());
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"invalid\"} 2"));

    // Another mistake is a new Warning.
    test.edit(|broker| broker["spec"]["listeners"] = json!({"mqtt": {"port": 8080}}));
    test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();
    assert_eq!(lines(&requests), expected);
    assert_eq!(
        events(&requests),
        [event(
            "Warning",
            "InvalidSpec",
            "nothing was applied: spec.listeners.mqtt.port: port 8080 is the broker's HTTP port"
        )]
    );
}

#[tokio::test]
async fn an_object_the_api_server_refuses_applies_nothing() {
    let test = Test::default();
    test.server
        .fail_once(Method::PATCH, STATEFUL_SET, true, 422, "Invalid");
    let action = test.reconcile().await.expect("reports");
    let requests = test.server.take_requests();

    let mut expected = reads();
    expected.extend(OBJECTS[..9].iter().map(|p| format!("PATCH {p} (dry run)")));
    expected.extend([status_patch(), event_post()]);
    assert_eq!(lines(&requests), expected);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Degraded"), pair("True", "Rejected"));
    let events = events(&requests);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "Rejected")
    );
    assert_eq!(action, Action::requeue(INVALID_REQUEUE));
    for path in OBJECTS {
        assert_eq!(test.server.get(path), None, "{path} was not created");
    }
}

#[tokio::test]
async fn a_paused_broker_is_left_alone() {
    let test = Test::new(json!({}), json!({"kubemqtt.io/paused": "true"}));
    let action = test.reconcile().await.expect("pauses");
    let requests = test.server.take_requests();

    assert_eq!(lines(&requests), [status_patch(), event_post()]);
    let status = written_status(&requests);
    assert_eq!(condition(&status, "Progressing"), pair("False", "Paused"));
    assert_eq!(
        events(&requests),
        [event(
            "Normal",
            "Paused",
            "kubemqtt.io/paused is \"true\": the operator stops changing this broker"
        )]
    );
    assert_eq!(action, Action::await_change());

    // Still paused: not a single request.
    test.reconcile().await.expect("stays paused");
    assert_eq!(lines(&test.server.take_requests()), Vec::<String>::new());
    assert!(test
        .metrics()
        .contains("kubemqtt_operator_reconciles_total{result=\"paused\"} 2"));

    // Resumed: back to work.
    test.edit(|broker| broker["metadata"]["annotations"] = json!({}));
    test.reconcile().await.expect("resumes");
    let requests = test.server.take_requests();
    assert_eq!(
        lines(&requests),
        applying(
            &OBJECTS,
            &[event_post(), event_post(), event_post(), status_patch()]
        )
    );
}

#[tokio::test]
async fn a_broker_being_deleted_is_left_to_the_garbage_collector() {
    let test = Test::default();
    test.edit(|broker| broker["metadata"]["deletionTimestamp"] = json!("2025-06-01T12:00:00Z"));
    let action = test.reconcile().await.expect("does nothing");
    assert_eq!(lines(&test.server.take_requests()), Vec::<String>::new());
    assert_eq!(action, Action::await_change());
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let seconds: Vec<u64> = [1, 2, 3, 4, 6, 7, 100, u32::MAX]
        .into_iter()
        .map(|failures| backoff(failures).as_secs())
        .collect();
    assert_eq!(seconds, [5, 10, 20, 40, 160, 300, 300, 300]);
}
