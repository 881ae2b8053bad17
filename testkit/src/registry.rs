//! A real OCI registry on the host's loopback: Debian's `docker-registry`
//! (the CNCF distribution registry), with its storage in a temporary
//! directory. Stopped and its files removed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry's program, installed by `make deps`.
pub const REGISTRY_PROGRAM: &str = "/usr/bin/docker-registry";
/// How long the registry gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    secure: Option<Secure>,
}

/// HTTPS with a certificate from a CA made for the test, and basic
/// authentication (htpasswd, bcrypt) for one user.
#[derive(Debug, Clone)]
pub struct Secure {
    /// The CA's certificate (PEM), which clients must trust.
    pub ca_pem: String,
    /// The one user.
    pub username: String,
    /// Their password.
    pub password: String,
}

impl Registry {
    /// Starts a registry on a free loopback port; panics (failing the test)
    /// with what to do when the program is missing or does not come up.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the registry");
        Self::start_in(dir, None, None)
    }

    /// A registry serving HTTPS (for `127.0.0.1`, from a new CA) that
    /// requires basic authentication as `username` / `password`.
    pub fn start_secure(username: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the registry");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bramble test registry CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server parameters");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("the server certificate");
        std::fs::write(dir.path().join("server.crt"), cert.pem()).expect("server.crt");
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("server.key");
        let hash = bcrypt::hash(password, 4).expect("a bcrypt hash");
        std::fs::write(dir.path().join("htpasswd"), format!("{username}:{hash}\n"))
            .expect("htpasswd");
        let secure = Secure {
            ca_pem: ca_cert.pem(),
            username: username.to_owned(),
            password: password.to_owned(),
        };
        Self::start_in(dir, None, Some(secure))
    }

    fn start_in(dir: tempfile::TempDir, port: Option<u16>, secure: Option<Secure>) -> Self {
        assert!(
            std::path::Path::new(REGISTRY_PROGRAM).is_file(),
            "{REGISTRY_PROGRAM} is missing: `make deps` installs Debian's docker-registry"
        );
        let port = port.unwrap_or_else(free_port);
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("registry storage directory");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if secure.is_some() {
            let d = dir.path().display();
            yaml.push_str(&format!(
                "  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\nauth:\n  htpasswd:\n    realm: bramble-test\n    path: {d}/htpasswd\n"
            ));
        }
        std::fs::write(&config, yaml).expect("registry configuration");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_PROGRAM}: {e}"));
        let mut registry = Self {
            child: Some(child),
            port,
            dir,
            secure,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return registry;
            }
            if let Some(child) = registry.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the registry exited ({status}) before serving: {}",
                    registry.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its CA and credentials, if it was started with
    /// [`Registry::start_secure`].
    pub fn secure(&self) -> Option<&Secure> {
        self.secure.as_ref()
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as an image reference's registry part.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<repo_and_tag>`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops it; its content stays for [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same content.
    pub fn restart(self) -> Self {
        let mut this = self;
        this.stop();
        let port = this.port;
        let dir = std::mem::replace(
            &mut this.dir,
            tempfile::tempdir().expect("a placeholder directory"),
        );
        Self::start_in(dir, Some(port), this.secure.take())
    }

    /// Where its blobs are stored (a test can corrupt one).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
