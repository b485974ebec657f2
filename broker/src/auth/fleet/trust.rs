//! TLS listeners that ask for client certificates also accept those of the
//! certificate fleets' CAs, whichever fleets are in force when the device
//! connects (fleets come and go without rebuilding the listener).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::Fleets;

/// The fleets in force, shared with the access control that reloads them.
pub type FleetTrust = Arc<ArcSwap<Fleets>>;

/// A listener's client verifier that also trusts the fleets' CAs.
#[derive(Debug)]
pub struct FleetClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    fleets: FleetTrust,
}

impl FleetClientVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, fleets: FleetTrust) -> FleetClientVerifier {
        FleetClientVerifier { inner, fleets }
    }
}

impl ClientCertVerifier for FleetClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The fleets' CAs change at run time: no hints rather than
        // hints that leave them out (clients then send what they have).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(verified) => Ok(verified),
            Err(error) => {
                let mut chain = Vec::with_capacity(1 + intermediates.len());
                chain.push(end_entity.clone().into_owned());
                chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
                if self.fleets.load().trusts(&chain, at) {
                    Ok(ClientCertVerified::assertion())
                } else {
                    Err(error)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
