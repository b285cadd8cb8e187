//! Hot path: how fast `frame_search_bundle` turns a search Bundle into
//! NDJSON, against `memcpy` of the same bytes as the ceiling.

use crate::MB;
use crate::error::BenchError;
use bulk_export_core::fhir::framing::frame_search_bundle;
use bulk_export_testkit::fixture_server::FixtureHandle;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Wall time each side of the comparison is repeated for.
const BUDGET: Duration = Duration::from_millis(1500);

/// Framing and copying throughput on one page, bytes per second of Bundle.
pub struct FramingVsMemcpy {
    pub bundle_bytes: usize,
    pub entries: u64,
    pub frame_bps: f64,
    pub memcpy_bps: f64,
}

/// Fetches one real `page_size`-entry Observation page from `fixture` and
/// measures it.
pub async fn measure(
    fixture: &FixtureHandle,
    page_size: usize,
) -> Result<FramingVsMemcpy, BenchError> {
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(BenchError::http("client"))?
        .get(format!(
            "{}/Observation?_count={page_size}",
            fixture.base_url()
        ))
        .send()
        .await
        .map_err(BenchError::http("hot-path page"))?
        .bytes()
        .await
        .map_err(BenchError::http("hot-path page body"))?;
    let hot = framing_vs_memcpy(&body, "Observation")?;
    eprintln!(
        "hot path: frame {:.0} MB/s, memcpy {:.0} MB/s",
        hot.frame_bps / MB,
        hot.memcpy_bps / MB
    );
    Ok(hot)
}

/// Repeats `op` on `body` for [`BUDGET`] (at least three times); returns
/// bytes of `body` per second.
fn throughput(body: &[u8], mut op: impl FnMut(&[u8])) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < BUDGET || n < 3 {
        op(black_box(body));
        n += 1;
    }
    (n as f64 * body.len() as f64) / t.elapsed().as_secs_f64()
}

fn framing_vs_memcpy(body: &[u8], ty: &str) -> Result<FramingVsMemcpy, BenchError> {
    let entries = frame_search_bundle(body, ty)?.count;
    let frame_bps = throughput(body, |b| {
        let page = frame_search_bundle(b, ty);
        black_box(&page);
    });
    let mut dst = vec![0u8; body.len()];
    let memcpy_bps = throughput(body, |b| {
        dst.copy_from_slice(b);
        black_box(&mut dst);
    });
    Ok(FramingVsMemcpy {
        bundle_bytes: body.len(),
        entries,
        frame_bps,
        memcpy_bps,
    })
}

impl FramingVsMemcpy {
    /// How many times faster memcpy is.
    pub fn memcpy_factor(&self) -> f64 {
        self.memcpy_bps / self.frame_bps
    }

    /// The report's hot-path section.
    pub fn section(&self, page_size: usize) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "## Hot path: framing a search Bundle vs memcpy\n");
        let _ = writeln!(
            r,
            "`bulk_export_core::fhir::framing::frame_search_bundle` on one real {page_size}-entry \
             Observation page of the fixture ({} bytes, {} entries), repeated for 1.5 s, vs \
             `copy_from_slice` of the same bytes for 1.5 s (measured in the bench binary; criterion \
             was not used).\n",
            self.bundle_bytes, self.entries
        );
        let _ = writeln!(
            r,
            "| operation | MB/s |\n|---|---:|\n| frame_search_bundle | {:.0} |\n| memcpy | {:.0} |\n\n**memcpy ÷ framing = {:.1}×** (framing runs at {:.1}% of memcpy speed).\n",
            self.frame_bps / MB,
            self.memcpy_bps / MB,
            self.memcpy_factor(),
            100.0 * self.frame_bps / self.memcpy_bps
        );
        r
    }
}
