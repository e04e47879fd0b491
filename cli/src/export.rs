//! `periscope export`: flows from the server (the relay's history, or an agent's buffer) written
//! to Parquet, Arrow IPC or JSON-lines files, with the columns of the ClickHouse `flows` table
//! (`periscope_storage::arrow`).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use periscope_proto::flow::Flow;
use periscope_proto::observer::get_flows_response::ResponseTypes;
use periscope_proto::observer::observer_client::ObserverClient;
use periscope_storage::FlowRow;
use periscope_storage::arrow as pa;

use crate::args::{ExportArgs, ExportFormat, GlobalArgs};
use crate::client::connect;
use crate::request::flows_request;
use crate::{CliError, RpcError};

enum Sink {
    Parquet(parquet::arrow::ArrowWriter<File>),
    Arrow(arrow_ipc::writer::FileWriter<File>),
    Jsonl(BufWriter<File>),
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Output(std::io::Error::other(format!(
        "{what} {}: {e}",
        path.display()
    )))
}

impl Sink {
    fn create(format: ExportFormat, path: &Path) -> Result<Sink, CliError> {
        let f = File::create(path).map_err(|e| io_err(path, "creating", e))?;
        Ok(match format {
            ExportFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                Sink::Parquet(
                    parquet::arrow::ArrowWriter::try_new(f, pa::schema(), Some(props))
                        .map_err(|e| io_err(path, "writing", e))?,
                )
            }
            ExportFormat::Arrow => Sink::Arrow(
                arrow_ipc::writer::FileWriter::try_new(f, &pa::schema())
                    .map_err(|e| io_err(path, "writing", e))?,
            ),
            ExportFormat::Jsonl => Sink::Jsonl(BufWriter::new(f)),
        })
    }

    fn write(&mut self, flows: &[Flow], path: &Path) -> Result<(), CliError> {
        match self {
            Sink::Jsonl(w) => {
                for f in flows {
                    serde_json::to_writer(&mut *w, f).map_err(|e| io_err(path, "writing", e))?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            }
            Sink::Parquet(_) | Sink::Arrow(_) => {
                let rows: Vec<FlowRow> = flows
                    .iter()
                    .map(|f| {
                        let cluster = f.node_name.split_once('/').map_or("", |(c, _)| c);
                        FlowRow::from_flow(f, cluster)
                    })
                    .collect();
                let batch = pa::to_batch(&rows).map_err(|e| io_err(path, "converting", e))?;
                match self {
                    Sink::Parquet(w) => w.write(&batch).map_err(|e| io_err(path, "writing", e)),
                    Sink::Arrow(w) => w.write(&batch).map_err(|e| io_err(path, "writing", e)),
                    Sink::Jsonl(_) => unreachable!(),
                }
            }
        }
    }

    fn finish(self, path: &Path) -> Result<(), CliError> {
        match self {
            Sink::Parquet(w) => w
                .close()
                .map(|_| ())
                .map_err(|e| io_err(path, "closing", e)),
            Sink::Arrow(mut w) => w.finish().map_err(|e| io_err(path, "closing", e)),
            Sink::Jsonl(mut w) => Ok(w.flush()?),
        }
    }
}

/// Runs `export`: streams the selected flows into the file (written under a temporary name and
/// renamed when complete, so a failed export leaves no partial file behind).
pub async fn export(
    global: &GlobalArgs,
    args: &ExportArgs,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let observe = &args.observe;
    observe.check().map_err(CliError::Invalid)?;
    if observe.follow {
        return Err(CliError::Invalid(
            "export writes a finished file: --follow is not supported".into(),
        ));
    }
    let mut query = observe.query();
    if query.selector.last == 0 && query.selector.first == 0 {
        query.selector.all = true;
    }
    let request = flows_request(&query, SystemTime::now())?;
    let tmp: PathBuf = {
        let mut name = args.file.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        args.file.with_file_name(name)
    };
    let mut sink = Sink::create(args.format, &tmp)?;
    let result = async {
        let channel = connect(global).await?;
        let mut client = ObserverClient::new(channel);
        let mut stream = client
            .get_flows(request)
            .await
            .map_err(RpcError::observe)?
            .into_inner();
        let mut batch = Vec::with_capacity(args.batch_rows.max(1));
        let (mut flows, mut notices) = (0u64, 0u64);
        while let Some(r) = stream.message().await.map_err(RpcError::observe)? {
            match r.response_types {
                Some(ResponseTypes::Flow(f)) => {
                    batch.push(f);
                    flows += 1;
                    if batch.len() >= args.batch_rows.max(1) {
                        sink.write(&batch, &tmp)?;
                        batch.clear();
                    }
                }
                Some(ResponseTypes::NodeStatus(n)) => {
                    notices += 1;
                    writeln!(err, "note: node status {:?}: {}", n.node_names, n.message)?;
                }
                Some(ResponseTypes::LostEvents(l)) => {
                    notices += 1;
                    writeln!(err, "note: {} events lost at the source", l.num_events_lost)?;
                }
                _ => {}
            }
        }
        if !batch.is_empty() {
            sink.write(&batch, &tmp)?;
        }
        Ok::<_, CliError>((sink, flows, notices))
    }
    .await;
    match result {
        Ok((sink, flows, _)) => {
            sink.finish(&tmp)?;
            std::fs::rename(&tmp, &args.file).map_err(|e| io_err(&args.file, "renaming to", e))?;
            writeln!(
                err,
                "exported {flows} flows to {} ({:?})",
                args.file.display(),
                args.format
            )?;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
