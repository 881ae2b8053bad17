//! `nodectl gen secrets`, `nodectl gen config` and `nodectl gen nodeconfig`.

use std::io::Write;
use std::path::{Path, PathBuf};

use bramble_config::MachineConfig;
use bramble_pki::{Role, SecretsBundle, Validity};

use crate::cmd::apply::read_patches;
use crate::error::Error;
use crate::nodeconfig::{self, Context, NodeConfig};

/// How long generated client certificates are valid.
const CLIENT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

fn refuse_existing(path: &Path, force: bool) -> Result<(), Error> {
    if !force && path.exists() {
        return Err(Error::Usage(format!(
            "{} exists; pass --force to overwrite it",
            path.display()
        )));
    }
    Ok(())
}

fn write_secret_file(path: &Path, text: &str) -> Result<(), Error> {
    nodeconfig::write_private(path, text.as_bytes()).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        reason: format!("cannot write: {e}"),
    })
}

fn pki_error(what: &str) -> impl Fn(bramble_pki::Error) -> Error + '_ {
    move |e| Error::Usage(format!("{what}: {e}"))
}

/// `gen secrets`: writes a new secrets bundle.
pub fn secrets(
    out: &mut dyn Write,
    output: &Path,
    cluster: &str,
    force: bool,
) -> Result<(), Error> {
    refuse_existing(output, force)?;
    let bundle = SecretsBundle::generate(cluster).map_err(pki_error("generating secrets"))?;
    let yaml = bundle.to_yaml().map_err(pki_error("encoding secrets"))?;
    write_secret_file(output, &yaml)?;
    writeln!(out, "wrote {}", output.display())?;
    Ok(())
}

/// The machine configuration of one node type, made from the bundle.
pub fn machine_config(
    bundle: &SecretsBundle,
    kind: &str,
    cluster: &str,
    endpoint: &str,
) -> Result<String, Error> {
    let controlplane = kind == "controlplane";
    let mut etcd_ca = serde_json::json!({ "crt": bundle.etcd_ca.cert_pem() });
    if controlplane {
        etcd_ca["key"] = bundle.etcd_ca.key_pem().into();
    }
    let mut cluster_doc = serde_json::json!({
        "name": cluster,
        "controlPlane": { "endpoint": endpoint },
        "etcd": { "ca": etcd_ca },
    });
    if controlplane {
        cluster_doc["secretboxEncryptionSecret"] = bundle.secretbox_secret.clone().into();
    }
    // A control-plane node issues its own API certificate from the OS CA; a
    // worker holds only the CA's certificate and gets its API certificate
    // from a control-plane node with the join token (root on a worker must
    // not mint client certificates for the cluster).
    let mut os_ca = serde_json::json!({ "crt": bundle.os_ca.cert_pem() });
    if controlplane {
        os_ca["key"] = bundle.os_ca.key_pem().into();
    }
    let doc = serde_json::json!({
        "version": "v1alpha1",
        "machine": {
            "type": kind,
            "token": bundle.bootstrap_token,
            "ca": os_ca,
        },
        "cluster": cluster_doc,
    });
    serde_norway::to_string(&doc).map_err(|e| Error::Usage(format!("encoding {kind}.yaml: {e}")))
}

/// Arguments of `gen config`.
#[derive(Debug)]
pub struct GenConfig<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// Control plane endpoint URL.
    pub endpoint: &'a str,
    /// Where the files go.
    pub output_dir: &'a Path,
    /// A bundle to reuse.
    pub with_secrets: Option<&'a Path>,
    /// Patches for both configurations.
    pub patches: &'a [String],
    /// The client certificate's role.
    pub role: Role,
    /// Overwrite existing files.
    pub force: bool,
}

/// `gen config`: controlplane.yaml, worker.yaml and nodeconfig in the output
/// directory. Everything is checked before the first file is written.
pub fn config(out: &mut dyn Write, args: &GenConfig<'_>) -> Result<(), Error> {
    let files: Vec<PathBuf> = ["controlplane.yaml", "worker.yaml", "nodeconfig"]
        .iter()
        .map(|f| args.output_dir.join(f))
        .collect();
    for f in &files {
        refuse_existing(f, args.force)?;
    }
    let bundle = match args.with_secrets {
        Some(path) => read_bundle(path)?,
        None => SecretsBundle::generate(args.cluster).map_err(pki_error("generating secrets"))?,
    };
    let patches = read_patches(args.patches)?;
    let mut docs = Vec::new();
    for kind in ["controlplane", "worker"] {
        let mut yaml = machine_config(&bundle, kind, args.cluster, args.endpoint)?;
        for (name, patch) in &patches {
            yaml = bramble_config::apply_patch(&yaml, patch)
                .map_err(|e| Error::Usage(format!("patch {name} on {kind}.yaml:\n{e}")))?;
        }
        MachineConfig::parse(&yaml)
            .map_err(|e| Error::Usage(format!("the generated {kind}.yaml is invalid:\n{e}")))?;
        docs.push(yaml);
    }
    let client = bundle
        .os_ca
        .issue_client(
            args.role.as_str(),
            args.role,
            Validity::from_now(CLIENT_CERT_LIFETIME),
        )
        .map_err(pki_error("issuing the client certificate"))?;
    let host = endpoint_host(args.endpoint).unwrap_or_default();
    let mut nodeconfig = NodeConfig::default();
    nodeconfig.merge(
        args.cluster,
        Context {
            endpoints: if host.is_empty() { vec![] } else { vec![host] },
            nodes: vec![],
            ca: bundle.os_ca.cert_pem().to_owned(),
            crt: client.cert_pem,
            key: client.key_pem,
        },
    );
    std::fs::create_dir_all(args.output_dir).map_err(|e| Error::Input {
        path: args.output_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (path, doc) in files.iter().zip(&docs) {
        write_secret_file(path, doc)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    nodeconfig.save(&files[2])?;
    writeln!(out, "wrote {}", files[2].display())?;
    Ok(())
}

/// Reads a secrets bundle written by `gen secrets`.
fn read_bundle(path: &Path) -> Result<SecretsBundle, Error> {
    let input = |reason: String| Error::Input {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
    SecretsBundle::from_yaml(&text).map_err(|e| input(e.to_string()))
}

/// Arguments of `gen nodeconfig`.
#[derive(Debug)]
pub struct GenNodeconfig<'a> {
    /// The context's name.
    pub cluster: &'a str,
    /// The secrets bundle whose OS CA issues the certificate.
    pub secrets: &'a Path,
    /// The certificate's role.
    pub role: Role,
    /// How long the certificate is valid from now.
    pub expiry: std::time::Duration,
    /// The certificate's common name; `None`: the role's name.
    pub common_name: Option<&'a str>,
    /// The context's endpoints (host[:port]).
    pub endpoints: Vec<String>,
    /// The context's nodes (host[:port]).
    pub nodes: Vec<String>,
    /// Where the client configuration goes.
    pub output: &'a Path,
    /// Overwrite an existing file.
    pub force: bool,
}

/// `gen nodeconfig`: a client configuration with one context, whose client
/// certificate carries `args.role` and expires `args.expiry` from now
/// (never after the CA itself). Everything is checked before the file is
/// written; a refusal writes nothing.
pub fn nodeconfig(out: &mut dyn Write, args: &GenNodeconfig<'_>) -> Result<(), Error> {
    refuse_existing(args.output, args.force)?;
    let bundle = read_bundle(args.secrets)?;
    let validity = Validity::from_now(args.expiry);
    let ca_expires = bramble_pki::not_after(bundle.os_ca.cert_der()).map_err(|e| Error::Input {
        path: args.secrets.to_path_buf(),
        reason: format!("os_ca: {e}"),
    })?;
    if validity.not_after > ca_expires {
        return Err(Error::Usage(format!(
            "--expiry {}: the certificate would outlive the cluster's OS CA, which expires {}; \
             choose a shorter lifetime",
            humantime(args.expiry),
            crate::utc_date(ca_expires)
        )));
    }
    let name = args.common_name.unwrap_or(args.role.as_str());
    let client = bundle
        .os_ca
        .issue_client(name, args.role, validity)
        .map_err(|e| Error::Usage(format!("--common-name {name:?}: {e}")))?;
    let mut nodeconfig = NodeConfig::default();
    nodeconfig.merge(
        args.cluster,
        Context {
            endpoints: args.endpoints.clone(),
            nodes: args.nodes.clone(),
            ca: bundle.os_ca.cert_pem().to_owned(),
            crt: client.cert_pem,
            key: client.key_pem,
        },
    );
    nodeconfig.save(args.output)?;
    writeln!(
        out,
        "wrote {}: context {}, {} certificate for {name:?}, valid until {} ({})",
        args.output.display(),
        args.cluster,
        args.role,
        crate::utc_date(validity.not_after),
        humantime(args.expiry),
    )?;
    Ok(())
}

/// A lifetime in its largest whole unit: `24h` is `1d`, `90m` stays `90m`.
fn humantime(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    [(365 * 86_400, "y"), (86_400, "d"), (3600, "h"), (60, "m")]
        .iter()
        .find(|(unit, _)| secs.is_multiple_of(*unit))
        .map_or_else(
            || format!("{secs}s"),
            |(unit, name)| format!("{}{name}", secs / unit),
        )
}

/// The host of `https://HOST:PORT/...`.
fn endpoint_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_in_their_largest_unit() {
        let h = |s| humantime(std::time::Duration::from_secs(s));
        assert_eq!(h(86_400), "1d");
        assert_eq!(h(5400), "90m");
        assert_eq!(h(90), "90s");
        assert_eq!(h(365 * 86_400), "1y");
        assert_eq!(h(7200), "2h");
    }

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            endpoint_host("https://10.0.0.1:6443").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            endpoint_host("https://[fd00::1]:6443/x").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(endpoint_host("https://cp.lan").as_deref(), Some("cp.lan"));
        assert_eq!(endpoint_host("https://:6443"), None);
    }
}
