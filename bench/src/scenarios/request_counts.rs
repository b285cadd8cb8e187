//! AWS requests per export: one system export whose DynamoDB and S3 traffic
//! goes through counting proxies, the basis of the request-cost estimate.

use crate::cost::RequestCost;
use crate::dataset::Summary;
use crate::error::BenchError;
use crate::export::{ExportRun, drive_export, start_stack};
use crate::proxy::{Api, Counter, Counts, start_proxy};
use bulk_export::aws_clients::Endpoints;
use bulk_export::embedded::{LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, start_dynamodb, start_s3};
use bulk_export::http_server::{no_auth, serve};
use bulk_export::stack::{SourceSpec, Stack, StackOptions, build};
use bulk_export_core::model::config::ExportConfig;
use bulk_export_testkit::fixture_server::FixtureHandle;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The counted export and the requests it sent.
pub struct Counted {
    pub run: ExportRun,
    pub dynamo: Counts,
    pub s3: Counts,
}

/// Embedded DynamoDB and S3, reached directly and through counting proxies.
struct Proxied {
    direct: Endpoints,
    counted: Endpoints,
    dynamo: Arc<Counter>,
    s3: Arc<Counter>,
}

async fn start_proxied(dir: &Path) -> Result<Proxied, BenchError> {
    let dynamo_direct = start_dynamodb(Some(&dir.join("jobs.sqlite"))).await?;
    let s3_direct = start_s3(&dir.join("s3")).await?;
    let dynamo = Arc::new(Counter::default());
    let s3 = Arc::new(Counter::default());
    let dynamo_proxy = start_proxy(dynamo_direct.clone(), Api::DynamoDb, dynamo.clone()).await?;
    let s3_proxy = start_proxy(s3_direct.clone(), Api::S3, s3.clone()).await?;
    let creds = Some((LOCAL_ACCESS_KEY.to_string(), LOCAL_SECRET_KEY.to_string()));
    Ok(Proxied {
        counted: Endpoints {
            dynamodb: Some(dynamo_proxy),
            s3: Some(s3_proxy),
            static_credentials: creds.clone(),
        },
        direct: Endpoints {
            dynamodb: Some(dynamo_direct),
            s3: Some(s3_direct),
            static_credentials: creds,
        },
        dynamo,
        s3,
    })
}

/// A stack without workers on the unproxied endpoints, serving status
/// polls on its own port; returns it with its FHIR base URL.
async fn start_poller(
    dir: &Path,
    source: SourceSpec,
    direct: Endpoints,
) -> Result<(Stack, String), BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::io("binding the poller"))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io("poller address"))?;
    let poll_base = format!("http://{addr}/fhir");
    let poller = build(
        &StackOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_path_buf(),
            source,
            base_url: Some(poll_base.clone()),
            endpoints: direct,
            use_embedded: false,
            config: ExportConfig::default(),
            workers: 0,
            stall_timeout: Duration::from_secs(600),
            auth: no_auth(),
        },
        poll_base.clone(),
    )
    .await?;
    tokio::spawn(serve(listener, poller.services.clone(), no_auth()));
    Ok((poller, poll_base))
}

/// An export whose DynamoDB and S3 traffic goes through counting proxies;
/// status polls and chain monitoring go to a second, unproxied stack on the
/// same table and bucket so they are not counted.
pub async fn counted_run(
    dir: &Path,
    fixture: &FixtureHandle,
    workers: usize,
    expected: &Summary,
) -> Result<Counted, BenchError> {
    std::fs::create_dir_all(dir).map_err(BenchError::io(format!("creating {}", dir.display())))?;
    let proxied = start_proxied(dir).await?;
    let source = SourceSpec::Fhir {
        base: fixture.base_url().to_string(),
        token: None,
    };
    let counted = start_stack(
        dir,
        source.clone(),
        workers,
        Some(proxied.counted),
        ExportConfig::default(),
    )
    .await?;
    let (poller, poll_base) = start_poller(dir, source, proxied.direct).await?;
    fixture.reset_stats();
    let (d0, s0) = (proxied.dynamo.snapshot(), proxied.s3.snapshot());
    let run = drive_export(
        &counted.base_url,
        &poll_base,
        &poller.services,
        Some(expected),
        "",
    )
    .await?;
    let (d1, s1) = (proxied.dynamo.snapshot(), proxied.s3.snapshot());
    let mut run = run.single("FHIR, counted (via proxies)", workers);
    run.upstream = fixture.stats();
    let _ = std::fs::remove_dir_all(dir);
    let (dynamo, s3) = (d1.since(&d0), s1.since(&s0));
    eprintln!(
        "  counted run: {:.2}s, {} DynamoDB and {} S3 requests",
        run.elapsed,
        dynamo.total(),
        s3.total()
    );
    Ok(Counted { run, dynamo, s3 })
}

impl Counted {
    /// Requests per million exported resources = count × this.
    pub fn per_million(&self) -> f64 {
        1e6 / self.run.resources.max(1) as f64
    }

    /// The report's requests-and-cost section.
    pub fn section(&self) -> String {
        let mut t = String::from("\n## Requests and cost per million resources\n\n");
        t.push_str(&self.method());
        t.push_str(&self.request_table());
        t.push_str(&RequestCost::of(self).section());
        let _ = writeln!(
            t,
            "\nCross-check: {} chunk-worker steps in the chain records vs {} UploadPart requests \
             counted (a step that uploads nothing, e.g. the last one of an exhausted chain, sends none).",
            self.run.steps,
            self.s3.get("UploadPart")
        );
        t
    }

    fn method(&self) -> String {
        let c = &self.run;
        format!(
            "Measured on one system export of {} resources ({} chains, {} workers, {:.2} s{}) whose \
             DynamoDB and S3 requests went through counting proxies on 127.0.0.1 (one request = one \
             proxied HTTP request, classified by `X-Amz-Target` or by S3 method/path/query). Status polls \
             and chain monitoring used a second, unproxied stack on the same table and bucket, so they \
             are not counted; kick-off is. Continuation (\"Lambda invoke\") requests are **derived** from \
             the chain records, counting one chunk-worker invocation per chain step plus the kick-off \
             function: an upper bound, since one invocation may run several steps \
             (`parts_per_invocation`). Upstream \
             requests are the fixture's own counters.\n\n",
            c.resources,
            c.chains,
            c.workers,
            c.elapsed,
            if c.verified == "yes" {
                ", output verified"
            } else {
                ""
            }
        )
    }

    /// Requests per service and operation, derived Lambda invocations and
    /// the fixture's upstream requests.
    fn request_table(&self) -> String {
        let per_m = self.per_million();
        let mut t = String::from(
            "| service | operation | requests | per million resources |\n|---|---|---:|---:|\n",
        );
        for (svc, counts) in [("DynamoDB", &self.dynamo), ("S3", &self.s3)] {
            for (op, n) in &counts.ops {
                let _ = writeln!(t, "| {svc} | {op} | {n} | {:.1} |", *n as f64 * per_m);
            }
            let _ = writeln!(
                t,
                "| {svc} | **all** | **{}** | **{:.1}** |",
                counts.total(),
                counts.total() as f64 * per_m
            );
        }
        let invokes = self.run.steps + 1;
        let _ = writeln!(
            t,
            "| Lambda (derived) | chunk-worker steps + kick-off | {invokes} | {:.1} |",
            invokes as f64 * per_m
        );
        let up = &self.run.upstream;
        let searches: u64 = up.searches.values().sum();
        let other = up.counts.values().sum::<u64>() + up.metadata + up.reads;
        let _ = writeln!(
            t,
            "| upstream FHIR | page searches | {searches} | {:.1} |",
            searches as f64 * per_m
        );
        let _ = writeln!(
            t,
            "| upstream FHIR | `_summary=count` + metadata + reads | {other} | {:.1} |",
            other as f64 * per_m
        );
        let _ = writeln!(
            t,
            "| upstream FHIR | **all** | **{}** | **{:.1}** |\n",
            up.requests,
            up.requests as f64 * per_m
        );
        t
    }
}
