//! Every AWS call of a lane function, checked against its execution role as
//! the translated template defines it, by a real policy evaluator
//! (tests/lambda-lane/iam: npm `@cloud-copilot/iam-simulate`), with the
//! bucket's resource policy. Records what was called, what was denied, and
//! which granted actions were never used.

use super::stack::{TranslatedStack, repo_root};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

struct Pipe {
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

/// One call as the report shows it: the resource with object keys folded.
pub type CallKey = (String, String, String);

pub struct Iam {
    _child: Child,
    pipe: Mutex<Pipe>,
    cache: std::sync::Mutex<HashMap<(String, String, String), bool>>,
    pub calls: std::sync::Mutex<BTreeMap<CallKey, u64>>,
    pub denied: std::sync::Mutex<Vec<String>>,
    /// Role ARN → function name, and the actions each role grants.
    roles: BTreeMap<String, (String, BTreeSet<String>)>,
}

fn granted_actions(statements: &[Value]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in statements {
        if s["Effect"] != "Allow" {
            continue;
        }
        match &s["Action"] {
            Value::String(a) => {
                out.insert(a.clone());
            }
            Value::Array(a) => out.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string))),
            _ => {}
        }
    }
    out
}

/// `arn:aws:s3:::bucket/any/key` → `arn:aws:s3:::bucket/*` for the report.
fn folded(resource: &str) -> String {
    match resource.strip_prefix("arn:aws:s3:::") {
        Some(rest) if rest.contains('/') => {
            format!("arn:aws:s3:::{}/*", rest.split('/').next().unwrap_or(""))
        }
        _ => resource.to_string(),
    }
}

impl Iam {
    pub async fn start(stack: &TranslatedStack, bucket: &str, kms_key: Option<&str>) -> Self {
        let dir = repo_root().join("tests/lambda-lane/iam");
        assert!(
            dir.join("node_modules/@cloud-copilot/iam-simulate")
                .exists(),
            "the policy evaluator is missing: run ./scripts/test.sh (npm ci --prefix tests/lambda-lane/iam)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("evaluate.mjs"))
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the policy evaluator");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut roles = BTreeMap::new();
        let mut docs = serde_json::Map::new();
        for f in stack.functions.values() {
            docs.insert(f.role_arn(), Value::Array(f.statements.clone()));
            roles.insert(
                f.role_arn(),
                (f.name.clone(), granted_actions(&f.statements)),
            );
        }
        let mut policies = serde_json::Map::new();
        if let Some(p) = &stack.bucket_policy {
            policies.insert(format!("arn:aws:s3:::{bucket}"), p.clone());
        }
        if let Some(key) = kms_key {
            // A key created without a policy gets KMS's default key policy,
            // which lets the account's IAM policies grant its use.
            let account = key.split(':').nth(4).unwrap_or("");
            policies.insert(
                key.to_string(),
                json!({"Version": "2012-10-17", "Statement": [{
                    "Sid": "Enable IAM User Permissions", "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
                    "Action": "kms:*", "Resource": "*"}]}),
            );
        }
        let setup = json!({"roles": docs, "resourcePolicies": policies});
        stdin
            .write_all(format!("{setup}\n").as_bytes())
            .await
            .unwrap();
        let ready = stdout.next_line().await.unwrap().unwrap_or_default();
        assert!(ready.contains("ready"), "policy evaluator: {ready}");
        Self {
            _child: child,
            pipe: Mutex::new(Pipe {
                stdin,
                stdout,
                next_id: 1,
            }),
            cache: Default::default(),
            calls: Default::default(),
            denied: Default::default(),
            roles,
        }
    }

    /// Whether `role` may call `action` on `resource`; records the call.
    pub async fn allows(&self, role: &str, action: &str, resource: &str) -> bool {
        let function = self
            .roles
            .get(role)
            .map(|r| r.0.clone())
            .unwrap_or_else(|| role.to_string());
        *self
            .calls
            .lock()
            .unwrap()
            .entry((function.clone(), action.to_string(), folded(resource)))
            .or_default() += 1;
        let key = (role.to_string(), action.to_string(), resource.to_string());
        if let Some(&ok) = self.cache.lock().unwrap().get(&key) {
            return ok;
        }
        let answer = self.ask(role, action, resource).await;
        let ok = answer["result"] == "Allowed";
        if !ok {
            self.denied.lock().unwrap().push(format!(
                "{function}: {action} on {resource}: {} {}",
                answer["result"],
                answer["errors"].as_str().unwrap_or("")
            ));
        }
        self.cache.lock().unwrap().insert(key, ok);
        ok
    }

    async fn ask(&self, role: &str, action: &str, resource: &str) -> Value {
        let mut pipe = self.pipe.lock().await;
        let id = pipe.next_id;
        pipe.next_id += 1;
        let q = json!({"id": id, "role": role, "action": action, "resource": resource});
        pipe.stdin
            .write_all(format!("{q}\n").as_bytes())
            .await
            .unwrap();
        let line = pipe.stdout.next_line().await.unwrap().unwrap_or_default();
        serde_json::from_str(&line).unwrap_or(json!({"result": "Error", "errors": line}))
    }

    /// The IAM report: every (function, action, resource) called, the
    /// denials, and per function the granted actions no call needed.
    pub fn report(&self) -> String {
        let calls = self.calls.lock().unwrap();
        let mut out = String::from("IAM report (translated template.yaml, iam-simulate)\n");
        for ((f, a, r), n) in calls.iter() {
            out.push_str(&format!("  {f:<26} {a:<34} {r} ×{n}\n"));
        }
        for (f, granted) in self.roles.values() {
            let used: BTreeSet<&String> = calls
                .keys()
                .filter(|(cf, _, _)| cf == f)
                .map(|(_, a, _)| a)
                .collect();
            let unused: Vec<&String> = granted.iter().filter(|a| !used.contains(a)).collect();
            if !unused.is_empty() {
                out.push_str(&format!(
                    "  {f}: granted, not called in this run: {unused:?}\n"
                ));
            }
        }
        let denied = self.denied.lock().unwrap();
        out.push_str(&format!("  denied: {}\n", denied.len()));
        for d in denied.iter() {
            out.push_str(&format!("    {d}\n"));
        }
        out
    }
}
