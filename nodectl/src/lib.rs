//! `nodectl`: the command-line client of the Bramble machine API.
//!
//! The binary is a thin wrapper around [`run`], which tests call directly.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod nodeconfig;
pub mod nodes;
pub mod output;

use std::future::Future;
use std::io::Write;

use bramble_api::machine::v1::{
    AddressesRequest, DmesgRequest, EventsRequest, GetConfigRequest, HostnameRequest, LinksRequest,
    LogsRequest, MemoryRequest, MountsRequest, ProcessesRequest, RebootRequest, ResetRequest,
    ResolversRequest, RoutesRequest, ServiceListRequest, ServiceRequest, ShutdownRequest,
    TimeRequest,
};
use bramble_api::runtime::v1 as rt;
use clap::CommandFactory;

use crate::client::MachineClient;

pub use cli::Cli;
pub use error::{Error, NodeError};

/// `NODE: message`, with the address actually dialled in parentheses when
/// it is not obvious from the node's name (an endpoint, a resolved name).
pub fn describe_failure(target: &nodes::Target, e: &NodeError) -> String {
    let named = format!("{}:{}", target.node.uri_host(), target.node.port);
    match e.addr() {
        Some(a) if a.to_string() != named => format!("{} ({a}): {e}", target.node),
        _ => format!("{}: {e}", target.node),
    }
}

/// The nodes to talk to and how: `--insecure`/`--cert-fingerprint` for
/// maintenance mode, otherwise mutual TLS with the client configuration's
/// current (or `--context`) context, whose nodes and endpoints are used
/// when `-n`/`-e` are not given.
pub fn session(g: &cli::GlobalArgs) -> Result<(Vec<nodes::Target>, client::ClientTls), Error> {
    if g.insecure || g.cert_fingerprint.is_some() {
        // A pinned node that asks for a client certificate (one that lost
        // its configuration) gets the client configuration's, if there is
        // one; a node in maintenance mode asks for none.
        let identity = match &g.cert_fingerprint {
            Some(_) => client_identity(g)?,
            None => None,
        };
        let tls = match (&g.cert_fingerprint, identity) {
            (Some(pin), Some(identity)) => {
                client::ClientTls::pinned_with_identity(pin.clone(), &identity)?
            }
            _ => client::ClientTls::from_flags(g.insecure, g.cert_fingerprint.clone())?,
        };
        return Ok((nodes::targets(&g.nodes, &g.endpoints)?, tls));
    }
    let path = nodeconfig_path(g)?;
    let file = nodeconfig::NodeConfig::load(&path)?.ok_or(Error::NoClientConfig)?;
    let (_, ctx) = file
        .context(g.context.as_deref())
        .map_err(|reason| Error::NodeConfig {
            path: path.clone(),
            reason,
        })?;
    let parse_all = |list: &[String]| -> Result<Vec<nodes::NodeAddr>, Error> {
        list.iter()
            .map(|s| {
                nodes::NodeAddr::parse(s).map_err(|reason| Error::NodeConfig {
                    path: path.clone(),
                    reason: format!("{s}: {reason}"),
                })
            })
            .collect()
    };
    let (n, e) = match (g.nodes.is_empty(), g.endpoints.is_empty()) {
        (true, true) if !ctx.nodes.is_empty() => (parse_all(&ctx.nodes)?, vec![]),
        (true, true) => (vec![], parse_all(&ctx.endpoints)?),
        _ => (g.nodes.clone(), g.endpoints.clone()),
    };
    if let Some(expired) = expired_at(&ctx.crt) {
        return Err(Error::NodeConfig {
            path: path.clone(),
            reason: format!(
                "the client certificate expired at {expired}: nodes refuse it; mint a new one \
                 (nodectl gen nodeconfig --with-secrets secrets.yaml --role ROLE --expiry 24h)"
            ),
        });
    }
    let identity = bramble_pki::IssuedCert {
        cert_pem: ctx.crt.clone(),
        key_pem: ctx.key.clone(),
    };
    let config =
        bramble_pki::client_config_mtls(&ctx.ca, &identity).map_err(|e| Error::NodeConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok((
        nodes::targets(&n, &e)?,
        client::ClientTls::from_rustls(config),
    ))
}

/// When the PEM certificate `crt` expired, if it has (one that does not
/// parse is left to the TLS setup to report).
fn expired_at(crt: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(crt.as_bytes()).ok()?;
    let not_after = bramble_pki::not_after(&der).ok()?;
    (not_after < bramble_pki::time::OffsetDateTime::now_utc()).then(|| utc_date(not_after))
}

/// `2026-12-08 19:40:00 UTC`.
pub(crate) fn utc_date(t: bramble_pki::time::OffsetDateTime) -> String {
    let t = t.to_offset(bramble_pki::time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The client certificate of the client configuration's current (or
/// `--context`) context; `None` when there is no client configuration.
fn client_identity(g: &cli::GlobalArgs) -> Result<Option<bramble_pki::IssuedCert>, Error> {
    let Ok(path) = nodeconfig_path(g) else {
        return Ok(None);
    };
    let Some(file) = nodeconfig::NodeConfig::load(&path)? else {
        return Ok(None);
    };
    let (_, ctx) = file
        .context(g.context.as_deref())
        .map_err(|reason| Error::NodeConfig { path, reason })?;
    Ok(Some(bramble_pki::IssuedCert {
        cert_pem: ctx.crt.clone(),
        key_pem: ctx.key.clone(),
    }))
}

fn nodeconfig_path(g: &cli::GlobalArgs) -> Result<std::path::PathBuf, Error> {
    g.nodeconfig
        .clone()
        .or_else(nodeconfig::default_path)
        .ok_or_else(|| Error::Usage("no --nodeconfig given and no home directory".into()))
}

/// Prints per-node failures; true if there were none.
fn report<T>(
    err: &mut dyn Write,
    results: Vec<(nodes::Target, Result<T, NodeError>)>,
) -> Result<(Vec<(String, T)>, bool), Error> {
    let mut ok = Vec::new();
    let mut all_ok = true;
    for (target, result) in results {
        match result {
            Ok(v) => ok.push((target.node.to_string(), v)),
            Err(e) => {
                all_ok = false;
                writeln!(err, "{}", describe_failure(&target, &e))?;
            }
        }
    }
    Ok((ok, all_ok))
}

/// Calls every node and prints, as one table (or list), the rows `rows_of`
/// makes of each answer.
async fn rows<T, R, F, Fut>(
    g: &cli::GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    call: F,
    rows_of: impl Fn(&str, T) -> Vec<R>,
) -> Result<bool, Error>
where
    T: Send + 'static,
    R: output::Row,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
{
    let (targets, tls) = session(g)?;
    let results = cmd::fan_out(&targets, &tls, g.timeout, move |c| {
        let fut = call(c);
        async move { fut.await.map(tonic::Response::into_inner) }
    })
    .await;
    let (answers, ok) = report(err, results)?;
    let rows: Vec<R> = answers
        .into_iter()
        .flat_map(|(node, answer)| rows_of(&node, answer))
        .collect();
    output::print(out, g.output, &rows)?;
    Ok(ok)
}

/// `nodectl get links|addresses|routes|resolvers|hostname|time`.
async fn get(
    g: &cli::GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    what: cli::GetCommand,
) -> Result<bool, Error> {
    use cmd::network::{AddressRow, HostnameRow, LinkRow, ResolversRow, RouteRow, TimeRow};
    match what {
        // Handled before: it prints documents, not rows.
        cli::GetCommand::Config => Ok(false),
        cli::GetCommand::Links => {
            let call = |mut c: MachineClient| async move { c.links(LinksRequest {}).await };
            rows(g, out, err, call, |node, r| {
                r.links.into_iter().map(|l| LinkRow::new(node, l)).collect()
            })
            .await
        }
        cli::GetCommand::Addresses => {
            let call = |mut c: MachineClient| async move { c.addresses(AddressesRequest {}).await };
            rows(g, out, err, call, |node, r| {
                r.addresses
                    .into_iter()
                    .map(|a| AddressRow::new(node, a))
                    .collect()
            })
            .await
        }
        cli::GetCommand::Routes => {
            let call = |mut c: MachineClient| async move { c.routes(RoutesRequest {}).await };
            rows(g, out, err, call, |node, r| {
                r.routes
                    .into_iter()
                    .map(|x| RouteRow::new(node, x))
                    .collect()
            })
            .await
        }
        cli::GetCommand::Resolvers => {
            let call = |mut c: MachineClient| async move { c.resolvers(ResolversRequest {}).await };
            rows(g, out, err, call, |node, r| {
                vec![ResolversRow::new(node, r)]
            })
            .await
        }
        cli::GetCommand::Hostname => {
            let call = |mut c: MachineClient| async move { c.hostname(HostnameRequest {}).await };
            rows(g, out, err, call, |node, r| {
                vec![HostnameRow {
                    node: node.to_owned(),
                    hostname: r.hostname,
                }]
            })
            .await
        }
        cli::GetCommand::Time => {
            let call = |mut c: MachineClient| async move { c.time(TimeRequest {}).await };
            rows(g, out, err, call, |node, r| vec![TimeRow::new(node, r)]).await
        }
    }
}

/// Calls every node; prints `NODE: done` for each that answered.
async fn each<T, F, Fut>(
    g: &cli::GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    done: &str,
    call: F,
) -> Result<bool, Error>
where
    T: Send + 'static,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
{
    let (targets, tls) = session(g)?;
    let results = cmd::fan_out(&targets, &tls, g.timeout, move |c| {
        let fut = call(c);
        async move { fut.await.map(drop) }
    })
    .await;
    let (answers, ok) = report(err, results)?;
    for (node, ()) in answers {
        writeln!(out, "{node}: {done}")?;
    }
    Ok(ok)
}

/// `nodectl image pull|import|rm`.
async fn image(
    g: &cli::GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    what: cli::ImageCommand,
) -> Result<bool, Error> {
    let (targets, tls) = session(g)?;
    let timeout = cmd::runtime::TRANSFER_TIMEOUT.max(g.timeout);
    match what {
        cli::ImageCommand::Flash(_) => unreachable_flash(),
        cli::ImageCommand::Pull { reference, force } => {
            let results = cmd::fan_out(&targets, &tls, timeout, move |mut c| {
                let req = rt::ImagePullRequest {
                    reference: reference.clone(),
                    force,
                };
                async move { c.image_pull(req).await.map(tonic::Response::into_inner) }
            })
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in answers {
                let image = r.image.unwrap_or_default();
                writeln!(
                    out,
                    "{node}: {} {} ({} bytes fetched in {} ms)",
                    image.reference, image.digest, r.fetched_bytes, r.duration_ms
                )?;
            }
            Ok(ok)
        }
        cli::ImageCommand::Import {
            file,
            reference,
            force,
        } => {
            // Fail before dialling anything if the file cannot be read.
            std::fs::metadata(&file).map_err(|e| Error::Input {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            let results = cmd::fan_out(&targets, &tls, timeout, move |mut c| {
                let (file, reference) = (file.clone(), reference.clone());
                async move {
                    let chunks = cmd::runtime::import_chunks(&file, reference, force)
                        .await
                        .map_err(|e| {
                            tonic::Status::invalid_argument(format!("{}: {e}", file.display()))
                        })?;
                    c.image_import(chunks)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in answers {
                for image in r.images {
                    writeln!(out, "{node}: imported {} {}", image.reference, image.digest)?;
                }
            }
            Ok(ok)
        }
        cli::ImageCommand::Rm { reference } => {
            let results = cmd::fan_out(&targets, &tls, g.timeout, move |mut c| {
                let req = rt::ImageRemoveRequest {
                    reference: reference.clone(),
                };
                async move { c.image_remove(req).await.map(tonic::Response::into_inner) }
            })
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in answers {
                writeln!(
                    out,
                    "{node}: removed ({} blobs, {} snapshots freed)",
                    r.removed_blobs, r.removed_snapshots
                )?;
            }
            Ok(ok)
        }
    }
}

/// `image flash` runs before any session is opened (see [`run`]).
fn unreachable_flash() -> Result<bool, Error> {
    Err(Error::Usage(
        "image flash is handled before connecting to nodes".to_owned(),
    ))
}

/// Opens a stream on every node and prints each item as a row as it comes.
async fn streamed<T, R, F, Fut>(
    g: &cli::GlobalArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    follow: bool,
    call: F,
    row_of: impl Fn(&str, T) -> R,
) -> Result<bool, Error>
where
    T: Send + 'static,
    R: output::Row,
    F: Fn(MachineClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>> + Send,
{
    let (targets, tls) = session(g)?;
    let format = g.output;
    let results = cmd::stream_each(&targets, &tls, g.timeout, follow, call, |t, item| {
        output::print_streamed(out, format, &row_of(&t.node.to_string(), item))
    })
    .await?;
    Ok(report(err, results)?.1)
}

/// Runs a parsed command line. Results go to `out`, per-node errors to
/// `err` as `NODE: message`. Returns `Ok(true)` if every node answered,
/// `Ok(false)` if some failed (exit code 1), `Err` if the command could not
/// run at all.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<bool, Error> {
    match cli.command {
        cli::Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "nodectl", out);
            Ok(true)
        }
        cli::Command::Image {
            what: cli::ImageCommand::Flash(args),
        } => {
            cmd::flash::run(out, &args)?;
            Ok(true)
        }
        cli::Command::Image { what } => image(&cli.global, out, err, what).await,
        cli::Command::Images => {
            let call = |mut c: MachineClient| async move { c.images(rt::ImagesRequest {}).await };
            rows(&cli.global, out, err, call, |node, r| {
                r.images
                    .into_iter()
                    .map(|i| cmd::runtime::ImageRow::new(node, i))
                    .collect()
            })
            .await
        }
        cli::Command::Containers => {
            let call =
                |mut c: MachineClient| async move { c.containers(rt::ContainersRequest {}).await };
            rows(&cli.global, out, err, call, |node, r| {
                r.containers
                    .into_iter()
                    .map(|x| cmd::runtime::ContainerRow::new(node, x))
                    .collect()
            })
            .await
        }
        cli::Command::Stats => {
            let call = |mut c: MachineClient| async move {
                c.container_stats(rt::ContainerStatsRequest {}).await
            };
            rows(&cli.global, out, err, call, |node, r| {
                r.stats
                    .into_iter()
                    .map(|x| cmd::runtime::StatsRow::new(node, x))
                    .collect()
            })
            .await
        }
        cli::Command::Container { name, action } => {
            let call = move |mut c: MachineClient| {
                let req = rt::ContainerRestartRequest { name: name.clone() };
                async move {
                    match action {
                        cli::ContainerAction::Restart => c.container_restart(req).await,
                    }
                }
            };
            each(&cli.global, out, err, "restarting", call).await
        }
        cli::Command::Logs {
            service,
            container: true,
            tail,
            follow,
        } => {
            let call = move |mut c: MachineClient| {
                let req = rt::ContainerLogsRequest {
                    name: service.clone(),
                    tail,
                    follow,
                };
                async move { c.container_logs(req).await }
            };
            streamed(
                &cli.global,
                out,
                err,
                follow,
                call,
                cmd::runtime::ContainerLogRow::new,
            )
            .await
        }
        cli::Command::Version => {
            let g = &cli.global;
            let (targets, tls) = session(g)?;
            let results = cmd::version::fan_out(&targets, &tls, g.timeout).await;
            let (answers, ok) = report(err, results)?;
            let rows: Vec<_> = answers
                .into_iter()
                .map(|(node, v)| cmd::version::VersionRow::new(node, v))
                .collect();
            output::print(out, g.output, &rows)?;
            Ok(ok)
        }
        cli::Command::Gen { what } => {
            match what {
                cli::GenCommand::Secrets {
                    output_file,
                    cluster_name,
                    force,
                } => cmd::generate::secrets(out, &output_file, &cluster_name, force)?,
                cli::GenCommand::Config {
                    cluster_name,
                    endpoint,
                    output_dir,
                    with_secrets,
                    patches,
                    role,
                    force,
                } => cmd::generate::config(
                    out,
                    &cmd::generate::GenConfig {
                        cluster: &cluster_name,
                        endpoint: &endpoint,
                        output_dir: &output_dir,
                        with_secrets: with_secrets.as_deref(),
                        patches: &patches,
                        role: role.into(),
                        force,
                    },
                )?,
                cli::GenCommand::Nodeconfig {
                    cluster_name,
                    with_secrets,
                    role,
                    expiry,
                    common_name,
                    output_file,
                    force,
                } => {
                    let g = &cli.global;
                    cmd::generate::nodeconfig(
                        out,
                        &cmd::generate::GenNodeconfig {
                            cluster: &cluster_name,
                            secrets: &with_secrets,
                            role: role.into(),
                            expiry,
                            common_name: common_name.as_deref(),
                            endpoints: g.endpoints.iter().map(ToString::to_string).collect(),
                            nodes: g.nodes.iter().map(ToString::to_string).collect(),
                            output: &output_file,
                            force,
                        },
                    )?;
                }
            }
            Ok(true)
        }
        cli::Command::Validate { file } => {
            cmd::apply::validate(out, &file)?;
            Ok(true)
        }
        cli::Command::ApplyConfig {
            file,
            mode,
            dry_run,
            try_timeout,
            patches,
        } => {
            let (yaml, _) = cmd::apply::load(&file, &patches)?;
            let (targets, tls) = session(&cli.global)?;
            let req = cmd::apply::request(yaml, mode, dry_run, try_timeout);
            let results = cmd::fan_out(&targets, &tls, cli.global.timeout, move |mut c| {
                let req = req.clone();
                async move {
                    c.apply_configuration(req)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in &answers {
                cmd::apply::print(out, node, r, dry_run)?;
            }
            Ok(ok)
        }
        cli::Command::Get {
            what: cli::GetCommand::Config,
        } => {
            let (targets, tls) = session(&cli.global)?;
            let results = cmd::fan_out(&targets, &tls, cli.global.timeout, |mut c| async move {
                c.get_config(GetConfigRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await;
            let (answers, ok) = report(err, results)?;
            let several = answers.len() > 1;
            for (node, r) in answers {
                if several {
                    writeln!(out, "# {node}")?;
                }
                out.write_all(&r.data)?;
            }
            Ok(ok)
        }
        cli::Command::Get { what } => get(&cli.global, out, err, what).await,
        cli::Command::Services => {
            let call =
                |mut c: MachineClient| async move { c.service_list(ServiceListRequest {}).await };
            rows(&cli.global, out, err, call, |node, r| {
                r.services
                    .into_iter()
                    .map(|s| cmd::node::ServiceRow::new(node, s))
                    .collect()
            })
            .await
        }
        cli::Command::Service { name, action } => {
            let call = move |mut c: MachineClient| {
                let req = ServiceRequest { name: name.clone() };
                async move {
                    match action {
                        cli::ServiceAction::Start => c.service_start(req).await,
                        cli::ServiceAction::Stop => c.service_stop(req).await,
                        cli::ServiceAction::Restart => c.service_restart(req).await,
                    }
                }
            };
            let done = format!("{action:?} done").to_lowercase();
            each(&cli.global, out, err, &done, call).await
        }
        cli::Command::Logs {
            service,
            container: false,
            tail,
            follow,
        } => {
            let call = move |mut c: MachineClient| {
                let req = LogsRequest {
                    service: service.clone(),
                    tail,
                    follow,
                };
                async move { c.logs(req).await }
            };
            streamed(&cli.global, out, err, follow, call, cmd::node::LogRow::new).await
        }
        cli::Command::Dmesg { tail, follow } => {
            let call = move |mut c: MachineClient| async move {
                c.dmesg(DmesgRequest { tail, follow }).await
            };
            streamed(
                &cli.global,
                out,
                err,
                follow,
                call,
                cmd::node::KernelRow::new,
            )
            .await
        }
        cli::Command::Events { since, follow } => {
            let call = move |mut c: MachineClient| async move {
                c.events(EventsRequest { since, follow }).await
            };
            streamed(
                &cli.global,
                out,
                err,
                follow,
                call,
                cmd::node::EventRow::new,
            )
            .await
        }
        cli::Command::Reset { wipe_data, force } => {
            let (targets, tls) = session(&cli.global)?;
            let results = cmd::fan_out(
                &targets,
                &tls,
                cli.global.timeout.max(cmd::etcd::CHANGE_TIMEOUT),
                move |mut c| async move {
                    c.reset(ResetRequest { wipe_data, force })
                        .await
                        .map(tonic::Response::into_inner)
                },
            )
            .await;
            let (answers, ok) = report(err, results)?;
            for (node, r) in answers {
                if !r.etcd.is_empty() {
                    writeln!(out, "{node}: {}", r.etcd)?;
                }
                writeln!(
                    out,
                    "{node}: configuration wiped; rebooting into maintenance mode"
                )?;
            }
            Ok(ok)
        }
        cli::Command::Health => cmd::health::run(&cli.global, out, err).await,
        cli::Command::Memory => {
            let call = |mut c: MachineClient| async move { c.memory(MemoryRequest {}).await };
            rows(&cli.global, out, err, call, |node, m| {
                vec![cmd::node::MemoryRow::new(node, m)]
            })
            .await
        }
        cli::Command::Processes => {
            let call = |mut c: MachineClient| async move { c.processes(ProcessesRequest {}).await };
            rows(&cli.global, out, err, call, |node, r| {
                r.processes
                    .into_iter()
                    .map(|p| cmd::node::ProcessRow::new(node, p))
                    .collect()
            })
            .await
        }
        cli::Command::Mounts => {
            let call = |mut c: MachineClient| async move { c.mounts(MountsRequest {}).await };
            rows(&cli.global, out, err, call, |node, r| {
                r.mounts
                    .into_iter()
                    .map(|m| cmd::node::MountRow::new(node, m))
                    .collect()
            })
            .await
        }
        cli::Command::Reboot => {
            let call = |mut c: MachineClient| async move { c.reboot(RebootRequest {}).await };
            each(&cli.global, out, err, "rebooting", call).await
        }
        cli::Command::Shutdown => {
            let call = |mut c: MachineClient| async move { c.shutdown(ShutdownRequest {}).await };
            each(&cli.global, out, err, "powering off", call).await
        }
        cli::Command::Bootstrap { recover_from } => {
            cmd::etcd::bootstrap(&cli.global, out, err, recover_from).await
        }
        cli::Command::Etcd { what } => cmd::etcd::run(&cli.global, out, err, what).await,
        cli::Command::Config { what } => {
            let path = nodeconfig_path(&cli.global)?;
            cmd::context::run(
                out,
                cli.global.output,
                &path,
                cli.global.context.as_deref(),
                &what,
            )?;
            Ok(true)
        }
    }
}
