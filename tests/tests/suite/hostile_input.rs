//! Hostile input across every route: traversal, injection, oversize and
//! encoding tricks get the right 4xx with an OperationOutcome, never a 5xx,
//! and nothing is written outside a job's own folder.

use crate::common::*;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    status: u16,
}

fn get(name: &'static str, path: impl Into<String>, status: u16) -> Case {
    Case {
        name,
        method: "GET",
        path: path.into(),
        body: None,
        headers: vec![],
        status,
    }
}

fn post(name: &'static str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        method: "POST",
        path: "/$export".into(),
        body: Some(body.into()),
        headers: vec![("Content-Type", b"application/fhir+json".to_vec())],
        status,
    }
}

fn params(p: Value) -> Vec<u8> {
    json!({"resourceType": "Parameters", "parameter": p})
        .to_string()
        .into_bytes()
}

fn cases() -> Vec<Case> {
    let job = "0123456789abcdef0123456789abcdef";
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let mut many_types = Vec::new();
    for _ in 0..300 {
        many_types.push(json!({"name": "_type", "valueString": "Patient"}));
    }
    let filters: Vec<String> = (0..101)
        .map(|i| format!("Observation%3Fcode%3D{i}"))
        .collect();
    let mut c = vec![
        get("container dot-dot", "/$export?_container=..", 400),
        get("container encoded dots", "/$export?_container=%2e%2e", 400),
        get("container traversal", "/$export?_container=a%2F..%2F..%2Fetc", 400),
        get("container NUL", "/$export?_container=abc%00def", 400),
        get("container CRLF header injection", "/$export?_container=abc%0d%0aSet-Cookie:x", 400),
        get("type CRLF injection", "/$export?_type=Patient%0d%0aX-Injected:1", 400),
        get("since LF injection", "/$export?_since=2024-01-01T00:00:00Z%0aX:%20y", 400),
        get("typeFilter control characters", "/$export?_typeFilter=Patient%3Fname%3D%0d%0a", 400),
        get("typeFilter _include", "/$export?_typeFilter=Patient%3F_include%3D*", 400),
        get("typeFilter fragment", "/$export?_typeFilter=Patient%3Fname%3Dx%23frag", 400),
        get("typeFilter path traversal type", "/$export?_typeFilter=..%2F..%2FPatient%3Fx%3D1", 400),
        get("typeFilter empty parameter name", "/$export?_typeFilter=Patient%3F%3Dx", 400),
        get("typeFilter too many", format!("/$export?_typeFilter={}", filters.join(",")), 400),
        get("empty _type", "/$export?_type=", 400),
        get("invalid UTF-8 _outputFormat", "/$export?_outputFormat=%FF", 400),
        get("patient in GET", "/$export?patient=Patient%2F..", 400),
        get("group traversal encoded slash", "/Group/..%2F..%2Fetc/$export", 404),
        get("group id with dot-dot", "/Group/a..b/$export", 400),
        get("group id of dots", "/Group/.../$export", 400),
        get("group id encoded slash", "/Group/a%2Fb/$export", 404),
        get("group id too long", format!("/Group/{}/$export", "a".repeat(65)), 400),
        get("group id with NUL", "/Group/a%00b/$export", 400),
        get("status traversal", "/$export-status/..%2F..%2Fjobs.sqlite", 404),
        get("status dot-dot", "/$export-status/%2e%2e", 404),
        get("status uppercase id", format!("/$export-status/{}", job.to_uppercase()), 404),
        get("status id with NUL", format!("/$export-status/{job}%00"), 400),
        get("status empty id", "/$export-status/", 404),
        get("status id too long", format!("/$export-status/{job}{job}"), 404),
        get("path with CRLF", "/$export%0d%0aX:1", 400),
        get("URL too long", format!("/$export?_since={}", "9".repeat(9000)), 414),
        Case { name: "DELETE traversal", method: "DELETE", path: "/$export-status/%2e%2e%2f%2e%2e".into(), body: None, headers: vec![], status: 404 },
        Case { name: "PATCH kick-off", method: "PATCH", path: "/$export".into(), body: None, headers: vec![], status: 405 },
        Case { name: "DELETE kick-off", method: "DELETE", path: "/$export".into(), body: None, headers: vec![], status: 405 },
        Case { name: "Prefer not UTF-8", method: "GET", path: "/$export".into(), body: None, headers: vec![("Prefer", b"respond-async\xff".to_vec())], status: 400 },
        post("oversize body", vec![b' '; 2 * 1024 * 1024], 413),
        post("deeply nested JSON", nested.into_bytes(), 400),
        post("invalid UTF-8 body", b"{\"resourceType\":\"Parameters\",\"parameter\":[{\"name\":\"_type\",\"valueString\":\"\xff\"}]}".to_vec(), 400),
        post("parameter name with control character", params(json!([{"name": "_ty\u{0007}pe", "valueString": "Patient"}])), 400),
        post("container traversal in POST", params(json!([{"name": "_container", "valueString": "../x"}])), 400),
        post("300 _type entries", params(Value::Array(many_types)), 400),
        post("patient at system level", params(json!([{"name": "patient", "valueReference": {"reference": "Patient/1"}}])), 400),
        post("body is an array", b"[]".to_vec(), 400),
        post("body is a string", b"\"Parameters\"".to_vec(), 400),
    ];
    let mut group_post = |name: &'static str, reference: &str| {
        let mut case = post(
            name,
            params(json!([{"name": "patient", "valueReference": {"reference": reference}}])),
            400,
        );
        case.path = "/Group/small/$export".into();
        c.push(case);
    };
    group_post("patient traversal", "Patient/../x");
    group_post("patient on another host", "http://evil.example/Patient/1");
    group_post("patient of another type", "Practitioner/pr-0");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_escapes_validation() {
    let (_dir, _src, stack) = ndjson_stack("hostile", 12, 4, small_config(), 2).await;
    // One legitimate export so there is a real job folder to stay inside.
    let ok = kickoff(&stack.base_url, "_type=Patient&_container=legit-run").await;
    wait_complete(&ok).await;
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in &cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut rb = http().request(method, format!("{}{}", stack.base_url, case.path));
        let mut has_prefer = false;
        for (k, v) in &case.headers {
            has_prefer |= *k == "Prefer";
            rb = rb.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        if !has_prefer {
            rb = rb.header("Prefer", "respond-async");
        }
        if let Some(b) = &case.body {
            rb = rb.body(b.clone());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(status < 500, "{}: answered {status}", case.name);
        assert_eq!(status, case.status, "{}", case.name);
        assert!(
            resp.headers().get("content-location").is_none(),
            "{}: no job created",
            case.name
        );
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            ct.as_deref(),
            Some("application/fhir+json"),
            "{}",
            case.name
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome", "{}", case.name);
        let diag = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(
            !diag.chars().any(char::is_control),
            "{}: diagnostics echo control characters",
            case.name
        );
    }
    // Nothing outside a job folder: every object is <container>/<32-hex job id>/<Type>-<n>.ndjson.
    let objects = stack.objects.list("").await.unwrap();
    assert!(!objects.is_empty());
    for (key, _) in &objects {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert!(
            bulk_export_core::fhir::ids::is_container_name(parts[0]),
            "{key}"
        );
        assert!(bulk_export_core::api::status::is_job_id(parts[1]), "{key}");
        assert!(
            parts[2].ends_with(".ndjson") && !parts[2].contains(".."),
            "{key}"
        );
    }
    println!(
        "{} hostile requests refused; {} objects, all inside job folders",
        cases.len(),
        objects.len()
    );
}
