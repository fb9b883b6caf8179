//! deploy/kubernetes/ is valid and says what the rest of the repository says: every
//! manifest passes `kubernetes-validate --strict` against the Kubernetes schemas it
//! ships, run without a network (xtask/provision.sh installs it; a missing validator
//! fails the test); the PodMonitor, a Prometheus Operator kind with no schema there, is
//! checked against the DaemonSet it scrapes; the DaemonSet grants exactly the
//! capabilities of systemd/agentcgd.service, probes the health endpoints on the
//! metrics port it listens on, and mounts the node paths agentcgd needs; the ConfigMap
//! carries policies/default.toml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Kinds the validator has no schema for, checked by hand below.
const NO_SCHEMA: [&str; 1] = ["PodMonitor"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// `kubernetes-validate --strict FILES` in a network namespace of its own (no network:
/// the schemas must come with the package).
fn validate(files: &[PathBuf]) -> Output {
    Command::new("unshare")
        .args(["--net", "kubernetes-validate", "--strict"])
        .args(files)
        .output()
        .expect("unshare (util-linux)")
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Every YAML document of `files`, as JSON (PyYAML comes with kubernetes-validate).
fn documents(files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json\n\
             print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))",
        ])
        .args(files)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", said(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn every_manifest_validates_offline_against_the_kubernetes_schemas() {
    let files = manifests();
    let out = validate(&files);
    let text = said(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate (xtask/provision.sh build installs it):\n{text}"
    );
    let docs = documents(&files);
    for doc in &docs {
        let kind = doc["kind"].as_str().expect("kind");
        let name = doc["metadata"]["name"].as_str().expect("name");
        let resource = format!("{}/{name}", kind.to_lowercase());
        if NO_SCHEMA.contains(&kind) {
            assert!(
                text.contains(&format!("Couldn't find schema for kind {kind}")),
                "{text}"
            );
        } else {
            assert!(
                text.contains(&format!("passed for resource {resource}")),
                "{resource}:\n{text}"
            );
        }
    }
    // The validator does reject: one unknown field in the DaemonSet.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("daemonset.yaml");
    let ds = std::fs::read_to_string(deploy().join("daemonset.yaml")).expect("read");
    std::fs::write(
        &bad,
        ds.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"),
    )
    .expect("write");
    let out = validate(&[bad]);
    assert!(
        !out.status.success() && said(&out).contains("hostPIDs"),
        "{}",
        said(&out)
    );
}

#[test]
fn the_daemonset_matches_the_unit_the_metrics_and_the_podmonitor() {
    let docs = documents(&manifests());
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerate every taint: {}",
        pod["tolerations"]
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("add")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("cap")))
        .collect();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/agentcgd.service"),
    )
    .expect("unit");
    let granted: BTreeSet<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        added, granted,
        "the pod and the unit grant different capabilities"
    );

    // The node paths, from the host.
    let host: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for path in [
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/btf",
        "/run/agentcg",
        "/var/lib/agentcg",
    ] {
        assert!(
            host.contains(path),
            "{path} not mounted from the node: {host:?}"
        );
    }

    // Probes and scrapes go to the port agentcgd listens on.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-listen="))
        .expect("--metrics-listen");
    let port = &c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("metrics port");
    assert_eq!(listen, format!("0.0.0.0:{}", port["containerPort"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        port["containerPort"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let pm = kind(&docs, "PodMonitor");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&labels[k], v, "the PodMonitor selects {k}={v}");
    }
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");

    // The policy: from the ConfigMap the DaemonSet mounts, the repository's default.
    let cm = kind(&docs, "ConfigMap");
    let policy_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "policy")
        .expect("policy volume");
    assert_eq!(policy_volume["configMap"]["name"], cm["metadata"]["name"]);
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml"),
    )
    .expect("default");
    assert_eq!(
        cm["data"]["policy.toml"],
        default.as_str(),
        "the ConfigMap's policy is not policies/default.toml"
    );
    assert!(
        args.contains(&"--policy=/etc/agentcg/policy.toml"),
        "{args:?}"
    );
}
