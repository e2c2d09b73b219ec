//! Mutual TLS per source: a source can require that the sender present, in the TLS
//! handshake, a certificate issued by the source's own CA and naming the sender.
//!
//! The handshake itself only asks for a certificate (and checks it chains to one of the
//! configured CAs); which source a certificate is good for is decided here, per request,
//! because one listener serves every source. A certificate that is valid for one source is
//! refused by another: it must chain to *that* source's CA and carry one of *its* names.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};

/// `[sources.<name>.client_certificate]`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// PEM file with the CA certificate(s) that issue this source's client certificates.
    #[schema(value_type = String)]
    pub ca_file: PathBuf,
    /// Names the certificate must carry, any one of them: matched against the subject's
    /// common name, the whole subject (`CN=hooks,O=Partner`), and each subject alternative
    /// name (DNS name, URI, e-mail, IP address). DNS names and e-mails compare without
    /// regard to case.
    pub names: Vec<String>,
}

/// The certificate chain a client presented in the TLS handshake, end entity first.
pub type PresentedChain = Arc<[CertificateDer<'static>]>;

/// A built rule: the source's CA and the names it accepts.
#[derive(Debug)]
pub struct ClientCertRule {
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CA certificates, for the listener's union of accepted issuers.
    pub ca_certificates: Vec<CertificateDer<'static>>,
    names: Vec<String>,
}

/// Why a presented certificate was not good for the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error("the source requires a client certificate and none was presented")]
    Missing,
    #[error("the client certificate was not issued by this source's CA: {0}")]
    Untrusted(String),
    #[error("the client certificate names no sender this source accepts")]
    NameMismatch,
    #[error("the client certificate cannot be read")]
    Unreadable,
}

impl ClientCertConfig {
    /// Reads the CA file and builds the rule; errors name the field at fault.
    pub fn build(&self) -> Result<ClientCertRule, Vec<(String, String)>> {
        let mut errors = Vec::new();
        if self.names.is_empty() || self.names.iter().any(|n| n.trim().is_empty()) {
            errors.push((
                "names".to_string(),
                "list at least one name the certificate must carry (a common name, subject or alternative name)".to_string(),
            ));
        }
        let ca_certificates: Vec<CertificateDer<'static>> =
            match CertificateDer::pem_file_iter(&self.ca_file) {
                Ok(iter) => match iter.collect::<Result<Vec<_>, _>>() {
                    Ok(certs) if !certs.is_empty() => certs,
                    Ok(_) => {
                        errors.push((
                            "ca_file".into(),
                            format!("{} holds no PEM certificate", self.ca_file.display()),
                        ));
                        Vec::new()
                    }
                    Err(e) => {
                        errors.push(("ca_file".into(), format!("{}: {e}", self.ca_file.display())));
                        Vec::new()
                    }
                },
                Err(e) => {
                    errors.push((
                        "ca_file".into(),
                        format!("cannot read {}: {e}", self.ca_file.display()),
                    ));
                    Vec::new()
                }
            };
        if !errors.is_empty() {
            return Err(errors);
        }
        let verifier = build_verifier(&ca_certificates, false)
            .map_err(|e| vec![("ca_file".to_string(), e)])?;
        Ok(ClientCertRule {
            verifier,
            ca_certificates,
            names: self.names.clone(),
        })
    }
}

/// A verifier of client certificates issued by `cas`; `optional`: a client may also
/// present none (the listener's verifier, since not every source asks for one).
pub fn build_verifier(
    cas: &[CertificateDer<'static>],
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| format!("{e}"))
}

impl ClientCertRule {
    /// Whether `chain` (end entity first) is good for this source at `now`.
    pub fn check(&self, chain: Option<&[CertificateDer<'static>]>) -> Result<(), CertRefusal> {
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err(CertRefusal::Missing);
        };
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| CertRefusal::Untrusted(e.to_string()))?;
        let names = certificate_names(end_entity).ok_or(CertRefusal::Unreadable)?;
        if names_match(&names, &self.names) {
            Ok(())
        } else {
            Err(CertRefusal::NameMismatch)
        }
    }
}

/// The names a certificate carries, as the matching reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subject as an RFC 4514 string (`CN=hooks,O=Partner`).
    pub subject: String,
    pub common_names: Vec<String>,
    /// Alternative names whose comparison ignores case (DNS names, e-mails).
    pub caseless: Vec<String>,
    /// Alternative names compared exactly (URIs, IP addresses).
    pub exact: Vec<String>,
}

/// Reads the subject and alternative names of a DER certificate; `None` when it does not
/// parse (a verified certificate always does).
pub fn certificate_names(der: &[u8]) -> Option<CertificateNames> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let mut names = CertificateNames {
        subject: subject.to_string(),
        common_names: subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect(),
        ..Default::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) => {
                    names.caseless.push(n.to_string())
                }
                GeneralName::URI(u) => names.exact.push(u.to_string()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    names.exact.extend(ip);
                }
                _ => {}
            }
        }
    }
    Some(names)
}

/// Whether any of `wanted` is one of the certificate's names. Pure, for tests and fuzzing.
pub fn names_match(names: &CertificateNames, wanted: &[String]) -> bool {
    wanted.iter().any(|w| {
        names.common_names.iter().any(|cn| cn == w)
            || same_subject(&names.subject, w)
            || names.caseless.iter().any(|n| n.eq_ignore_ascii_case(w))
            || names.exact.iter().any(|n| n == w)
    })
}

/// Subjects written with or without spaces after the commas are the same subject.
fn same_subject(subject: &str, wanted: &str) -> bool {
    let squeeze = |s: &str| {
        s.split(',')
            .map(|part| part.trim().to_string())
            .collect::<Vec<_>>()
    };
    wanted.contains('=') && squeeze(subject) == squeeze(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn client(ca: &Ca, cn: &str, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Partner");
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn rule(ca: &Ca, names: &[&str]) -> ClientCertRule {
        let dir = tempdir();
        let path = dir.join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        ClientCertConfig {
            ca_file: path,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
        .build()
        .unwrap()
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "raccordo-client-cert-{}-{}",
            std::process::id(),
            ulid::Ulid::new()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_certificate_is_good_only_for_its_own_ca_and_names() {
        let partner_ca = ca("Partner CA");
        let other_ca = ca("Other CA");
        let rule = rule(&partner_ca, &["hooks-prod"]);
        let good = client(&partner_ca, "hooks-prod", vec![]);
        assert_eq!(rule.check(Some(&[good])), Ok(()));

        let wrong_name = client(&partner_ca, "hooks-staging", vec![]);
        assert_eq!(
            rule.check(Some(&[wrong_name])),
            Err(CertRefusal::NameMismatch)
        );
        let wrong_ca = client(&other_ca, "hooks-prod", vec![]);
        assert!(matches!(
            rule.check(Some(&[wrong_ca])),
            Err(CertRefusal::Untrusted(_))
        ));
        assert_eq!(rule.check(None), Err(CertRefusal::Missing));
        assert_eq!(rule.check(Some(&[])), Err(CertRefusal::Missing));
    }

    #[test]
    fn names_match_subjects_and_each_kind_of_alternative_name() {
        let ca = ca("Partner CA");
        let cert = client(
            &ca,
            "hooks",
            vec![
                SanType::DnsName("Hooks.Partner.Example".try_into().unwrap()),
                SanType::URI("spiffe://partner/hooks".try_into().unwrap()),
                SanType::Rfc822Name("ops@partner.example".try_into().unwrap()),
                SanType::IpAddress("192.0.2.7".parse().unwrap()),
            ],
        );
        let names = certificate_names(&cert).unwrap();
        for wanted in [
            "hooks",
            "CN=hooks, O=Partner",
            "CN=hooks,O=Partner",
            "hooks.partner.example",
            "spiffe://partner/hooks",
            "OPS@partner.example",
            "192.0.2.7",
        ] {
            assert!(
                names_match(&names, &[wanted.to_string()]),
                "{wanted} should match {names:?}"
            );
        }
        for unwanted in [
            "Hooks",
            "O=Partner",
            "partner.example",
            "spiffe://partner/HOOKS",
            "192.0.2.8",
            "",
        ] {
            assert!(
                !names_match(&names, &[unwanted.to_string()]),
                "{unwanted} should not match"
            );
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let missing = ClientCertConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            names: vec![],
        }
        .build()
        .unwrap_err();
        let fields: Vec<&str> = missing.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["names", "ca_file"]);
        let dir = tempdir();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let errors = ClientCertConfig {
            ca_file: empty,
            names: vec!["x".into()],
        }
        .build()
        .unwrap_err();
        assert!(errors[0].1.contains("no PEM certificate"), "{errors:?}");
    }

    proptest::proptest! {
        /// Any bytes as a certificate: no panic, and an empty list of names matches nothing.
        #[test]
        fn any_bytes_read_without_panic(der in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), wanted in "[ -~]{0,40}") {
            if let Some(names) = certificate_names(&der) {
                let _ = names_match(&names, &[wanted]);
                proptest::prop_assert!(!names_match(&names, &[]));
            }
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(certificate_names(b""), None);
        assert_eq!(certificate_names(&[0x30, 0x82, 0xff, 0xff]), None);
    }
}
