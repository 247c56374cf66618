//! Certificates: the director's CA, its server certificate, the per-agent client certificates and
//! `certificate` variables. The director's own certificates (its CA, its server, agents) have
//! ECDSA P-256 keys; `certificate` variables RSA 3072 keys by default, as the BOSH CLI makes them
//! (ECDSA when a definition asks for it: [`KeyKind`]).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a certificate for `{common_name}`")]
    Generate {
        common_name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the CA certificate or key is not valid PEM")]
    LoadCa(#[source] rcgen::Error),
    #[error("could not make an RSA key for `{common_name}`: {message}")]
    Rsa { common_name: String, message: String },
}

/// What a leaf certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeafUsage {
    pub server: bool,
    pub client: bool,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// DER bytes of the certificate (to fingerprint it).
    pub cert_der: Vec<u8>,
}

/// The kind of key a certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    #[default]
    EcdsaP256,
    /// RSA of this many bits; its private key is written PKCS#1 (`RSA PRIVATE KEY`), as bosh writes it.
    Rsa(usize),
}

/// A new key pair of `kind`, and its private key's PEM.
fn new_key(kind: KeyKind, cn: &str) -> Result<(KeyPair, String), PkiError> {
    match kind {
        KeyKind::EcdsaP256 => {
            let key = KeyPair::generate().map_err(gen_err(cn))?;
            let pem = key.serialize_pem();
            Ok((key, pem))
        }
        KeyKind::Rsa(bits) => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let failed =
                |e: &dyn std::fmt::Display| PkiError::Rsa { common_name: cn.to_string(), message: e.to_string() };
            let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).map_err(|e| failed(&e))?;
            let pkcs8 = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| failed(&e))?;
            let key = KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).map_err(gen_err(cn))?;
            let pem = rsa_key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| failed(&e))?;
            Ok((key, pem.to_string()))
        }
    }
}

pub struct CertAuthority {
    cert: Certificate,
    key: KeyPair,
    cert_pem: String,
}

fn gen_err(cn: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate { common_name: cn.to_string(), source }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 / 86_400)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + i64::from(days.max(1)));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

impl CertAuthority {
    pub fn generate(common_name: &str, org: Option<&str>, days: u32) -> Result<Self, PkiError> {
        Self::generate_with(common_name, org, days, KeyKind::EcdsaP256).map(|(ca, _)| ca)
    }

    /// A new self-signed CA with a key of `kind`; also its private key's PEM in the form that kind
    /// is written in.
    pub fn generate_with(
        common_name: &str,
        org: Option<&str>,
        days: u32,
        kind: KeyKind,
    ) -> Result<(Self, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen_err(common_name))?;
        p.distinguished_name = dn(common_name, org);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut p, days);
        let (key, key_pem) = new_key(kind, common_name)?;
        let cert = p.self_signed(&key).map_err(gen_err(common_name))?;
        let cert_pem = cert.pem();
        Ok((Self { cert, key, cert_pem }, key_pem))
    }

    /// A CA from its certificate and key; the key in PKCS#8 (`PRIVATE KEY`) or, as bosh and
    /// older vars-stores write RSA keys, PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = if key_pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let rsa_key = rsa::RsaPrivateKey::from_pkcs1_pem(key_pem)
                .map_err(|_| PkiError::LoadCa(rcgen::Error::CouldNotParseKeyPair))?;
            let pkcs8 = rsa_key.to_pkcs8_der().map_err(|_| PkiError::LoadCa(rcgen::Error::CouldNotParseKeyPair))?;
            KeyPair::try_from(pkcs8.as_bytes()).map_err(PkiError::LoadCa)?
        } else {
            KeyPair::from_pem(key_pem).map_err(PkiError::LoadCa)?
        };
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(PkiError::LoadCa)?;
        // Re-signing the parsed parameters gives an issuer with the same name and key, which is
        // all that signing needs; the original PEM stays the one we hand out.
        let cert = params.self_signed(&key).map_err(PkiError::LoadCa)?;
        Ok(Self { cert, key, cert_pem: cert_pem.to_string() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a leaf (or, with `is_ca`, an intermediate CA) certificate. `sans` may hold IP
    /// addresses and DNS names.
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        usage: LeafUsage,
        days: u32,
        is_ca: bool,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_with(common_name, None, sans, usage, days, is_ca, KeyKind::EcdsaP256)
    }

    /// [`issue`](Self::issue) with an organization in the subject (Kubernetes reads it as the
    /// client's group, e.g. `system:nodes`, `system:masters`) and a key of `kind`.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_with(
        &self,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: LeafUsage,
        days: u32,
        is_ca: bool,
        kind: KeyKind,
    ) -> Result<IssuedCert, PkiError> {
        let mut p = CertificateParams::new(sans.to_vec()).map_err(gen_err(common_name))?;
        p.distinguished_name = dn(common_name, organization);
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        } else {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            if usage.server {
                p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if usage.client {
                p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
            }
        }
        validity(&mut p, days);
        let (key, key_pem) = new_key(kind, common_name)?;
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(gen_err(common_name))?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem, cert_der: cert.der().to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vars-store written by bosh holds RSA keys in PKCS#1 form: such a CA signs new leaves.
    #[test]
    fn a_ca_with_a_pkcs1_rsa_key_issues_certificates() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pkcs8 = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let key = KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "bosh-made CA");
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let pkcs1_pem = rsa_key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        assert!(pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let ca = CertAuthority::from_pem(&cert_pem, &pkcs1_pem).unwrap();
        let leaf =
            ca.issue("leaf", &["leaf.example".into()], LeafUsage { server: true, client: false }, 30, false).unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = CertAuthority::generate("test-ca", None, 10).unwrap();
        let again = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let leaf = again
            .issue(
                "leaf",
                &["127.0.0.1".into(), "localhost".into()],
                LeafUsage { server: true, client: false },
                10,
                false,
            )
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
