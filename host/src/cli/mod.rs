//! The `stagecraft` command line. Plugin checks run without a database; the
//! rest ([`service`]) open the store.

pub mod service;

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
    /// Where the SQLite database (by default) and compiled plugins live
    /// [default: .stagecraft].
    #[arg(long, env = "STAGECRAFT_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log lines as text or as one JSON object each (levels: `STAGECRAFT_LOG`,
    /// e.g. `info` or `stagecraft=debug`).
    #[arg(long, env = "STAGECRAFT_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Run the HTTP service.
    Serve {
        #[command(flatten)]
        db: service::DbArgs,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "STAGECRAFT_LISTEN")]
        listen: Option<String>,
        /// Failures in a row after which a plugin version is suspended for a tenant.
        #[arg(long, env = "STAGECRAFT_BREAKER_FAILURES", default_value_t = crate::packs::DEFAULT_BREAKER_THRESHOLD)]
        breaker_failures: u32,
    },
    /// A fresh demo: SQLite, a demo tenant, packs enabled, sample data; then serve.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// A plugin component to enable (repeatable); the first with a stage graph owns the lifecycle.
        #[arg(long = "pack")]
        packs: Vec<PathBuf>,
        /// CDNOW order history to import.
        #[arg(long)]
        cdnow: Option<PathBuf>,
        /// Import only the first N lines of it (whole customer histories: the file is
        /// sorted by customer); `stagecraft import cdnow` takes the rest later.
        #[arg(long)]
        cdnow_lines: Option<usize>,
    },
    /// Import a file (streamed, with progress on a terminal); prints the report.
    Import {
        kind: service::ImportKind,
        file: PathBuf,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The time plugins are told, in ms (for replaying history); defaults to now.
        #[arg(long)]
        now: Option<i64>,
        #[command(flatten)]
        db: service::DbArgs,
    },
    /// Rescore every customer of a tenant with what it runs now (chunked; other
    /// serving hosts help); shows progress on a terminal and prints the job.
    Rescore {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        db: service::DbArgs,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token (and the tenant if it is new); prints it once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, default_value = "cli")]
        label: String,
        #[command(flatten)]
        db: service::DbArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Agent,
    Integrator,
    Admin,
}

impl From<RoleArg> for crate::domain::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Self::Viewer,
            RoleArg::Agent => Self::Agent,
            RoleArg::Integrator => Self::Integrator,
            RoleArg::Admin => Self::Admin,
        }
    }
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
    /// Store a component for a tenant (checked like `check`) and optionally enable it.
    Install {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// JSON rule set to store with it (checked by the plugin's `configure`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Enable it for the tenant.
        #[arg(long)]
        enable: bool,
        /// Make it the owner of the tenant's lifecycle stages.
        #[arg(long)]
        owns_lifecycle: bool,
        #[command(flatten)]
        db: service::DbArgs,
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
    #[error("{0:#}")]
    Service(anyhow::Error),
}

const DEFAULT_DATA_DIR: &str = ".stagecraft";

/// The database-backed commands.
async fn run_service(cli: Cli) -> anyhow::Result<Value> {
    let given = cli.data_dir.is_some();
    let data_dir = cli.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let settings = |db: &service::DbArgs, listen: Option<String>| {
        service::Settings::resolve(db, listen, &data_dir, given)
    };
    match cli.command {
        Command::Serve {
            db,
            listen,
            breaker_failures,
        } => {
            let mut s = settings(&db, listen)?;
            s.breaker_failures = breaker_failures;
            let crm = service::open(&s).await?;
            service::serve(crm, &s.listen, None).await?;
            Ok(Value::Null)
        }
        Command::Demo {
            listen,
            packs,
            cdnow,
            cdnow_lines,
        } => {
            service::demo(&data_dir, &listen, &packs, cdnow.as_deref(), cdnow_lines).await?;
            Ok(Value::Null)
        }
        Command::Import {
            kind,
            file,
            tenant,
            now,
            db,
        } => {
            let crm = service::open(&settings(&db, None)?).await?;
            crm.tokens().ensure_tenant(&tenant).await?;
            let report = service::import_file(&crm, &tenant, kind, &file, now).await?;
            Ok(json!(report))
        }
        Command::Rescore { tenant, db } => {
            let crm = service::open(&settings(&db, None)?).await?;
            Ok(service::rescore(&crm, &tenant).await?)
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    tenant,
                    role,
                    label,
                    db,
                },
        } => {
            let crm = service::open(&settings(&db, None)?).await?;
            Ok(json!(
                crm.tokens()
                    .create(&tenant, "cli", role.into(), &label)
                    .await?
            ))
        }
        Command::Plugin {
            command:
                PluginCommand::Install {
                    file,
                    tenant,
                    rules,
                    enable,
                    owns_lifecycle,
                    db,
                },
        } => {
            let crm = service::open(&settings(&db, None)?).await?;
            let rules = match rules {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
                ),
                None => None,
            };
            service::install_plugin(&crm, &tenant, &file, rules, enable, owns_lifecycle).await
        }
        Command::Plugin { .. } => {
            unreachable!("plugin check and run are handled without a database")
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; each line inside a request carries its `request_id`
/// (the span `http::request` opens).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAGECRAFT_LOG")
        .unwrap_or_else(|_| "warn,stagecraft=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Plugin {
            command: PluginCommand::Check { .. } | PluginCommand::Run { .. },
        } => run(cli),
        _ => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run_service(cli)))
            .map_err(CliError::Service),
    };
    match result {
        Ok(Value::Null) => ExitCode::SUCCESS,
        Ok(out) => {
            use std::io::Write;
            let text = serde_json::to_string_pretty(&out).expect("JSON values serialize");
            // A reader that stopped early (`| head`) is not a failure of ours;
            // `println!` panicked on it.
            match writeln!(std::io::stdout().lock(), "{text}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
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
    let plugin = runtime.load(&bytes)?;
    plugin.keep_compiled();
    Ok(plugin)
}

fn data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
}

/// Runs a parsed command; returns what to print.
pub fn run(cli: Cli) -> Result<Value, CliError> {
    let data_dir = data_dir(&cli);
    match cli.command {
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            let plugin = load(&data_dir, &file)?;
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
            let plugin = load(&data_dir, &file)?;
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
        _ => unreachable!("database commands run through run_service"),
    }
}

fn reason_json(m: &Manifest, r: &Reason, lang: Lang) -> Value {
    json!({ "code": r.code, "points": r.points, "args": r.args, "text": m.render(r, lang) })
}
