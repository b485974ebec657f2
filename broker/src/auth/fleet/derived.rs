//! Derived passwords: one fleet secret, a secret per device derived from
//! it, and logins signed with a timestamp (in the style of Aliyun IoT's
//! `hmacsha256` sign method). Nothing is stored per device.
//!
//! The construction (docs/fleets.md shows it with `openssl dgst`):
//!
//! ```text
//! device_secret = hex(HMAC-SHA256(key = fleet secret, message = device id))
//! signature     = hex(HMAC-SHA256(key = device_secret, message = "{client id}|{device id}|{timestamp}"))
//! password      = "{timestamp}:{signature}"
//! ```
//!
//! `hex` is lowercase; the device secret is used as a key in its hex form
//! (its 64 ASCII bytes); the timestamp is Unix seconds in decimal. The user
//! name carries the device id through the fleet's template (`%d@sensors`).
//! A login signed more than `replay_window_secs` before (or after) the
//! broker's clock is refused as replayed.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Refused;

/// The shortest fleet secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// What a derived fleet checks logins with.
pub(crate) struct DerivedVerifier {
    /// The current fleet secret, then the one being rotated out.
    secrets: Vec<Vec<u8>>,
    window_secs: u64,
}

impl std::fmt::Debug for DerivedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedVerifier")
            .field("secrets", &self.secrets.len())
            .field("window_secs", &self.window_secs)
            .finish()
    }
}

/// The text of a fleet secret file, as a key: a trailing newline (what
/// `echo` and most editors add) is not part of it.
pub fn secret_from_file_text(text: &[u8]) -> &[u8] {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.strip_suffix(b"\r").unwrap_or(text)
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// A device's secret: what the factory writes into the device.
pub fn device_secret(fleet_secret: &[u8], device_id: &str) -> String {
    hmac_hex(fleet_secret, device_id.as_bytes())
}

/// The password a device sends to log in at `timestamp` (Unix seconds).
pub fn sign_login(device_secret: &str, client_id: &str, device_id: &str, timestamp: u64) -> String {
    let message = format!("{client_id}|{device_id}|{timestamp}");
    format!(
        "{timestamp}:{}",
        hmac_hex(device_secret.as_bytes(), message.as_bytes())
    )
}

impl DerivedVerifier {
    /// `secrets`: the current fleet secret first.
    pub(crate) fn new(secrets: Vec<Vec<u8>>, window_secs: u64) -> DerivedVerifier {
        DerivedVerifier {
            secrets,
            window_secs,
        }
    }

    /// Checks a login of `device_id` from `client_id` with `password`.
    pub(crate) fn verify(
        &self,
        device_id: &str,
        client_id: &str,
        password: &[u8],
        now: SystemTime,
    ) -> Result<(), Refused> {
        let (timestamp, signature) = std::str::from_utf8(password)
            .ok()
            .and_then(|text| text.split_once(':'))
            .and_then(|(ts, sig)| Some((ts.parse::<u64>().ok()?, sig)))
            .filter(|(_, sig)| sig.len() == 64)
            .ok_or(Refused::Malformed)?;
        let signed = self.secrets.iter().any(|fleet_secret| {
            let expected = sign_login(
                &device_secret(fleet_secret, device_id),
                client_id,
                device_id,
                timestamp,
            );
            let expected = expected.split_once(':').map_or("", |(_, sig)| sig);
            bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
        });
        if !signed {
            return Err(Refused::BadSignature);
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now.abs_diff(timestamp) > self.window_secs {
            return Err(Refused::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FLEET: &[u8] = b"0123456789abcdef0123456789abcdef-fleet";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verifier() -> DerivedVerifier {
        DerivedVerifier::new(vec![FLEET.to_vec()], 300)
    }

    /// The construction, checked against `openssl dgst` when it is there
    /// (what docs/fleets.md tells a factory to run).
    #[test]
    fn the_construction_matches_openssl() {
        let secret = device_secret(FLEET, "dev-1");
        assert_eq!(secret.len(), 64);
        let password = sign_login(&secret, "c-1", "dev-1", 1_800_000_000);
        assert!(password.starts_with("1800000000:"));
        let openssl = |key: &str, message: &str| -> Option<String> {
            use std::io::Write;
            let mut child = std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-hmac", key])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .ok()?;
            child.stdin.take()?.write_all(message.as_bytes()).ok()?;
            let out = child.wait_with_output().ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            Some(text.trim().rsplit(' ').next()?.to_owned())
        };
        let Some(expected_secret) = openssl(std::str::from_utf8(FLEET).unwrap(), "dev-1") else {
            assert!(std::env::var_os("CI").is_none(), "openssl is needed in CI");
            return;
        };
        assert_eq!(secret, expected_secret);
        let expected_signature = openssl(&secret, "c-1|dev-1|1800000000").unwrap();
        assert_eq!(password, format!("1800000000:{expected_signature}"));
    }

    #[test]
    fn a_signed_login_within_the_window_passes() {
        let password = sign_login(&device_secret(FLEET, "d"), "c", "d", 1000);
        for now in [1000, 1300, 700] {
            assert_eq!(
                verifier().verify("d", "c", password.as_bytes(), at(now)),
                Ok(())
            );
        }
    }

    #[test]
    fn an_old_login_is_refused_as_replayed() {
        let password = sign_login(&device_secret(FLEET, "d"), "c", "d", 1000);
        assert_eq!(
            verifier().verify("d", "c", password.as_bytes(), at(1301)),
            Err(Refused::Replayed)
        );
        assert_eq!(
            verifier().verify("d", "c", password.as_bytes(), at(699)),
            Err(Refused::Replayed),
            "signed too far ahead of the broker's clock"
        );
    }

    #[test]
    fn wrong_signatures_are_refused() {
        let secret = device_secret(FLEET, "d");
        let v = verifier();
        // Another device's password, another client id, another fleet.
        let other = sign_login(&device_secret(FLEET, "e"), "c", "e", 1000);
        assert_eq!(
            v.verify("d", "c", other.as_bytes(), at(1000)),
            Err(Refused::BadSignature)
        );
        let moved = sign_login(&secret, "c2", "d", 1000);
        assert_eq!(
            v.verify("d", "c", moved.as_bytes(), at(1000)),
            Err(Refused::BadSignature)
        );
        let foreign = sign_login(
            &device_secret(b"another fleet secret, 32 bytes long", "d"),
            "c",
            "d",
            1000,
        );
        assert_eq!(
            v.verify("d", "c", foreign.as_bytes(), at(1000)),
            Err(Refused::BadSignature)
        );
        // The timestamp is signed: changing it breaks the signature.
        let good = sign_login(&secret, "c", "d", 1000);
        let shifted = good.replacen("1000:", "1200:", 1);
        assert_eq!(
            v.verify("d", "c", shifted.as_bytes(), at(1200)),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn malformed_passwords_are_refused() {
        let v = verifier();
        for bad in [
            &b""[..],
            b"nocolon",
            b"abc:0123",
            b"1000:short",
            b"-5:0000000000000000000000000000000000000000000000000000000000000000",
            b"\xff\xfe:x",
        ] {
            assert_eq!(
                v.verify("d", "c", bad, at(1000)),
                Err(Refused::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_previous_fleet_secret_still_works_during_a_rotation() {
        let old = b"the old fleet secret, long enough..".to_vec();
        let rotating = DerivedVerifier::new(vec![FLEET.to_vec(), old.clone()], 300);
        let by_old = sign_login(&device_secret(&old, "d"), "c", "d", 1000);
        let by_new = sign_login(&device_secret(FLEET, "d"), "c", "d", 1000);
        assert_eq!(
            rotating.verify("d", "c", by_old.as_bytes(), at(1000)),
            Ok(())
        );
        assert_eq!(
            rotating.verify("d", "c", by_new.as_bytes(), at(1000)),
            Ok(())
        );
        assert_eq!(
            verifier().verify("d", "c", by_old.as_bytes(), at(1000)),
            Err(Refused::BadSignature),
            "once the old secret is gone"
        );
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        assert_eq!(secret_from_file_text(b"abc\n"), b"abc");
        assert_eq!(secret_from_file_text(b"abc\r\n"), b"abc");
        assert_eq!(secret_from_file_text(b"abc"), b"abc");
    }
}
