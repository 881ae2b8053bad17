//! Comparing two configurations: a line diff of their redacted YAML and what
//! applying the new one takes (service restarts, a reboot).

use std::collections::BTreeSet;
use std::fmt;

use similar::DiffTag;

use crate::schema::{Cluster, Machine, MachineConfig};

/// A node service that must restart to pick up a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// The network daemon: links, addresses, routes, resolvers, hostname.
    Networkd,
    /// Time synchronisation.
    Timed,
    /// The machine API server: its CA and certificate.
    Apid,
    /// The kubelet, and the control-plane static pods it runs.
    Kubelet,
    /// etcd.
    Etcd,
    /// The container runtime that runs `machine.workloads`.
    Runtimed,
}

impl Service {
    /// The service's name on the node.
    pub fn name(self) -> &'static str {
        match self {
            Self::Networkd => "networkd",
            Self::Timed => "timed",
            Self::Apid => "apid",
            Self::Kubelet => "kubelet",
            Self::Etcd => "etcd",
            Self::Runtimed => "runtimed",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a diff line was added, removed or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffKind {
    /// Only in the new configuration (`+`).
    Added,
    /// Only in the old configuration (`-`).
    Removed,
    /// In both (` `).
    Unchanged,
}

impl DiffKind {
    /// The marker `diff -u` puts before such a line.
    pub fn marker(self) -> char {
        match self {
            Self::Added => '+',
            Self::Removed => '-',
            Self::Unchanged => ' ',
        }
    }
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    /// Added, removed or unchanged.
    pub kind: DiffKind,
    /// The line, without its newline.
    pub text: String,
}

/// The difference between two configurations.
///
/// `Display` prints the changed hunks like `diff -u` without the file headers
/// (`@@ -a,b +c,d @@`, three lines of context), then the restarts and whether
/// a reboot is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Every line of both redacted YAML documents, in order, marked.
    pub lines: Vec<DiffLine>,
    /// The fields that changed, e.g. `machine.hostname`, `machine.network`,
    /// including secrets (which the redacted lines cannot show).
    pub changed: Vec<&'static str>,
    /// Services that must restart.
    pub restart: BTreeSet<Service>,
    /// Services that take the change while running, by re-reading the
    /// configuration (SIGHUP), and are not in `restart`.
    pub reload: BTreeSet<Service>,
    /// Whether the node must reboot (machine type, `config.txt` or cluster name changed).
    pub reboot: bool,
}

/// Context lines around each hunk in the `Display` output.
const CONTEXT: usize = 3;

impl Diff {
    /// True when the two configurations are equal.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for hunk in hunks(&self.lines) {
            let (mut old_start, mut new_start) = (1, 1);
            for line in &self.lines[..hunk.0] {
                if line.kind != DiffKind::Added {
                    old_start += 1;
                }
                if line.kind != DiffKind::Removed {
                    new_start += 1;
                }
            }
            let body = &self.lines[hunk.0..hunk.1];
            let old_len = body.iter().filter(|l| l.kind != DiffKind::Added).count();
            let new_len = body.iter().filter(|l| l.kind != DiffKind::Removed).count();
            // diff -u numbers an empty range by the line before it.
            let old_start = if old_len == 0 {
                old_start - 1
            } else {
                old_start
            };
            let new_start = if new_len == 0 {
                new_start - 1
            } else {
                new_start
            };
            writeln!(f, "@@ -{old_start},{old_len} +{new_start},{new_len} @@")?;
            for line in body {
                writeln!(f, "{}{}", line.kind.marker(), line.text)?;
            }
        }
        let secrets: Vec<_> = self
            .changed
            .iter()
            .filter(|p| SECRET_FIELDS.contains(p))
            .collect();
        if !secrets.is_empty() {
            let list: Vec<&str> = secrets.iter().map(|s| **s).collect();
            writeln!(f, "secrets changed: {}", list.join(", "))?;
        }
        if !self.restart.is_empty() {
            let names: Vec<&str> = self.restart.iter().map(|s| s.name()).collect();
            writeln!(f, "restart: {}", names.join(", "))?;
        }
        if !self.reload.is_empty() {
            let names: Vec<&str> = self.reload.iter().map(|s| s.name()).collect();
            writeln!(f, "reload: {}", names.join(", "))?;
        }
        if self.reboot {
            writeln!(f, "reboot required")?;
        }
        Ok(())
    }
}

/// Fields whose values are secrets (hidden in the lines).
const SECRET_FIELDS: &[&str] = &[
    "machine.token",
    "machine.ca.key",
    "cluster.etcd.ca.key",
    "cluster.secretboxEncryptionSecret",
    "machine.registries.auth",
    "machine.workloads[].env",
];

/// Ranges of `lines` to print: changes with `CONTEXT` lines around them,
/// overlapping ranges joined.
fn hunks(lines: &[DiffLine]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.kind == DiffKind::Unchanged {
            continue;
        }
        let start = i.saturating_sub(CONTEXT);
        let end = (i + 1 + CONTEXT).min(lines.len());
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// Compares `old` and `new`: the line diff of their redacted YAML, the fields
/// that changed, the services to restart and whether a reboot is needed.
pub fn diff(old: &MachineConfig, new: &MachineConfig) -> Diff {
    let old_yaml = old.redacted().to_yaml();
    let new_yaml = new.redacted().to_yaml();
    let lines = line_diff(
        &old_yaml.lines().collect::<Vec<_>>(),
        &new_yaml.lines().collect::<Vec<_>>(),
    );

    let mut changes = Changes::default();
    machine(&mut changes, &old.machine, &new.machine);
    cluster(&mut changes, &old.cluster, &new.cluster);
    // A service that restarts picks the change up anyway.
    let reload = changes
        .reload
        .difference(&changes.restart)
        .copied()
        .collect();
    Diff {
        lines,
        changed: changes.changed,
        restart: changes.restart,
        reload,
        reboot: changes.reboot,
    }
}

#[derive(Debug, Default)]
struct Changes {
    changed: Vec<&'static str>,
    restart: BTreeSet<Service>,
    reload: BTreeSet<Service>,
    reboot: bool,
}

/// What a change of one field takes.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Restart(Service),
    /// The running service re-reads the configuration.
    Reload(Service),
    Reboot,
}

impl Changes {
    fn field<T: PartialEq>(&mut self, path: &'static str, old: &T, new: &T, effect: Effect) {
        if old == new {
            return;
        }
        self.changed.push(path);
        match effect {
            Effect::Restart(service) => {
                self.restart.insert(service);
            }
            Effect::Reload(service) => {
                self.reload.insert(service);
            }
            Effect::Reboot => self.reboot = true,
        }
    }
}

fn machine(c: &mut Changes, old: &Machine, new: &Machine) {
    use Effect::{Reboot, Reload, Restart};
    // Destructured so a new field cannot be left out of the comparison.
    let Machine {
        machine_type,
        hostname,
        token,
        ca,
        cert_sans,
        network,
        time,
        kubelet,
        pi,
        registries,
        workloads,
    } = old;
    c.field("machine.type", machine_type, &new.machine_type, Reboot);
    c.field(
        "machine.hostname",
        hostname,
        &new.hostname,
        Reload(Service::Networkd),
    );
    c.field(
        "machine.token",
        token,
        &new.token,
        Restart(Service::Kubelet),
    );
    c.field(
        "machine.ca.crt",
        &ca.crt,
        &new.ca.crt,
        Restart(Service::Apid),
    );
    c.field(
        "machine.ca.key",
        &ca.key,
        &new.ca.key,
        Restart(Service::Apid),
    );
    c.field(
        "machine.certSANs",
        cert_sans,
        &new.cert_sans,
        Restart(Service::Apid),
    );
    c.field(
        "machine.network",
        network,
        &new.network,
        Reload(Service::Networkd),
    );
    c.field("machine.time", time, &new.time, Reload(Service::Timed));
    c.field(
        "machine.kubelet",
        kubelet,
        &new.kubelet,
        Restart(Service::Kubelet),
    );
    c.field("machine.pi", pi, &new.pi, Reboot);
    // The runtime re-reads both on SIGHUP and changes only the containers
    // whose workload changed.
    c.field(
        "machine.registries.mirrors",
        &registries.mirrors,
        &new.registries.mirrors,
        Reload(Service::Runtimed),
    );
    c.field(
        "machine.registries.insecure",
        &registries.insecure,
        &new.registries.insecure,
        Reload(Service::Runtimed),
    );
    c.field(
        "machine.registries.auth",
        &registries.auth,
        &new.registries.auth,
        Reload(Service::Runtimed),
    );
    c.field(
        "machine.registries.ca",
        &registries.ca,
        &new.registries.ca,
        Reload(Service::Runtimed),
    );
    c.field(
        "machine.workloads",
        workloads,
        &new.workloads,
        Reload(Service::Runtimed),
    );
    // Their values are secrets, hidden in the lines: named here.
    fn env(w: &[crate::Workload]) -> Vec<(&String, &std::collections::BTreeMap<String, String>)> {
        w.iter()
            .filter(|w| !w.env.is_empty())
            .map(|w| (&w.name, &w.env))
            .collect()
    }
    c.field(
        "machine.workloads[].env",
        &env(workloads),
        &env(&new.workloads),
        Reload(Service::Runtimed),
    );
}

fn cluster(c: &mut Changes, old: &Cluster, new: &Cluster) {
    use Effect::{Reboot, Restart};
    let Cluster {
        name,
        control_plane,
        etcd,
        secretbox_encryption_secret,
    } = old;
    c.field("cluster.name", name, &new.name, Reboot);
    c.field(
        "cluster.controlPlane",
        control_plane,
        &new.control_plane,
        Restart(Service::Kubelet),
    );
    let crt = |e: &Option<crate::Etcd>| e.as_ref().map(|e| e.ca.crt.clone());
    let key = |e: &Option<crate::Etcd>| e.as_ref().and_then(|e| e.ca.key.clone());
    c.field(
        "cluster.etcd.ca.crt",
        &crt(etcd),
        &crt(&new.etcd),
        Restart(Service::Etcd),
    );
    c.field(
        "cluster.etcd.ca.key",
        &key(etcd),
        &key(&new.etcd),
        Restart(Service::Etcd),
    );
    let tuning = |e: &Option<crate::Etcd>| e.as_ref().map(crate::Etcd::tuning);
    c.field(
        "cluster.etcd",
        &tuning(etcd),
        &tuning(&new.etcd),
        Restart(Service::Etcd),
    );
    c.field(
        "cluster.secretboxEncryptionSecret",
        secretbox_encryption_secret,
        &new.secretbox_encryption_secret,
        Restart(Service::Kubelet),
    );
}

/// A line diff: every line of `old` and `new` in order, marked, by Myers'
/// algorithm (`similar`), a deletion before the insertion that replaces it.
fn line_diff(old: &[&str], new: &[&str]) -> Vec<DiffLine> {
    let lines = |kind, texts: &[&str]| {
        texts
            .iter()
            .map(move |text| DiffLine {
                kind,
                text: (*text).to_owned(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::with_capacity(old.len().max(new.len()));
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, old, new) {
        let (tag, old_range, new_range) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => out.extend(lines(DiffKind::Unchanged, &old[old_range])),
            DiffTag::Delete => out.extend(lines(DiffKind::Removed, &old[old_range])),
            DiffTag::Insert => out.extend(lines(DiffKind::Added, &new[new_range])),
            DiffTag::Replace => {
                out.extend(lines(DiffKind::Removed, &old[old_range]));
                out.extend(lines(DiffKind::Added, &new[new_range]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(lines: &[DiffLine]) -> String {
        lines
            .iter()
            .map(|l| format!("{}{}", l.kind.marker(), l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn line_diff_finds_the_change() {
        let d = line_diff(&["a", "b", "c", "d"], &["a", "x", "c", "d", "e"]);
        assert_eq!(render(&d), " a\n-b\n+x\n c\n d\n+e");
    }

    #[test]
    fn line_diff_of_equal_and_empty() {
        assert!(
            line_diff(&["a"], &["a"])
                .iter()
                .all(|l| l.kind == DiffKind::Unchanged)
        );
        assert_eq!(render(&line_diff(&[], &["a"])), "+a");
        assert_eq!(render(&line_diff(&["a"], &[])), "-a");
    }

    /// Length of the longest common subsequence, the slow way.
    fn lcs(a: &[&str], b: &[&str]) -> usize {
        let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                t[i][j] = if a[i] == b[j] {
                    t[i + 1][j + 1] + 1
                } else {
                    t[i + 1][j].max(t[i][j + 1])
                };
            }
        }
        t[0][0]
    }

    #[test]
    fn line_diff_is_minimal_and_gives_back_both_sides() {
        let split = |s: &'static str| -> Vec<&'static str> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split(' ').collect()
            }
        };
        let cases = [
            ("a b c d", "a x c d e"),
            ("a b c a b b a", "c b a b a c"),
            ("x a b c", "a b c x"),
            ("a a a a", "a b a b a"),
            ("a b c", "d e f"),
            ("- - a - -", "- a - - -"),
            ("", ""),
            ("k: 1 k: 2 k: 3", "k: 3 k: 2 k: 1"),
        ];
        for (old, new) in cases {
            let (old, new) = (split(old), split(new));
            let d = line_diff(&old, &new);
            let side = |skip: DiffKind| -> Vec<&str> {
                d.iter()
                    .filter(|l| l.kind != skip)
                    .map(|l| l.text.as_str())
                    .collect()
            };
            assert_eq!(side(DiffKind::Added), old, "{old:?} -> {new:?}");
            assert_eq!(side(DiffKind::Removed), new, "{old:?} -> {new:?}");
            let kept = d.iter().filter(|l| l.kind == DiffKind::Unchanged).count();
            assert_eq!(kept, lcs(&old, &new), "{old:?} -> {new:?}: {}", render(&d));
        }
    }

    #[test]
    fn hunks_join_and_number() {
        let old: Vec<String> = (1..=20).map(|i| format!("l{i}")).collect();
        let mut new = old.clone();
        new[1] = "changed".to_owned();
        new[17] = "other".to_owned();
        let old: Vec<&str> = old.iter().map(String::as_str).collect();
        let new: Vec<&str> = new.iter().map(String::as_str).collect();
        let lines = line_diff(&old, &new);
        let d = Diff {
            lines,
            changed: vec!["machine.hostname"],
            restart: BTreeSet::new(),
            reload: BTreeSet::new(),
            reboot: false,
        };
        let text = d.to_string();
        let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("@@")).collect();
        assert_eq!(headers, vec!["@@ -1,5 +1,5 @@", "@@ -15,6 +15,6 @@"]);
    }
}
