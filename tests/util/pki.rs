//! Certificates for tests of the TCP carrier: a certificate authority made with rcgen, and
//! leaf certificates it signs, as PEM, and `Tls` settings from them.

use tokio_pvm::Tls;

/// A certificate authority and the certificates it signs, as PEM.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca,
            ca_issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) with common name `cn`,
    /// valid from `not_before` to `not_after` days from now.
    pub fn leaf_valid(&self, cn: &str, names: &[&str], days: (i64, i64)) -> (String, String) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let now = time_now();
        params.not_before = now + rcgen_days(days.0);
        params.not_after = now + rcgen_days(days.1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        self.leaf_valid(cn, names, (-1, 30))
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// TLS for a side with a certificate for `cn` (valid for localhost and 127.0.0.1)
    /// signed here, trusting `trusted`'s authority.
    pub fn tls(&self, cn: &str, trusted: &Pki) -> Tls {
        let (cert, key) = self.leaf(cn, &["localhost", "127.0.0.1"]);
        Tls::from_pem(cert.as_bytes(), key.as_bytes(), trusted.ca_pem().as_bytes()).unwrap()
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}
