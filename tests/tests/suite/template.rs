//! template.yaml and the workspace agree: every function in the template is a
//! binary crate under functions/ and vice versa, and every HTTP route in the
//! template resolves to a handler.

use bulk_export_core::api::route;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn values_of(template: &str, key: &str) -> Vec<String> {
    template
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix(key)
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn every_template_function_is_a_workspace_binary_and_vice_versa() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let in_template: BTreeSet<String> = values_of(&template, "Binary:").into_iter().collect();
    let in_workspace: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src/main.rs").exists())
        .map(|p| {
            let manifest = std::fs::read_to_string(p.join("Cargo.toml")).unwrap();
            let name = manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .unwrap();
            name.trim_matches('"').to_string()
        })
        .collect();
    assert_eq!(in_template, in_workspace);
    for f in [
        "Runtime: provided.al2023",
        "Handler: bootstrap",
        "BuildMethod: rust-cargolambda",
        "RecursiveLoop: Allow",
    ] {
        assert!(template.contains(f), "template sets {f}");
    }
}

#[test]
fn every_template_route_has_a_handler() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let paths = values_of(&template, "Path:");
    assert!(paths.len() >= 9, "{paths:?}");
    for path in paths {
        let concrete = path
            .replace("{id}", "example-group")
            .replace("{jobId}", "0123456789abcdef0123456789abcdef")
            .replace("{file}", "Patient-1.ndjson");
        assert!(route(&concrete).is_ok(), "route {path} has no handler");
    }
}
