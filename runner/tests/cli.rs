//! The command line as operators use it: `generate`, then `serve` over the
//! generated directory, then the `export` client against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_bulk-export");

/// `bulk-export generate` into `src`; returns the lines a system export
/// covers (every file).
fn generate_source(src: &Path) -> usize {
    let generated = std::process::Command::new(BIN)
        .args(["generate", "--patients", "40", "--seed", "9", "--out"])
        .arg(src)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let gen_out = String::from_utf8(generated.stdout).unwrap();
    assert!(gen_out.contains("MB/s"), "{gen_out}");
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

/// `bulk-export serve` over `src`; returns the child and its FHIR base URL
/// from its one `listening on` line.
async fn serve(data: &Path, src: &Path) -> (tokio::process::Child, String) {
    let mut serve = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--source")
        .arg(format!("ndjson:{}", src.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = first
        .strip_prefix("listening on ")
        .expect("exactly one 'listening on <url>' line")
        .to_string();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/fhir"),
        "{base}"
    );
    (serve, base)
}

/// `bulk-export export` of everything into `out`; returns the summary
/// table's total after checking the downloaded lines add up to it.
async fn export_all(base: &str, out: &Path) -> usize {
    let export = tokio::process::Command::new(BIN)
        .arg("export")
        .arg(base)
        .arg("--out")
        .arg(out)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(export.stdout).unwrap();
    assert!(
        export.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let total_line = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("summary table");
    let total: usize = total_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let downloaded: usize = std::fs::read_dir(out)
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(downloaded, total);
    total
}

/// `bulk-export export --type Patient,Condition --since ...`; returns the
/// types in the summary table.
async fn export_typed(base: &str, out: &Path) -> Vec<String> {
    let typed = tokio::process::Command::new(BIN)
        .arg("export")
        .arg(base)
        .args([
            "--type",
            "Patient,Condition",
            "--since",
            "2022-01-01T00:00:00Z",
            "--out",
        ])
        .arg(out)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(typed.stdout).unwrap();
    assert!(typed.status.success(), "{stdout}");
    stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("total") && !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_serve_and_export_with_the_cli() {
    let root = std::env::temp_dir().join(format!("cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (src, data, out) = (root.join("src"), root.join("data"), root.join("out"));

    let source_lines = generate_source(&src);
    let (mut serve, base) = serve(&data, &src).await;
    assert_eq!(
        export_all(&base, &out).await,
        source_lines,
        "the client verified and summed every file"
    );
    assert_eq!(
        export_typed(&base, &root.join("out2")).await,
        vec!["Condition", "Patient"]
    );
    serve.start_kill().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
