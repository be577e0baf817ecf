//! TLS bound to Kogge keys: provider certificates, the verifiers, and the rustls and
//! quinn configurations built from them.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

use super::{ALPN, QuicConfig, QuicError, hex};
use crate::address::Domain;
use crate::identity::{ProviderKey, ProviderKeyPair};

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER of a PKCS#8 v1 Ed25519 private key up to the 32-byte seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The Ed25519 SubjectPublicKeyInfo of `key`.
fn spki_of(key: &ProviderKey) -> SubjectPublicKeyInfoDer<'static> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(&key.to_bytes());
    SubjectPublicKeyInfoDer::from(der)
}

/// The 32-byte Ed25519 key in an SPKI, if it is one.
fn ed25519_of_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key = spki.strip_prefix(ED25519_SPKI_PREFIX.as_slice())?;
    key.try_into().ok()
}

/// The Ed25519 public key a DER certificate carries as its subject key, or `None` if the
/// certificate does not parse or holds another kind of key. Nothing else in it is
/// checked.
pub fn ed25519_key_of_certificate(der: &[u8]) -> Option<[u8; 32]> {
    let cert = CertificateDer::from(der);
    let parsed = rustls::server::ParsedCertificate::try_from(&cert).ok()?;
    ed25519_of_spki(&parsed.subject_public_key_info())
}

/// What a presented certificate says, for log lines.
fn describe(der: &[u8]) -> String {
    let cert = CertificateDer::from(der);
    match rustls::server::ParsedCertificate::try_from(&cert) {
        Ok(parsed) => {
            let spki = parsed.subject_public_key_info();
            match ed25519_of_spki(&spki) {
                Some(k) => hex(&k),
                None => format!("a non-Ed25519 key (SPKI {})", hex(&spki)),
            }
        }
        Err(_) => "a certificate that does not parse".to_owned(),
    }
}

/// The crypto provider: ring, with its default TLS 1.3 suites.
pub(crate) fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A provider's TLS certificate and private key.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    pkcs8: Zeroizing<Vec<u8>>,
    public: ProviderKey,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("key", &self.public)
            .field("certificate_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.cert
    }

    /// The provider key it is made from.
    pub fn public_key(&self) -> &ProviderKey {
        &self.public
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.to_vec()))
    }
}

/// Makes the self-signed certificate a provider presents: its subject key is the provider
/// key, its subject alternative name the provider's domain, its validity 1975 to 4096
/// (no one checks it). The same key and domain always give the same certificate.
pub fn provider_certificate(
    key: &ProviderKeyPair,
    domain: &Domain,
) -> Result<TlsIdentity, QuicError> {
    let seed = key.secret_bytes();
    let mut pkcs8 = Zeroizing::new(Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + 32));
    pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
    pkcs8.extend_from_slice(seed.expose());
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
    let cert_error = |e: rcgen::Error| QuicError::Certificate(e.to_string());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(cert_error)?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.as_str().to_owned()]).map_err(cert_error)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("kogge provider {domain}"),
    );
    let cert = params.self_signed(&key_pair).map_err(cert_error)?;
    let public = key.public();
    let identity = TlsIdentity {
        cert: cert.der().clone(),
        pkcs8,
        public,
    };
    if ed25519_key_of_certificate(identity.certificate()) != Some(public.to_bytes()) {
        return Err(QuicError::Certificate(
            "the certificate does not carry the provider key".into(),
        ));
    }
    Ok(identity)
}

/// What a pinned verifier last refused: the presented key, described for people.
#[derive(Debug, Default)]
pub(crate) struct Refusals(Mutex<Option<String>>);

impl Refusals {
    fn record(&self, presented: String) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(presented);
        }
    }

    /// The refusal since the last call, if any.
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut last| last.take())
    }
}

/// Accepts exactly one Ed25519 key: the expected provider's.
#[derive(Debug)]
struct PinnedProviderKey {
    expected: ProviderKey,
    spki: SubjectPublicKeyInfoDer<'static>,
    crypto: Arc<CryptoProvider>,
    refusals: Arc<Refusals>,
}

/// Why a server certificate was refused (shown in the TLS error and the connect error;
/// rustls prints it with `Debug`, so `Debug` reads like `Display`).
#[derive(thiserror::Error)]
#[error("provider key mismatch: expected {expected}, presented {presented}")]
struct KeyMismatch {
    expected: String,
    presented: String,
}

impl fmt::Debug for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for PinnedProviderKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = ed25519_key_of_certificate(end_entity);
        if presented == Some(self.expected.to_bytes()) {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = describe(end_entity);
        let expected = self.expected.to_string();
        self.refusals.record(presented.clone());
        tracing::warn!(
            peer = %server_name.to_str(),
            %expected,
            %presented,
            "refusing provider: its TLS certificate key is not the expected provider key"
        );
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(KeyMismatch {
                expected,
                presented,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Verified under the pinned key itself, not whatever the certificate says.
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &self.spki,
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A certificate whose subject key is not Ed25519.
#[derive(Debug, thiserror::Error)]
#[error("the certificate holds no Ed25519 key")]
struct NotEd25519;

fn not_ed25519() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        NotEd25519,
    ))))
}

/// Takes any Ed25519 client certificate; who it is is decided after the protocol's
/// `Auth` (see the module documentation). Clients without a certificate (devices) pass.
#[derive(Debug)]
struct AnyEd25519Client {
    crypto: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyEd25519Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if ed25519_key_of_certificate(end_entity).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(
                presented = %describe(end_entity),
                "refusing a TLS client certificate that holds no Ed25519 key"
            );
            Err(not_ed25519())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let Some(key) = ed25519_key_of_certificate(cert) else {
            return Err(not_ed25519());
        };
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&key);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.crypto.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The Ed25519 key of the TLS client certificate a peer presented, if any.
pub(crate) fn peer_key(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    ed25519_key_of_certificate(certs.first()?)
}

fn transport(
    config: &QuicConfig,
    connector: bool,
) -> Result<Arc<quinn::TransportConfig>, QuicError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| QuicError::Config("idle timeout out of range".into()))?;
    t.max_idle_timeout(Some(idle));
    // The acceptor allows the connector its one stream; the connector allows none.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(u32::from(!connector)));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    if connector {
        t.keep_alive_interval(Some(config.keep_alive_interval));
    }
    Ok(Arc::new(t))
}

/// The acceptor's configuration: the provider certificate, optional Ed25519 client
/// certificates, ALPN `kogge/1`, the acceptor's limits.
pub(crate) fn server_config(
    identity: &TlsIdentity,
    config: &QuicConfig,
) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = crypto();
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyEd25519Client { crypto }))
        .with_single_cert(identity.chain(), identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(config, false)?);
    server.max_incoming(config.max_incoming);
    Ok(server)
}

fn client_config(
    expected: &ProviderKey,
    identity: Option<&TlsIdentity>,
    config: &QuicConfig,
) -> Result<(quinn::ClientConfig, Arc<Refusals>), QuicError> {
    let crypto = crypto();
    let refusals = Arc::new(Refusals::default());
    let verifier = Arc::new(PinnedProviderKey {
        expected: *expected,
        spki: spki_of(expected),
        crypto: crypto.clone(),
        refusals: refusals.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(crypto)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain(), id.private_key())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(config, true)?);
    Ok((client, refusals))
}

/// The configuration a provider dials another provider with: accepts only `expected`,
/// presents `identity` as client certificate. Public so that tools and tests can open
/// raw provider-to-provider connections.
pub fn client_config_for_provider(
    expected: &ProviderKey,
    identity: &TlsIdentity,
    config: &QuicConfig,
) -> Result<quinn::ClientConfig, QuicError> {
    client_config(expected, Some(identity), config).map(|(c, _)| c)
}

/// The configuration a device connects to its provider with: accepts only the pinned
/// `provider_key`, presents no client certificate. Public so that tools and tests can
/// open raw connections to a provider.
pub fn client_config_for_device(
    provider_key: &ProviderKey,
    config: &QuicConfig,
) -> Result<quinn::ClientConfig, QuicError> {
    client_config(provider_key, None, config).map(|(c, _)| c)
}

/// [`client_config_for_device`], with a record of the keys it refused.
pub(crate) fn device_config(
    provider_key: &ProviderKey,
    config: &QuicConfig,
) -> Result<(quinn::ClientConfig, Arc<Refusals>), QuicError> {
    client_config(provider_key, None, config)
}

/// The HMAC-SHA256 key of a provider's QUIC stateless-reset tokens, derived from its
/// provider key (SPEC.md 17.3), so that a provider restarted after a crash can reset its
/// peers' old connections and they reconnect at once.
pub(super) struct StatelessResetKey(crate::crypto::Secret<32>);

impl StatelessResetKey {
    pub(super) fn derive(key: &ProviderKeyPair) -> Result<Self, QuicError> {
        let seed = key.secret_bytes();
        let mut okm = Zeroizing::new([0u8; 32]);
        crate::crypto::hkdf_sha256(
            &[],
            seed.expose(),
            crate::crypto::Label::QuicStatelessReset,
            &[],
            okm.as_mut(),
        )
        .map_err(|e| QuicError::Config(format!("stateless reset key: {e}")))?;
        Ok(Self(crate::crypto::Secret::new(*okm)))
    }

    /// The key of the connection-id generator: a restarted provider must recognise the
    /// ids its previous run handed out, or it drops their packets instead of resetting.
    pub(super) fn cid_key(&self) -> u64 {
        use quinn::crypto::HmacKey;
        let mut out = [0u8; 32];
        self.sign(b"kogge quic connection ids", &mut out);
        let mut k = [0u8; 8];
        k.copy_from_slice(&out[..8]);
        u64::from_le_bytes(k)
    }

    fn mac(&self) -> hmac::Hmac<sha2::Sha256> {
        use hmac::KeyInit;
        // HMAC takes keys of any length: this cannot fail for 32 bytes.
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(self.0.expose())
            .unwrap_or_else(|_| <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&Default::default()))
    }
}

impl quinn::crypto::HmacKey for StatelessResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac;
        let mut mac = self.mac();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac;
        let mut mac = self.mac();
        mac.update(data);
        // Constant time (hmac's verify_slice).
        mac.verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn stateless_reset_key_follows_the_provider_key() {
        use quinn::crypto::HmacKey;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([12; 32]);
        let a = ProviderKeyPair::generate(&mut rng);
        let b = ProviderKeyPair::generate(&mut rng);
        let a2 = ProviderKeyPair::from_secret_bytes(&a.secret_bytes());
        let sign = |k: &ProviderKeyPair| {
            let key = StatelessResetKey::derive(k).unwrap();
            let mut out = [0u8; 32];
            key.sign(b"connection id", &mut out);
            assert!(key.verify(b"connection id", &out).is_ok());
            assert!(key.verify(b"connection iD", &out).is_err());
            out
        };
        // The same provider key after a restart gives the same tokens; another does not.
        assert_eq!(sign(&a), sign(&a2));
        assert_ne!(sign(&a), sign(&b));
    }

    #[test]
    fn certificate_carries_the_provider_key_and_is_deterministic() {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([9; 32]);
        let key = ProviderKeyPair::generate(&mut rng);
        let domain = Domain::parse("one.example").unwrap();
        let a = provider_certificate(&key, &domain).unwrap();
        let b = provider_certificate(&key, &domain).unwrap();
        assert_eq!(a.certificate(), b.certificate());
        assert_eq!(
            ed25519_key_of_certificate(a.certificate()),
            Some(key.public().to_bytes())
        );
        assert_eq!(ed25519_key_of_certificate(b"not a certificate"), None);
        assert_eq!(
            ed25519_of_spki(&spki_of(&key.public())),
            Some(key.public().to_bytes())
        );
        assert!(!format!("{a:?}").contains(&hex(key.secret_bytes().expose())));
    }
}
