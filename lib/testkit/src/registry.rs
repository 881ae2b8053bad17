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
    tokens: Option<Tokens>,
}

/// Token authentication: the registry accepts bearer tokens (JWTs, ES256)
/// signed by a key made for the test; [`Registry::bearer_token`] mints them.
#[derive(Debug)]
pub struct Tokens {
    key_pkcs8: Vec<u8>,
    cert_der: Vec<u8>,
}

const TOKEN_SERVICE: &str = "bramble-test-registry";
const TOKEN_ISSUER: &str = "bramble-test-issuer";

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

    /// A plain-HTTP registry that requires bearer tokens from
    /// [`Registry::bearer_token`].
    pub fn start_with_tokens() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the registry");
        let key = rcgen::KeyPair::generate().expect("a token signing key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, TOKEN_ISSUER);
        let cert = params
            .self_signed(&key)
            .expect("the token signing certificate");
        std::fs::write(dir.path().join("token.crt"), cert.pem()).expect("token.crt");
        let tokens = Tokens {
            key_pkcs8: key.serialize_der(),
            cert_der: cert.der().to_vec(),
        };
        Self::start_in_with(dir, None, None, Some(tokens))
    }

    /// A JWT granting `actions` (`pull`, `push`) on `repository`, valid for
    /// an hour, signed as the registry expects.
    pub fn bearer_token(&self, repository: &str, actions: &[&str]) -> String {
        use base64::Engine as _;
        let tokens = self
            .tokens
            .as_ref()
            .expect("a registry started with start_with_tokens");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&tokens.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": "robot",
            "aud": TOKEN_SERVICE,
            "exp": now + 3600,
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("{now}-{repository}"),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &tokens.key_pkcs8,
            &rng,
        )
        .expect("the signing key");
        let signature = key
            .sign(&rng, signing_input.as_bytes())
            .expect("a signature");
        format!("{signing_input}.{}", b64.encode(signature.as_ref()))
    }

    fn start_in(dir: tempfile::TempDir, port: Option<u16>, secure: Option<Secure>) -> Self {
        Self::start_in_with(dir, port, secure, None)
    }

    fn start_in_with(
        dir: tempfile::TempDir,
        port: Option<u16>,
        secure: Option<Secure>,
        tokens: Option<Tokens>,
    ) -> Self {
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
        if tokens.is_some() {
            let d = dir.path().display();
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:1/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {d}/token.crt\n"
            ));
        }
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
            tokens,
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
        Self::start_in_with(dir, Some(port), this.secure.take(), this.tokens.take())
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
