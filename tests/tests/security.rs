//! Security: bearer tokens (401 for every kind of bad token), per-client
//! isolation (another client's job is indistinguishable from a missing one),
//! SMART scopes limiting exported types, presigned URLs scoped to one object,
//! and logs that never contain a token or a resource body.

mod common;

use bulk_export::auth::{AuthConfig, jwt_authenticator};
use bulk_export::stack::{SourceSpec, Stack, start};
use bulk_export_testkit::generate::generate;
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, OnceLock};

const SECRET: &str = "test-secret-please-rotate";
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "bulk-export-tests";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_with(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(client: &str, scope: &str) -> String {
    token_with(
        json!({"client_id": client, "scope": scope, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
        SECRET,
    )
}

/// Everything logged by this test binary.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,dynoxide=info,s3s=info,hyper=info,h2=info,aws=info",
            ))
            .with_writer(move || LogWriter(sink.clone()))
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn secured_stack(dir: &TempDir) -> Stack {
    secured_stack_with(dir, small_config()).await
}

async fn secured_stack_with(
    dir: &TempDir,
    config: bulk_export_core::model::config::ExportConfig,
) -> Stack {
    let src = dir.0.join("src");
    generate(&src, 20, 3).unwrap();
    let mut opts = options(&dir.0.join("data"), SourceSpec::Ndjson(src), config, 2);
    let cfg = AuthConfig::from_files(
        Some(SECRET.into()),
        None,
        Some(ISSUER.into()),
        Some(AUDIENCE.into()),
    )
    .unwrap();
    opts.auth = jwt_authenticator(cfg);
    start(opts).await.unwrap()
}

async fn kick(base: &str, tok: &str, query: &str, lenient: bool) -> reqwest::Response {
    http()
        .get(format!("{base}/$export?{query}"))
        .bearer_auth(tok)
        .header(
            "Prefer",
            if lenient {
                "respond-async, handling=lenient"
            } else {
                "respond-async"
            },
        )
        .send()
        .await
        .unwrap()
}

async fn manifest_as(status_url: &str, tok: &str) -> Value {
    for _ in 0..600 {
        let resp = http()
            .get(status_url)
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => return resp.json().await.unwrap(),
            202 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            s => panic!("status {s}"),
        }
    }
    panic!("no manifest")
}

fn output_types(m: &Value) -> Vec<String> {
    m["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_isolation_scopes_and_logs() {
    let logs = captured();
    let dir = TempDir::new("security");
    let stack = secured_stack(&dir).await;
    let base = stack.base_url.clone();
    let (a, b) = (
        token("client-a", "system/*.read"),
        token("client-b", "system/*.rs"),
    );

    // Bad tokens: 401 with WWW-Authenticate on kick-off, status and cancel.
    let bad = [
        ("missing", None),
        ("basic", Some("Basic YTpi".to_string())),
        ("malformed", Some("Bearer abc.def".to_string())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                token_with(
                    json!({"client_id": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 3600}),
                    SECRET
                )
            )),
        ),
        (
            "wrong secret",
            Some(format!(
                "Bearer {}",
                token_with(
                    json!({"client_id": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
                    "other-secret"
                )
            )),
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                token_with(
                    json!({"client_id": "x", "iss": "https://evil.test", "aud": AUDIENCE, "exp": now() + 600}),
                    SECRET
                )
            )),
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                token_with(
                    json!({"client_id": "x", "iss": ISSUER, "aud": "other", "exp": now() + 600}),
                    SECRET
                )
            )),
        ),
        (
            "alg none",
            Some({
                use base64::Engine;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let payload =
                    json!({"client_id": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600})
                        .to_string();
                format!(
                    "Bearer {}.{}.",
                    e.encode(r#"{"alg":"none","typ":"JWT"}"#),
                    e.encode(payload)
                )
            }),
        ),
    ];
    let some_job = format!("{base}/$export-status/0123456789abcdef0123456789abcdef");
    for (name, header) in &bad {
        for (method, url) in [
            ("GET", format!("{base}/$export")),
            ("GET", some_job.clone()),
            ("DELETE", some_job.clone()),
        ] {
            let mut rb = http()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    &url,
                )
                .header("Prefer", "respond-async");
            if let Some(h) = header {
                rb = rb.header("Authorization", h);
            }
            let resp = rb.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{name}: {method} {url}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer", "{name}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["resourceType"], "OperationOutcome");
        }
    }
    // The CapabilityStatement stays public.
    assert_eq!(
        http()
            .get(format!("{base}/metadata"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Isolation: B sees A's job exactly as a job that does not exist.
    let resp = kick(&base, &a, "_type=Patient,Condition", false).await;
    assert_eq!(resp.status(), 202);
    let a_job = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let manifest = manifest_as(&a_job, &a).await;
    let missing = http().get(&some_job).bearer_auth(&b).send().await.unwrap();
    let (missing_status, missing_body) = (missing.status(), missing.text().await.unwrap());
    for method in ["GET", "DELETE"] {
        let resp = http()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &a_job,
            )
            .bearer_auth(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), missing_status, "B {method} of A's job");
        assert_eq!(
            resp.text().await.unwrap(),
            missing_body,
            "indistinguishable from a missing job"
        );
    }
    assert_eq!(
        http()
            .get(&a_job)
            .bearer_auth(&a)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "A's job untouched by B's DELETE"
    );
    // A presigned URL opens exactly one object: pointing it at another file fails.
    let url = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(http().get(url).send().await.unwrap().status(), 200);
    let other = url
        .replacen("Condition-1.ndjson", "Patient-1.ndjson", 1)
        .replacen(
            "Patient-1.ndjson",
            "Condition-1.ndjson",
            if url.contains("Condition-1") { 0 } else { 1 },
        );
    assert_ne!(other, url);
    let tampered = http().get(&other).send().await.unwrap().status().as_u16();
    // The signature is checked by the S3 server: s3s-fs (embedded lane) and
    // AWS do; moto_server does not verify SigV4 at all, so on that lane the
    // check would test moto, not us.
    if lane() == "embedded" {
        assert!(
            tampered == 403 || tampered == 400,
            "tampered presigned URL answered {tampered}"
        );
    }
    let expires_in: u64 = query_param(url, "X-Amz-Expires");
    assert_eq!(expires_in, 300, "download URLs live 5 minutes");

    // Scopes: Observation only.
    for scope in ["system/Observation.read", "system/Observation.rs"] {
        let obs = token("client-c", scope);
        let resp = kick(&base, &obs, "", false).await;
        assert_eq!(resp.status(), 202, "{scope}");
        let m = manifest_as(resp.headers()["content-location"].to_str().unwrap(), &obs).await;
        assert_eq!(
            output_types(&m),
            vec!["Observation"],
            "{scope}: only Observation files"
        );
        let resp = kick(&base, &obs, "_type=Patient", false).await;
        assert_eq!(resp.status(), 403, "{scope}: Patient outside the scopes");
        let resp = kick(&base, &obs, "_type=Observation,Patient", true).await;
        assert_eq!(resp.status(), 202, "{scope}: lenient skips Patient");
        let m = manifest_as(resp.headers()["content-location"].to_str().unwrap(), &obs).await;
        assert_eq!(output_types(&m), vec!["Observation"]);
        assert_eq!(
            m["error"].as_array().unwrap().len(),
            1,
            "the skipped type is reported"
        );
    }
    let no_scope = token("client-d", "openid patient/*.read");
    assert_eq!(
        kick(&base, &no_scope, "", false).await.status(),
        403,
        "no system read scope"
    );

    // Logs: never a token, never resource content.
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(text.contains("export accepted"), "logs were captured");
    for secret in [a.as_str(), b.as_str(), SECRET] {
        assert!(!text.contains(secret), "a token or secret was logged");
    }
    for marker in [
        "Bearer ",
        "\"resourceType\":\"Patient\"",
        "\"family\"",
        "Springfield",
    ] {
        assert!(!text.contains(marker), "log contains {marker}");
    }
    println!(
        "checked {} bad-token cases × 3 routes, isolation, scopes and {} bytes of logs",
        bad.len(),
        text.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_access_token_mode_serves_files_only_to_the_owner() {
    let dir = TempDir::new("file-route");
    let mut config = small_config();
    config.requires_access_token = true;
    let stack = secured_stack_with(&dir, config).await;
    let (a, b) = (
        token("client-a", "system/*.read"),
        token("client-b", "system/*.read"),
    );
    let resp = kick(&stack.base_url, &a, "_type=Patient", false).await;
    assert_eq!(resp.status(), 202);
    let m = manifest_as(resp.headers()["content-location"].to_str().unwrap(), &a).await;
    assert_eq!(m["requiresAccessToken"], true);
    let url = m["output"][0]["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/$export-file/", stack.base_url)),
        "{url}"
    );
    // No token: 401. Another client: 404, as for a file that does not exist.
    assert_eq!(http().get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        http()
            .get(&url)
            .bearer_auth(&b)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let missing = url.replace("Patient-1.ndjson", "Patient-9.ndjson");
    assert_eq!(
        http()
            .get(&missing)
            .bearer_auth(&a)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The owner is redirected to a presigned URL that works without the token.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow.get(&url).bearer_auth(&a).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let body = http()
        .get(&location)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body.lines().count() as u64,
        m["output"][0]["count"].as_u64().unwrap()
    );
    assert!(
        body.lines()
            .all(|l| serde_json::from_str::<Value>(l).unwrap()["resourceType"] == "Patient")
    );
}
