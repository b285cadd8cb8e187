//! `bulk-export`: serve, generate, demo, export and fixture-server commands.

use bulk_export::auth::{AuthConfig, jwt_authenticator};
use bulk_export::aws_clients::Endpoints;
use bulk_export::client::{ExportArgs, run_export, summary_table};
use bulk_export::generate::generate;
use bulk_export::http_server::no_auth;
use bulk_export::stack::{SourceSpec, StackOptions, start};
use bulk_export_core::model::config::ExportConfig;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Serve a directory of NDJSON files as a FHIR search API (test fixture).
    FixtureServer {
        /// Directory of `<Type>.ndjson` files (as written by `generate`).
        #[arg(long)]
        data: PathBuf,
        /// Loopback address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Latency added to every search page, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULK_EXPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dynoxide=error,s3s=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn start_stack(
    args: &ServeArgs,
    default_patients: u64,
) -> Result<bulk_export::stack::Stack, String> {
    let auth_config = AuthConfig::from_files(
        args.auth_hs256_secret.clone(),
        args.auth_jwks.as_deref(),
        args.auth_issuer.clone(),
        args.auth_audience.clone(),
    )?;
    let auth = if auth_config.is_enabled() {
        jwt_authenticator(auth_config)
    } else if args.listen.ip().is_loopback() {
        no_auth()
    } else {
        return Err(
            "without authentication configured, serve only binds loopback addresses".into(),
        );
    };
    let source = match &args.source {
        Some(s) => SourceSpec::parse(s).map_err(|e| e.to_string())?,
        None => {
            let dir = args.data_dir.join("dataset");
            if !dir.join("Patient.ndjson").exists() {
                generate(&dir, default_patients, 1)
                    .map_err(|e| format!("generating dataset: {e}"))?;
            }
            SourceSpec::Ndjson(dir)
        }
    };
    let mut config = ExportConfig::from_env().map_err(|e| e.to_string())?;
    config.table = args.table.clone();
    config.bucket = args.bucket.clone();
    if let Some(v) = args.part_size {
        config.part_size = v;
    }
    if let Some(v) = args.max_file_size {
        config.max_file_size = v;
    }
    if let Some(v) = args.page_size {
        config.page_size = v;
    }
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
    start(opts).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Serve(args) => match start_stack(&args, 100).await {
            Ok(stack) => {
                if args.auth_hs256_secret.is_none() && args.auth_jwks.is_none() {
                    eprintln!("no authentication configured: serving loopback only");
                }
                println!("listening on {}", stack.base_url);
                let _ = tokio::signal::ctrl_c().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Generate {
            patients,
            seed,
            out,
        } => {
            let t = std::time::Instant::now();
            generate(&out, patients, seed)
                .map_err(|e| e.to_string())
                .map(|counts| {
                    let bytes: u64 = std::fs::read_dir(&out)
                        .map(|d| {
                            d.filter_map(Result::ok)
                                .filter_map(|e| e.metadata().ok())
                                .map(|m| m.len())
                                .sum()
                        })
                        .unwrap_or(0);
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
                })
        }
        Command::Demo {
            patients,
            data_dir,
            out,
        } => {
            let args = ServeArgs {
                listen: "127.0.0.1:0"
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
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
            };
            match start_stack(&args, patients).await {
                Err(e) => Err(e),
                Ok(stack) => {
                    println!("embedded stack listening on {}", stack.base_url);
                    let t = std::time::Instant::now();
                    let ea = ExportArgs {
                        base_url: stack.base_url.clone(),
                        out: out.clone(),
                        progress: true,
                        ..Default::default()
                    };
                    run_export(&ea).await.map_err(|e| e.to_string()).map(|s| {
                        println!("{}", summary_table(&s));
                        println!(
                            "exported in {:.1}s into {}",
                            t.elapsed().as_secs_f64(),
                            out.display()
                        );
                    })
                }
            }
        }
        Command::Export {
            base_url,
            types,
            since,
            group,
            out,
            token,
        } => {
            let ea = ExportArgs {
                base_url,
                types,
                since,
                group,
                out,
                token,
                progress: true,
            };
            run_export(&ea)
                .await
                .map_err(|e| e.to_string())
                .map(|s| println!("{}", summary_table(&s)))
        }
        Command::FixtureServer {
            data,
            listen,
            latency_ms,
        } => {
            if !listen.ip().is_loopback() {
                Err("the fixture server binds loopback addresses only".into())
            } else {
                let opts = bulk_export::fixture_server::FixtureOptions {
                    latency: Duration::from_millis(latency_ms),
                    ..Default::default()
                };
                match bulk_export::fixture_server::start_fixture_on(listen, &data, opts).await {
                    Ok(fixture) => {
                        println!("listening on {}", fixture.base_url());
                        let _ = tokio::signal::ctrl_c().await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
