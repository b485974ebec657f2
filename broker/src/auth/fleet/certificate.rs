//! Certificate fleets: a device presents a client certificate signed by the
//! fleet's CA; the device id is its CN or a subject alternative name.
//!
//! The TLS listener has already verified the chain against its `ca_file`
//! (which holds the fleet CAs among others); here the chain is checked
//! against the fleet's CAs alone, so that a certificate of another CA in
//! the same bundle never counts as this fleet's.

use std::path::Path;
use std::time::SystemTime;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use super::config::DeviceIdFrom;
use super::revocation::serial_of;
use crate::auth::AuthFileError;

/// The identity a fleet certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertificateIdentity {
    pub(crate) device_id: String,
    /// Normalized serial (see `revocation::normalize_serial`).
    pub(crate) serial: String,
}

/// What a certificate fleet checks certificates with.
pub(crate) struct CertificateVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    device_id_from: DeviceIdFrom,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for CertificateVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateVerifier")
            .field("anchors", &self.anchors.len())
            .field("device_id_from", &self.device_id_from)
            .finish()
    }
}

/// Why a certificate of this fleet's CA does not make a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateProblem {
    /// Signed by the fleet's CA but without a usable device id.
    NoDeviceId,
}

impl CertificateVerifier {
    /// Reads the fleet's CA bundle.
    pub(crate) fn load(
        ca_file: &Path,
        device_id_from: DeviceIdFrom,
    ) -> Result<CertificateVerifier, AuthFileError> {
        let origin = ca_file.display().to_string();
        let invalid = |message: String| AuthFileError::Invalid {
            file: origin.clone(),
            line: None,
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| invalid(format!("cannot read the fleet CA: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("holds no CA certificate".to_owned()));
        }
        let anchors = certs
            .iter()
            .map(|cert| {
                webpki::anchor_from_trusted_cert(cert)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(CertificateVerifier {
            anchors,
            device_id_from,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    /// Whether the chain (leaf first, as the client sent it) is signed by
    /// one of the fleet's CAs at `now`; if so, the device it names.
    /// `None`: not this fleet's certificate.
    pub(crate) fn identify(
        &self,
        chain: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Option<Result<CertificateIdentity, CertificateProblem>> {
        let leaf = chain.first()?;
        let end_entity = webpki::EndEntityCert::try_from(leaf).ok()?;
        let time = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).ok()?);
        end_entity
            .verify_for_usage(
                self.algorithms.all,
                &self.anchors,
                &chain[1..],
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .ok()?;
        Some(identity(leaf, self.device_id_from).ok_or(CertificateProblem::NoDeviceId))
    }
}

/// The device id and serial of a certificate.
fn identity(cert: &CertificateDer<'_>, from: DeviceIdFrom) -> Option<CertificateIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let device_id = match from {
        DeviceIdFrom::Cn => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        DeviceIdFrom::San => {
            let san = parsed.subject_alternative_name().ok().flatten()?;
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some(s.to_string())
                }
                _ => None,
            })
        }
    }?;
    if device_id.is_empty() {
        return None;
    }
    Some(CertificateIdentity {
        device_id,
        serial: serial_of(parsed.raw_serial()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };

    /// A CA: its PEM and what signs with it.
    pub(crate) struct TestCa {
        pub(crate) pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A client certificate with CN `cn` (and a DNS SAN `san`), its
        /// DER, its key PEM and its PEM.
        pub(crate) fn device(
            &self,
            cn: &str,
            san: Option<&str>,
            serial: u64,
        ) -> (CertificateDer<'static>, String, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.serial_number = Some(serial.into());
            if let Some(san) = san {
                params.subject_alt_names = vec![SanType::DnsName(san.try_into().unwrap())];
            }
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.der().clone(), key.serialize_pem(), cert.pem())
        }
    }

    fn verifier(ca: &TestCa, from: DeviceIdFrom) -> CertificateVerifier {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        CertificateVerifier::load(&path, from).unwrap()
    }

    #[test]
    fn a_certificate_of_the_fleet_ca_names_its_device() {
        let ca = TestCa::new("fleet CA");
        let (cert, _, _) = ca.device("dev-1", Some("dev-1.sensors"), 0x4f1a);
        let by_cn = verifier(&ca, DeviceIdFrom::Cn)
            .identify(std::slice::from_ref(&cert), SystemTime::now());
        assert_eq!(
            by_cn,
            Some(Ok(CertificateIdentity {
                device_id: "dev-1".to_owned(),
                serial: "4f1a".to_owned()
            }))
        );
        let by_san = verifier(&ca, DeviceIdFrom::San).identify(&[cert], SystemTime::now());
        assert_eq!(by_san.unwrap().unwrap().device_id, "dev-1.sensors");
    }

    #[test]
    fn another_cas_certificate_is_not_the_fleets() {
        let fleet = TestCa::new("fleet CA");
        // Same name, other key: what a CA bundle with two CAs could hold.
        let other = TestCa::new("fleet CA");
        let (cert, _, _) = other.device("dev-1", None, 1);
        assert_eq!(
            verifier(&fleet, DeviceIdFrom::Cn).identify(&[cert], SystemTime::now()),
            None
        );
        assert_eq!(
            verifier(&fleet, DeviceIdFrom::Cn).identify(&[], SystemTime::now()),
            None
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            verifier(&fleet, DeviceIdFrom::Cn).identify(&[garbage], SystemTime::now()),
            None,
            "malformed"
        );
    }

    #[test]
    fn a_certificate_without_the_id_is_refused() {
        let ca = TestCa::new("fleet CA");
        let (cert, _, _) = ca.device("dev-1", None, 2);
        assert_eq!(
            verifier(&ca, DeviceIdFrom::San).identify(&[cert], SystemTime::now()),
            Some(Err(CertificateProblem::NoDeviceId))
        );
    }

    #[test]
    fn a_bad_ca_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = CertificateVerifier::load(&path, DeviceIdFrom::Cn).unwrap_err();
        assert!(
            error.to_string().contains("holds no CA certificate"),
            "{error}"
        );
    }
}
