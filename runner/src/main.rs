//! `bulk-export`: serve, generate, demo and export commands.

use bulk_export::auth::{AuthConfig, AuthError, jwt_authenticator};
use bulk_export::aws_clients::Endpoints;
use bulk_export::client::{ClientError, ExportArgs, run_export, summary_table};
use bulk_export::http_server::{Authenticator, no_auth};
use bulk_export::stack::{SourceSpec, Stack, StackError, StackOptions, start};
use bulk_export_core::model::config::{ConfigError, ExportConfig};
use bulk_export_testkit::generate::generate;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "bulk-export",
    version,
    about = "FHIR Bulk Data $export: local runner, generator and client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the $export API with embedded (or given) DynamoDB and S3.
    Serve(Box<ServeArgs>),
    /// Write a deterministic synthetic dataset as NDJSON.
    Generate {
        /// Number of patients.
        #[arg(long, default_value_t = 100)]
        patients: u64,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Start the embedded stack, export everything, download it to ./export-out.
    Demo {
        /// Patients in the built-in dataset.
        #[arg(long, default_value_t = 200)]
        patients: u64,
        /// Data directory.
        #[arg(long, default_value = "./.bulk-export")]
        data_dir: PathBuf,
        /// Download directory.
        #[arg(long, default_value = "./export-out")]
        out: PathBuf,
    },
    /// Export from any Bulk Data server and download the files.
    Export {
        /// FHIR base URL of the server.
        base_url: String,
        /// Resource types (repeat or comma-separate).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only resources changed after this instant.
        #[arg(long)]
        since: Option<String>,
        /// Group id for a Group-level export.
        #[arg(long)]
        group: Option<String>,
        /// Download directory.
        #[arg(long, default_value = "./export-out")]
        out: PathBuf,
        /// Bearer token.
        #[arg(long, env = "BULK_EXPORT_TOKEN")]
        token: Option<String>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory for the embedded servers.
    #[arg(long, default_value = "./.bulk-export", env = "BULK_EXPORT_DATA_DIR")]
    data_dir: PathBuf,
    /// ndjson:<dir> or an http(s):// FHIR base URL; default: built-in dataset.
    #[arg(long, env = "BULK_EXPORT_SOURCE")]
    source: Option<String>,
    /// Public FHIR base URL (default http://<listen>/fhir).
    #[arg(long, env = "BULK_EXPORT_BASE_URL")]
    base_url: Option<String>,
    /// Use this DynamoDB endpoint instead of the embedded one.
    #[arg(long, env = "AWS_ENDPOINT_URL_DYNAMODB")]
    dynamodb_endpoint: Option<String>,
    /// Use this S3 endpoint instead of the embedded one.
    #[arg(long, env = "AWS_ENDPOINT_URL_S3")]
    s3_endpoint: Option<String>,
    /// DynamoDB table.
    #[arg(long, default_value = "bulk-export", env = "BULK_EXPORT_TABLE")]
    table: String,
    /// S3 bucket.
    #[arg(long, default_value = "bulk-export", env = "BULK_EXPORT_BUCKET")]
    bucket: String,
    /// Concurrent chain steps.
    #[arg(long, default_value_t = 4, env = "BULK_EXPORT_WORKERS")]
    workers: usize,
    /// Part size in bytes (>= 5 MiB).
    #[arg(long, env = "BULK_EXPORT_PART_SIZE")]
    part_size: Option<usize>,
    /// Largest file in bytes.
    #[arg(long, env = "BULK_EXPORT_MAX_FILE_SIZE")]
    max_file_size: Option<usize>,
    /// Resources per source page.
    #[arg(long, env = "BULK_EXPORT_PAGE_SIZE")]
    page_size: Option<usize>,
    /// Stall timeout of the watchdog, seconds.
    #[arg(long, default_value_t = 600, env = "BULK_EXPORT_STALL_SECS")]
    stall_secs: u64,
    /// Require HS256 bearer tokens signed with this secret.
    #[arg(long, env = "BULK_EXPORT_AUTH_HS256_SECRET", hide_env_values = true)]
    auth_hs256_secret: Option<String>,
    /// Require RS/ES bearer tokens signed by a key in this JWKS file.
    #[arg(long, env = "BULK_EXPORT_AUTH_JWKS")]
    auth_jwks: Option<PathBuf>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "BULK_EXPORT_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// Required token audience (`aud`).
    #[arg(long, env = "BULK_EXPORT_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum CliError {
    /// The authentication flags are unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `serve` without authentication on a non-loopback address.
    #[error("without authentication configured, serve only binds loopback addresses")]
    UnauthenticatedNonLoopback(SocketAddr),
    /// `--source` is not a source `SourceSpec::parse` knows.
    #[error(transparent)]
    Source(bulk_export_core::compose::ComposeError),
    /// The built-in dataset could not be written.
    #[error("generating dataset: {0}")]
    DefaultDataset(#[source] std::io::Error),
    /// `generate` could not write the dataset.
    #[error("{0}")]
    Generate(#[source] std::io::Error),
    /// A `BULK_EXPORT_*` setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stack did not start.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// The export client failed.
    #[error(transparent)]
    Export(#[from] ClientError),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULK_EXPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dynoxide=error,s3s=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

impl ServeArgs {
    /// The `demo` stack: embedded servers and defaults on a free loopback port.
    fn demo(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            source: None,
            base_url: None,
            dynamodb_endpoint: None,
            s3_endpoint: None,
            table: "bulk-export".into(),
            bucket: "bulk-export".into(),
            workers: 4,
            part_size: None,
            max_file_size: None,
            page_size: None,
            stall_secs: 600,
            auth_hs256_secret: None,
            auth_jwks: None,
            auth_issuer: None,
            auth_audience: None,
        }
    }

    /// JWT verification when a key source is given; otherwise none, which
    /// only a loopback address may serve.
    fn authenticator(&self) -> Result<Authenticator, CliError> {
        let auth_config = AuthConfig::from_files(
            self.auth_hs256_secret.clone(),
            self.auth_jwks.as_deref(),
            self.auth_issuer.clone(),
            self.auth_audience.clone(),
        )?;
        if auth_config.is_enabled() {
            Ok(jwt_authenticator(auth_config))
        } else if self.listen.ip().is_loopback() {
            Ok(no_auth())
        } else {
            Err(CliError::UnauthenticatedNonLoopback(self.listen))
        }
    }

    /// `--source`, or the built-in dataset in the data directory (generated
    /// with `default_patients` on first use).
    fn source(&self, default_patients: u64) -> Result<SourceSpec, CliError> {
        if let Some(s) = &self.source {
            return SourceSpec::parse(s).map_err(CliError::Source);
        }
        let dir = self.data_dir.join("dataset");
        if !dir.join("Patient.ndjson").exists() {
            generate(&dir, default_patients, 1).map_err(CliError::DefaultDataset)?;
        }
        Ok(SourceSpec::Ndjson(dir))
    }

    /// The environment's configuration with the flags applied.
    fn export_config(&self) -> Result<ExportConfig, CliError> {
        let mut config = ExportConfig::from_env()?;
        config.table = self.table.clone();
        config.bucket = self.bucket.clone();
        if let Some(v) = self.part_size {
            config.part_size = v;
        }
        if let Some(v) = self.max_file_size {
            config.max_file_size = v;
        }
        if let Some(v) = self.page_size {
            config.page_size = v;
        }
        Ok(config)
    }
}

async fn start_stack(args: &ServeArgs, default_patients: u64) -> Result<Stack, CliError> {
    let auth = args.authenticator()?;
    let source = args.source(default_patients)?;
    let config = args.export_config()?;
    let opts = StackOptions {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        source,
        base_url: args.base_url.clone(),
        endpoints: Endpoints {
            dynamodb: args.dynamodb_endpoint.clone(),
            s3: args.s3_endpoint.clone(),
            static_credentials: None,
        },
        use_embedded: true,
        config,
        workers: args.workers,
        stall_timeout: Duration::from_secs(args.stall_secs),
        auth,
    };
    Ok(start(opts).await?)
}

/// `serve`: runs the stack until Ctrl-C.
async fn serve(args: &ServeArgs) -> Result<(), CliError> {
    let stack = start_stack(args, 100).await?;
    if args.auth_hs256_secret.is_none() && args.auth_jwks.is_none() {
        eprintln!("no authentication configured: serving loopback only");
    }
    println!("listening on {}", stack.base_url);
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

/// Total size of the files directly in `dir` (0 if it cannot be listed).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `generate`: writes the dataset and prints the counts and the throughput.
fn generate_dataset(out: &Path, patients: u64, seed: u64) -> Result<(), CliError> {
    let t = Instant::now();
    let counts = generate(out, patients, seed).map_err(CliError::Generate)?;
    let bytes = dir_bytes(out);
    for (ty, n) in &counts {
        println!("{ty:<22} {n:>10}");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} bytes in {:.2}s ({:.1} MB/s)",
        bytes,
        secs,
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(())
}

/// `demo`: the embedded stack over the built-in dataset, exported into `out`.
async fn demo(patients: u64, data_dir: PathBuf, out: PathBuf) -> Result<(), CliError> {
    let stack = start_stack(&ServeArgs::demo(data_dir), patients).await?;
    println!("embedded stack listening on {}", stack.base_url);
    let t = Instant::now();
    let ea = ExportArgs {
        base_url: stack.base_url.clone(),
        out: out.clone(),
        progress: true,
        ..Default::default()
    };
    let summary = run_export(&ea).await?;
    println!("{}", summary_table(&summary));
    println!(
        "exported in {:.1}s into {}",
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// `export`: the client against any Bulk Data server.
async fn export(args: ExportArgs) -> Result<(), CliError> {
    let summary = run_export(&args).await?;
    println!("{}", summary_table(&summary));
    Ok(())
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => serve(&args).await,
        Command::Generate {
            patients,
            seed,
            out,
        } => generate_dataset(&out, patients, seed),
        Command::Demo {
            patients,
            data_dir,
            out,
        } => demo(patients, data_dir, out).await,
        Command::Export {
            base_url,
            types,
            since,
            group,
            out,
            token,
        } => {
            export(ExportArgs {
                base_url,
                types,
                since,
                group,
                out,
                token,
                progress: true,
            })
            .await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
