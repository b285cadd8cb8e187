//! SMART Backend Services against the upstream: the exporter signs a
//! `private_key_jwt` client assertion (RS384), trades it for an access token
//! at the token endpoint, caches it until shortly before expiry, and renews it
//! when the upstream answers 401. The protected upstream here is a small
//! authorizing proxy in front of the fixture FHIR server.

use crate::common::*;
use bulk_export_core::adapters::fhir_server::upstream_auth::{ClientCredentials, UpstreamAuth};
use bulk_export_core::adapters::fhir_server::{FhirServerSource, RetryPolicy};
use bulk_export_core::ports::services::ExportServices;
use bulk_export_testkit::fixture_server::{FixtureOptions, start_fixture};
use bulk_export_testkit::generate::generate;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT: &str = "bulk-exporter";
const TOKEN_TTL_SECS: u64 = 2;

#[derive(Default)]
struct AuthServer {
    issued: Mutex<HashMap<String, Instant>>,
    token_requests: Mutex<u64>,
    rejected: Mutex<u64>,
}

fn keypair(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl is needed to make a test key");
    assert!(status.success());
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    (std::fs::read(&key).unwrap(), public.stdout)
}

async fn start_auth_proxy(upstream: String, public_pem: Vec<u8>, state: Arc<AuthServer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token_url = format!("http://{addr}/token");
    let decoding = Arc::new(DecodingKey::from_rsa_pem(&public_pem).unwrap());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let (state, decoding, client, upstream, token_url) = (
                state.clone(),
                decoding.clone(),
                client.clone(),
                upstream.clone(),
                token_url.clone(),
            );
            let service = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let (state, decoding, client, upstream, token_url) = (
                        state.clone(),
                        decoding.clone(),
                        client.clone(),
                        upstream.clone(),
                        token_url.clone(),
                    );
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let reply = |status: u16, body: String| {
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        };
                        if path == "/token" {
                            *state.token_requests.lock().unwrap() += 1;
                            let form: HashMap<String, String> =
                                form_urlencoded::parse(&body).into_owned().collect();
                            let mut validation = Validation::new(Algorithm::RS384);
                            validation.set_audience(&[token_url.as_str()]);
                            validation.set_issuer(&[CLIENT]);
                            let ok = form.get("grant_type").map(String::as_str)
                                == Some("client_credentials")
                                && form.get("client_assertion_type").map(String::as_str)
                                    == Some(
                                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                    )
                                && form.get("scope").map(String::as_str) == Some("system/*.read")
                                && form.get("client_assertion").is_some_and(|a| {
                                    jsonwebtoken::decode::<serde_json::Value>(
                                        a,
                                        &decoding,
                                        &validation,
                                    )
                                    .is_ok()
                                });
                            if !ok {
                                return reply(400, r#"{"error":"invalid_client"}"#.into());
                            }
                            let token = format!("tok-{}", state.issued.lock().unwrap().len());
                            state
                                .issued
                                .lock()
                                .unwrap()
                                .insert(token.clone(), Instant::now());
                            return reply(
                                200,
                                format!(
                                    r#"{{"access_token":"{token}","token_type":"bearer","expires_in":{TOKEN_TTL_SECS},"scope":"system/*.read"}}"#
                                ),
                            );
                        }
                        let valid = auth
                            .as_deref()
                            .and_then(|a| a.strip_prefix("Bearer "))
                            .is_some_and(|t| {
                                state.issued.lock().unwrap().get(t).is_some_and(|at| {
                                    at.elapsed() < Duration::from_secs(TOKEN_TTL_SECS)
                                })
                            });
                        if !valid {
                            *state.rejected.lock().unwrap() += 1;
                            return reply(401, r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}"#.into());
                        }
                        let resp = client
                            .get(format!("{upstream}{path}"))
                            .send()
                            .await
                            .unwrap();
                        let status = resp.status().as_u16();
                        let text = resp
                            .text()
                            .await
                            .unwrap()
                            .replace(&upstream, &format!("http://{addr}"));
                        reply(status, text)
                    }
                },
            );
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_fetched_cached_and_renewed() {
    let dir = TempDir::new("smart-backend");
    let src = dir.0.join("src");
    generate(&src, 60, 2).unwrap();
    let (private_pem, public_pem) = keypair(&dir.0);
    let fixture = start_fixture(
        &src,
        FixtureOptions {
            latency: Duration::from_millis(40),
            ..FixtureOptions::default()
        },
    )
    .await
    .unwrap();
    let fixture_origin = fixture.base_url().trim_end_matches("/fhir").to_string();
    let state = Arc::new(AuthServer::default());
    let proxy = start_auth_proxy(fixture_origin, public_pem, state.clone()).await;
    let upstream = format!("{proxy}/fhir");

    // Without credentials the protected upstream refuses the export.
    let denied = reqwest::get(format!("{upstream}/Patient")).await.unwrap();
    assert_eq!(denied.status(), 401);

    let mut config = small_config();
    config.page_size = 50;
    let stack = running_stack(
        &dir.0.join("data"),
        fhir_source(fixture.base_url()),
        config,
        0,
    )
    .await;
    let cc = ClientCredentials::new(
        &format!("{proxy}/token"),
        CLIENT,
        "system/*.read",
        &private_pem,
        Some("k1".into()),
    )
    .unwrap();
    let retry = RetryPolicy {
        base_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let source = FhirServerSource::new(&upstream, None, retry)
        .unwrap()
        .with_auth(UpstreamAuth::ClientCredentials(Box::new(cc)));
    let svc = ExportServices {
        source: Arc::new(source),
        ..stack.services.clone()
    };
    let started = Instant::now();
    let status_url = kickoff(&stack.base_url, "_type=Patient,Observation,Encounter").await;
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    assert_eq!(manifest["error"].as_array().unwrap().len(), 0, "{manifest}");
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let expected: std::collections::BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((t, _), _)| ["Patient", "Observation", "Encounter"].contains(&t.as_str()))
        .collect();
    assert_eq!(got, expected, "exact output through the protected upstream");
    let tokens = *state.token_requests.lock().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "export took {elapsed:.1}s with {tokens} token requests ({} upstream 401s)",
        state.rejected.lock().unwrap()
    );
    assert!(tokens >= 1, "a token was fetched");
    // Cached: far fewer token requests than upstream pages, renewed as they expire.
    let pages = fixture.stats().searches.values().sum::<u64>();
    assert!(tokens < pages, "{tokens} token requests for {pages} pages");
    assert!(
        tokens as f64 <= elapsed / (TOKEN_TTL_SECS as f64 / 2.0) + 3.0,
        "{tokens} tokens in {elapsed:.1}s"
    );
}
