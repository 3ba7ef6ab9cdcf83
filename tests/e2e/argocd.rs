//! The Argo CD health check shipped in `config/argocd/health.lua`, run under Lua 5.1 (the dialect
//! of Argo CD's gopher-lua) against every case of `config/argocd/health_test.yaml`, in the same
//! format Argo CD's own `resource_customizations` tests use. `kstatus.rs` also runs it on live
//! objects, so the recorded cases and the real controller cannot drift apart.

use std::path::{Path, PathBuf};

use mlua::{Lua, LuaSerdeExt, SerializeOptions, Table};
use serde::Deserialize;

/// What Argo CD would show for an object: (health status, message).
pub fn health(obj: &serde_json::Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua
        .to_value_with(obj, options)
        .expect("object converts to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let script = std::fs::read_to_string(argocd_dir().join("health.lua")).expect("health.lua");
    let hs: Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .expect("health.lua runs and returns a table");
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: Option<String> = hs.get("message").expect("hs.message is a string or nil");
    (status, message.unwrap_or_default())
}

fn argocd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/argocd")
}

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Deserialize)]
struct HealthStatus {
    status: String,
    #[serde(default)]
    message: String,
}

fn load_tests() -> Vec<HealthTest> {
    let text = std::fs::read_to_string(argocd_dir().join("health_test.yaml"))
        .expect("health_test.yaml readable");
    serde_norway::from_str::<HealthTests>(&text)
        .expect("health_test.yaml parses")
        .tests
}

#[test]
fn every_recorded_case_gets_the_expected_health() {
    let tests = load_tests();
    assert!(!tests.is_empty());
    let mut failures = Vec::new();
    for t in &tests {
        let text = std::fs::read_to_string(argocd_dir().join(&t.input_path))
            .unwrap_or_else(|e| panic!("{}: {e}", t.input_path));
        let obj: serde_json::Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} parses: {e}", t.input_path));
        let (status, message) = health(&obj);
        if status != t.health_status.status || message != t.health_status.message {
            failures.push(format!(
                "{}: got {status:?} {message:?}, want {:?} {:?}",
                t.input_path, t.health_status.status, t.health_status.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_phase_is_covered_and_every_testdata_file_is_used() {
    let tests = load_tests();
    for want in ["Healthy", "Progressing", "Degraded"] {
        assert!(
            tests.iter().any(|t| t.health_status.status == want),
            "no case expects {want}"
        );
    }
    let used: Vec<&str> = tests.iter().map(|t| t.input_path.as_str()).collect();
    for entry in std::fs::read_dir(argocd_dir().join("testdata")).expect("testdata dir") {
        let name = entry.expect("dir entry").file_name();
        let path = format!("testdata/{}", name.to_string_lossy());
        assert!(
            used.contains(&path.as_str()),
            "{path} is not referenced by health_test.yaml"
        );
    }
}
