//! What a client may do, carried in its certificate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Prefix of the subject Organization that carries a client's role:
/// `O=bramble:role:<role>`.
pub const ROLE_ORGANIZATION_PREFIX: &str = "bramble:role:";

/// A client's role on the machine API.
///
/// Roles are ordered by what they allow: `Admin` ⊇ `Operator` ⊇ `Reader`,
/// so `Reader < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads state: versions, configuration, logs.
    Reader,
    /// Reader, plus operations that change nothing permanent (restarts, reboots).
    Operator,
    /// Everything, including applying configuration and upgrades.
    Admin,
}

impl Role {
    /// All roles, from the least to the most privileged.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// Whether a client with this role may call something that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    /// The role's name: `admin`, `operator` or `reader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    /// The subject Organization that carries this role: `bramble:role:<role>`.
    pub fn organization(self) -> String {
        format!("{ROLE_ORGANIZATION_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `admin`, `operator` or `reader`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected admin, operator or reader")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "reader" => Ok(Role::Reader),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert!(Role::Admin.allows(Role::Admin));
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Admin.allows(Role::Reader));
        assert!(!Role::Operator.allows(Role::Admin));
        assert!(Role::Operator.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Reader));
        assert!(!Role::Reader.allows(Role::Admin));
        assert!(!Role::Reader.allows(Role::Operator));
        assert!(Role::Reader.allows(Role::Reader));
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn parse_and_display() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!("reader".parse::<Role>(), Ok(Role::Reader));
        assert_eq!("root".parse::<Role>(), Err(UnknownRole("root".to_owned())));
        assert!("Admin".parse::<Role>().is_err());
        assert!(" admin".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
        assert_eq!(Role::Operator.organization(), "bramble:role:operator");
    }

    #[test]
    fn serde_names() {
        let yaml = serde_norway::to_string(&Role::Operator).ok();
        assert_eq!(yaml.as_deref(), Some("operator\n"));
        let role: Option<Role> = serde_norway::from_str("reader").ok();
        assert_eq!(role, Some(Role::Reader));
        assert!(serde_norway::from_str::<Role>("root").is_err());
    }
}
