//! The subcommands.

pub mod apply;
pub mod context;
pub mod etcd;
pub mod flash;
pub mod generate;
pub mod health;
pub mod network;
pub mod node;
pub mod runtime;
pub mod version;

use std::future::Future;
use std::time::Duration;

use crate::client::{ClientTls, MachineClient, connect};
use crate::error::NodeError;
use crate::nodes::Target;

/// Calls `f` on every target concurrently, each bounded by `timeout`;
/// results come back in the targets' order.
pub async fn fan_out<T, F, Fut>(
    targets: &[Target],
    tls: &ClientTls,
    timeout: Duration,
    f: F,
) -> Vec<(Target, Result<T, NodeError>)>
where
    T: Send + 'static,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, tonic::Status>> + Send,
{
    let handles: Vec<_> = targets
        .iter()
        .map(|t| {
            let (t, tls, f) = (t.clone(), tls.clone(), f.clone());
            tokio::spawn(async move {
                let call = async {
                    let client = connect(&t.dial, &tls, timeout).await?;
                    f(client).await.map_err(NodeError::from)
                };
                tokio::time::timeout(timeout, call)
                    .await
                    .map_err(|_| NodeError::Timeout { after: timeout })?
            })
        })
        .collect();
    let mut out = Vec::with_capacity(targets.len());
    for (target, handle) in targets.iter().zip(handles) {
        let result = handle
            .await
            .unwrap_or_else(|e| Err(NodeError::Transport(format!("internal error: {e}"))));
        out.push((target.clone(), result));
    }
    out
}

/// What a streaming call's tasks report.
enum Streamed<T> {
    Item(usize, T),
    Done(usize, Result<(), NodeError>),
}

/// Opens a server stream on every target concurrently and hands each item to
/// `on_item` (with the node's index) as it arrives, so followed streams show
/// lines live. Connecting and opening each stream is bounded by `timeout`;
/// without `follow` reading it is too. Returns each target's outcome in the
/// targets' order.
pub async fn stream_each<T, F, Fut>(
    targets: &[Target],
    tls: &ClientTls,
    timeout: Duration,
    follow: bool,
    f: F,
    mut on_item: impl FnMut(&Target, T) -> std::io::Result<()>,
) -> Result<Vec<(Target, Result<(), NodeError>)>, crate::Error>
where
    T: Send + 'static,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Streamed<T>>(256);
    for (i, t) in targets.iter().enumerate() {
        let (t, tls, f, tx) = (t.clone(), tls.clone(), f.clone(), tx.clone());
        tokio::spawn(async move {
            let run = async {
                let open = async {
                    let client = connect(&t.dial, &tls, timeout).await?;
                    Ok::<_, NodeError>(f(client).await?.into_inner())
                };
                let mut stream = tokio::time::timeout(timeout, open)
                    .await
                    .map_err(|_| NodeError::Timeout { after: timeout })??;
                loop {
                    let next = if follow {
                        stream.message().await
                    } else {
                        tokio::time::timeout(timeout, stream.message())
                            .await
                            .map_err(|_| NodeError::Timeout { after: timeout })?
                    };
                    match next? {
                        Some(item) => {
                            if tx.send(Streamed::Item(i, item)).await.is_err() {
                                return Ok(());
                            }
                        }
                        None => return Ok(()),
                    }
                }
            };
            let result = run.await;
            let _ = tx.send(Streamed::Done(i, result)).await;
        });
    }
    drop(tx);
    let mut outcomes: Vec<Option<Result<(), NodeError>>> = vec![None; targets.len()];
    while let Some(msg) = rx.recv().await {
        match msg {
            Streamed::Item(i, item) => on_item(&targets[i], item)?,
            Streamed::Done(i, r) => outcomes[i] = Some(r),
        }
    }
    Ok(targets
        .iter()
        .cloned()
        .zip(outcomes)
        .map(|(t, r)| {
            let r = r
                .unwrap_or_else(|| Err(NodeError::Transport("the stream task ended early".into())));
            (t, r)
        })
        .collect())
}
