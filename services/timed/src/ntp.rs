//! The SNTP wire format (RFC 4330, RFC 5905 client mode) and the offset and
//! delay arithmetic.
//!
//! A request is a 48-byte packet: LI 0, version 4, mode 3 (client), every
//! field zero except the transmit timestamp, which the server copies into
//! its reply's origin timestamp. A reply is accepted only if it is a mode 4
//! (server) packet of version 3 or 4, its origin timestamp is exactly the
//! one we sent, its receive and transmit timestamps are non-zero, its
//! stratum is 1..=15 and its leap indicator is not 3 (clock not
//! synchronised). Stratum 0 is a kiss-o'-death packet whose reference id
//! carries a four-letter code (`DENY`, `RSTR`, `RATE`, ...).

use std::time::{SystemTime, UNIX_EPOCH};

/// Size of an NTP packet without extension fields or MAC.
pub const PACKET_LEN: usize = 48;
/// The NTP port.
pub const NTP_PORT: u16 = 123;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch).
const NTP_UNIX_DELTA: i64 = 2_208_988_800;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;
const VERSION: u8 = 4;

/// A 64-bit NTP timestamp: seconds since 1900 (modulo 2^32) and a binary
/// fraction of a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// The timestamp of `t` (Unix nanoseconds). Times from 1968 to 2104 are
    /// represented; the era is implied (RFC 4330 section 3).
    pub fn from_unix_nanos(t: i128) -> Self {
        let secs = t.div_euclid(1_000_000_000);
        let nanos = t.rem_euclid(1_000_000_000);
        let ntp_secs = (secs + i128::from(NTP_UNIX_DELTA)) as u64 & 0xffff_ffff;
        let frac = ((nanos << 32) / 1_000_000_000) as u64;
        Self((ntp_secs << 32) | frac)
    }

    /// Unix nanoseconds. Following RFC 4330 section 3, a timestamp whose
    /// seconds have the top bit set is in 1968..2036 (era 0), otherwise in
    /// 2036..2104 (era 1).
    pub fn to_unix_nanos(self) -> i128 {
        let secs = i128::from(self.0 >> 32);
        let frac = i128::from(self.0 & 0xffff_ffff);
        let secs = if secs & 0x8000_0000 != 0 {
            secs
        } else {
            secs + (1i128 << 32)
        };
        let nanos = (frac * 1_000_000_000 + (1 << 31)) >> 32;
        (secs - i128::from(NTP_UNIX_DELTA)) * 1_000_000_000 + nanos
    }
}

/// Unix nanoseconds of `t` (negative before 1970).
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Builds a client request whose transmit timestamp is `transmit`.
pub fn encode_request(transmit: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (VERSION << 3) | MODE_CLIENT;
    p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    p
}

/// The fields of a server reply that the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Leap indicator (0..=2 once accepted).
    pub leap: u8,
    /// Protocol version of the reply.
    pub version: u8,
    /// Server stratum (1..=15 once accepted).
    pub stratum: u8,
    /// Server poll exponent (log2 seconds), as sent.
    pub poll: i8,
    /// Reference id (for stratum 1, a source name such as `GPS`).
    pub reference_id: [u8; 4],
    /// Origin timestamp (our transmit time, echoed).
    pub origin: NtpTimestamp,
    /// When the server received the request (T2).
    pub receive: NtpTimestamp,
    /// When the server sent the reply (T3).
    pub transmit: NtpTimestamp,
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Fewer than 48 bytes.
    #[error("reply too short ({0} bytes)")]
    TooShort(usize),
    /// Not a server (mode 4) reply.
    #[error("not a server reply (mode {0})")]
    Mode(u8),
    /// A version other than 3 or 4.
    #[error("unsupported NTP version {0}")]
    Version(u8),
    /// The origin timestamp is not the one we sent: stale, duplicate or forged.
    #[error("origin timestamp does not match the request")]
    Origin,
    /// Kiss-o'-death (stratum 0) with its code.
    #[error("kiss-o'-death {0:?}")]
    Kiss(String),
    /// Stratum 16 or more: the server is not synchronised.
    #[error("server not synchronised (stratum {0})")]
    Stratum(u8),
    /// Leap indicator 3, or stratum 0 without a kiss code: the server's
    /// clock is not synchronised.
    #[error("server not synchronised (leap indicator {leap}, stratum {stratum})")]
    Unsynchronised {
        /// The leap indicator sent.
        leap: u8,
        /// The stratum sent.
        stratum: u8,
    },
    /// A zero receive or transmit timestamp.
    #[error("reply carries a zero timestamp")]
    ZeroTimestamp,
}

impl ReplyError {
    /// For a kiss-o'-death, whether the server asks us to stop using it
    /// (`DENY`, `RSTR`) rather than to slow down or retry later.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Self::Kiss(code) if code == "DENY" || code == "RSTR")
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Parses and checks a reply to a request whose transmit timestamp was `sent`.
pub fn decode_reply(buf: &[u8], sent: NtpTimestamp) -> Result<Reply, ReplyError> {
    if buf.len() < PACKET_LEN {
        return Err(ReplyError::TooShort(buf.len()));
    }
    let leap = buf[0] >> 6;
    let version = (buf[0] >> 3) & 7;
    let mode = buf[0] & 7;
    let reply = Reply {
        leap,
        version,
        stratum: buf[1],
        poll: buf[2] as i8,
        reference_id: [buf[12], buf[13], buf[14], buf[15]],
        origin: NtpTimestamp(u64_at(buf, 24)),
        receive: NtpTimestamp(u64_at(buf, 32)),
        transmit: NtpTimestamp(u64_at(buf, 40)),
    };
    if mode != MODE_SERVER {
        return Err(ReplyError::Mode(mode));
    }
    if !(3..=4).contains(&version) {
        return Err(ReplyError::Version(version));
    }
    if reply.origin != sent {
        return Err(ReplyError::Origin);
    }
    if reply.stratum == 0 {
        // A kiss-o'-death carries a four-character ASCII code; a stratum 0
        // reply without one just means "not synchronised" (chrony sends
        // that, with leap indicator 3, before it has a source).
        let id = reply.reference_id;
        let code_len = id.iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        if code_len > 0 && id[code_len..].iter().all(|&b| b == 0 || b == b' ') {
            let code = String::from_utf8_lossy(&id[..code_len]).into_owned();
            return Err(ReplyError::Kiss(code));
        }
        return Err(ReplyError::Unsynchronised { leap, stratum: 0 });
    }
    if reply.stratum > 15 {
        return Err(ReplyError::Stratum(reply.stratum));
    }
    if leap == 3 {
        return Err(ReplyError::Unsynchronised {
            leap,
            stratum: reply.stratum,
        });
    }
    if reply.receive.0 == 0 || reply.transmit.0 == 0 {
        return Err(ReplyError::ZeroTimestamp);
    }
    Ok(reply)
}

/// One measurement against a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How far the local clock is behind the server's, in nanoseconds
    /// (add it to the local clock to be right).
    pub offset_ns: i128,
    /// Round-trip delay minus the server's processing time, nanoseconds (>= 0).
    pub delay_ns: i128,
}

/// Offset and delay (RFC 5905 section 8) from our send time `t1`, the
/// server's receive `t2` and transmit `t3` times, and our receive time `t4`,
/// all in Unix nanoseconds.
///
/// offset = ((t2 - t1) + (t3 - t4)) / 2, delay = (t4 - t1) - (t3 - t2).
/// A negative delay (server clock running fast within the exchange) is
/// reported as 0.
pub fn sample(t1: i128, t2: i128, t3: i128, t4: i128) -> Sample {
    Sample {
        offset_ns: ((t2 - t1) + (t3 - t4)) / 2,
        delay_ns: ((t4 - t1) - (t3 - t2)).max(0),
    }
}

/// Seconds (as a float) of a nanosecond count, for logs and status.
pub fn secs_f64(ns: i128) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn reply_bytes(leap: u8, version: u8, mode: u8, stratum: u8, origin: u64) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = (leap << 6) | (version << 3) | mode;
        b[1] = stratum;
        b[2] = 6;
        b[12..16].copy_from_slice(b"GPS\0");
        b[24..32].copy_from_slice(&origin.to_be_bytes());
        let t = NtpTimestamp::from_unix_nanos(1_700_000_000 * S).0;
        b[32..40].copy_from_slice(&t.to_be_bytes());
        b[40..48].copy_from_slice(&(t + 1).to_be_bytes());
        b
    }

    #[test]
    fn timestamp_round_trip_and_eras() {
        for t in [
            0,
            1,
            1_700_000_000 * S + 123_456_789,
            // 2036-02-07T06:28:16Z, the start of NTP era 1.
            2_085_978_496 * S,
            2_085_978_496 * S + 500_000_000,
            // 2100
            4_102_444_800 * S + 999_999_999,
            // 1969-12-31T23:59:59.5
            -S / 2,
        ] {
            let ts = NtpTimestamp::from_unix_nanos(t);
            let back = ts.to_unix_nanos();
            assert!((back - t).abs() <= 1, "{t} -> {ts:?} -> {back}");
        }
        // The Unix epoch is NTP second 2208988800, fraction 0.
        assert_eq!(NtpTimestamp::from_unix_nanos(0).0, 2_208_988_800u64 << 32);
        // Half a second is fraction 2^31.
        assert_eq!(
            NtpTimestamp::from_unix_nanos(S / 2).0 & 0xffff_ffff,
            1 << 31
        );
        // Era 1: NTP second 0 is 2036-02-07T06:28:16Z.
        assert_eq!(NtpTimestamp(0).to_unix_nanos(), 2_085_978_496 * S);
    }

    #[test]
    fn request_layout() {
        let ts = NtpTimestamp(0x0102_0304_0506_0708);
        let p = encode_request(ts);
        assert_eq!(p.len(), 48);
        assert_eq!(p[0], 0b00_100_011, "LI 0, VN 4, mode 3");
        assert!(p[1..40].iter().all(|&b| b == 0));
        assert_eq!(&p[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn accepts_a_good_reply() {
        let sent = NtpTimestamp(0xdead_beef_0000_0001);
        let r = decode_reply(&reply_bytes(0, 4, 4, 2, sent.0), sent).unwrap();
        assert_eq!(r.stratum, 2);
        assert_eq!(r.version, 4);
        assert_eq!(r.poll, 6);
        assert_eq!(r.origin, sent);
        assert_eq!(&r.reference_id, b"GPS\0");
        assert_eq!(r.transmit.0, r.receive.0 + 1);
        // Version 3 servers are fine too, and so are leap warnings 1 and 2.
        assert!(decode_reply(&reply_bytes(1, 3, 4, 15, sent.0), sent).is_ok());
        assert!(decode_reply(&reply_bytes(2, 4, 4, 1, sent.0), sent).is_ok());
    }

    #[test]
    fn refuses_bad_replies() {
        let sent = NtpTimestamp(0xdead_beef_0000_0001);
        let ok = reply_bytes(0, 4, 4, 2, sent.0);
        assert_eq!(decode_reply(&ok[..47], sent), Err(ReplyError::TooShort(47)));
        assert_eq!(
            decode_reply(&reply_bytes(0, 4, 3, 2, sent.0), sent),
            Err(ReplyError::Mode(3))
        );
        assert_eq!(
            decode_reply(&reply_bytes(0, 4, 5, 2, sent.0), sent),
            Err(ReplyError::Mode(5))
        );
        assert_eq!(
            decode_reply(&reply_bytes(0, 2, 4, 2, sent.0), sent),
            Err(ReplyError::Version(2))
        );
        assert_eq!(
            decode_reply(&reply_bytes(0, 4, 4, 2, sent.0 + 1), sent),
            Err(ReplyError::Origin)
        );
        assert_eq!(
            decode_reply(&reply_bytes(0, 4, 4, 16, sent.0), sent),
            Err(ReplyError::Stratum(16))
        );
        assert_eq!(
            decode_reply(&reply_bytes(3, 4, 4, 2, sent.0), sent),
            Err(ReplyError::Unsynchronised {
                leap: 3,
                stratum: 2
            })
        );
        let mut zero = ok;
        zero[40..48].fill(0);
        assert_eq!(decode_reply(&zero, sent), Err(ReplyError::ZeroTimestamp));
        let mut zero = ok;
        zero[32..40].fill(0);
        assert_eq!(decode_reply(&zero, sent), Err(ReplyError::ZeroTimestamp));
    }

    #[test]
    fn kiss_of_death() {
        let sent = NtpTimestamp(42);
        for (code, denied) in [(b"DENY", true), (b"RSTR", true), (b"RATE", false)] {
            let mut b = reply_bytes(3, 4, 4, 0, sent.0);
            b[12..16].copy_from_slice(code);
            let err = decode_reply(&b, sent).unwrap_err();
            assert_eq!(
                err,
                ReplyError::Kiss(String::from_utf8(code.to_vec()).unwrap())
            );
            assert_eq!(err.is_access_denied(), denied);
        }
        // Short codes are NUL-padded.
        let mut b = reply_bytes(0, 4, 4, 0, sent.0);
        b[12..16].copy_from_slice(b"RAT\0");
        assert_eq!(decode_reply(&b, sent), Err(ReplyError::Kiss("RAT".into())));
        // Stratum 0 with no code (chrony before it has a source): unsynchronised.
        for id in [[0u8; 4], [0, b'A', 0xff, b'Z'], [10, 124, 0, 1]] {
            let mut b = reply_bytes(3, 4, 4, 0, sent.0);
            b[12..16].copy_from_slice(&id);
            assert_eq!(
                decode_reply(&b, sent),
                Err(ReplyError::Unsynchronised {
                    leap: 3,
                    stratum: 0
                }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn offset_and_delay() {
        // Symmetric path of 10 ms each way, server 1 s ahead, 2 ms processing.
        let t1 = 100 * S;
        let t2 = t1 + S + 10_000_000;
        let t3 = t2 + 2_000_000;
        let t4 = t1 + 22_000_000;
        let s = sample(t1, t2, t3, t4);
        assert_eq!(s.offset_ns, S);
        assert_eq!(s.delay_ns, 20_000_000);
        // Local clock ahead by 50 years (a clock set in the future).
        let ahead = 50 * 365 * 86_400 * S;
        let s = sample(t1 + ahead, t2, t3, t4 + ahead);
        assert_eq!(s.offset_ns, S - ahead);
        assert_eq!(s.delay_ns, 20_000_000);
        // A Pi at 1970 talking to a server in 2026.
        let now = 1_790_000_000 * S;
        let s = sample(0, now + 1_000, now + 2_000, 3_000);
        assert_eq!(s.offset_ns, now);
        assert_eq!(s.delay_ns, 2_000);
        // Negative delay is clamped.
        assert_eq!(sample(0, 10, 20, 5).delay_ns, 0);
        assert!((secs_f64(-1_500_000_000) + 1.5).abs() < 1e-12);
    }
}
