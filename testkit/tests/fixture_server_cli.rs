//! The `fhir-fixture-server` binary as scripts use it: one `listening on
//! <url>` line, then a FHIR search API over the given directory; refuses
//! non-loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_fhir-fixture-server");

#[tokio::test]
async fn serves_a_generated_directory() {
    let dir = std::env::temp_dir().join(format!("fixture-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let counts = generate(&dir, 5, 3).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("--data")
        .arg(&dir)
        .args(["--latency-ms", "1"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line.strip_prefix("listening on ").expect("listening line");
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/fhir"));

    let page: Value = reqwest::get(format!("{base}/Patient?_count=2"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"].as_u64(), Some(counts["Patient"]));
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    let origin = base.strip_suffix("/fhir").unwrap();
    let stats: Value = reqwest::get(format!("{origin}/__stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["searches"]["Patient"], 1);
    assert_eq!(stats["resources_served"], 2);
    child.start_kill().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn refuses_non_loopback_addresses() {
    let out = tokio::process::Command::new(BIN)
        .args(["--data", ".", "--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback addresses only"), "{stderr}");
}
