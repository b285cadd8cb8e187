//! Kill test: `bulk-export serve` is SIGKILLed at random points during an
//! export and restarted on the same data directory; the final output must
//! equal the source exactly, with every file within the size limit.
//! `KILL_TEST_PATIENTS` sizes the dataset (default 3000 ≈ 113 MB;
//! smaller values make a quicker run), `KILL_TEST_KILLS` the number of kills (default 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulk_export_testkit::generate::{Rng, generate};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

async fn serve(data: &Path, src: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulk-export"))
        // Small parts, files and pages: many short steps, so kills land mid-export.
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--stall-secs",
            "60",
        ])
        .args([
            "--part-size",
            "5242880",
            "--max-file-size",
            "10485760",
            "--page-size",
            "100",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--source")
        .arg(format!("ndjson:{}", src.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    (child, base)
}

fn multiset(bodies: &[Vec<u8>]) -> BTreeMap<(String, String), u32> {
    let mut m = BTreeMap::new();
    for body in bodies {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            *m.entry((
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            ))
            .or_insert(0) += 1;
        }
    }
    m
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kicks off a system export; returns the status path (after `base`).
async fn kick_off(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .get(format!("{base}/$export"))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    location.strip_prefix(base).unwrap().to_string()
}

/// SIGKILLs the server `kills` times at random moments while the export
/// runs, restarting it each time; returns the last server and its base URL.
async fn kill_and_restart(
    http: &reqwest::Client,
    (mut child, mut base): (tokio::process::Child, String),
    (data, src): (&Path, &Path),
    job_path: &str,
    (kills, seed): (usize, u64),
) -> (tokio::process::Child, String) {
    let mut rng = Rng::new(seed);
    for k in 0..kills {
        let wait = rng.range(300, 800);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let progress = http.get(format!("{base}{job_path}")).send().await.unwrap();
        let p = progress
            .headers()
            .get("x-progress")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "complete".into());
        assert_ne!(
            p,
            "complete",
            "kill {} must land while the export runs",
            k + 1
        );
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        println!("kill {} after {wait} ms at progress: {p}", k + 1);
        (child, base) = serve(data, src).await;
    }
    (child, base)
}

/// Polls the status URL until the manifest; panics on an export error.
async fn wait_manifest(http: &reqwest::Client, status_url: &str) -> Value {
    let manifest: Value = loop {
        let resp = http.get(status_url).send().await.unwrap();
        match resp.status().as_u16() {
            200 => break resp.json().await.unwrap(),
            202 => tokio::time::sleep(Duration::from_millis(300)).await,
            s => panic!("status {s}: {}", resp.text().await.unwrap()),
        }
    };
    if let Some(item) = manifest["error"].as_array().unwrap().first() {
        let body = http
            .get(item["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        panic!("the export reported an error: {body}");
    }
    manifest
}

/// Downloads every output file, checking its size limit and its count.
async fn download_outputs(http: &reqwest::Client, manifest: &Value) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for item in manifest["output"].as_array().unwrap() {
        let body = http
            .get(item["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        assert!(
            body.len() <= 10 * 1024 * 1024,
            "file within the 10 MiB limit set for this run"
        );
        assert_eq!(
            item["count"].as_u64().unwrap(),
            body.iter().filter(|b| **b == b'\n').count() as u64
        );
        bodies.push(body);
    }
    bodies
}

/// The source files a system export covers: all of them.
fn exported_source_files(src: &Path) -> Vec<Vec<u8>> {
    let mut source = Vec::new();
    for e in std::fs::read_dir(src).unwrap() {
        source.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_lose_and_duplicate_nothing() {
    let patients: u64 = env_or("KILL_TEST_PATIENTS", 3000);
    let kills: usize = env_or("KILL_TEST_KILLS", 5);
    let root = std::env::temp_dir().join(format!("kill-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (src, data) = (root.join("src"), root.join("data"));
    generate(&src, patients, 77).unwrap();
    let source_bytes: u64 = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let http = reqwest::Client::new();

    let (child, base) = serve(&data, &src).await;
    let job_path = kick_off(&http, &base).await;
    let (mut child, base) = kill_and_restart(
        &http,
        (child, base),
        (&data, &src),
        &job_path,
        (kills, patients),
    )
    .await;

    let manifest = wait_manifest(&http, &format!("{base}{job_path}")).await;
    let got = multiset(&download_outputs(&http, &manifest).await);
    let expected = multiset(&exported_source_files(&src));
    assert!(
        got.values().all(|n| *n == 1),
        "no duplicates after {kills} kills"
    );
    assert_eq!(got, expected, "no loss after {kills} kills");
    println!(
        "checked {} resources ({} MB source) across {kills} SIGKILL restarts",
        got.len(),
        source_bytes / 1_000_000
    );
    child.start_kill().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
