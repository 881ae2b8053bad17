//! The one way a test skips because a prerequisite is missing (not root, no
//! program, no kernel module, no built image, an unset variable, ...).
//!
//! A skip always says so: `SKIP <test>: <reason>` goes straight to the test
//! binary's stderr, past libtest's output capture, so it shows even when the
//! test passes. Under `CI=true` (CI sets it) a skip is a failure instead: the
//! test panics with the reason, so CI can never pass by skipping.
//!
//! ```ignore
//! #[test]
//! fn needs_root() {
//!     bramble_testkit::skip_unless!(bramble_testkit::is_root(), "needs root");
//!     // `skip_reason`-style checks give `None` when everything is there:
//!     bramble_testkit::skip_unless!(available: bramble_testkit::skip_reason(&[]));
//!     bramble_testkit::skip_unless!(let Some(image) = image(), "no image");
//!     // Checks that only part of a test needs:
//!     let vlans = bramble_testkit::skip_checks_unless!(vlans_supported(), "no 802.1Q");
//! }
//! ```
//!
//! Both macros also work in tests that return `Result<(), E>` (they return
//! `Ok(())`) and in `async` tests.

use std::io::Write as _;

/// The environment variable CI sets to `true`.
pub const CI_VAR: &str = "CI";

/// Whether this runs on CI (`CI=true`), where a skip fails the test.
pub fn on_ci() -> bool {
    std::env::var(CI_VAR).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Reports that `test` skips (all of it, or the checks `reason` names)
/// because of `reason`: prints `SKIP <test>: <reason>` to stderr, or panics
/// with it under `CI=true`. The macros call this; call it directly only
/// where they cannot be used.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    report(on_ci(), test, reason);
}

#[track_caller]
fn report(on_ci: bool, test: &str, reason: &str) {
    assert!(
        !on_ci,
        "SKIP {test}: {reason} (CI=true: on CI a missing prerequisite fails the test)"
    );
    // Not eprintln!: libtest captures that and shows it only on failure.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// The value a skipped test returns: `()` or `Ok(())`.
pub trait Skipped {
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// `module::function` from the `type_name` of an item defined in it
/// (`test_name!` passes `...::function::__here`).
pub fn function_path(here: &str) -> String {
    let path = here.strip_suffix("::__here").unwrap_or(here);
    path.split("::")
        .filter(|part| *part != "{{closure}}")
        .collect::<Vec<_>>()
        .join("::")
}

/// The path of the function this expands in (the test's name).
#[macro_export]
macro_rules! test_name {
    () => {{
        fn __here() {}
        $crate::skip::function_path(::std::any::type_name_of_val(&__here))
    }};
}

/// Returns from the test, saying why (or fails it under `CI=true`), unless
/// its prerequisite is there.
///
/// - `skip_unless!(condition, "reason {}", args...)`: skips when `condition`
///   is false;
/// - `skip_unless!(available: reason)`: `reason` is an `Option` of something
///   printable (`None` when everything is there), as
///   [`skip_reason`](crate::skip_reason) gives.
/// - `skip_unless!(let Some(x) = option, "reason {}", args...)`: binds `x`
///   (any refutable pattern), skips when the value does not match it.
#[macro_export]
macro_rules! skip_unless {
    (let $pattern:pat = $value:expr, $($reason:tt)+) => {
        let $pattern = $value else {
            $crate::skip::skip(&$crate::test_name!(), &format!($($reason)+));
            return $crate::skip::Skipped::skipped();
        };
    };
    (available: $reason:expr $(,)?) => {
        if let ::std::option::Option::Some(reason) = $reason {
            $crate::skip::skip(&$crate::test_name!(), &reason.to_string());
            return $crate::skip::Skipped::skipped();
        }
    };
    ($condition:expr, $($reason:tt)+) => {
        if !$condition {
            $crate::skip::skip(&$crate::test_name!(), &format!($($reason)+));
            return $crate::skip::Skipped::skipped();
        }
    };
}

/// For checks only part of a test needs: `condition` (a `bool`), after
/// reporting the skip of those checks when it is false (a failure under
/// `CI=true`, like any skip): `skip_checks_unless!(condition, "reason", ...)`.
#[macro_export]
macro_rules! skip_checks_unless {
    ($condition:expr, $($reason:tt)+) => {{
        let available: bool = $condition;
        if !available {
            $crate::skip::skip(&$crate::test_name!(), &format!($($reason)+));
        }
        available
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_function() {
        fn inner() -> String {
            crate::test_name!()
        }
        assert_eq!(
            inner(),
            "bramble_testkit::skip::tests::names_the_function::inner"
        );
        let in_closure = || crate::test_name!();
        assert_eq!(
            in_closure(),
            "bramble_testkit::skip::tests::names_the_function"
        );
    }

    #[test]
    fn a_skip_fails_on_ci() {
        report(false, "t", "off CI it only says so");
        let on_ci = std::panic::catch_unwind(|| report(true, "t", "no frobnicator"));
        let message = on_ci.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.starts_with("SKIP t: no frobnicator"), "{message}");
    }

    #[test]
    fn binds_what_it_needs() {
        // Only values that match: a skip would fail this test under CI=true.
        fn needs(value: Option<u32>, seen: &mut Vec<u32>) {
            crate::skip_unless!(let Some(v) = value, "no value");
            seen.push(v);
        }
        let mut seen = Vec::new();
        needs(Some(1), &mut seen);
        assert_eq!(seen, [1]);
        fn needs_ok(value: Option<u32>) -> Result<(), u32> {
            crate::skip_unless!(let Some(v) = value, "no value");
            Err(v)
        }
        assert_eq!(needs_ok(Some(3)), Err(3));
    }

    #[test]
    fn returns_unit_or_ok() {
        let () = <() as Skipped>::skipped();
        assert!(matches!(<Result<(), String>>::skipped(), Ok(())));
    }
}
