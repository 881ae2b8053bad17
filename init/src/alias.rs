//! Matching a device's modalias against the patterns of `modules.alias`
//! (shell-style wildcards, as depmod writes them).

/// Shell-style pattern matching as modules.alias uses it: `*`, `?` and
/// bracket expressions (`[abc]`, `[a-z]`, `[!x]`).
pub fn fnmatch(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_bracket(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the bracket expression at the start of `pattern`.
/// Returns whether it matched and the expression's length, or `None` when the
/// bracket is not closed (then `[` is an ordinary character).
fn match_bracket(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &ch = pattern.get(i)?;
        if ch == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') {
            let end = pattern[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_handles_modalias_patterns() {
        assert!(fnmatch(b"virtio:d00000002v*", b"virtio:d00000002v00001AF4"));
        assert!(!fnmatch(
            b"virtio:d00000001v*",
            b"virtio:d00000002v00001AF4"
        ));
        assert!(fnmatch(
            b"pci:v00001AF4d*sv*sd*bc*sc*i*",
            b"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(fnmatch(
            b"of:N*T*Cbrcm,bcm2835-sdhostC*",
            b"of:NmmcT(null)Cbrcm,bcm2835-sdhostCbrcm,other"
        ));
        assert!(fnmatch(
            b"usb:v0424pEC00d*dc*dsc*dp*ic*isc*ip*in*",
            b"usb:v0424pEC00d0200dc00dsc00dp00icFFisc00ipFFin00"
        ));
        assert!(fnmatch(b"a?c", b"abc"));
        assert!(!fnmatch(b"a?c", b"ac"));
        assert!(fnmatch(b"x[0-9]y", b"x5y"));
        assert!(!fnmatch(b"x[!0-9]y", b"x5y"));
        assert!(fnmatch(b"x[!0-9]y", b"xay"));
        assert!(fnmatch(b"*", b""));
        assert!(!fnmatch(b"abc", b"abcd"));
        assert!(fnmatch(b"a*b*c", b"aXXbYYc"));
        assert!(!fnmatch(b"a*b*c", b"aXXbYY"));
        // An unclosed bracket is literal.
        assert!(fnmatch(b"a[b", b"a[b"));
    }
}
