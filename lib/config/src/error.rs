//! Errors of this crate: a list of problems, each tied to a field path.

use std::fmt;

/// One problem in a configuration or a patch, tied to where it is.
///
/// `path` names the field the way a person reads a YAML document:
/// mapping keys joined by `.`, list indices in brackets, e.g.
/// `machine.network.interfaces[1].addresses[0]`. It is empty when the problem
/// concerns the document as a whole (for example a YAML syntax error, whose
/// message then carries the line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the problem is, e.g. `machine.network.interfaces[0].mtu`.
    pub path: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A configuration (or patch) that was refused, with every problem found.
///
/// Displays as one `path: message` line per problem, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.errors))]
pub struct ConfigError {
    errors: Vec<FieldError>,
}

impl ConfigError {
    /// An error holding `errors`; callers only build one when the list is not empty.
    pub fn new(errors: Vec<FieldError>) -> Self {
        Self { errors }
    }

    /// An error holding one problem.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(vec![FieldError::new(path, message)])
    }

    /// Every problem found, in document order.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// The problems, by value.
    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }
}

fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_one_line_per_problem() {
        let err = ConfigError::new(vec![
            FieldError::new("machine.hostname", "bad"),
            FieldError::new("", "whole document"),
        ]);
        assert_eq!(err.to_string(), "machine.hostname: bad\nwhole document");
        assert_eq!(err.errors().len(), 2);
    }
}
