//! QUIC and TLS configuration: libp2p TLS certificates (the node's Ed25519 identity in a
//! certificate extension, verified on both sides) under the mesh's own ALPN.
//!
//! Certificates are made and checked by `libp2p-tls` (`certificate::generate`, `parse`,
//! `verify_signature`), exactly as its `make_client_config` / `make_server_config` do; only the
//! rustls configuration around them is built here, for one reason: `libp2p-tls` fixes the cipher
//! suite order with ChaCha20-Poly1305 first, and on CPUs with AES instructions that cipher was a
//! third of the mesh's CPU time at multi-gigabit rates (`mesh_bench` under `perf`). The mesh
//! offers AES-128-GCM first; ChaCha20 stays available. The verifier below is `libp2p-tls`'s, line
//! for line: exactly one certificate, valid libp2p extension and self-signature, the expected peer
//! id when dialing, TLS 1.3 handshake signatures checked against the certificate's key.

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls;
use quinn::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, PeerIncompatible, SignatureScheme,
};
use quinn::{Connection, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

use crate::config::Tuning;
use crate::error::MeshError;

/// ALPN of the mesh: a libp2p (gossip) client cannot complete a handshake with the mesh, nor a
/// mesh client with libp2p.
pub const ALPN: &[u8] = b"shoal-mesh/1";

/// Server name sent in the client hello; identity is checked through the certificate's peer id,
/// not through this name.
pub(crate) const SERVER_NAME: &str = "shoal-mesh";

/// Transport parameters. `accept_streams` is how many bidirectional streams the peer may open:
/// the tuning's limit on accepted connections, zero on dialed ones (they carry only our
/// streams).
pub(crate) fn transport(
    tuning: &Tuning,
    accept_streams: u32,
) -> Result<TransportConfig, MeshError> {
    let idle = IdleTimeout::try_from(tuning.idle_timeout).map_err(|_| {
        MeshError::Config(format!(
            "idle_timeout {:?} is too long",
            tuning.idle_timeout
        ))
    })?;
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(accept_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    t.keep_alive_interval(Some(tuning.keep_alive_interval));
    t.max_idle_timeout(Some(idle));
    t.stream_receive_window(VarInt::from_u32(tuning.stream_receive_window));
    t.receive_window(VarInt::from_u32(tuning.receive_window));
    t.send_window(tuning.send_window);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(tuning.mtu_upper_bound);
    t.mtu_discovery_config(Some(mtu));
    t.allow_spin(false);
    Ok(t)
}

fn tls_error(e: impl std::fmt::Display) -> MeshError {
    MeshError::Tls(e.to_string())
}

/// TLS 1.3 with AES-128-GCM preferred (see the module doc).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// A fresh libp2p certificate for `keypair` with its signing key. Installed through a resolver
/// rather than `with_single_cert`, which would reject the libp2p extension (it is critical).
fn certified_key(
    keypair: &Keypair,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<rustls::sign::SingleCertAndKey>, MeshError> {
    let (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>) =
        libp2p_tls::certificate::generate(keypair).map_err(tls_error)?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(tls_error)?;
    Ok(Arc::new(rustls::sign::SingleCertAndKey::from(
        rustls::sign::CertifiedKey::new(vec![cert], key),
    )))
}

/// The server side: presents our certificate, requires and verifies the client's.
pub(crate) fn server_config(
    keypair: &Keypair,
    tuning: &Tuning,
) -> Result<quinn::ServerConfig, MeshError> {
    let provider = provider();
    let resolver = certified_key(keypair, &provider)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(PeerVerifier { expected: None }))
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport(tuning, tuning.max_concurrent_streams)?));
    config.max_incoming(tuning.max_handshakes.max(1) as usize);
    Ok(config)
}

/// The client side for dialing `peer`: the handshake fails unless the server's certificate
/// carries exactly that peer id.
pub(crate) fn client_config(
    keypair: &Keypair,
    peer: PeerId,
    transport: Arc<TransportConfig>,
) -> Result<quinn::ClientConfig, MeshError> {
    let provider = provider();
    let resolver = certified_key(keypair, &provider)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            expected: Some(peer),
        }))
        .with_client_cert_resolver(resolver);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(tls_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The peer id in the certificate the peer presented (already verified by the handshake).
pub(crate) fn peer_id(conn: &Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let cert = libp2p_tls::certificate::parse(certs.first()?).ok()?;
    Some(cert.peer_id())
}

/// Verifies libp2p certificates (both directions), as `libp2p-tls`'s own verifier does.
#[derive(Debug)]
struct PeerVerifier {
    /// When dialing: the only peer id the server may present.
    expected: Option<PeerId>,
}

/// The presented chain must be exactly one libp2p certificate with a valid extension and
/// self-signature; returns its peer id.
fn presented_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "libp2p-tls requires exactly one certificate".into(),
        ));
    }
    let cert = libp2p_tls::certificate::parse(end_entity)
        .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(other(e))))?;
    Ok(cert.peer_id())
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::OtherError {
    rustls::OtherError(Arc::new(e))
}

/// The handshake signature must verify under the certificate's key.
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    libp2p_tls::certificate::parse(cert)
        .map_err(|e| rustls::Error::InvalidCertificate(CertificateError::Other(other(e))))?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

fn verification_schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ]
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = presented_peer(end_entity, intermediates)?;
        if self.expected.is_some_and(|expected| expected != peer) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured; refuse rather than trust.
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verification_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        presented_peer(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        verification_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libp2p_cert(keypair: &Keypair) -> CertificateDer<'static> {
        libp2p_tls::certificate::generate(keypair).unwrap().0
    }

    #[test]
    fn a_libp2p_certificate_yields_its_peer_id() {
        let keypair = Keypair::generate_ed25519();
        let peer = presented_peer(&libp2p_cert(&keypair), &[]).unwrap();
        assert_eq!(peer, keypair.public().to_peer_id());
    }

    #[test]
    fn chains_and_foreign_certificates_are_refused() {
        let keypair = Keypair::generate_ed25519();
        let cert = libp2p_cert(&keypair);
        assert!(presented_peer(&cert, std::slice::from_ref(&cert)).is_err());
        let foreign = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
        assert!(presented_peer(foreign.cert.der(), &[]).is_err());
        assert!(presented_peer(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]), &[]).is_err());
    }

    #[test]
    fn the_dialer_accepts_only_the_expected_peer() {
        let server = Keypair::generate_ed25519();
        let cert = libp2p_cert(&server);
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let check = |expected| {
            PeerVerifier { expected }.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        };
        assert!(check(Some(server.public().to_peer_id())).is_ok());
        assert!(check(None).is_ok());
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            check(Some(other)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        ));
    }

    #[test]
    fn aes_gcm_is_offered_first() {
        let suites = &provider().cipher_suites;
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(suites.len(), 3);
    }
}
