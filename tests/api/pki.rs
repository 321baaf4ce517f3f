//! Certificates made for a test: a CA of its own and the certificates it signs (rcgen), for the
//! server's TLS and for TLS to PostgreSQL.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that signs certificates.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
pub(crate) struct Pair {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Pair {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = CertificateParams::new(names.clone()).expect("subject names");
        self.sign(params, &names[0], purpose)
    }

    /// A server certificate for `localhost` with this serial number and not-after date.
    pub(crate) fn issue_server(&self, serial: u64, not_after: (i32, u8, u8)) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("subject names");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        self.sign(params, "localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose only subject alternative name is the URI `uri` (a SPIFFE ID).
    pub(crate) fn issue_uri(&self, uri: &str, common_name: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        let uri = rcgen::string::Ia5String::try_from(uri).expect("an IA5 URI");
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        self.sign(params, common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        common_name: &str,
        purpose: ExtendedKeyUsagePurpose,
    ) -> Pair {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages.push(purpose);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}
