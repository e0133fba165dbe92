//! Signing (sans-IO): roots, leaf SVIDs and the CA's own serving certificate.

use std::time::{Duration, SystemTime};

use nodemesh_identity::{TrustBundle, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;

use crate::csr::CheckedCsr;

/// How long a root lives: ten years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How far back a leaf's notBefore is set, to absorb clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Leaf lifetimes: the default, and the bounds a request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifetimePolicy {
    /// Lifetime when none is asked for (24 h).
    pub default: Duration,
    /// Shortest lifetime that may be asked for (1 min); below is refused.
    pub min: Duration,
    /// Longest lifetime issued (7 days); longer requests are clamped.
    pub max: Duration,
    /// How far before "now" a leaf's notBefore is set, to absorb clock skew between nodes (60 s).
    pub backdate: Duration,
}

/// A leaf's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl Default for LifetimePolicy {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(86_400),
            min: Duration::from_secs(60),
            max: Duration::from_secs(7 * 86_400),
            backdate: BACKDATE,
        }
    }
}

/// Why a requested lifetime is refused (gRPC `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimeError {
    /// A negative `validity_duration`.
    #[error("validity_duration {0} is negative")]
    Negative(i64),
    /// Shorter than the minimum.
    #[error("validity_duration {requested}s is below the minimum of {min}s")]
    TooShort {
        /// Seconds asked for.
        requested: i64,
        /// The minimum, in seconds.
        min: u64,
    },
    /// Longer than the maximum, where it is not clamped ([`LifetimePolicy::window_exact`]).
    #[error("lifetime {requested}s is above the maximum of {max}s ({days} days)", days = max / 86_400)]
    TooLong {
        /// Seconds asked for.
        requested: i64,
        /// The maximum, in seconds.
        max: u64,
    },
}

/// Why a lifetime policy is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimePolicyError {
    /// The maximum is shorter than the minimum.
    #[error("the maximum lifetime {max:?} is below the minimum of {min:?}")]
    MaxBelowMin {
        /// The maximum asked for.
        max: Duration,
        /// The minimum.
        min: Duration,
    },
    /// The default lies outside the bounds.
    #[error("the default lifetime {default:?} must lie between {min:?} and the maximum {max:?}")]
    DefaultOutOfBounds {
        /// The default asked for.
        default: Duration,
        /// The minimum.
        min: Duration,
        /// The maximum.
        max: Duration,
    },
}

impl LifetimePolicy {
    /// The default policy with another `default` and `max` lifetime, refused unless
    /// `min <= default <= max`.
    pub fn with_bounds(default: Duration, max: Duration) -> Result<Self, LifetimePolicyError> {
        let policy = LifetimePolicy {
            default,
            max,
            ..LifetimePolicy::default()
        };
        let min = policy.min;
        if max < min {
            return Err(LifetimePolicyError::MaxBelowMin { max, min });
        }
        if default < min || default > max {
            return Err(LifetimePolicyError::DefaultOutOfBounds { default, min, max });
        }
        Ok(policy)
    }

    /// The lifetime to issue for a request of `seconds` (Istio's `validity_duration`): 0 means
    /// the default, longer than the maximum is clamped, negative or below the minimum is refused.
    pub fn resolve(&self, seconds: i64) -> Result<Duration, LifetimeError> {
        match seconds {
            0 => Ok(self.default),
            s if s < 0 => Err(LifetimeError::Negative(s)),
            s => {
                let asked = Duration::from_secs(s.unsigned_abs());
                if asked < self.min {
                    return Err(LifetimeError::TooShort {
                        requested: s,
                        min: self.min.as_secs(),
                    });
                }
                Ok(asked.min(self.max))
            }
        }
    }

    /// Like [`LifetimePolicy::window`], but a lifetime above the maximum is refused
    /// ([`LifetimeError::TooLong`]) instead of clamped: for an operator who asked for exactly it.
    pub fn window_exact(&self, seconds: i64, now: SystemTime) -> Result<Validity, LifetimeError> {
        if u64::try_from(seconds).is_ok_and(|s| s > self.max.as_secs()) {
            return Err(LifetimeError::TooLong {
                requested: seconds,
                max: self.max.as_secs(),
            });
        }
        self.window(seconds, now)
    }

    /// The validity window for a request of `seconds` made at `now`: from `now - backdate` to
    /// `now + lifetime`.
    pub fn window(&self, seconds: i64, now: SystemTime) -> Result<Validity, LifetimeError> {
        let lifetime = self.resolve(seconds)?;
        Ok(Validity {
            not_before: now - self.backdate,
            not_after: now + lifetime,
        })
    }
}

/// Why signing failed (an internal error: the request was fine).
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(#[from] rcgen::Error);

/// A root certificate with its key, plus the trust bundle it belongs to.
pub struct Authority {
    trust_domain: TrustDomain,
    root_cert: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, KeyPair>,
    bundle: TrustBundle,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.bundle.roots().len())
            .finish_non_exhaustive()
    }
}

/// A public key taken from a CSR, in the form rcgen signs.
struct CsrKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// How the common name of a root made by [`generate_root`] starts; the trust domain follows.
const ROOT_CN_PREFIX: &str = "nodemesh root CA ";

/// The trust domain a root made by [`generate_root`] names in its common name
/// (`nodemesh root CA <td> <id>`, or `nodemesh root CA <td>` before roots had ids); `None` for
/// another root (one an operator supplied) or a certificate that does not parse.
pub fn root_trust_domain(root: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(root).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let rest = cn.strip_prefix(ROOT_CN_PREFIX)?;
    rest.split(' ').next().map(str::to_owned)
}

/// A fresh self-signed root (ECDSA P-256, ten years) for `trust_domain`, as PEM cert and PEM key,
/// with a subject no other root has.
pub fn generate_root(
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<(String, String), SignError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "nodemesh");
    // Unique per root, so that a chain to another root fails as an unknown issuer (not as a
    // bad signature from a root of the same name) and logs say which root is which.
    let id: u64 = rand::random();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{ROOT_CN_PREFIX}{trust_domain} {id:016x}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Authority {
    /// An authority signing with `root_cert_pem`/`root_key_pem`; `bundle` must contain the root.
    pub fn new(
        trust_domain: TrustDomain,
        root_cert: CertificateDer<'static>,
        root_key_pem: &str,
        bundle: TrustBundle,
    ) -> Result<Self, SignError> {
        let key = KeyPair::from_pem(root_key_pem)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&root_cert, key)?;
        Ok(Self {
            trust_domain,
            root_cert,
            issuer,
            bundle,
        })
    }

    /// The trust domain this authority issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root that signs new certificates.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root_cert
    }

    /// Every root a peer must trust (two during a rotation).
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Issues an X.509-SVID for a checked CSR: the identity and key come from the CSR, every other
    /// field from the CA. Returns the chain as DER, leaf first, root last.
    pub fn issue(
        &self,
        csr: &CheckedCsr,
        validity: Validity,
    ) -> Result<Vec<CertificateDer<'static>>, SignError> {
        let mut params = leaf_params(validity);
        params.subject_alt_names = vec![SanType::URI(csr.identity.as_str().try_into()?)];
        let leaf = params.signed_by(&CsrKey(&csr.public_key), &self.issuer)?;
        Ok(vec![leaf.der().clone(), self.root_cert.clone()])
    }

    /// Issues the CA's own TLS serving certificate for `names` (DNS names or IP addresses), with a
    /// fresh key. Returns the chain (leaf, root) and the PKCS#8 DER key.
    pub fn issue_serving(
        &self,
        names: &[String],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), SignError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(Validity {
            not_before: now - BACKDATE,
            not_after: now + lifetime,
        });
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
            .distinguished_name
            .push(DnType::CommonName, "nodemesh CA");
        let sans = CertificateParams::new(names.to_vec())?.subject_alt_names;
        params.subject_alt_names = sans;
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok((
            vec![leaf.der().clone(), self.root_cert.clone()],
            key.serialize_der(),
        ))
    }
}

/// Parameters every leaf shares: not a CA, digitalSignature only, server+client auth, empty subject.
fn leaf_params(validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn bounds_hold_the_default() {
        let day = Duration::from_secs(86_400);
        let p = LifetimePolicy::with_bounds(day, 2 * day).expect("valid bounds");
        assert_eq!((p.default, p.min, p.max), (day, MIN, 2 * day));
        assert_eq!(p.backdate, BACKDATE);
        // The default may equal either bound.
        assert!(LifetimePolicy::with_bounds(MIN, MIN).is_ok());
        assert_eq!(
            LifetimePolicy::with_bounds(3 * day, 2 * day),
            Err(LifetimePolicyError::DefaultOutOfBounds {
                default: 3 * day,
                min: MIN,
                max: 2 * day
            })
        );
        assert_eq!(
            LifetimePolicy::with_bounds(Duration::from_secs(59), day),
            Err(LifetimePolicyError::DefaultOutOfBounds {
                default: Duration::from_secs(59),
                min: MIN,
                max: day
            })
        );
        assert_eq!(
            LifetimePolicy::with_bounds(Duration::from_secs(30), Duration::from_secs(30)),
            Err(LifetimePolicyError::MaxBelowMin {
                max: Duration::from_secs(30),
                min: MIN
            })
        );
    }
}
