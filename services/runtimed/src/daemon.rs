//! The daemon's life: open the store, serve the runtime API on its Unix
//! socket, signal readiness, run the configured workloads, re-read the
//! configuration on SIGHUP, stop every container on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bramble_api::runtime::v1::runtime_server::RuntimeServer;
use bramble_config::{MachineConfig, Registries, Workload};
use bramble_oci_store::{Credentials, RegistryConfig, Store};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::server::RuntimeService;
use crate::workloads::{Paths, Runtime};

/// Everything the daemon is told on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The machine configuration (`machine.workloads`, `machine.registries`).
    pub config: PathBuf,
    /// The image store's root.
    pub store: PathBuf,
    /// Where the runtime API listens.
    pub socket: PathBuf,
    /// The readiness descriptor (`BRAMBLE_READY_FD`), if supervised.
    pub ready_fd: Option<String>,
    /// Where things live.
    pub paths: Paths,
}

/// What the configuration asks of the runtime.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// Registry settings.
    pub registries: RegistryConfig,
}

/// Reads the runtime's part of the configuration: nothing when there is no
/// file (maintenance mode); an error naming every bad field otherwise.
pub fn load(path: &Path) -> anyhow::Result<Desired> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Desired::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config =
        MachineConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Desired {
        workloads: config.machine.workloads,
        registries: registry_config(&config.machine.registries),
    })
}

/// `machine.registries` in the store's terms.
pub fn registry_config(r: &Registries) -> RegistryConfig {
    RegistryConfig {
        mirrors: r.mirrors.clone(),
        insecure: r.insecure.clone(),
        auth: r
            .auth
            .iter()
            .filter_map(|(host, a)| {
                let creds = match (&a.username, &a.password, &a.token) {
                    (_, _, Some(token)) => Credentials::Bearer(token.expose().to_owned()),
                    (Some(user), Some(pass), None) => Credentials::Basic {
                        username: user.clone(),
                        password: pass.expose().to_owned(),
                    },
                    _ => return None,
                };
                Some((host.clone(), creds))
            })
            .collect(),
        ca_certificates: r.ca.clone(),
    }
}

/// Listens on `socket`, replacing a stale socket file.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", socket.display())),
    }
    UnixListener::bind(socket).with_context(|| format!("cannot listen on {}", socket.display()))
}

/// Serves the runtime API of `rt` on `listener` until `shutdown` completes.
pub async fn serve(
    rt: Arc<Runtime>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(RuntimeServer::new(RuntimeService::new(rt)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

/// Runs until SIGTERM.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    for dir in [
        &opts.paths.state_dir,
        &opts.paths.run_dir,
        &opts.paths.log_dir,
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::container::prepare_cgroup_parent(&opts.paths.cgroup_parent)
        .with_context(|| format!("cannot prepare {}", opts.paths.cgroup_parent.display()))?;
    let store = Store::open(&opts.store)
        .with_context(|| format!("cannot open the image store {}", opts.store.display()))?;
    let rt = Arc::new(Runtime::new(store, opts.paths.clone()));

    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = bind(&opts.socket)?;
    let server = tokio::spawn(serve(Arc::clone(&rt), listener, async {
        let _ = serving_stopped.await;
    }));
    tracing::info!(socket = %opts.socket.display(), store = %opts.store.display(), "runtime API listening");
    match bramble_daemon::ready::notify(opts.ready_fd.as_deref()) {
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot signal readiness: {e}"),
    }

    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut applied: Option<Desired> = None;
    loop {
        match load(&opts.config) {
            Ok(desired) => {
                if applied.as_ref() != Some(&desired) {
                    tracing::info!(
                        workloads = desired.workloads.len(),
                        "applying the configuration"
                    );
                    rt.reconcile(desired.workloads.clone(), desired.registries.clone())
                        .await;
                    applied = Some(desired);
                }
            }
            Err(e) => {
                tracing::error!("configuration not applied, the running containers stay: {e:#}")
            }
        }
        tokio::select! {
            _ = hup.recv() => tracing::info!("SIGHUP: re-reading the configuration"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping every container");
    rt.stop_all().await;
    let _ = stop_serving.send(());
    let _ = server.await;
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../../lib/config/tests/data/full.yaml");

    #[test]
    fn the_runtime_part_of_the_configuration() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.yaml");
        assert_eq!(load(&path).expect("no file"), Desired::default());
        let registries = "  registries:
    insecure: ['10.0.2.100:5000']
    mirrors:
      docker.io: ['http://10.0.2.100:5000']
    ca:
      - |
        -----BEGIN CERTIFICATE-----
        MIIB
        -----END CERTIFICATE-----
    auth:
      ghcr.io: {username: robot, password: pw}
      quay.io: {token: tok}
  workloads:
";
        std::fs::write(&path, BASE.replacen("  workloads:\n", registries, 1)).expect("write");
        let d = load(&path).expect("a valid configuration");
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(d.registries.insecure, ["10.0.2.100:5000"]);
        assert_eq!(
            d.registries.mirrors["docker.io"],
            ["http://10.0.2.100:5000"]
        );
        assert!(d.registries.ca_certificates[0].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            d.registries.auth["ghcr.io"],
            Credentials::Basic {
                username: "robot".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            d.registries.auth["quay.io"],
            Credentials::Bearer("tok".into())
        );

        std::fs::write(&path, "machine: {type: boss}\n").expect("write");
        let err = format!("{:#}", load(&path).expect_err("a bad configuration"));
        assert!(err.contains("config.yaml"), "{err}");
    }
}
