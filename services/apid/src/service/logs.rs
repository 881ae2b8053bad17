//! The streams that can be followed: a service's captured output (Logs,
//! from PID 1's supervisor), the kernel log (Dmesg) and the node's events
//! (Events).

use std::sync::Arc;

use bramble_api::machine::v1::{
    DmesgRequest, Event, EventsRequest, KernelLogLine, LogLine, LogsRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{FOLLOW_POLL, MachineApi, ResponseStream, STREAM_BUFFER};

#[tracing::instrument(skip_all, fields(service = %request.get_ref().service, follow = request.get_ref().follow))]
pub(super) async fn logs(
    api: &MachineApi,
    request: Request<LogsRequest>,
) -> Result<Response<ResponseStream<LogLine>>, Status> {
    let req = request.into_inner();
    if req.service.is_empty() {
        return Err(Status::invalid_argument("service: name a service"));
    }
    let tail = match req.tail {
        0 => bramble_supervisor::protocol::DEFAULT_LOG_TAIL,
        n => (n as usize).min(bramble_supervisor::protocol::MAX_LOG_TAIL),
    };
    let service = req.service;
    let first = {
        let service = service.clone();
        api.node
            .control("logs", move |c| c.logs(&service, tail))
            .await?
    };
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let node = Arc::clone(&api.node);
    let follow = async move {
        // Following goes by the supervisor's line numbers: each poll asks
        // for the lines after the last number sent, so every line goes out
        // once, identical ones too (see `bramble_supervisor::protocol`).
        let mut cursor = first.last().map_or(0, |l| l.seq);
        for l in first {
            if tx.send(Ok(log_line(l))).await.is_err() {
                return;
            }
        }
        let mut more = false;
        while req.follow && !tx.is_closed() {
            // A full page means more is waiting: fetch it right away.
            if !more {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
            let name = service.clone();
            let (lines, newest) = match node
                .control("logs", move |c| c.logs_after(&name, cursor, FOLLOW_WINDOW))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if newest < cursor {
                // A new supervisor numbers from 1 again: all it has is new.
                tracing::info!(cursor, newest, "the log's numbering started again");
                cursor = 0;
                more = true;
                continue;
            }
            if let Some(l) = lines.first()
                && l.seq > cursor + 1
            {
                tracing::warn!(
                    skipped = l.seq - cursor - 1,
                    "lines scrolled out of the supervisor's memory before they were sent"
                );
            }
            more = false;
            for l in lines {
                cursor = l.seq;
                more = cursor < newest;
                if tx.send(Ok(log_line(l))).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::spawn(follow.instrument(tracing::Span::current()));
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

#[tracing::instrument(skip_all, fields(follow = request.get_ref().follow))]
pub(super) async fn dmesg(
    api: &MachineApi,
    request: Request<DmesgRequest>,
) -> Result<Response<ResponseStream<KernelLogLine>>, Status> {
    let req = request.into_inner();
    let (first, mut reader) = api
        .node
        .system
        .dmesg(req.tail as usize)
        .map_err(|e| Status::unavailable(format!("cannot read the kernel log: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        for l in first {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        while req.follow && !tx.is_closed() {
            tokio::time::sleep(FOLLOW_POLL).await;
            let lines = match reader.read_available() {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!("kernel log: {e}"))))
                        .await;
                    return;
                }
            };
            for l in lines {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

#[tracing::instrument(skip_all, fields(since = request.get_ref().since, follow = request.get_ref().follow))]
pub(super) async fn events(
    api: &MachineApi,
    request: Request<EventsRequest>,
) -> Result<Response<ResponseStream<Event>>, Status> {
    let req = request.into_inner();
    let since = req.since;
    let (first, mut seq) = api.node.control("events", move |c| c.events(since)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let node = Arc::clone(&api.node);
    tokio::spawn(async move {
        let mut batch = first;
        loop {
            for e in batch {
                let event = Event {
                    seq: e.seq,
                    time_unix_ms: e.time_unix_ms,
                    service: e.service.unwrap_or_default(),
                    from: e.from.unwrap_or_default(),
                    to: e.to.unwrap_or_default(),
                    message: e.message,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !req.follow || tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            let after = seq;
            match node.control("events", move |c| c.events(after)).await {
                Ok((events, last)) => {
                    batch = events;
                    seq = last;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Lines fetched per request of a followed log (more are fetched at once
/// while a page comes back full).
const FOLLOW_WINDOW: usize = 500;

fn log_line(l: bramble_supervisor::LogLine) -> LogLine {
    LogLine {
        time_unix_ms: l.time_unix_ms,
        text: l.text,
        seq: l.seq,
    }
}
