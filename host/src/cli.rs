//! The `stagecraft` command line.

use crate::customer_file;
use crate::runtime::{CallContext, Lang, LoadedPlugin, Manifest, Reason, Runtime, RuntimeError};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stagecraft",
    version,
    about = "A CRM core with sandboxed WebAssembly plugins"
)]
pub struct Cli {
    /// Where compiled plugins are cached.
    #[arg(
        long,
        env = "STAGECRAFT_DATA_DIR",
        default_value = ".stagecraft",
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LangArg {
    En,
    Zh,
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Validate a component (world, imports, manifest) and print its manifest as JSON.
    Check { file: PathBuf },
    /// Score and segment customers from a JSON file with a plugin; print JSON.
    Run {
        file: PathBuf,
        /// JSON array of customers (see `customer_file`).
        #[arg(long)]
        customers: PathBuf,
        /// JSON rule set; the plugin's defaults if absent.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Evaluation time in ms since the epoch; defaults to the current time.
        #[arg(long)]
        now: Option<i64>,
        #[arg(long, default_value = "cli")]
        tenant: String,
        /// Language of rendered reasons.
        #[arg(long, value_enum, default_value = "en")]
        lang: LangArg,
    },
}

/// Errors of the command line, each printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGECRAFT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("JSON values serialize")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })
}

fn load(cli_data_dir: &std::path::Path, file: &PathBuf) -> Result<LoadedPlugin, CliError> {
    let runtime = Runtime::new(Default::default(), Some(cli_data_dir.join("cache")))?;
    let bytes = read(file)?;
    Ok(runtime.load(&bytes)?)
}

/// Runs a parsed command; returns what to print.
pub fn run(cli: Cli) -> Result<Value, CliError> {
    match cli.command {
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            let plugin = load(&cli.data_dir, &file)?;
            Ok(json!({
                "digest": format!("sha256:{}", plugin.digest()),
                "size": plugin.size(),
                "manifest": plugin.manifest(),
            }))
        }
        Command::Plugin {
            command:
                PluginCommand::Run {
                    file,
                    customers,
                    rules,
                    now,
                    tenant,
                    lang,
                },
        } => {
            let plugin = load(&cli.data_dir, &file)?;
            let text = String::from_utf8_lossy(&read(&customers)?).into_owned();
            let list = customer_file::parse(&text).map_err(|source| CliError::Json {
                path: customers.clone(),
                source,
            })?;
            let rules = match rules {
                Some(p) => Some(String::from_utf8_lossy(&read(&p)?).into_owned()),
                None => None,
            };
            let now = now.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            });
            let lang = match lang {
                LangArg::En => Lang::En,
                LangArg::Zh => Lang::Zh,
            };
            let ctx = CallContext { now, tenant };
            let snapshots: Vec<_> = list.iter().map(|c| c.snapshot()).collect();
            let m = plugin.manifest();
            let scores = if m.scoring {
                Some(
                    plugin
                        .session(&ctx, rules.as_deref())?
                        .score(&ctx, &snapshots)?,
                )
            } else {
                None
            };
            let segments = if m.segmentation {
                Some(
                    plugin
                        .session(&ctx, rules.as_deref())?
                        .segment(&ctx, &snapshots)?,
                )
            } else {
                None
            };
            let out: Vec<Value> = list
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut row = json!({ "id": c.id });
                    if let Some(s) = &scores {
                        row["score"] = match &s[i] {
                            Ok(s) => json!({
                                "value": s.value,
                                "band": s.band,
                                "reasons": s.reasons.iter().map(|r| reason_json(m, r, lang)).collect::<Vec<_>>(),
                            }),
                            Err(e) => json!({ "error": e.to_string() }),
                        };
                    }
                    if let Some(s) = &segments {
                        row["segments"] = match &s[i] {
                            Ok(ms) => ms
                                .iter()
                                .map(|x| json!({ "segment": x.segment, "reason": reason_json(m, &x.reason, lang) }))
                                .collect(),
                            Err(e) => json!({ "error": e.to_string() }),
                        };
                    }
                    row
                })
                .collect();
            Ok(json!({ "plugin": plugin.label(), "now": now, "customers": out }))
        }
    }
}

fn reason_json(m: &Manifest, r: &Reason, lang: Lang) -> Value {
    json!({ "code": r.code, "points": r.points, "args": r.args, "text": m.render(r, lang) })
}
