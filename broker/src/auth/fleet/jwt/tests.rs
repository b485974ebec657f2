//! The JWT verifier: tokens of each kind of key, and every way a token
//! is refused; keys from a JWKS URL fetched, cached and fetched again.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a JWKS oct key for the tests, 32+ bytes";

fn jwks() -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    json!({"keys": [{"kty": "oct", "kid": "k1", "k": k}]}).to_string()
}

fn settings() -> JwtSettings {
    JwtSettings {
        keys_file: Some("/unused".into()),
        jwks_url: None,
        jwks_ca_file: None,
        jwks_refresh_secs: 300,
        device_id_claim: "sub".to_owned(),
        rules_claim: Some("topics".to_owned()),
        issuer: None,
        audience: None,
        leeway_secs: 0,
        disconnect_at_expiry: false,
    }
}

fn verifier(settings: JwtSettings) -> JwtVerifier {
    JwtVerifier {
        keys: KeySource::File(Keys::parse(&jwks(), "jwks").unwrap()),
        settings,
    }
}

fn token(claims: serde_json::Value, kid: Option<&str>, key: &[u8]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key).unwrap()).unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn in_secs(secs: i64) -> u64 {
    (now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + secs) as u64
}

async fn verify(v: &JwtVerifier, token: &str) -> Result<VerifiedToken, Refused> {
    v.verify(token.as_bytes(), now()).await.map_err(|(r, _)| r)
}

#[tokio::test]
async fn a_valid_token_names_the_device_and_its_rules() {
    let t = token(
        json!({"sub": "dev-1", "exp": in_secs(60), "topics": {"publish": ["d/dev-1/#"], "subscribe": ["cmd/%c"]}}),
        Some("k1"),
        SECRET,
    );
    let verified = verify(&verifier(settings()), &t).await.unwrap();
    assert_eq!(verified.device_id, "dev-1");
    assert_eq!(
        verified.expires_at,
        UNIX_EPOCH + Duration::from_secs(in_secs(60))
    );
    assert_eq!(verified.rules.len(), 2);
    assert_eq!(verified.rules[0].access, WRITE);
    assert!(verified.rules[1].substitute);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let t = token(json!({"sub": "d", "exp": in_secs(-5)}), Some("k1"), SECRET);
    assert_eq!(
        verify(&verifier(settings()), &t).await,
        Err(Refused::Expired)
    );
    let mut lenient = settings();
    lenient.leeway_secs = 30;
    assert!(
        verify(&verifier(lenient), &t).await.is_ok(),
        "within the leeway"
    );
    let not_yet = token(
        json!({"sub": "d", "exp": in_secs(600), "nbf": in_secs(300)}),
        Some("k1"),
        SECRET,
    );
    assert_eq!(
        verify(&verifier(settings()), &not_yet).await,
        Err(Refused::Expired)
    );
}

#[tokio::test]
async fn wrong_signatures_and_unknown_keys_are_refused() {
    let forged = token(
        json!({"sub": "d", "exp": in_secs(60)}),
        Some("k1"),
        b"not the fleet's key, though long enough",
    );
    assert_eq!(
        verify(&verifier(settings()), &forged).await,
        Err(Refused::BadSignature)
    );
    let other_kid = token(json!({"sub": "d", "exp": in_secs(60)}), Some("k2"), SECRET);
    assert_eq!(
        verify(&verifier(settings()), &other_kid).await,
        Err(Refused::UnknownKey)
    );
    // The signature covers the claims: another device id breaks it.
    let good = token(json!({"sub": "d", "exp": in_secs(60)}), Some("k1"), SECRET);
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let other_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"sub": "admin", "exp": in_secs(60)}).to_string());
    let tampered = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    assert_eq!(
        verify(&verifier(settings()), &tampered).await,
        Err(Refused::BadSignature)
    );
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let v = verifier(settings());
    for bad in ["", "abc", "a.b.c", "\u{0}"] {
        assert_eq!(verify(&v, bad).await, Err(Refused::Malformed), "{bad:?}");
    }
    let no_exp = token(json!({"sub": "d"}), Some("k1"), SECRET);
    assert_eq!(verify(&v, &no_exp).await, Err(Refused::Malformed));
    let no_sub = token(json!({"exp": in_secs(60)}), Some("k1"), SECRET);
    assert_eq!(verify(&v, &no_sub).await, Err(Refused::Malformed));
    let bad_rules = token(
        json!({"sub": "d", "exp": in_secs(60), "topics": {"publish": ["a/#/b"]}}),
        Some("k1"),
        SECRET,
    );
    assert_eq!(verify(&v, &bad_rules).await, Err(Refused::Malformed));
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let mut strict = settings();
    strict.issuer = Some("factory".to_owned());
    strict.audience = Some("mqtt".to_owned());
    let v = verifier(strict);
    let good = token(
        json!({"sub": "d", "exp": in_secs(60), "iss": "factory", "aud": "mqtt"}),
        Some("k1"),
        SECRET,
    );
    assert!(verify(&v, &good).await.is_ok());
    let other = token(
        json!({"sub": "d", "exp": in_secs(60), "iss": "elsewhere", "aud": "mqtt"}),
        Some("k1"),
        SECRET,
    );
    assert_eq!(verify(&v, &other).await, Err(Refused::Denied));
    let missing = token(json!({"sub": "d", "exp": in_secs(60)}), Some("k1"), SECRET);
    assert_eq!(verify(&v, &missing).await, Err(Refused::Malformed));
}

#[test]
fn pem_keys_are_read() {
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = key.public_key_pem();
    let keys = Keys::parse(&format!("{pem}\n{pem}"), "keys.pem").unwrap();
    assert_eq!(keys.len(), 2);
    assert!(Keys::parse("nothing here", "k").is_err());
    assert!(Keys::parse("{\"keys\": 5}", "k").is_err());
    assert!(Keys::parse("{\"keys\": []}", "k")
        .unwrap_err()
        .to_string()
        .contains("holds no key"));
}

#[tokio::test]
async fn an_ec_key_verifies_es256() {
    let key = rcgen::KeyPair::generate().unwrap();
    let keys = Keys::parse(&key.public_key_pem(), "keys.pem").unwrap();
    let v = JwtVerifier {
        keys: KeySource::File(keys),
        settings: settings(),
    };
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "ec-dev", "exp": in_secs(60)}),
        &encoding,
    )
    .unwrap();
    assert_eq!(verify(&v, &t).await.unwrap().device_id, "ec-dev");
}

/// A JWKS with the test key `k1` and, when `rotated`, `k2` too.
fn jwks_of(rotated: bool) -> String {
    use base64::Engine;
    let encode = |k: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
    let mut keys = vec![json!({"kty": "oct", "kid": "k1", "k": encode(SECRET)})];
    if rotated {
        keys.push(json!({"kty": "oct", "kid": "k2", "k": encode(SECRET_2)}));
    }
    json!({ "keys": keys }).to_string()
}

const SECRET_2: &[u8] = b"the key the issuer rotates to, 32+ bytes";

#[tokio::test]
async fn keys_of_a_jwks_url_are_fetched_once_and_again_for_a_new_kid() {
    use super::super::hook::tests::Registry;
    use std::sync::atomic::{AtomicBool, Ordering};
    let rotated = Arc::new(AtomicBool::new(false));
    let serves = rotated.clone();
    let issuer = Registry::start(move |_| (200, jwks_of(serves.load(Ordering::SeqCst)))).await;
    let fetches = || issuer.requests.load(Ordering::SeqCst);
    let mut from_url = settings();
    from_url.keys_file = None;
    from_url.jwks_url = Some(format!("{}/.well-known/jwks.json", issuer.url));
    let v = JwtVerifier::load(&from_url, None).unwrap();
    assert_eq!(fetches(), 0, "fetched at the first login, not before");

    let claims = json!({"sub": "d", "exp": in_secs(60)});
    let first = token(claims.clone(), Some("k1"), SECRET);
    assert_eq!(verify(&v, &first).await.unwrap().device_id, "d");
    assert_eq!(verify(&v, &first).await.unwrap().device_id, "d");
    assert_eq!(fetches(), 1, "kept for jwks_refresh_secs");

    // The issuer adds a key: a token of it fetches the set again (once
    // 10 s have passed since the last fetch; here, as if they had).
    rotated.store(true, Ordering::SeqCst);
    let KeySource::Url(url) = &v.keys else {
        panic!("keys from the URL")
    };
    *url.last_fetch.lock() = Some(Instant::now() - MIN_REFETCH);
    let second = token(claims.clone(), Some("k2"), SECRET_2);
    assert_eq!(verify(&v, &second).await.unwrap().device_id, "d");
    assert_eq!(fetches(), 2);
    // An unknown kid right after does not fetch again (at most every 10 s).
    let unknown = token(claims.clone(), Some("k9"), SECRET_2);
    assert_eq!(verify(&v, &unknown).await, Err(Refused::UnknownKey));
    assert_eq!(fetches(), 2);

    // A reload with the same settings keeps the fetched keys.
    let reloaded = JwtVerifier::load(&from_url, Some(&v)).unwrap();
    assert!(verify(&reloaded, &second).await.is_ok());
    assert_eq!(fetches(), 2);

    // An issuer that cannot be reached: the registry_down refusal.
    drop(issuer);
    let fresh = JwtVerifier::load(&from_url, None).unwrap();
    assert_eq!(verify(&fresh, &first).await, Err(Refused::Unavailable));
}
