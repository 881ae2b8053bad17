//! Module alias matching (`modules.alias` patterns against a device's
//! modalias): the input is `pattern NUL modalias`. PID 1's matcher agrees
//! with a plain recursive one written from the same rules: `*`, `?`,
//! bracket expressions `[abc]`, `[a-z]`, `[!x]`/`[^x]` (a `]` right after
//! the opening is a member), and an unclosed `[` that stands for itself.
#![no_main]

use bramble_init::alias::fnmatch;
use libfuzzer_sys::fuzz_target;

/// Whether the bracket expression at the start of `p` (at `[`) holds `c`,
/// and its length; `None` when it is not closed.
fn bracket(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut hit = false;
    loop {
        let &first = p.get(i)?;
        if first == b']' && i > start {
            return Some((hit != negate, i + 1));
        }
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&last)) if last != b']' => {
                hit |= (first..=last).contains(&c);
                i += 3;
            }
            _ => {
                hit |= first == c;
                i += 1;
            }
        }
    }
}

/// Matches `p[i..]` against `t[j..]`, remembering answers in `memo`.
fn matches(p: &[u8], t: &[u8], i: usize, j: usize, memo: &mut [Option<bool>]) -> bool {
    let key = i * (t.len() + 1) + j;
    if let Some(known) = memo[key] {
        return known;
    }
    let result = match p.get(i) {
        None => j == t.len(),
        Some(b'*') => {
            matches(p, t, i + 1, j, memo) || (j < t.len() && matches(p, t, i, j + 1, memo))
        }
        Some(_) if j == t.len() => false,
        Some(b'?') => matches(p, t, i + 1, j + 1, memo),
        Some(b'[') => match bracket(&p[i..], t[j]) {
            Some((true, len)) => matches(p, t, i + len, j + 1, memo),
            Some((false, _)) => false,
            None => t[j] == b'[' && matches(p, t, i + 1, j + 1, memo),
        },
        Some(&c) => c == t[j] && matches(p, t, i + 1, j + 1, memo),
    };
    memo[key] = Some(result);
    result
}

fuzz_target!(|data: &[u8]| {
    let (pattern, modalias) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    if pattern.len() > 256 || modalias.len() > 256 {
        return;
    }
    let mut memo = vec![None; (pattern.len() + 1) * (modalias.len() + 1)];
    let expected = matches(pattern, modalias, 0, 0, &mut memo);
    assert_eq!(
        fnmatch(pattern, modalias),
        expected,
        "pattern {:?} against {:?}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(modalias)
    );
});
