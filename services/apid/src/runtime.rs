//! The container runtime's calls, forwarded to `runtimed` on its Unix
//! socket. The caller's role was checked before a call gets here
//! (`auth.rs`); `runtimed` trusts whoever can reach its socket (root).

use std::path::PathBuf;

use bramble_api::runtime::v1::runtime_client::RuntimeClient as Client;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

/// `runtimed`'s socket on the node.
pub const DEFAULT_RUNTIME_SOCKET: &str = "/run/bramble/runtimed.sock";

/// Reaches `runtimed`.
#[derive(Debug, Clone)]
pub struct RuntimeClient {
    socket: PathBuf,
}

impl RuntimeClient {
    /// A client of the runtime listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// A connection for one call (a Unix socket connects in microseconds).
    pub async fn connect(&self) -> Result<Client<Channel>, Status> {
        let socket = self.socket.clone();
        let channel =
            Endpoint::from_static("http://runtimed")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "the container runtime (runtimed) is not reachable on {}: {e}; \
                     `nodectl services` shows its state",
                        self.socket.display()
                    ))
                })?;
        Ok(Client::new(channel).max_decoding_message_size(64 << 20))
    }
}
