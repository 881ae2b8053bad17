//! The supervisor's line splitter, which cuts a service's output into the
//! lines it keeps: the first two bytes choose the line limit, the third the
//! size of the reads the output arrives in. The lines do not depend on how
//! the output was cut into reads, hold no newline, stay within the limit,
//! and are the output itself when no line was too long.
#![no_main]

use bramble_supervisor::fuzzing::{TRUNCATED, split_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [a, b, read, output @ ..] = data else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([*a, *b]));
    let read = usize::from(*read).max(1);
    let (max, lines) = split_lines(max, output.chunks(read));
    let (_, whole) = split_lines(max, [output]);
    assert_eq!(lines, whole, "the lines depend on the reads");
    for line in &lines {
        assert!(!line.contains('\n'));
        // Invalid UTF-8 becomes U+FFFD: up to three bytes for one.
        assert!(
            line.len() <= 3 * max + TRUNCATED.len(),
            "a line of {} bytes",
            line.len()
        );
    }
    if output.is_ascii() && !output.contains(&b'\r') {
        let mut expected: Vec<&[u8]> = output.split(|&b| b == b'\n').collect();
        if output.ends_with(b"\n") || output.is_empty() {
            expected.pop();
        }
        if expected.iter().all(|l| l.len() <= max) {
            let got: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            assert_eq!(got, expected);
        }
    }
});
