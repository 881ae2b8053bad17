//! Errors of the PKI crate.

use time::OffsetDateTime;

/// Everything that can go wrong generating, reading or using certificates
/// and cluster secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generating a key or signing a certificate failed.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),

    /// A PEM input could not be read.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read ("CA certificate", "private key", ...).
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },

    /// A certificate could not be parsed as X.509.
    #[error("invalid certificate: {0}")]
    Certificate(String),

    /// The certificate given as a CA may not sign certificates.
    #[error("not a CA certificate: {0}")]
    NotCa(&'static str),

    /// The private key does not belong to the certificate.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,

    /// A validity period that ends before it starts.
    #[error(
        "invalid validity period: not before {not_before} is not earlier than not after {not_after}"
    )]
    Validity {
        /// Start of the period.
        not_before: OffsetDateTime,
        /// End of the period.
        not_after: OffsetDateTime,
    },

    /// A name that cannot go into a certificate.
    #[error("invalid name {name:?}: {reason}")]
    Name {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// rustls refused the certificates or key for a TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// rustls refused the trust anchors for a certificate verifier.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    /// The secrets bundle could not be written or read as YAML.
    #[error("secrets bundle: {0}")]
    Yaml(#[from] serde_norway::Error),

    /// A value in the secrets bundle has the wrong format.
    #[error("secrets bundle: {field}: {reason}")]
    Secrets {
        /// The field that is wrong.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
