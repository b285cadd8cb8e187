//! The kick-off, status and cancel API through HTTP against the real store:
//! every bad-input case answers the right 4xx with an OperationOutcome.

use crate::common::*;
use bulk_export::stack::SourceSpec;
use bulk_export_testkit::generate::generate;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<String>,
    status: u16,
}

const STD: [(&str, &str); 2] = [
    ("Accept", "application/fhir+json"),
    ("Prefer", "respond-async"),
];

fn get(name: &'static str, path: &str, status: u16) -> Case {
    Case {
        name,
        method: "GET",
        path: path.to_string(),
        headers: STD.to_vec(),
        body: None,
        status,
    }
}

fn post(name: &'static str, body: Value, status: u16) -> Case {
    let mut headers = STD.to_vec();
    headers.push(("Content-Type", "application/fhir+json"));
    Case {
        name,
        method: "POST",
        path: "/$export".into(),
        headers,
        body: Some(body.to_string()),
        status,
    }
}

fn params(p: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

fn bad_cases() -> Vec<Case> {
    let mut cases = vec![
        get(
            "output format unknown",
            "/$export?_outputFormat=text%2Fcsv",
            400,
        ),
        get(
            "output format twice",
            "/$export?_outputFormat=ndjson&_outputFormat=ndjson",
            400,
        ),
        get("since date only", "/$export?_since=2024-01-01", 400),
        get(
            "since without zone",
            "/$export?_since=2024-01-01T00:00:00",
            400,
        ),
        get("since garbage", "/$export?_since=yesterday", 400),
        get(
            "since twice",
            "/$export?_since=2024-01-01T00:00:00Z&_since=2024-02-01T00:00:00Z",
            400,
        ),
        get(
            "until before since",
            "/$export?_since=2024-02-01T00:00:00Z&_until=2024-01-01T00:00:00Z",
            400,
        ),
        get("till malformed", "/$export?_till=2024-13-01T00:00:00Z", 400),
        get("unknown type", "/$export?_type=Foo", 400),
        get("type wrong case", "/$export?_type=observation", 400),
        get(
            "type empty entry",
            "/$export?_type=Patient,,Observation",
            400,
        ),
        get(
            "type filter without query",
            "/$export?_typeFilter=Observation",
            400,
        ),
        get(
            "type filter unknown type",
            "/$export?_typeFilter=Foo%3Fx%3D1",
            400,
        ),
        get(
            "type filter _include",
            "/$export?_typeFilter=Observation%3F_include%3DObservation:subject",
            400,
        ),
        get(
            "type filter _sort",
            "/$export?_typeFilter=Observation%3F_sort%3Ddate",
            400,
        ),
        get(
            "type filter _count",
            "/$export?_typeFilter=Observation%3F_count%3D5",
            400,
        ),
        get(
            "type filter _elements",
            "/$export?_typeFilter=Observation%3F_elements%3Did",
            400,
        ),
        get(
            "type filter excluded by _type",
            "/$export?_type=Patient&_typeFilter=Observation%3Fcode%3D1",
            400,
        ),
        get(
            "type filter on NDJSON source",
            "/$export?_typeFilter=Observation%3Fcode%3D1",
            400,
        ),
        get("container uppercase", "/$export?_container=Nightly", 400),
        get("container dots", "/$export?_container=a.b.c", 400),
        get("container traversal", "/$export?_container=..%2Fetc", 400),
        get("container slash", "/$export?_container=ab%2Fcd", 400),
        get(
            "container percent escape",
            "/$export?_container=ab%252fcd",
            400,
        ),
        get(
            "container twice",
            "/$export?_container=abc&_container=abd",
            400,
        ),
        get("elements unsupported", "/$export?_elements=id", 400),
        get(
            "includeAssociatedData unsupported",
            "/$export?includeAssociatedData=LatestProvenanceResources",
            400,
        ),
        get(
            "organizeOutputBy unsupported",
            "/$export?organizeOutputBy=Patient",
            400,
        ),
        get("unknown parameter", "/$export?_foo=1", 400),
        get("patient in GET", "/$export?patient=Patient%2F1", 400),
        get(
            "allowPartialManifests not boolean",
            "/$export?allowPartialManifests=maybe",
            400,
        ),
        get(
            "control character in value",
            "/$export?_since=2024-01-01T00:00:00Z%01",
            400,
        ),
        get("invalid UTF-8 in value", "/$export?_type=%FF%FE", 400),
        get("unknown route", "/Observation/$export2", 404),
        get(
            "status of unknown job",
            "/$export-status/0123456789abcdef0123456789abcdef",
            404,
        ),
        get(
            "status with traversal id",
            "/$export-status/..%2F..%2Fetc",
            404,
        ),
        get("group id with bad characters", "/Group/a_b/$export", 400),
        get("unknown group", "/Group/no-such-group/$export", 404),
        get(
            "url too long",
            &format!("/$export?_type={}", "Patient,".repeat(2000)),
            414,
        ),
        Case {
            name: "no Prefer header",
            method: "GET",
            path: "/$export".into(),
            headers: vec![("Accept", "application/fhir+json")],
            body: None,
            status: 400,
        },
        Case {
            name: "Accept xml",
            method: "GET",
            path: "/$export".into(),
            headers: vec![("Accept", "application/xml"), ("Prefer", "respond-async")],
            body: None,
            status: 406,
        },
        Case {
            name: "PUT kick-off",
            method: "PUT",
            path: "/$export".into(),
            headers: STD.to_vec(),
            body: None,
            status: 405,
        },
        Case {
            name: "DELETE metadata",
            method: "DELETE",
            path: "/metadata".into(),
            headers: vec![],
            body: None,
            status: 405,
        },
        Case {
            name: "POST status",
            method: "POST",
            path: "/$export-status/0123456789abcdef0123456789abcdef".into(),
            headers: vec![],
            body: None,
            status: 405,
        },
        post(
            "POST with a non-Parameters body",
            json!({"resourceType": "Patient"}),
            400,
        ),
        post(
            "POST parameter without value",
            params(json!([{"name": "_type"}])),
            400,
        ),
        post(
            "POST parameter with two values",
            params(json!([{"name": "_type", "valueString": "Patient", "valueCode": "Patient"}])),
            400,
        ),
        post(
            "POST patient at system level",
            params(json!([{"name": "patient", "valueReference": {"reference": "Patient/1"}}])),
            400,
        ),
        post(
            "POST bad since",
            params(json!([{"name": "_since", "valueInstant": "2024-01-01"}])),
            400,
        ),
        post(
            "POST unknown type",
            params(json!([{"name": "_type", "valueString": "Nope"}])),
            400,
        ),
    ];
    let mut headers = STD.to_vec();
    headers.push(("Content-Type", "text/plain"));
    cases.push(Case {
        name: "POST text/plain",
        method: "POST",
        path: "/$export".into(),
        headers: headers.clone(),
        body: Some("x".into()),
        status: 415,
    });
    headers.pop();
    headers.push(("Content-Type", "application/json"));
    cases.push(Case {
        name: "POST invalid JSON",
        method: "POST",
        path: "/$export".into(),
        headers: headers.clone(),
        body: Some("{not json".into()),
        status: 400,
    });
    cases.push(Case {
        name: "POST with a query string",
        method: "POST",
        path: "/$export?_type=Patient".into(),
        headers: headers.clone(),
        body: Some(params(json!([])).to_string()),
        status: 400,
    });
    cases.push(Case {
        name: "POST body too large",
        method: "POST",
        path: "/$export".into(),
        headers,
        body: Some(" ".repeat(2 * 1024 * 1024)),
        status: 413,
    });
    cases
}

async fn send(base: &str, case: &Case) -> reqwest::Response {
    let url = format!("{base}{}", case.path);
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut rb = http().request(method, url);
    for (k, v) in &case.headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = &case.body {
        rb = rb.body(b.clone());
    }
    rb.send().await.unwrap()
}

async fn assert_outcome(resp: reqwest::Response, expected: u16, name: &str) -> Value {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let allow = resp.headers().get("allow").is_some();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, expected, "{name}: status (body {body})");
    assert_eq!(ct, "application/fhir+json", "{name}: content type");
    assert_eq!(
        body["resourceType"], "OperationOutcome",
        "{name}: body {body}"
    );
    let issue = &body["issue"][0];
    assert!(
        issue["severity"].is_string() && issue["code"].is_string(),
        "{name}: issue {issue}"
    );
    if expected == 405 {
        assert!(allow, "{name}: 405 needs Allow");
    }
    body
}

#[tokio::test]
async fn bad_input_gets_a_precise_operation_outcome() {
    let dir = TempDir::new("api-bad");
    generate(&dir.0.join("src"), 5, 7).unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(dir.0.join("src")),
        small_config(),
        2,
    )
    .await;
    let cases = bad_cases();
    assert!(cases.len() >= 30);
    for case in &cases {
        let resp = send(&stack.base_url, case).await;
        let body = assert_outcome(resp, case.status, case.name).await;
        let diag = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(
            !diag.chars().any(|c| c.is_control()),
            "{}: diagnostics echo control chars",
            case.name
        );
    }
    println!(
        "checked {} bad-input cases on the {} lane",
        cases.len(),
        lane()
    );
}

#[tokio::test]
async fn every_kickoff_form_is_accepted_and_cancellable() {
    let dir = TempDir::new("api-good");
    generate(&dir.0.join("src"), 5, 7).unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(dir.0.join("src")),
        small_config(),
        2,
    )
    .await;
    let base = &stack.base_url;
    let queries = [
        "_outputFormat=application%2Ffhir%2Bndjson",
        "_outputFormat=application/fhir+ndjson",
        "_outputFormat=application%2Fndjson",
        "_outputFormat=ndjson",
        "_since=2024-01-01T00:00:00Z",
        "_since=2024-01-01T00:00:00.123%2B05:00",
        "_since=2024-01-01T00:00:00-04:00",
        "_till=2030-01-01T00:00:00Z",
        "_type=Patient&_type=Observation",
        "_container=nightly-run",
        "allowPartialManifests=false",
    ];
    let mut seen = std::collections::HashSet::new();
    for q in queries {
        let status_url = kickoff(base, q).await;
        assert!(
            status_url.starts_with("http://"),
            "absolute Content-Location"
        );
        assert!(seen.insert(status_url.clone()), "distinct jobs");
        let del = http().delete(&status_url).send().await.unwrap();
        assert_eq!(del.status(), 202, "{q}: cancel");
        let after = http().get(&status_url).send().await.unwrap();
        assert_outcome(after, 404, "status after cancel").await;
        let again = http().delete(&status_url).send().await.unwrap();
        assert_outcome(again, 404, "second cancel").await;
    }
    for ct in ["application/fhir+json", "application/json; charset=utf-8"] {
        let body = params(json!([
            {"name": "_type", "valueString": "Patient"},
            {"name": "_type", "valueString": "Condition"},
            {"name": "_since", "valueInstant": "2021-01-01T00:00:00Z"},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}
        ]));
        let resp = http()
            .post(format!("{base}/$export"))
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .header("Content-Type", ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "POST with {ct}");
        let status_url = resp.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let manifest = wait_complete(&status_url).await;
        assert_eq!(
            manifest["request"],
            format!("{base}/$export"),
            "POST request URL has no parameters"
        );
        let types: std::collections::BTreeSet<_> = manifest["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["type"].as_str().unwrap().to_string())
            .collect();
        assert!(
            types.iter().all(|t| t == "Patient" || t == "Condition"),
            "{types:?}"
        );
    }
}

#[tokio::test]
async fn lenient_handling_records_ignored_parameters_in_error_files() {
    let dir = TempDir::new("api-lenient");
    generate(&dir.0.join("src"), 3, 7).unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(dir.0.join("src")),
        small_config(),
        2,
    )
    .await;
    let resp = http()
        .get(format!(
            "{}/$export?_type=Patient,Bogus&_elements=id&_foo=bar",
            stack.base_url
        ))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let manifest = wait_complete(resp.headers()["content-location"].to_str().unwrap()).await;
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["type"], "OperationOutcome");
    let body = http()
        .get(errors[0]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let outcomes: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        outcomes.len(),
        3,
        "one OperationOutcome per ignored parameter: {body}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| o["resourceType"] == "OperationOutcome")
    );
    let types: Vec<_> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("Patient")]);
}

#[tokio::test]
async fn metadata_declares_the_export_operations() {
    let dir = TempDir::new("api-meta");
    generate(&dir.0.join("src"), 1, 7).unwrap();
    let stack = running_stack(
        &dir.0.join("data"),
        SourceSpec::Ndjson(dir.0.join("src")),
        small_config(),
        1,
    )
    .await;
    let resp = http()
        .get(format!("{}/metadata", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cs: Value = resp.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    assert_eq!(
        cs["rest"][0]["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    );
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        assert_eq!(r["operation"][0]["name"], "export");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_manifests_list_compact_signed_links_that_redirect_until_they_expire() {
    let dir = TempDir::new("links");
    let src = dir.0.join("src");
    bulk_export_testkit::generate::generate(&src, 30, 4).unwrap();
    let mut config = small_config();
    // Every manifest is "large" here.
    config.presigned_files_max = 0;
    let stack = running_stack(
        &dir.0.join("data"),
        bulk_export::stack::SourceSpec::Ndjson(src.clone()),
        config,
        2,
    )
    .await;
    let manifest = wait_complete(&kickoff(&stack.base_url, "").await).await;
    let urls: Vec<String> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["url"].as_str().unwrap().to_string())
        .collect();
    assert!(urls.len() > 3);
    let prefix = format!("{}/$export-download/", stack.base_url);
    for url in &urls {
        assert!(url.starts_with(&prefix), "{url}");
        assert!(url.len() < 200, "compact: {url}");
    }
    // Followed without a token, the links give exactly the source.
    let files = download_outputs(&manifest).await;
    assert_eq!(
        multiset(files.iter().map(|(_, _, b)| b.as_slice())),
        source_multiset(&src, false)
    );
    // The redirect itself: 302 to a presigned URL, not cached.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow.get(&urls[0]).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    // Tampering with any part refuses alike, without saying why.
    let sig_at = urls[0].rfind("signature=").unwrap() + "signature=".len();
    let mut flipped = urls[0].clone();
    let c = if &flipped[sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    flipped.replace_range(sig_at..sig_at + 1, c);
    let expires: i64 = query_param(&urls[0], "expires");
    let cases = [
        ("signature", flipped),
        (
            "expiry moved",
            urls[0].replace(
                &format!("expires={expires}"),
                &format!("expires={}", expires + 3600),
            ),
        ),
        ("other file", urls[0].replace(".ndjson?", "x.ndjson?")),
        (
            "no signature",
            urls[0][..urls[0].find('?').unwrap()].to_string(),
        ),
        ("other job", urls[0].replace(&prefix, &format!("{prefix}0"))),
        (
            "unknown job",
            format!(
                "{prefix}00000000000000000000000000000000/Patient.000.ndjson?expires={expires}&signature={}",
                &urls[0][sig_at..]
            ),
        ),
    ];
    for (name, url) in cases {
        let resp = no_follow.get(&url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 403, "{name}: {url} {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{name}");
    }
}
