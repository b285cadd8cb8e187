//! End-to-end exports through the S3 adapter: file rolling, part sizes, exact
//! counts and no loss or duplication, and the status/cancel lifecycle.

use crate::common::*;
use bulk_export::stack::SourceSpec;
use bulk_export_core::model::config::ExportConfig;
use bulk_export_testkit::generate::generate;
use serde_json::Value;
use std::collections::BTreeMap;

fn check_lines(ty: &str, body: &[u8]) {
    assert!(
        body.is_empty() || body.ends_with(b"\n"),
        "{ty}: file ends with a newline"
    );
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            !line.starts_with(b" ") && !line.windows(3).any(|w| w == b"\": " || w == b", \""),
            "{ty}: compact line"
        );
        let v: Value = serde_json::from_slice(line).expect("line is one JSON resource");
        assert_eq!(v["resourceType"], ty, "line type matches the file type");
    }
}

async fn export_and_verify(patients: u64, config: ExportConfig, workers: usize) -> (usize, u64) {
    let dir = TempDir::new("e2e");
    let src = dir.0.join("src");
    generate(&src, patients, 42).unwrap();
    let source_bytes: u64 = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let max_file = config.max_file_size as u64;
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src.clone()),
        config,
        workers,
    )
    .await;
    let status_url = kickoff(&stack.base_url, "").await;
    let manifest = wait_complete(&status_url).await;
    assert_eq!(
        manifest["error"].as_array().unwrap().len(),
        0,
        "no errors: {manifest}"
    );
    assert_eq!(manifest["requiresAccessToken"], false);
    let files = download_outputs(&manifest).await;
    let mut per_type: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (ty, url, body) in &files {
        assert!(!body.is_empty(), "no empty files ({url})");
        assert!(
            body.len() as u64 <= max_file,
            "{ty} file of {} bytes exceeds {max_file}",
            body.len()
        );
        check_lines(ty, body);
        per_type.entry(ty.clone()).or_default().push(body.len());
    }
    let exported = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let expected = source_multiset(&src, false);
    assert!(exported.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(exported.len(), expected.len(), "no loss");
    assert_eq!(
        exported, expected,
        "multiset of (type, id) equals the source"
    );
    let rolled = per_type.values().filter(|v| v.len() > 1).count();
    println!(
        "lane {}: exported {} resources ({} MB source) into {} files; {} types rolled over; file sizes {:?}",
        lane(),
        exported.len(),
        source_bytes / 1_000_000,
        files.len(),
        rolled,
        per_type
    );
    // Every object under the job folder is a listed file of at most the limit.
    let listed = stack.objects.list("").await.unwrap();
    for (key, size) in &listed {
        assert!(*size <= max_file, "{key} is {size} bytes");
    }
    (files.len(), source_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_150_mb_rolls_at_64_mib_without_loss_or_duplicates() {
    let config = ExportConfig {
        part_size: 8 * 1024 * 1024,
        max_file_size: 64 * 1024 * 1024,
        ..small_config()
    };
    let (files, bytes) = export_and_verify(4000, config, 4).await;
    assert!(bytes >= 150_000_000, "dataset is {bytes} bytes");
    assert!(files > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_roll_often_and_parts_meet_the_s3_minimum() {
    // 5 MiB parts, 12 MiB files: every file has 1-2 parts, so any part under
    // 5 MiB that is not last would be refused by the S3 server.
    let (files, _) = export_and_verify(600, small_config(), 3).await;
    assert!(files > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_cancel_through_the_lifecycle() {
    let dir = TempDir::new("life");
    let src = dir.0.join("src");
    generate(&src, 200, 3).unwrap();
    // No workers: the job stays in progress until the test runs its steps.
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src.clone()),
        small_config(),
        0,
    )
    .await;
    let svc = stack.services.clone();

    // In progress → cancel → 404.
    let status_url = kickoff(&stack.base_url, "_type=Observation").await;
    let resp = http().get(&status_url).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(
        resp.headers()["x-progress"]
            .to_str()
            .unwrap()
            .starts_with("0% complete")
    );
    assert_eq!(
        http().delete(&status_url).send().await.unwrap().status(),
        202
    );
    assert_eq!(http().get(&status_url).send().await.unwrap().status(), 404);
    assert_eq!(
        http().delete(&status_url).send().await.unwrap().status(),
        404
    );
    // The cancelled chain stops at its next step and leaves nothing behind.
    drain(&stack, &svc).await;

    // Partly done → progress rises → complete → cancel deletes the files.
    let status_url = kickoff(&stack.base_url, "_type=Observation,Patient").await;
    let ev = stack.queue.try_next().await.unwrap();
    bulk_export_core::worker::step::run_step(&svc, &ev, None)
        .await
        .unwrap();
    let resp = http().get(&status_url).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let progress = resp.headers()["x-progress"].to_str().unwrap().to_string();
    let pct: u32 = progress.split('%').next().unwrap().parse().unwrap();
    assert!(pct > 0 && pct < 100, "progress {progress}");
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    assert!(!files.is_empty());
    assert_eq!(
        http().delete(&status_url).send().await.unwrap().status(),
        202
    );
    assert_eq!(http().get(&status_url).send().await.unwrap().status(), 404);
    let gone = http().get(&files[0].1).send().await.unwrap();
    assert!(
        gone.status() == 404 || gone.status() == 403,
        "file after cancel answered {}",
        gone.status()
    );
    let left = stack.objects.list("").await.unwrap();
    assert!(left.is_empty(), "objects left after cancel: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_ndjson_files_export_like_plain_ones() {
    use std::io::Write;
    let dir = TempDir::new("gz");
    let plain = dir.0.join("plain");
    generate(&plain, 150, 12).unwrap();
    let gz = dir.0.join("gz");
    std::fs::create_dir_all(&gz).unwrap();
    for e in std::fs::read_dir(&plain).unwrap() {
        let p = e.unwrap().path();
        let name = format!("{}.gz", p.file_name().unwrap().to_str().unwrap());
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(gz.join(name)).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&std::fs::read(&p).unwrap()).unwrap();
        enc.finish().unwrap();
    }
    let mut config = small_config();
    config.page_size = 200;
    let stack = running_stack(&dir.0.join("data"), SourceSpec::Ndjson(gz), config, 2).await;
    let manifest = wait_complete(&kickoff(&stack.base_url, "").await).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert_eq!(
        got,
        source_multiset(&plain, false),
        "gzipped source exports exactly the plain content"
    );
}
