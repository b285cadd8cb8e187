//! The test stack as CloudFormation would create it: tests/lambda-lane/stack.py
//! expands template.yaml with aws-sam-translator and resolves its intrinsic
//! functions against the lane's names; this reads its answer.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

/// Names the lane gives the stack's resources, and the template parameters.
#[derive(serde::Serialize)]
pub struct StackNames {
    pub stack: String,
    pub region: &'static str,
    pub account: &'static str,
    pub table: String,
    pub bucket: String,
    #[serde(rename = "queueUrl")]
    pub queue_url: String,
    pub parameters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub method: String,
    pub path: String,
    pub auth: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Schedule {
    pub expression: String,
    pub state: String,
    pub input: Option<String>,
}

/// One function of the translated template.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    pub binary: String,
    pub name: String,
    pub arn: String,
    pub timeout_seconds: u64,
    pub memory_mb: u64,
    pub environment: BTreeMap<String, Value>,
    /// The statements of its execution role's inline policies.
    pub statements: Vec<Value>,
    pub event_invoke_config: Value,
    pub dead_letter_target: Option<String>,
    pub routes: Vec<Route>,
    pub schedules: Vec<Schedule>,
}

impl FunctionSpec {
    /// The role the function runs as (the principal of its AWS calls).
    pub fn role_arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:role/{}-role", self.name)
    }

    /// Environment values as Lambda passes them (strings).
    pub fn env(&self) -> Vec<(String, String)> {
        self.environment
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    pub fn max_retries(&self) -> u32 {
        self.event_invoke_config["MaximumRetryAttempts"]
            .as_u64()
            .unwrap_or(2) as u32
    }

    pub fn max_event_age_secs(&self) -> u64 {
        self.event_invoke_config["MaximumEventAgeInSeconds"]
            .as_u64()
            .unwrap_or(21_600)
    }

    pub fn on_failure_destination(&self) -> Option<String> {
        self.event_invoke_config["DestinationConfig"]["OnFailure"]["Destination"]
            .as_str()
            .map(str::to_string)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranslatedStack {
    /// By logical id.
    pub functions: BTreeMap<String, FunctionSpec>,
    pub parameters: BTreeMap<String, Value>,
    pub bucket_policy: Option<Value>,
}

impl TranslatedStack {
    pub fn parameter(&self, name: &str) -> String {
        match &self.parameters[name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the translator over template.yaml.
pub fn translate(names: &StackNames) -> TranslatedStack {
    let root = repo_root();
    let python = root.join(".venv-test/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/test.sh, which installs aws-sam-translator there",
        python.display()
    );
    let names_file = std::env::temp_dir().join(format!("{}-names.json", names.stack));
    std::fs::write(&names_file, serde_json::to_vec(names).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(root.join("tests/lambda-lane/stack.py"))
        .arg(root.join("template.yaml"))
        .arg(&names_file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&names_file);
    assert!(
        out.status.success(),
        "stack.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
