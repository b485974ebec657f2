use super::*;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

fn sans(names: &[&str]) -> BTreeSet<San> {
    names.iter().map(|n| San::parse(n).unwrap()).collect()
}

#[test]
fn san_parse_accepts_names_wildcards_and_ips() {
    assert_eq!(
        San::parse("Broker.IOT.svc").unwrap(),
        San::Dns("broker.iot.svc".into())
    );
    assert_eq!(
        San::parse("*.b-headless.iot.svc.cluster.local").unwrap(),
        San::Dns("*.b-headless.iot.svc.cluster.local".into())
    );
    assert_eq!(
        San::parse("10.0.0.7").unwrap(),
        San::Ip("10.0.0.7".parse().unwrap())
    );
    assert_eq!(San::parse("::1").unwrap(), San::Ip("::1".parse().unwrap()));
    for bad in [
        "",
        "a..b",
        "-a.b",
        "a-.b",
        "a_b.c",
        "a.*.b",
        "*",
        "under score",
        &"x".repeat(64),
    ] {
        assert!(
            matches!(San::parse(bad), Err(CertError::InvalidName(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn ca_is_self_signed_and_valid_for_the_period() {
    let ca = generate_ca("test CA", now(), days(3650)).unwrap();
    let info = inspect(&ca.cert_pem).unwrap();
    assert_eq!(info.not_before, now() - BACKDATE);
    assert_eq!(info.not_after, now() + days(3650));
    assert!(info.sans.is_empty());
    assert!(is_signed_by(&ca.cert_pem, &ca.cert_pem));
    assert!(key_matches(&ca.cert_pem, &ca.key_pem));
    with_certificate(&ca.cert_pem, |cert| {
        assert!(cert.is_ca());
        Ok(())
    })
    .unwrap();
}

#[test]
fn server_cert_covers_the_names_and_is_signed_by_its_ca() {
    let ca = generate_ca("test CA", now(), days(3650)).unwrap();
    let other_ca = generate_ca("other CA", now(), days(3650)).unwrap();
    let names = sans(&["b.iot.svc", "*.b-headless.iot.svc", "192.0.2.10"]);
    let server = issue_server_cert(&ca, "b.iot.svc", &names, now(), days(365)).unwrap();
    let info = inspect(&server.cert_pem).unwrap();
    assert_eq!(info.sans, names);
    assert_eq!(info.not_after, now() + days(365));
    assert!(is_signed_by(&server.cert_pem, &ca.cert_pem));
    assert!(!is_signed_by(&server.cert_pem, &other_ca.cert_pem));
    assert!(key_matches(&server.cert_pem, &server.key_pem));
    assert!(!key_matches(&server.cert_pem, &ca.key_pem));
    with_certificate(&server.cert_pem, |cert| {
        assert!(!cert.is_ca());
        assert_eq!(cert.subject().to_string(), "CN=b.iot.svc");
        Ok(())
    })
    .unwrap();
}

#[test]
fn server_cert_never_outlives_its_ca() {
    let ca = generate_ca("short CA", now(), days(10)).unwrap();
    let server = issue_server_cert(&ca, "a.b", &sans(&["a.b"]), now(), days(365)).unwrap();
    assert_eq!(
        inspect(&server.cert_pem).unwrap().not_after,
        now() + days(10)
    );
}

#[test]
fn garbage_is_unreadable_not_a_panic() {
    assert!(matches!(inspect("nope"), Err(CertError::Parse(_))));
    assert!(!is_signed_by("nope", "nope"));
    assert!(!key_matches("nope", "nope"));
    assert!(!is_ca("nope"));
    assert!(!same_certificate("nope", "nope"));
    assert!(pem_certificates("nope").is_empty());
}

#[test]
fn bundles_split_into_certificates() {
    let a = generate_ca("a", now(), days(10)).unwrap().cert_pem;
    let b = generate_ca("b", now(), days(10)).unwrap().cert_pem;
    let bundle = format!("# comment\n{}\n{}", a.trim_end(), b);
    let split = pem_certificates(&bundle);
    assert_eq!(split.len(), 2);
    assert!(same_certificate(&split[0], &a));
    assert!(same_certificate(&split[1], &b));
    assert!(!same_certificate(&split[0], &b));
    assert!(is_ca(&a));
    let server = issue_server_cert(
        &generate_ca("c", now(), days(10)).unwrap(),
        "x",
        &sans(&["x"]),
        now(),
        days(1),
    )
    .unwrap();
    assert!(!is_ca(&server.cert_pem));
}

#[test]
fn renewal_decision() {
    let names = sans(&["a.b", "10.0.0.1"]);
    let cert = CertInfo {
        not_before: now() - days(300),
        not_after: now() + days(65),
        sans: names.clone(),
    };
    // Well inside its validity and covering the right names.
    assert_eq!(needs_renewal(&cert, now(), days(30), &names), None);
    // The renewal window starts exactly renew_before ahead of expiry.
    assert_eq!(
        needs_renewal(&cert, now() + days(35), days(30), &names),
        Some(RenewalReason::Expiring)
    );
    assert_eq!(
        needs_renewal(&cert, now() + days(34), days(30), &names),
        None
    );
    // Expired.
    assert_eq!(
        needs_renewal(&cert, now() + days(100), days(30), &names),
        Some(RenewalReason::Expiring)
    );
    // A name added (the load balancer got an address) or removed.
    let more = sans(&["a.b", "10.0.0.1", "203.0.113.5"]);
    assert_eq!(
        needs_renewal(&cert, now(), days(30), &more),
        Some(RenewalReason::NamesChanged)
    );
    assert_eq!(
        needs_renewal(&cert, now(), days(30), &sans(&["a.b"])),
        Some(RenewalReason::NamesChanged)
    );
}
