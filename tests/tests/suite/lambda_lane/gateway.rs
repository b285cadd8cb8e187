//! API Gateway HTTP API in front of the functions: the routes template.yaml
//! declares, its JWT authorizer (issuer and audience from the template's
//! parameters; the lane issues HS256 tokens where a real issuer publishes
//! a JWKS), payload format 2.0 events built from real HTTP requests, the
//! 10 MB request limit and the 29 s integration timeout.

use super::runtime::FunctionPool;
use super::stack::{ACCOUNT, Route};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

pub const MAX_REQUEST: usize = 10 * 1024 * 1024;
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(29);
pub const TOKEN_SECRET: &str = "lambda-lane-issuer-secret";

pub struct Gateway {
    pub routes: Vec<(Route, Arc<FunctionPool>)>,
    pub issuer: String,
    pub audience: String,
}

type Body = Full<Bytes>;

fn message(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({"message": text}).to_string())))
        .unwrap()
}

/// A token the lane's authorizer accepts.
pub fn token(issuer: &str, audience: &str, client: &str, scope: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"iss": issuer, "aud": audience, "sub": client, "client_id": client, "scope": scope, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )
    .unwrap()
}

fn matches(pattern: &str, path: &str) -> Option<Map<String, Value>> {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let a: Vec<&str> = path.trim_matches('/').split('/').collect();
    if p.len() != a.len() {
        return None;
    }
    let mut params = Map::new();
    for (p, a) in p.iter().zip(a) {
        if let Some(name) = p.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            if a.is_empty() {
                return None;
            }
            params.insert(
                name.to_string(),
                Value::String(super::aws_proxy::percent_decode(a)),
            );
        } else if p != &a {
            return None;
        }
    }
    Some(params)
}

/// Claims as the authorizer passes them: every value a string.
fn claims_of(req: &http::request::Parts, gw: &Gateway) -> Option<Map<String, Value>> {
    let auth = req.headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[&gw.issuer]);
    validation.set_audience(&[&gw.audience]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(TOKEN_SECRET.as_bytes()),
        &validation,
    )
    .ok()?;
    Some(
        data.claims
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s,
                    Value::Array(a) => format!(
                        "[{}]",
                        a.iter()
                            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    other => other.to_string(),
                };
                (k, Value::String(s))
            })
            .collect(),
    )
}

fn event(
    parts: &http::request::Parts,
    body: &Bytes,
    route: &Route,
    params: Map<String, Value>,
    claims: Option<Map<String, Value>>,
) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (k, v) in &parts.headers {
        let v = v.to_str().unwrap_or("").to_string();
        if k == "cookie" {
            cookies.extend(v.split("; ").map(|c| Value::String(c.to_string())));
            continue;
        }
        match headers.get_mut(k.as_str()) {
            Some(Value::String(prev)) => *prev = format!("{prev},{v}"),
            _ => {
                headers.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let mut query = Map::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        match query.get_mut(k.as_ref()) {
            Some(Value::String(prev)) => *prev = format!("{prev},{v}"),
            _ => {
                query.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
    }
    let host = headers
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let route_key = format!("{} {}", route.method, route.path);
    let text = std::str::from_utf8(body).ok();
    let (body_value, b64) = match text {
        _ if body.is_empty() => (Value::Null, false),
        Some(t) => (Value::String(t.to_string()), false),
        None => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let authorizer = claims.map(|c| json!({"jwt": {"claims": c, "scopes": null}}));
    json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "cookies": if cookies.is_empty() { Value::Null } else { Value::Array(cookies) },
        "headers": headers,
        "queryStringParameters": if query.is_empty() { Value::Null } else { Value::Object(query) },
        "pathParameters": if params.is_empty() { Value::Null } else { Value::Object(params) },
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "lane",
            "authorizer": authorizer,
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent").cloned().unwrap_or(Value::String(String::new())),
            },
            "requestId": format!("lane-{now}"),
            "routeKey": route_key,
            "stage": "$default",
            "time": "06/Dec/2026:00:00:00 +0000",
            "timeEpoch": now,
        },
        "body": body_value,
        "isBase64Encoded": b64,
    })
}

/// A payload format 2.0 response as API Gateway turns it into HTTP.
fn http_response(out: &[u8]) -> Response<Body> {
    let Ok(v) = serde_json::from_slice::<Value>(out) else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let Some(status) = v["statusCode"].as_u64() else {
        // No statusCode: API Gateway infers 200 and a JSON body.
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out.to_vec())))
            .unwrap();
    };
    let mut r = Response::builder().status(status as u16);
    if let Some(h) = v["headers"].as_object() {
        for (k, val) in h {
            r = r.header(
                k,
                val.as_str().map_or_else(|| val.to_string(), str::to_string),
            );
        }
    }
    if let Some(c) = v["cookies"].as_array() {
        for c in c.iter().filter_map(Value::as_str) {
            r = r.header("set-cookie", c);
        }
    }
    let body = v["body"].as_str().unwrap_or("");
    let body = if v["isBase64Encoded"] == true {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    r.body(Full::new(Bytes::from(body))).unwrap()
}

impl Gateway {
    pub fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        super::serve_http(listener, move |req| {
            let gw = self.clone();
            async move { gw.handle(req).await }
        });
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Ok(body) = Limited::new(body, MAX_REQUEST).collect().await else {
            return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
        };
        let body = body.to_bytes();
        let found = self.routes.iter().find_map(|(route, pool)| {
            (route.method == parts.method.as_str())
                .then(|| matches(&route.path, parts.uri.path()))
                .flatten()
                .map(|params| (route, pool, params))
        });
        let Some((route, pool, params)) = found else {
            return message(StatusCode::NOT_FOUND, "Not Found");
        };
        let claims = if route.auth {
            match claims_of(&parts, self) {
                Some(c) => Some(c),
                None => return message(StatusCode::UNAUTHORIZED, "Unauthorized"),
            }
        } else {
            None
        };
        let ev = event(&parts, &body, route, params, claims);
        let payload = Bytes::from(ev.to_string());
        match tokio::time::timeout(INTEGRATION_TIMEOUT, pool.invoke(payload)).await {
            Err(_) => message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            Ok(Err(_)) => message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            Ok(Ok(out)) => http_response(&out),
        }
    }
}
