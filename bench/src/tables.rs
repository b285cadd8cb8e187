//! Markdown tables of export runs, shared by the system-export and the
//! upstream-latency sections.

use crate::MB;
use crate::export::ExportRun;
use std::fmt::Write as _;

/// Seconds with three decimals below one second, two above.
pub fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.2}")
    }
}

/// One row per run. `bare_rps` and `bare_par_rps` are the bare client's
/// resources/s (1 stream, all types in parallel); 0 or a run without
/// upstream requests prints `n/a` for the ratio.
pub fn export_table(runs: &[ExportRun], bare_rps: f64, bare_par_rps: f64) -> String {
    let mut t = String::from(
        "| run | workers | time (s), median | min–max (s) | resources/s | MB/s | ÷ bare client (1 stream) | ÷ bare client (all types in parallel) | chains | steps | files | upstream searches | verified |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let searches: u64 = r.upstream.searches.values().sum();
        let ratio = |b: f64| {
            if b > 0.0 && r.upstream.requests > 0 {
                format!("{:.2}", r.rps() / b)
            } else {
                "n/a".into()
            }
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}–{} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.workers,
            fmt_secs(r.elapsed),
            fmt_secs(r.spread.0),
            fmt_secs(r.spread.1),
            r.rps(),
            r.mbps(),
            ratio(bare_rps),
            ratio(bare_par_rps),
            r.chains,
            r.steps,
            r.files,
            if r.upstream.requests > 0 {
                searches.to_string()
            } else {
                "-".into()
            },
            r.verified
        );
    }
    t
}

/// Per-type rates of every run side by side (the types of the first run),
/// rate = resources ÷ seconds until the type's chains finished.
pub fn per_type_table(runs: &[ExportRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut t = String::from("| type | resources | MB |");
    let mut sep = String::from("|---|---:|---:|");
    for r in runs {
        let _ = write!(t, " {} ×{} res/s | MB/s |", short(&r.label), r.workers);
        sep.push_str("---:|---:|");
    }
    t.push('\n');
    t.push_str(&sep);
    t.push('\n');
    for (ty, (n, b, _)) in &first.per_type {
        let _ = write!(t, "| {ty} | {n} | {:.2} |", *b as f64 / MB);
        for r in runs {
            match r.per_type.get(ty) {
                Some((n, b, secs)) => {
                    let _ = write!(
                        t,
                        " {:.0} | {:.1} |",
                        *n as f64 / secs.max(1e-9),
                        *b as f64 / MB / secs.max(1e-9)
                    );
                }
                None => t.push_str(" - | - |"),
            }
        }
        t.push('\n');
    }
    let _ = write!(
        t,
        "| **total** | {} | {:.2} |",
        first.resources,
        first.bytes as f64 / MB
    );
    for r in runs {
        let _ = write!(t, " **{:.0}** | **{:.1}** |", r.rps(), r.mbps());
    }
    t.push('\n');
    t
}

/// A run label up to its first comma (`FHIR source, 30 ms/page` → `FHIR source`).
fn short(label: &str) -> &str {
    label.split(',').next().unwrap_or(label)
}
