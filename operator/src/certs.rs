//! TLS certificates: a CA per broker and the server certificate it signs,
//! generated with rcgen, read back with x509-parser, and the decision of
//! when to renew them.
//!
//! Keys are ECDSA P-256. Certificates start [`BACKDATE`] before "now" so a
//! client whose clock is a little behind still accepts a fresh one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// How far before "now" a new certificate's validity starts.
pub const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

/// A name a certificate covers (a subject alternative name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    /// A DNS name, lower case; the first label may be `*`.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl San {
    /// Reads an IP address or a DNS name (RFC 1123 labels, optionally
    /// behind a `*.` wildcard). DNS names are lower-cased.
    pub fn parse(text: &str) -> Result<San, CertError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let name = text.to_ascii_lowercase();
        let rest = name.strip_prefix("*.").unwrap_or(&name);
        let valid_label = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.len() > 253 || !rest.split('.').all(valid_label) {
            return Err(CertError::InvalidName(text.to_owned()));
        }
        Ok(San::Dns(name))
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => f.write_str(name),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedKeyPem {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

/// What the operator needs to know about an existing certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// The names it covers.
    pub sans: BTreeSet<San>,
}

/// Why a certificate is (re-)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalReason {
    /// There was none.
    Missing,
    /// The stored certificate or key could not be read, or they do not
    /// belong together.
    Unreadable,
    /// It expires within the renewal window (or has expired).
    Expiring,
    /// The names it covers differ from the names it should cover.
    NamesChanged,
    /// It was not signed by the current CA (the CA was renewed).
    IssuerChanged,
    /// A user asked for it with an annotation (`kubemqtt.io/force-renew`
    /// for the server certificate, `kubemqtt.io/rotate-ca` for the CA).
    Forced,
    /// The CA rotation's overlap ended: the server certificate moves to the
    /// new CA.
    CaRotationCompleted,
}

impl RenewalReason {
    /// A short description for Events and logs.
    pub fn describe(self) -> &'static str {
        match self {
            RenewalReason::Missing => "no certificate existed",
            RenewalReason::Unreadable => "the stored certificate or key was unreadable",
            RenewalReason::Expiring => "the certificate was about to expire",
            RenewalReason::NamesChanged => "the names to cover changed",
            RenewalReason::IssuerChanged => "the CA was renewed",
            RenewalReason::Forced => "renewal was requested with an annotation",
            RenewalReason::CaRotationCompleted => {
                "the CA rotation's overlap ended: the new CA signs it"
            }
        }
    }
}

/// A certificate that could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A requested subject alternative name is neither an IP address nor a
    /// valid DNS name.
    #[error("`{0}` is neither an IP address nor a valid DNS name")]
    InvalidName(String),
    /// rcgen refused to generate or sign.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The PEM text is not a readable certificate.
    #[error("cannot read the certificate: {0}")]
    Parse(String),
    /// A date is outside the range certificates can express.
    #[error("certificate date out of range: {0}")]
    Date(String),
}

/// Generates a self-signed CA valid from `now` (less [`BACKDATE`]) for
/// `validity`.
pub fn generate_ca(
    common_name: &str,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertifiedKeyPem, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(now - BACKDATE)?;
    params.not_after = to_offset(now + validity)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a server certificate with subject `common_name` for `sans`,
/// signed by `ca`, valid from `now` (less [`BACKDATE`]) for `validity` but
/// never past the CA's own expiry.
pub fn issue_server_cert(
    ca: &CertifiedKeyPem,
    common_name: &str,
    sans: &BTreeSet<San>,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertifiedKeyPem, CertError> {
    let sans = san_types(sans)?;
    issue(ca, common_name, now, validity, |params| {
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    })
}

/// The subject alternative names of `sans`, as rcgen takes them.
fn san_types(sans: &BTreeSet<San>) -> Result<Vec<SanType>, rcgen::Error> {
    sans.iter()
        .map(|san| {
            Ok(match san {
                San::Dns(name) => SanType::DnsName(name.clone().try_into()?),
                San::Ip(ip) => SanType::IpAddress(*ip),
            })
        })
        .collect()
}

/// Issues a certificate for a server that is also a client of its peers
/// (a NATS server, whose routes to the other servers verify both ends):
/// like [`issue_server_cert`], for server and client authentication.
pub fn issue_peer_cert(
    ca: &CertifiedKeyPem,
    common_name: &str,
    sans: &BTreeSet<San>,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertifiedKeyPem, CertError> {
    let sans = san_types(sans)?;
    issue(ca, common_name, now, validity, |params| {
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    })
}

/// Issues a client certificate with subject `common_name` (the MQTT user
/// name), signed by `ca`, valid from `now` (less [`BACKDATE`]) for
/// `validity` but never past the CA's own expiry.
pub fn issue_client_cert(
    ca: &CertifiedKeyPem,
    common_name: &str,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertifiedKeyPem, CertError> {
    issue(ca, common_name, now, validity, |params| {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    })
}

/// Issues a device certificate of a fleet: subject CN `device_id` (and a
/// DNS subject alternative name `san`, for fleets that read the id from
/// one), signed by the fleet CA `ca`, for client authentication.
pub fn issue_device_cert(
    ca: &CertifiedKeyPem,
    device_id: &str,
    san: Option<&str>,
    now: Timestamp,
    validity: SignedDuration,
) -> Result<CertifiedKeyPem, CertError> {
    let sans = san
        .map(|san| Ok::<_, rcgen::Error>(vec![SanType::DnsName(san.to_owned().try_into()?)]))
        .transpose()?
        .unwrap_or_default();
    issue(ca, device_id, now, validity, |params| {
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    })
}

/// Issues a certificate with subject `common_name`, signed by `ca`, valid
/// from `now` (less [`BACKDATE`]) for `validity` but never past the CA's
/// own expiry; `purpose` sets its names and usages.
fn issue(
    ca: &CertifiedKeyPem,
    common_name: &str,
    now: Timestamp,
    validity: SignedDuration,
    purpose: impl FnOnce(&mut CertificateParams),
) -> Result<CertifiedKeyPem, CertError> {
    let ca_info = inspect(&ca.cert_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    purpose(&mut params);
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(now - BACKDATE)?;
    params.not_after = to_offset((now + validity).min(ca_info.not_after))?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertifiedKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The subject common name of a PEM certificate, if it has one.
pub fn common_name(cert_pem: &str) -> Option<String> {
    with_certificate(cert_pem, |cert| {
        Ok(cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned))
    })
    .ok()
    .flatten()
}

/// Reads the validity and names of a PEM certificate.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, CertError> {
    with_certificate(cert_pem, |cert| {
        let validity = cert.validity();
        let mut sans = BTreeSet::new();
        let extension = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Parse(e.to_string()))?;
        for name in extension.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => {
                    sans.insert(San::Dns(dns.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.insert(San::Ip(ip));
                    }
                }
                _ => {}
            }
        }
        Ok(CertInfo {
            not_before: from_unix(validity.not_before.timestamp())?,
            not_after: from_unix(validity.not_after.timestamp())?,
            sans,
        })
    })
}

/// Whether `cert_pem` carries a valid signature by the CA certificate
/// `ca_cert_pem`. Unreadable input is "no".
pub fn is_signed_by(cert_pem: &str, ca_cert_pem: &str) -> bool {
    with_certificate(ca_cert_pem, |ca| {
        with_certificate(cert_pem, |cert| {
            Ok(cert.issuer() == ca.subject()
                && cert.verify_signature(Some(ca.public_key())).is_ok())
        })
    })
    .unwrap_or(false)
}

/// Whether `cert_pem` is a CA certificate (basic constraints `CA:TRUE`).
/// Unreadable input is "no".
pub fn is_ca(cert_pem: &str) -> bool {
    with_certificate(cert_pem, |cert| Ok(cert.is_ca())).unwrap_or(false)
}

/// The certificates of a PEM bundle, each as its own PEM text ending in a
/// newline; anything between them is dropped.
pub fn pem_certificates(bundle: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certificates = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let Some(length) = rest[start..].find(END) else {
            break;
        };
        let end = start + length + END.len();
        certificates.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    certificates
}

/// Whether two PEM certificates are the same certificate (same DER bytes),
/// whatever their line breaks.
pub fn same_certificate(a: &str, b: &str) -> bool {
    let der = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, pem)| pem.contents)
    };
    matches!((der(a), der(b)), (Some(a), Some(b)) if a == b)
}

/// Whether `key_pem` is the private key of the certificate `cert_pem`.
/// Unreadable input is "no".
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    with_certificate(cert_pem, |cert| {
        Ok(cert.public_key().raw == key.subject_public_key_info().as_slice())
    })
    .unwrap_or(false)
}

/// Decides whether a certificate must be renewed: it expires within
/// `renew_before` of `now`, or it does not cover exactly `desired_sans`.
/// (Missing, unreadable, wrongly signed and forced renewals are decided by
/// the caller, which knows about the stored Secret.)
pub fn needs_renewal(
    cert: &CertInfo,
    now: Timestamp,
    renew_before: SignedDuration,
    desired_sans: &BTreeSet<San>,
) -> Option<RenewalReason> {
    if now + renew_before >= cert.not_after {
        Some(RenewalReason::Expiring)
    } else if cert.sans != *desired_sans {
        Some(RenewalReason::NamesChanged)
    } else {
        None
    }
}

/// Parses the first certificate of a PEM text and hands it to `f`.
fn with_certificate<T>(
    pem: &str,
    f: impl FnOnce(&X509Certificate<'_>) -> Result<T, CertError>,
) -> Result<T, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    f(&cert)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn to_offset(timestamp: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(timestamp.as_second())
        .map_err(|e| CertError::Date(e.to_string()))
}

fn from_unix(seconds: i64) -> Result<Timestamp, CertError> {
    Timestamp::from_second(seconds).map_err(|e| CertError::Date(e.to_string()))
}

#[cfg(test)]
mod tests;
