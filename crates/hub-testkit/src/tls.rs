//! Certificates for HTTPS mocks: a private CA generated on the spot (rcgen) and a server
//! certificate it signed for 127.0.0.1 / localhost. The hub trusts the CA through
//! `HubOptions::extra_ca_pem` / `HUB_EXTRA_CA_FILE`; certificate verification is never off.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::Flavor;
use crate::server::{MockConfig, MockServer, MockTls};

/// A fresh private CA and a server certificate it signed, offering `alpn` (in order of
/// preference): (the CA's PEM, the mock's TLS).
pub fn private_ca(alpn: &[&str]) -> Result<(String, MockTls), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "hub-testkit private CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&leaf_key, &ca)?;
    Ok((
        ca.pem(),
        MockTls {
            cert_chain_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        },
    ))
}

/// A mock of `flavor` over HTTPS with a fresh private CA, offering `alpn`: (the mock, the CA's
/// PEM for the client to trust).
pub async fn https_mock(
    flavor: Flavor,
    alpn: &[&str],
) -> Result<(MockServer, String), rcgen::Error> {
    let (ca, tls) = private_ca(alpn)?;
    let mock = MockServer::start_with_config(
        flavor,
        MockConfig {
            tls: Some(tls),
            ..MockConfig::default()
        },
    )
    .await;
    Ok((mock, ca))
}
