//! Password hashes in mosquitto's formats.
//!
//! `mosquitto_passwd` writes one of two formats, both with a 12-byte salt
//! and a 64-byte digest, each Base64 encoded:
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 with the given
//!   iteration count (mosquitto 2.0's default, with 101 iterations);
//! - `$6$<salt>$<hash>`: one round of SHA-512 over the password followed by
//!   the salt (mosquitto 1.6 and earlier, or `mosquitto_passwd -H sha512`).
//!
//! Verification compares digests in constant time.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Iterations [`hash_password`] uses: mosquitto 2.0's default.
pub const DEFAULT_ITERATIONS: u32 = 101;

/// Salt length mosquitto writes and requires, in bytes.
const SALT_LEN: usize = 12;

/// SHA-512 digest length, in bytes.
const HASH_LEN: usize = 64;

/// Standard Base64 that accepts the trailing `=` padding or its absence.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed password hash.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
    /// `$6$`: SHA-512 of password then salt.
    Sha512 {
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
}

/// Keeps digests out of logs and panic messages.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PasswordHash($7$, {iterations} iterations)")
            }
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash($6$)"),
        }
    }
}

impl PasswordHash {
    /// Parses a hash as `mosquitto_passwd` writes it. The error says what is
    /// wrong without repeating the hash.
    pub(crate) fn parse(text: &str) -> Result<PasswordHash, String> {
        let fields: Vec<&str> = text.split('$').collect();
        match fields.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        "the iteration count of a $7$ hash must be a whole number of at least 1"
                            .to_owned()
                    })?;
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: decode_fixed(salt, "salt")?,
                    hash: decode_fixed(hash, "hash")?,
                })
            }
            ["", "6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode_fixed(salt, "salt")?,
                hash: decode_fixed(hash, "hash")?,
            }),
            ["", "7" | "6", ..] => Err(
                "malformed hash: expected $7$<iterations>$<salt>$<hash> or $6$<salt>$<hash>"
                    .to_owned(),
            ),
            _ => Err(
                "unsupported hash type: expected a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) \
                 hash as written by mosquitto_passwd"
                    .to_owned(),
            ),
        }
    }

    /// Whether `password` hashes to this value. The digests are compared in
    /// constant time.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        let (computed, stored) = match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => (pbkdf2_sha512(password, salt, *iterations), hash),
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let mut out = [0u8; HASH_LEN];
                out.copy_from_slice(&digest.finalize());
                (out, hash)
            }
        };
        computed.ct_eq(stored).into()
    }
}

/// Hashes `password` in mosquitto's `$7$` format with a fresh random salt
/// and [`DEFAULT_ITERATIONS`], e.g. `$7$101$<salt>$<hash>`. The result can go
/// into our credentials file or a mosquitto password file.
///
/// Fails only when the operating system cannot supply random bytes.
pub fn hash_password(password: &str) -> std::io::Result<String> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)?;
    let hash = pbkdf2_sha512(password.as_bytes(), &salt, DEFAULT_ITERATIONS);
    Ok(format!(
        "$7${DEFAULT_ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    ))
}

/// Whether `password` matches `hash` (a `$7$` or `$6$` hash as
/// [`hash_password`] or `mosquitto_passwd` write it). An unreadable hash
/// matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::parse(hash).is_ok_and(|hash| hash.verify(password.as_bytes()))
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

/// Decodes a Base64 field that must hold exactly `N` bytes.
fn decode_fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| format!("the {what} is not valid Base64"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the {what} must be {N} bytes, found {}", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd` 2.0.11 for password `secret`.
    const PBKDF2_SECRET: &str = "$7$101$3NDA+kAO1XIb5Xyt$ouCKhpv4UgjzW+NFhXraoZkKbSGjFy5Oxgyh\
                                 oLSEhMY0e4lNCSRdA+SJTmJwTEzVYv1CA5vc5v0BwBthdiVuRQ==";
    /// Written by `mosquitto_passwd -H sha512` for password `old pass`.
    const SHA512_OLD_PASS: &str = "$6$reNq20GQ9iM6dPYH$h66ixkWeuAxxpJppHhyOH3VdFGrgaC2Y4dlpj7Sj\
                                   hC6msyzC+zQCf7jeDTBAqvmdoPjdV9D8NVjhLNGebeSeaA==";

    #[test]
    fn verifies_mosquitto_pbkdf2_hash() {
        let hash = PasswordHash::parse(PBKDF2_SECRET).unwrap();
        assert!(matches!(
            hash,
            PasswordHash::Pbkdf2Sha512 {
                iterations: 101,
                ..
            }
        ));
        assert!(hash.verify(b"secret"));
        assert!(!hash.verify(b"Secret"));
        assert!(!hash.verify(b"secret "));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn verify_password_reads_the_text_form() {
        assert!(verify_password(PBKDF2_SECRET, "secret"));
        assert!(!verify_password(PBKDF2_SECRET, "secreT"));
        assert!(verify_password(SHA512_OLD_PASS, "old pass"));
        assert!(!verify_password("$9$not-a-hash", "secret"));
        let fresh = hash_password("fresh").unwrap();
        assert!(verify_password(&fresh, "fresh"));
        assert!(!verify_password(&fresh, "stale"));
    }

    #[test]
    fn verifies_mosquitto_sha512_hash() {
        let hash = PasswordHash::parse(SHA512_OLD_PASS).unwrap();
        assert!(matches!(hash, PasswordHash::Sha512 { .. }));
        assert!(hash.verify(b"old pass"));
        assert!(!hash.verify(b"old  pass"));
    }

    #[test]
    fn digest_differing_in_last_byte_is_rejected() {
        let PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            mut hash,
        } = PasswordHash::parse(PBKDF2_SECRET).unwrap()
        else {
            panic!("expected a $7$ hash");
        };
        hash[HASH_LEN - 1] ^= 1;
        let tampered = PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        };
        assert!(!tampered.verify(b"secret"));
    }

    #[test]
    fn iteration_count_is_part_of_the_hash() {
        let PasswordHash::Pbkdf2Sha512 { salt, hash, .. } =
            PasswordHash::parse(PBKDF2_SECRET).unwrap()
        else {
            panic!("expected a $7$ hash");
        };
        let other = PasswordHash::Pbkdf2Sha512 {
            iterations: 100,
            salt,
            hash,
        };
        assert!(!other.verify(b"secret"));
    }

    #[test]
    fn hash_password_round_trips_with_fresh_salt() {
        let first = hash_password("pa55 wörd").unwrap();
        let second = hash_password("pa55 wörd").unwrap();
        assert!(first.starts_with("$7$101$"), "{first}");
        assert_ne!(first, second, "each hash gets its own salt");
        for text in [&first, &second] {
            let hash = PasswordHash::parse(text).unwrap();
            assert!(hash.verify("pa55 wörd".as_bytes()));
            assert!(!hash.verify(b"pa55 word"));
        }
    }

    #[test]
    fn rejects_malformed_hashes_without_echoing_them() {
        let cases = [
            ("plaintext", "unsupported hash type"),
            ("$5$abc$def", "unsupported hash type"),
            ("$7$101$onlysalt", "malformed hash"),
            ("$6$a$b$c", "malformed hash"),
            ("$7$0$3NDA+kAO1XIb5Xyt$AAAA", "iteration count"),
            ("$7$x$3NDA+kAO1XIb5Xyt$AAAA", "iteration count"),
            ("$7$101$!!!!$AAAA", "salt is not valid Base64"),
            ("$7$101$AAAA$AAAA", "salt must be 12 bytes, found 3"),
            ("$6$3NDA+kAO1XIb5Xyt$AAAA", "hash must be 64 bytes, found 3"),
        ];
        for (text, expected) in cases {
            let error = PasswordHash::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains(text), "{error}");
        }
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let unpadded = PBKDF2_SECRET.trim_end_matches('=');
        assert!(PasswordHash::parse(unpadded).unwrap().verify(b"secret"));
    }

    #[test]
    fn debug_output_hides_digest() {
        let text = format!("{:?}", PasswordHash::parse(PBKDF2_SECRET).unwrap());
        assert_eq!(text, "PasswordHash($7$, 101 iterations)");
    }
}
