//! Node addresses as given on the command line: `host[:port]`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use bramble_api::DEFAULT_PORT;

/// One node address: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// Host name or IP address, IPv6 without brackets.
    pub host: String,
    /// TCP port of the machine API.
    pub port: u16,
}

impl NodeAddr {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty node address".into());
        }
        if s.contains("://") {
            return Err(
                "give host[:port] without a scheme (for example 192.168.1.10 or node1:50000)"
                    .into(),
            );
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or("missing ']' after the IPv6 address")?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("'{host}' is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?),
            };
            (host, port)
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 address; a port needs brackets.
            s.parse::<Ipv6Addr>().map_err(|_| {
                format!("'{s}' is not an IPv6 address (write [ADDRESS]:PORT to give a port)")
            })?;
            (s, None)
        } else if let Some((host, port)) = s.split_once(':') {
            (host, Some(port))
        } else {
            (s, None)
        };
        if host.is_empty() {
            return Err("missing host before ':PORT'".into());
        }
        if host.parse::<IpAddr>().is_err() && !is_host_name(host) {
            return Err(format!("'{host}' is not a host name or IP address"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("'{p}' is not a port number (1-65535)")),
                Ok(p) => p,
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host as it goes into a URI authority (IPv6 in brackets).
    pub fn uri_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Shows `host` for the default port, `host:port` otherwise.
impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == DEFAULT_PORT {
            f.write_str(&self.host)
        } else {
            write!(f, "{}:{}", self.uri_host(), self.port)
        }
    }
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A node to ask, and where to dial for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node as the user named it (shown in output and errors).
    pub node: NodeAddr,
    /// The address connected to (differs from `node` when `-e` is given).
    pub dial: NodeAddr,
}

/// Works out the targets from `-n` and `-e`:
/// - only `-n`: every node is dialled directly;
/// - only `-e`: every endpoint is a node;
/// - both: exactly one endpoint and one node; the endpoint is dialled and
///   the answer shown under the node's name (a port forward, a NAT, QEMU's
///   `hostfwd`). Forwarding one endpoint to several nodes needs the
///   node-to-node proxy, which does not exist yet.
pub fn targets(
    nodes: &[NodeAddr],
    endpoints: &[NodeAddr],
) -> Result<Vec<Target>, crate::error::Error> {
    use crate::error::Error;
    match (nodes, endpoints) {
        ([], []) => Err(Error::NoNodes),
        (nodes, []) => Ok(nodes
            .iter()
            .map(|n| Target {
                node: n.clone(),
                dial: n.clone(),
            })
            .collect()),
        ([], endpoints) => Ok(endpoints
            .iter()
            .map(|e| Target {
                node: e.clone(),
                dial: e.clone(),
            })
            .collect()),
        ([node], [endpoint]) => Ok(vec![Target {
            node: node.clone(),
            dial: endpoint.clone(),
        }]),
        _ => Err(Error::EndpointForwarding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NodeAddr {
        NodeAddr::parse(s).unwrap()
    }

    #[test]
    fn parses_forms() {
        assert_eq!(
            p("10.0.0.1"),
            NodeAddr {
                host: "10.0.0.1".into(),
                port: 50000
            }
        );
        assert_eq!(
            p("10.0.0.1:5000"),
            NodeAddr {
                host: "10.0.0.1".into(),
                port: 5000
            }
        );
        assert_eq!(
            p("node-1.lan"),
            NodeAddr {
                host: "node-1.lan".into(),
                port: 50000
            }
        );
        assert_eq!(
            p("[::1]:7"),
            NodeAddr {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(
            p("[fe80::1]"),
            NodeAddr {
                host: "fe80::1".into(),
                port: 50000
            }
        );
        assert_eq!(
            p("fe80::1"),
            NodeAddr {
                host: "fe80::1".into(),
                port: 50000
            }
        );
        assert_eq!(
            p(" pi "),
            NodeAddr {
                host: "pi".into(),
                port: 50000
            }
        );
    }

    #[test]
    fn display_and_uri_host() {
        assert_eq!(p("10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(p("10.0.0.1:5000").to_string(), "10.0.0.1:5000");
        assert_eq!(p("[::1]:5000").to_string(), "[::1]:5000");
        assert_eq!(p("::1").uri_host(), "[::1]");
    }

    #[test]
    fn rejects_with_reasons() {
        for (input, reason) in [
            ("", "empty"),
            ("https://1.2.3.4", "without a scheme"),
            ("1.2.3.4:0", "port number"),
            ("1.2.3.4:99999", "port number"),
            ("1.2.3.4:", "port number"),
            (":50000", "missing host"),
            ("[::1", "missing ']'"),
            ("[nope]:1", "not an IPv6"),
            ("fe80::zz", "not an IPv6"),
            ("a b", "not a host name"),
        ] {
            let e = NodeAddr::parse(input).unwrap_err();
            assert!(e.contains(reason), "{input:?}: {e}");
        }
    }

    #[test]
    fn target_rules() {
        let a = p("10.0.0.1");
        let b = p("10.0.0.2");
        let fwd = p("127.0.0.1:5000");
        assert!(targets(&[], &[]).is_err());
        let t = targets(&[a.clone(), b.clone()], &[]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].dial, b);
        let t = targets(&[], std::slice::from_ref(&fwd)).unwrap();
        assert_eq!(t[0].node, fwd);
        let t = targets(std::slice::from_ref(&a), std::slice::from_ref(&fwd)).unwrap();
        assert_eq!(
            (t[0].node.clone(), t[0].dial.clone()),
            (a.clone(), fwd.clone())
        );
        assert!(targets(&[a, b], &[fwd]).is_err());
    }
}
