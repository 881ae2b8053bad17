//! An in-process `apid` for nodectl's tests, and helpers to run nodectl.

#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use bramble_apid::identity::Origin;
use bramble_apid::{BoundServer, Config, NodeInfoSource};
use tokio::sync::oneshot;

/// A running API server on 127.0.0.1, on its own thread and current-thread
/// runtime (as on the node).
pub struct TestServer {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub origin: Origin,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Fixture files for `Version`: os-release, cmdline, uptime.
pub fn fixture_info(dir: &Path) -> NodeInfoSource {
    let os = dir.join("os-release");
    let cmdline = dir.join("cmdline");
    let uptime = dir.join("uptime");
    fs::write(&os, "NAME=\"Bramble\"\nID=bramble\nVERSION_ID=9.9.9\n").unwrap();
    fs::write(&cmdline, "console=ttyAMA0 bramble.slot=B quiet\n").unwrap();
    fs::write(&uptime, "3723.50 100.00\n").unwrap();
    NodeInfoSource {
        os_release: vec![os],
        cmdline,
        uptime,
    }
}

impl TestServer {
    pub fn start(state_dir: &Path, info: NodeInfoSource) -> Self {
        Self::start_with(state_dir, info, |_| {})
    }

    /// As [`TestServer::start`], with `tweak` applied to the server's
    /// configuration last.
    pub fn start_with(
        state_dir: &Path,
        info: NodeInfoSource,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        bramble_apid::install_crypto_provider();
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), state_dir);
        config.info = info;
        // A supervisor, if the test runs one, listens here.
        config.control_socket = state_dir.join("init.sock");
        // A runtime, if the test runs one ([`TestRuntime`]), listens here.
        config.runtime_socket = state_dir.join("runtimed.sock");
        config.shutdown_grace = Duration::from_secs(2);
        // etcd's state (its data, a bootstrap request) under the state
        // directory, never the host's /var/lib.
        config.etcd_root = state_dir.to_path_buf();
        tweak(&mut config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = BoundServer::bind(config).await.unwrap();
                ready_tx
                    .send((
                        server.local_addr(),
                        server.fingerprint().to_string(),
                        server.identity_origin(),
                    ))
                    .unwrap();
                server
                    .serve(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let (addr, fingerprint, origin) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not start");
        Self {
            addr,
            fingerprint,
            origin,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The real container runtime's API (`bramble-runtimed`'s store and
/// server, no workloads) on `<state_dir>/runtimed.sock`, on its own thread.
pub struct TestRuntime {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestRuntime {
    pub fn start(state_dir: &Path) -> Self {
        Self::start_with(state_dir, Vec::new(), Default::default())
    }

    /// As [`TestRuntime::start`], keeping `workloads` (with `registries`)
    /// as its configuration loop would: their shim does not exist here, so
    /// they fail to start and are retried, but they are the runtime's
    /// workloads, using their images.
    pub fn start_with(
        state_dir: &Path,
        workloads: Vec<bramble_config::Workload>,
        registries: bramble_oci_store::RegistryConfig,
    ) -> Self {
        use bramble_runtimed::workloads::{Paths, Runtime};
        let socket = state_dir.join("runtimed.sock");
        let dir = state_dir.join("runtime");
        let store = bramble_oci_store::Store::open(&dir.join("images")).unwrap();
        let paths = Paths {
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            log_dir: dir.join("log"),
            cgroup_parent: dir.join("cgroup"),
            shim_exe: PathBuf::from("/nonexistent/bramble-runtimed"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let runtime = std::sync::Arc::new(Runtime::new(store, paths));
                runtime.reconcile(workloads, registries).await;
                let listener = bramble_runtimed::daemon::bind(&socket).unwrap();
                ready_tx.send(()).unwrap();
                bramble_runtimed::daemon::serve(runtime, listener, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("runtime did not start");
        Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the built `nodectl` binary.
pub fn nodectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args(args)
        .output()
        .expect("cannot run nodectl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn state_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
