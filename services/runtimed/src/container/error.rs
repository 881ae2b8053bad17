//! The one error type of the container module.

use std::io;
use std::path::PathBuf;

/// Building a container's spec, running it, or reading what it left failed.
///
/// Every message names what it is about (the workload field, the file, the
/// user name) so that a person can act on it without the source code.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Neither the workload nor the image says what to run.
    #[error(
        "workload {workload:?} has nothing to run: it sets neither command nor args, \
         and its image has no Entrypoint or Cmd; set machine.workloads[].command"
    )]
    NoCommand {
        /// The workload's name.
        workload: String,
    },

    /// A user name is not in the image's `/etc/passwd`.
    #[error("user {user:?} is not in the image's /etc/passwd{}", missing_note(*.file_missing))]
    UserNotFound {
        /// The name asked for.
        user: String,
        /// The image has no `/etc/passwd` at all.
        file_missing: bool,
    },

    /// A group name is not in the image's `/etc/group`.
    #[error("group {group:?} is not in the image's /etc/group{}", missing_note(*.file_missing))]
    GroupNotFound {
        /// The name asked for.
        group: String,
        /// The image has no `/etc/group` at all.
        file_missing: bool,
    },

    /// A user specification is neither `uid[:gid]` nor `name[:group]`.
    #[error("user {0:?} is neither uid[:gid] (numbers) nor user[:group] (names)")]
    InvalidUser(String),

    /// A capability name is not a Linux capability.
    #[error("{0:?} is not a Linux capability (write NET_ADMIN or CAP_NET_ADMIN)")]
    UnknownCapability(String),

    /// A resource limit cannot be used.
    #[error("resources.{field} = {value:?}: {reason}")]
    InvalidResource {
        /// `memory`, `cpu` or `pids`.
        field: &'static str,
        /// The configured text.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// The working directory is not absolute.
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkingDir(String),

    /// A workload mount's source does not exist on the node.
    #[error("mount of {source_path:?} at {destination:?}: the source does not exist on the node")]
    MountSourceMissing {
        /// The node path.
        source_path: String,
        /// The container path.
        destination: String,
    },

    /// A workload mount is not usable as given.
    #[error("mount at {destination:?}: {reason}")]
    InvalidMount {
        /// The container path.
        destination: String,
        /// Why it is refused.
        reason: String,
    },

    /// The OCI spec builders refused a value.
    #[error("building the OCI runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),

    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation (`read`, `open`, ...).
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },

    /// A file's content is not what was expected.
    #[error("{path}: {reason}")]
    Parse {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An atomic write failed.
    #[error(transparent)]
    File(#[from] bramble_atomic::FileError),

    /// A cgroup could not be prepared or cleaned up.
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// libcontainer failed; the text holds its whole error chain.
    #[error("{0}")]
    Runtime(String),
}

fn missing_note(file_missing: bool) -> &'static str {
    if file_missing {
        " (the image has no such file)"
    } else {
        ""
    }
}

impl ContainerError {
    /// An [`ContainerError::Io`] for `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// `err` and every source below it, joined with `: `.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        // thiserror's `transparent` and `{0}` forms repeat the inner text.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_joins_sources() {
        let err = Outer(io::Error::other("inner"));
        assert_eq!(chain(&err), "outer: inner");
    }

    #[test]
    fn messages_name_the_subject() {
        let err = ContainerError::UserNotFound {
            user: "nginx".into(),
            file_missing: true,
        };
        assert_eq!(
            err.to_string(),
            "user \"nginx\" is not in the image's /etc/passwd (the image has no such file)"
        );
    }
}
