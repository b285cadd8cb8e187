//! The watchdog drains the worker's on-failure destination queue (SQS), and
//! upstream credentials come from SSM Parameter Store: both against real
//! moto_server SQS and SSM endpoints.

use crate::common::*;
use bulk_export_core::adapters::fhir_server::upstream_auth::UpstreamAuth;
use bulk_export_core::adapters::sqs::FailedStepQueue;
use bulk_export_core::adapters::ssm::upstream_auth;
use bulk_export_core::lambda::watchdog_handler;
use serde_json::json;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_steps_in_the_destination_queue_are_delivered_again() {
    let moto = Moto::start().await;
    let sqs = moto.sqs();
    let url = sqs
        .create_queue()
        .queue_name("worker-failures")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let (_dir, src, stack) = ndjson_stack("dlq", 20, 4, small_config(), 0).await;
    let svc = stack.services.clone();
    let status_url = kickoff(&stack.base_url, "_type=Patient").await;
    // Lambda ran the first step, it failed every retry, and the event went to
    // the destination queue instead of running.
    let lost = stack.queue.try_next().await.expect("the first step");
    assert!(stack.queue.try_next().await.is_none());
    let record = |payload: serde_json::Value| {
        json!({"version": "1.0", "timestamp": "2026-11-26T10:00:00.000Z",
            "requestContext": {"requestId": "r", "condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "requestPayload": payload, "responseContext": {"statusCode": 200, "functionError": "Unhandled"}})
        .to_string()
    };
    for body in [
        record(serde_json::to_value(&lost).unwrap()),
        record(json!({"job_id": lost.job_id, "chain_id": lost.chain_id, "step": lost.step + 5})),
        "not a record".to_string(),
    ] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let queue = FailedStepQueue::new(sqs.clone(), &url);
    let (_, drained) = watchdog_handler(&svc, Some(&queue)).await.unwrap();
    println!("drained the destination queue: {drained:?}");
    assert_eq!(
        (
            drained.received,
            drained.redelivered,
            drained.stale,
            drained.unreadable
        ),
        (3, 1, 1, 1)
    );
    let left = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert!(left.messages().is_empty(), "every record was deleted");
    assert_eq!(stack.queue.try_next().await.as_ref(), Some(&lost));
    bulk_export_core::worker::step::run_step(&svc, &lost, None)
        .await
        .unwrap();
    drain(&stack, &svc).await;
    let manifest = wait_complete(&status_url).await;
    let files = download_outputs(&manifest).await;
    let got = multiset(files.iter().map(|(_, _, b)| b.as_slice()));
    let want: std::collections::BTreeMap<_, _> = source_multiset(&src, false)
        .into_iter()
        .filter(|((t, _), _)| t == "Patient")
        .collect();
    assert_eq!(got, want, "the redelivered chain exported everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_come_from_ssm_parameters() {
    let moto = Moto::start().await;
    let ssm = moto.ssm();
    let put = |name: &'static str, value: String| {
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
    };
    put("/bulk-export/upstream-token", "tok-from-ssm-123".into())
        .await
        .unwrap();
    let dir = TempDir::new("ssm");
    let key = dir.0.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl makes a test key");
    assert!(ok.success());
    put(
        "/bulk-export/upstream-key",
        std::fs::read_to_string(&key).unwrap(),
    )
    .await
    .unwrap();

    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let token_env = env(&[(
        "BULK_EXPORT_UPSTREAM_TOKEN_PARAMETER",
        "/bulk-export/upstream-token",
    )]);
    let auth = upstream_auth(&ssm, &|k| token_env.get(k).cloned())
        .await
        .unwrap();
    assert!(
        matches!(&auth, UpstreamAuth::Bearer(t) if t == "tok-from-ssm-123"),
        "static token from SSM"
    );

    let cc_env = env(&[
        (
            "BULK_EXPORT_UPSTREAM_TOKEN_URL",
            "https://auth.example/token",
        ),
        ("BULK_EXPORT_UPSTREAM_CLIENT_ID", "bulk-exporter"),
        (
            "BULK_EXPORT_UPSTREAM_PRIVATE_KEY_PARAMETER",
            "/bulk-export/upstream-key",
        ),
    ]);
    let auth = upstream_auth(&ssm, &|k| cc_env.get(k).cloned())
        .await
        .unwrap();
    assert!(
        matches!(auth, UpstreamAuth::ClientCredentials(_)),
        "client credentials with the private key from SSM"
    );

    let missing = env(&[("BULK_EXPORT_UPSTREAM_TOKEN_PARAMETER", "/bulk-export/nope")]);
    let err = upstream_auth(&ssm, &|k| missing.get(k).cloned())
        .await
        .err()
        .expect("a missing parameter is a startup error");
    assert!(err.contains("/bulk-export/nope"), "{err}");
    assert!(!err.contains("tok-from-ssm"), "no secret in the error");
}
