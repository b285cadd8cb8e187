//! The NDJSON source over an S3 prefix (a data lake drop): the same export as
//! from a directory, read with ranged GETs through the real S3 adapter.

use crate::common::*;
use bulk_export::stack::SourceSpec;
use bulk_export_core::adapters::ndjson::NdjsonSource;
use bulk_export_core::adapters::ndjson::location::S3Prefix;
use bulk_export_core::ports::source::Source;
use bulk_export_testkit::generate::generate;
use std::io::Write;
use std::path::Path;

/// Uploads every file of `dir` under `bucket/prefix/`, gzipping `Patient`.
/// Adds objects the source must ignore: a deeper key, a sibling prefix and a
/// file that is not NDJSON.
async fn upload_lake(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str, dir: &Path) {
    client.create_bucket().bucket(bucket).send().await.unwrap();
    let put = |key: String, body: Vec<u8>| {
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
    };
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let body = std::fs::read(&p).unwrap();
        if name == "Patient.ndjson" {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).unwrap();
            put(format!("{prefix}/{name}.gz"), enc.finish().unwrap())
                .await
                .unwrap();
        } else {
            put(format!("{prefix}/{name}"), body).await.unwrap();
        }
    }
    let decoy = br#"{"resourceType":"Patient","id":"decoy"}"#.to_vec();
    put(format!("{prefix}/archive/Patient.ndjson"), decoy.clone())
        .await
        .unwrap();
    put(format!("{prefix}-old/Patient.ndjson"), decoy)
        .await
        .unwrap();
    put(format!("{prefix}/README.txt"), b"not ndjson".to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_prefix_exports_exactly_like_the_directory_it_came_from() {
    let dir = TempDir::new("s3src");
    let src = dir.0.join("src");
    generate(&src, 200, 31).unwrap();
    let lake = unique("lake");
    let mut config = small_config();
    config.page_size = 300;
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::S3(format!("s3://{lake}/drops/2026")),
        config,
        2,
    )
    .await;
    upload_lake(stack.objects.client(), &lake, "drops/2026", &src).await;

    let manifest = wait_complete(&kickoff(&stack.base_url, "").await).await;
    assert_eq!(manifest["error"], serde_json::json!([]), "{manifest}");
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    assert_eq!(got, source_multiset(&src, false), "system export from S3");

    let manifest = wait_complete(&kickoff(&stack.base_url, "_type=Patient,Condition").await).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: std::collections::BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((ty, _), _)| ty == "Patient" || ty == "Condition")
        .collect();
    assert_eq!(
        got, want,
        "_type export from S3 (Patient from a .gz object)"
    );
}

/// Pages read through windows smaller than many lines still join up to the
/// exact file: lines cut at a window's edge are re-read, never split or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_never_split_a_line() {
    let dir = TempDir::new("s3win");
    let src = dir.0.join("src");
    generate(&src, 40, 5).unwrap();
    let stack = bare_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(src.clone()),
        small_config(),
    )
    .await;
    let lake = unique("lake");
    upload_lake(stack.objects.client(), &lake, "w", &src).await;
    let want = std::fs::read(src.join("Observation.ndjson")).unwrap();
    let longest = want.split(|b| *b == b'\n').map(<[u8]>::len).max().unwrap() as u64;
    // A window below the longest line forces the unbounded re-read too.
    for window in [longest / 2, 4096] {
        let source = NdjsonSource::s3(
            S3Prefix::parse(stack.objects.client().clone(), &format!("s3://{lake}/w"))
                .unwrap()
                .with_window(window),
        );
        let (mut got, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = source
                .fetch_page(&observation_page(cursor.as_deref(), 25, 0))
                .await
                .unwrap();
            got.extend_from_slice(&page.ndjson);
            pages += 1;
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(got, want, "window {window}: pages join to the file");
        assert!(pages > 2, "window {window}: {pages} pages");
    }
}
