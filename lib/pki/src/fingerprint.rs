//! SHA-256 certificate fingerprints, written `SHA256:<64 hex digits>`: how
//! `apid` prints its maintenance-mode certificate and how
//! `nodectl --cert-fingerprint` pins it.

use std::fmt;

/// SHA-256 fingerprint of a DER certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Parses `SHA256:<64 hex digits>`; the prefix is optional, case and
    /// `:` separators between bytes are ignored.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let hex = match s.split_once(':') {
            Some((algo, rest)) if algo.eq_ignore_ascii_case("sha256") => rest,
            Some((algo, _)) if !algo.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(format!(
                    "unsupported fingerprint algorithm '{algo}': use SHA256:<hex>"
                ));
            }
            _ => s,
        };
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(format!(
                "expected SHA256: and 64 hex digits (as apid prints it), got {} digits",
                digits.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err("fingerprint has a character that is not a hex digit".into()),
            }
        }
        Ok(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn fingerprint_roundtrip() {
        let f = Fingerprint::of_der(b"");
        assert_eq!(f.to_string(), format!("SHA256:{HEX}"));
        assert_eq!(Fingerprint::parse(&format!("SHA256:{HEX}")).unwrap(), f);
        assert_eq!(
            Fingerprint::parse(&format!("sha256:{}", HEX.to_uppercase())).unwrap(),
            f
        );
        assert_eq!(Fingerprint::parse(HEX).unwrap(), f);
        let colons: Vec<String> = HEX
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(
            Fingerprint::parse(&format!("SHA256:{}", colons.join(":"))).unwrap(),
            f
        );
    }

    #[test]
    fn fingerprint_errors() {
        assert!(
            Fingerprint::parse("SHA256:abc")
                .unwrap_err()
                .contains("64 hex digits")
        );
        assert!(
            Fingerprint::parse("MD5:abc")
                .unwrap_err()
                .contains("unsupported")
        );
        let bad = format!("SHA256:{}zz", &HEX[..62]);
        assert!(Fingerprint::parse(&bad).unwrap_err().contains("hex digit"));
    }
}
