//! The secrets that define a cluster, kept together so that
//! `nodectl gen secrets -o secrets.yaml` and later
//! `nodectl gen config --with-secrets secrets.yaml` produce configurations
//! for the same cluster.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::ca::CertificateAuthority;
use crate::error::Error;
use crate::validity::{CA_LIFETIME, Validity};

/// Characters of a bootstrap token.
const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Length of the token's id part (before the dot).
const TOKEN_ID_LEN: usize = 6;
/// Length of the token's secret part (after the dot).
const TOKEN_SECRET_LEN: usize = 16;
/// Random bytes in a cluster id (shown as twice as many hex digits).
const CLUSTER_ID_BYTES: usize = 16;
/// Bytes of the secretbox encryption key.
const SECRETBOX_BYTES: usize = 32;

/// Everything secret a cluster is made from.
///
/// In YAML the fields keep their names; the CAs are `{cert: <PEM>, key: <PEM>}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsBundle {
    /// CA of the machine API: signs node server certificates and client
    /// certificates.
    pub os_ca: CertificateAuthority,
    /// CA of etcd: signs the etcd members' peer, server and client certificates.
    pub etcd_ca: CertificateAuthority,
    /// Random cluster identity: 32 lower-case hex digits.
    pub cluster_id: String,
    /// Token nodes join with: `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub bootstrap_token: String,
    /// Key for encrypting secrets at rest: base64 of 32 random bytes.
    pub secretbox_secret: String,
}

impl fmt::Debug for SecretsBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what is not secret.
        f.debug_struct("SecretsBundle")
            .field("os_ca", &self.os_ca)
            .field("etcd_ca", &self.etcd_ca)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl SecretsBundle {
    /// Generates new secrets for the cluster `cluster_name` (which goes into
    /// the CAs' common names). The CAs are valid for [`CA_LIFETIME`].
    pub fn generate(cluster_name: &str) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let validity = Validity::from_now(CA_LIFETIME);
        let os_ca =
            CertificateAuthority::generate(&format!("{cluster_name} bramble CA"), validity)?;
        let etcd_ca = CertificateAuthority::generate(&format!("{cluster_name} etcd CA"), validity)?;
        let bundle = Self {
            os_ca,
            etcd_ca,
            cluster_id: crate::hex(&random_bytes::<CLUSTER_ID_BYTES>(&rng)?),
            bootstrap_token: format!(
                "{}.{}",
                random_token_part(&rng, TOKEN_ID_LEN)?,
                random_token_part(&rng, TOKEN_SECRET_LEN)?
            ),
            secretbox_secret: BASE64.encode(random_bytes::<SECRETBOX_BYTES>(&rng)?),
        };
        bundle.validate()?;
        Ok(bundle)
    }

    /// The bundle as YAML.
    pub fn to_yaml(&self) -> Result<String, Error> {
        Ok(serde_norway::to_string(self)?)
    }

    /// Reads a bundle written by [`SecretsBundle::to_yaml`]. Unknown fields,
    /// a CA whose key does not match and malformed values are refused.
    pub fn from_yaml(yaml: &str) -> Result<Self, Error> {
        let bundle: Self = serde_norway::from_str(yaml)?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// Checks the format of the generated values (the CAs are checked when
    /// they are constructed).
    pub fn validate(&self) -> Result<(), Error> {
        if self.cluster_id.len() != 2 * CLUSTER_ID_BYTES
            || !self
                .cluster_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::Secrets {
                field: "cluster_id",
                reason: format!("expected {} lower-case hex digits", 2 * CLUSTER_ID_BYTES),
            });
        }
        if !is_bootstrap_token(&self.bootstrap_token) {
            return Err(Error::Secrets {
                field: "bootstrap_token",
                reason: "expected 6 and 16 characters of a-z and 0-9, joined by a dot".to_owned(),
            });
        }
        match BASE64.decode(&self.secretbox_secret) {
            Ok(key) if key.len() == SECRETBOX_BYTES => {}
            Ok(key) => {
                return Err(Error::Secrets {
                    field: "secretbox_secret",
                    reason: format!("expected {SECRETBOX_BYTES} bytes, found {}", key.len()),
                });
            }
            Err(e) => {
                return Err(Error::Secrets {
                    field: "secretbox_secret",
                    reason: format!("not base64: {e}"),
                });
            }
        }
        Ok(())
    }
}

/// Whether `token` has the bootstrap token format `[a-z0-9]{6}\.[a-z0-9]{16}`.
pub fn is_bootstrap_token(token: &str) -> bool {
    let part =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| TOKEN_ALPHABET.contains(&b));
    match token.split_once('.') {
        Some((id, secret)) => part(id, TOKEN_ID_LEN) && part(secret, TOKEN_SECRET_LEN),
        None => false,
    }
}

fn random_bytes<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    rng.fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(bytes)
}

/// `len` characters drawn uniformly from [`TOKEN_ALPHABET`].
fn random_token_part(rng: &SystemRandom, len: usize) -> Result<String, Error> {
    // Bytes from 252 up are dropped so that every character is equally likely.
    const LIMIT: u8 = 252;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>(rng)? {
            if b < LIMIT && out.len() < len {
                out.push(char::from(
                    TOKEN_ALPHABET[usize::from(b) % TOKEN_ALPHABET.len()],
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_their_formats() {
        let a = SecretsBundle::generate("bramble").unwrap();
        let b = SecretsBundle::generate("bramble").unwrap();
        assert!(
            is_bootstrap_token(&a.bootstrap_token),
            "{}",
            a.bootstrap_token
        );
        assert_eq!(a.cluster_id.len(), 32);
        assert!(
            a.cluster_id
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(BASE64.decode(&a.secretbox_secret).unwrap().len(), 32);
        assert_ne!(a.cluster_id, b.cluster_id);
        assert_ne!(a.bootstrap_token, b.bootstrap_token);
        assert_ne!(a.secretbox_secret, b.secretbox_secret);
        assert_ne!(a.os_ca.fingerprint(), a.etcd_ca.fingerprint());
        let debug = format!("{a:?}");
        assert!(!debug.contains(&a.bootstrap_token));
        assert!(!debug.contains(&a.secretbox_secret));
        assert!(!debug.contains("PRIVATE"));
    }

    #[test]
    fn token_format() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef0123456789abcdef"));
        assert!(!is_bootstrap_token("abcde.0123456789abcdefg"));
        assert!(!is_bootstrap_token("ABCDEF.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcde"));
        assert!(!is_bootstrap_token("abcdef.0123456789abcdef0"));
        assert!(!is_bootstrap_token("abc-ef.0123456789abcdef"));
        assert!(!is_bootstrap_token("abcdef.0123456789.bcdef"));
        let rng = SystemRandom::new();
        for _ in 0..50 {
            let part = random_token_part(&rng, 16).unwrap();
            assert_eq!(part.len(), 16);
            assert!(part.bytes().all(|b| TOKEN_ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn yaml_round_trip() {
        let bundle = SecretsBundle::generate("home").unwrap();
        let yaml = bundle.to_yaml().unwrap();
        assert!(yaml.contains("os_ca:"), "{yaml}");
        assert!(yaml.contains("BEGIN CERTIFICATE"), "{yaml}");
        let back = SecretsBundle::from_yaml(&yaml).unwrap();
        assert_eq!(back, bundle);
        assert_eq!(back.os_ca.fingerprint(), bundle.os_ca.fingerprint());
        assert_eq!(back.to_yaml().unwrap(), yaml);
        // The CA read back still issues certificates that chain to it.
        let v = Validity::from_now(std::time::Duration::from_secs(60));
        back.os_ca
            .issue_client("alice", crate::Role::Admin, v)
            .unwrap();
    }

    #[test]
    fn yaml_with_bad_values_is_refused() {
        let bundle = SecretsBundle::generate("home").unwrap();
        let yaml = bundle.to_yaml().unwrap();

        let token = yaml.replace(&bundle.bootstrap_token, "short.token");
        assert!(matches!(
            SecretsBundle::from_yaml(&token),
            Err(Error::Secrets {
                field: "bootstrap_token",
                ..
            })
        ));

        let id = yaml.replace(&bundle.cluster_id, &bundle.cluster_id.to_uppercase());
        assert!(matches!(
            SecretsBundle::from_yaml(&id),
            Err(Error::Secrets {
                field: "cluster_id",
                ..
            })
        ));

        let mut short = bundle.clone();
        short.secretbox_secret = BASE64.encode([0u8; 16]);
        assert!(matches!(
            SecretsBundle::from_yaml(&short.to_yaml().unwrap()),
            Err(Error::Secrets {
                field: "secretbox_secret",
                ..
            })
        ));

        // The etcd CA's key under the OS CA's certificate.
        let mut swapped: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
        let etcd_key = swapped["etcd_ca"]["key"].clone();
        swapped["os_ca"]["key"] = etcd_key;
        let swapped = serde_norway::to_string(&swapped).unwrap();
        let err = SecretsBundle::from_yaml(&swapped).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        let extra = format!("{yaml}unexpected: 1\n");
        assert!(matches!(
            SecretsBundle::from_yaml(&extra),
            Err(Error::Yaml(_))
        ));
    }
}
