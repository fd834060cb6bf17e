#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The Kubernetes manifests under `deploy/` against the agent they deploy: every
//! document parses and names itself, every image is pinned by digest (what the
//! `verify` signature policy needs), the Knative objects ask for what a
//! confidential service needs, and the DaemonSet runs a real `host-agent`
//! command whose configuration the agent's own parser accepts, with the host
//! paths it names mounted where it looks and probes on what it serves. Also
//! `host-agent knative queue-sidecar`, run as a binary. The broker's own
//! manifest (`kbs-replicas.yaml`) is parsed and its images checked here like
//! the others; `kbs/tests/deploy.rs` checks it against the broker.

use clap::Parser as _;
use host_agent::agent::config::{AgentConfig, KbsTarget, Listen};
use host_agent::cli::{Cli, Command};
use host_agent::knative_cmd::{
    DigestReference, CONFIG_DEPLOYMENT, KNATIVE_NAMESPACE, QUEUE_SIDECAR_KEY,
};
use serde::Deserialize;
use serde_yaml::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

const HEX: &str = "89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567";

/// One YAML document and the file it came from.
struct Doc {
    file: PathBuf,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under deploy/.
fn documents() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "no YAML under {}",
        deploy_dir().display()
    );
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{} document {i}: {e}", file.display()));
            assert!(
                !value.is_null(),
                "{} document {i} is empty (a stray '---'?)",
                file.display()
            );
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

/// Every `image` of every container list anywhere in `v`.
fn images(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let list_key = matches!(
                    k.as_str(),
                    Some("containers" | "initContainers" | "ephemeralContainers")
                );
                if let (true, Some(list)) = (list_key, child.as_sequence()) {
                    for c in list {
                        let image = c["image"]
                            .as_str()
                            .unwrap_or_else(|| panic!("a container without image: {c:?}"));
                        out.push(image.to_string());
                    }
                }
                images(child, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|c| images(c, out)),
        _ => {}
    }
}

#[test]
fn every_document_names_its_api_kind_and_name() {
    let docs = documents();
    for d in &docs {
        let at = d.file.display();
        assert!(
            d.value["apiVersion"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{at}: no apiVersion"
        );
        assert!(!d.kind().is_empty(), "{at}: no kind");
        assert!(!d.name().is_empty(), "{at}: no metadata.name");
        // Secrets are created from the operator's files, never checked in.
        assert_ne!(d.kind(), "Secret", "{at}: a Secret in the repository");
    }
    for (kind, name) in [
        ("Namespace", "host-agent"),
        ("ServiceAccount", "host-agent"),
        ("ConfigMap", "host-agent-config"),
        ("DaemonSet", "host-agent"),
        ("Service", "helloworld"),
        ("ConfigMap", "config-features"),
        // The broker's replicas; kbs/tests/deploy.rs checks them against the
        // broker's own command line.
        ("ServiceAccount", "kbs"),
        ("Deployment", "kbs"),
        ("Service", "kbs"),
        ("PodDisruptionBudget", "kbs"),
    ] {
        find(&docs, kind, name);
    }
}

#[test]
fn every_container_image_is_pinned_by_digest() {
    let docs = documents();
    let mut all = Vec::new();
    for d in &docs {
        let mut found = Vec::new();
        images(&d.value, &mut found);
        for image in found {
            let parsed = DigestReference::parse(&image)
                .unwrap_or_else(|e| panic!("{}: {e}", d.file.display()));
            assert_eq!(parsed.to_string(), image);
            all.push(image);
        }
    }
    // The agent's and the Knative service's, at least.
    assert!(all.len() >= 2, "{all:?}");
}

#[test]
fn knative_service_runs_in_the_sev_runtime_class() {
    let docs = documents();
    let svc = find(&docs, "Service", "helloworld");
    assert_eq!(
        svc.value["apiVersion"].as_str(),
        Some("serving.knative.dev/v1")
    );
    let class = svc.value["spec"]["template"]["spec"]["runtimeClassName"]
        .as_str()
        .unwrap();
    assert_eq!(class, "kata-qemu-sev");
    // The class the agent derives from Kata's SEV configuration file, and so
    // the one whose digests it registers.
    assert_eq!(
        kata_launch::runtime_class_from_file_name("configuration-qemu-sev.toml").as_deref(),
        Some(class)
    );
}

#[test]
fn config_features_enables_runtime_class_name() {
    let docs = documents();
    let cm = find(&docs, "ConfigMap", "config-features");
    assert_eq!(cm.value["apiVersion"].as_str(), Some("v1"));
    assert_eq!(cm.namespace(), Some(KNATIVE_NAMESPACE));
    assert_eq!(
        cm.value["data"]["kubernetes.podspec-runtimeclassname"].as_str(),
        Some("enabled")
    );
}

/// The DaemonSet's pod spec, its one container, and the agent configuration
/// it runs with (parsed by the agent's own parser).
struct AgentPod<'a> {
    pod: &'a Value,
    container: &'a Value,
    config: AgentConfig,
}

impl AgentPod<'_> {
    fn volume(&self, name: &str) -> &Value {
        self.pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The mount holding `path` (the longest mount path that contains it) and
    /// its volume.
    fn mount_of(&self, path: &Path) -> (&Value, &Value) {
        let mount = self.container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        (mount, self.volume(mount["name"].as_str().unwrap()))
    }

    /// Checks that `path` is on a host path mounted at the same place, and
    /// whether read-only.
    fn assert_host_path(&self, path: &Path, read_only: bool) {
        let (mount, volume) = self.mount_of(path);
        let host = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{} is not on a hostPath volume", path.display()));
        assert_eq!(
            mount["mountPath"].as_str(),
            Some(host),
            "{}: host paths must keep their place",
            path.display()
        );
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{}: readOnly",
            path.display()
        );
    }

    /// The projected or plain source (`configMap` or `secret`) that puts the
    /// file at `path` in the pod, with the key it comes from.
    fn file_source(&self, path: &Path) -> (&'static str, String, String) {
        let (mount, volume) = self.mount_of(path);
        let rel = path
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let sources: Vec<&Value> = match volume["projected"]["sources"].as_sequence() {
            Some(s) => s.iter().collect(),
            None => vec![volume],
        };
        for s in sources {
            for (kind, name_key) in [("configMap", "name"), ("secret", "secretName")] {
                let src = &s[kind];
                if src.is_null() {
                    continue;
                }
                // Projected secrets say `name`, secret volumes `secretName`.
                let name = src[name_key].as_str().or(src["name"].as_str()).unwrap();
                let key = match src["items"].as_sequence() {
                    Some(items) => items
                        .iter()
                        .find(|i| i["path"].as_str() == Some(rel.as_str()))
                        .map(|i| i["key"].as_str().unwrap().to_string()),
                    None => Some(rel.clone()),
                };
                if let Some(key) = key {
                    return (
                        if kind == "configMap" {
                            "ConfigMap"
                        } else {
                            "Secret"
                        },
                        name.to_string(),
                        key,
                    );
                }
            }
        }
        panic!("no source provides {}", path.display());
    }
}

fn agent_pod(docs: &[Doc]) -> AgentPod<'_> {
    let ds = find(docs, "DaemonSet", "host-agent");
    let pod = &ds.value["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // A real `host-agent run` command line.
    let argv: Vec<String> = container["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(container["args"].as_sequence().into_iter().flatten())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        Path::new(&argv[0]).file_name().and_then(|n| n.to_str()),
        Some("host-agent"),
        "{argv:?}"
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("{argv:?} is not `host-agent run`");
    };
    let config_path = run.config.expect("the DaemonSet names its configuration");

    // Find the file in the pod, then the ConfigMap it comes from.
    let partial = AgentPod {
        pod,
        container,
        config: AgentConfig::default(),
    };
    let (kind, name, key) = partial.file_source(&config_path);
    assert_eq!(kind, "ConfigMap");
    let cm = find(docs, "ConfigMap", &name);
    assert_eq!(cm.namespace(), ds.namespace());
    let text = cm.value["data"][key.as_str()].as_str().unwrap();
    let config = AgentConfig::parse(&config_path, text).unwrap_or_else(|e| panic!("{e}"));
    AgentPod {
        pod,
        container,
        config,
    }
}

#[test]
fn daemonset_mounts_what_its_configuration_names() {
    let docs = documents();
    let a = agent_pod(&docs);

    // Kata's configurations, and the artefacts the CoCo operator installs
    // beside them, read-only at their host paths.
    for pattern in &a.config.kata_configs {
        let dir = Path::new(pattern).parent().unwrap();
        a.assert_host_path(dir, true);
    }
    // The state directory: writable, for `provision` run with kubectl exec.
    a.assert_host_path(&a.config.state_dir, false);

    // Drift: the host's processes.
    assert_eq!(a.pod["hostPID"].as_bool(), Some(true));
    assert!(a.config.drift.enabled);
    assert_eq!(a.config.drift.proc_root, Path::new("/proc"));

    // The broker over TCP and TLS. The token is the node's own, read-only
    // from the host (a Secret would give every node the same one); the CA
    // that verifies the broker comes from a ConfigMap made from the broker's
    // CA certificate (not checked in).
    let KbsTarget::Tcp {
        endpoint,
        token_file,
        ca_file,
    } = a.config.kbs_target()
    else {
        panic!("the DaemonSet reaches the broker over TCP");
    };
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    a.assert_host_path(token_file.parent().unwrap(), true);
    let (_, token_volume) = a.mount_of(&token_file);
    assert_eq!(
        token_volume["hostPath"]["type"].as_str(),
        Some("Directory"),
        "the pod waits for the node's token rather than making an empty directory"
    );
    assert!(docs.iter().all(|d| d.kind() != "Secret"));
    let ca_file = ca_file.expect("an https endpoint names its CA file");
    let (kind, ca_map, _) = a.file_source(&ca_file);
    assert_eq!(kind, "ConfigMap");
    assert!(docs
        .iter()
        .all(|d| d.name() != ca_map || d.kind() != "ConfigMap"));
    // The configuration itself stays read-only for the agent.
    let (config_mount, _) = a.mount_of(&ca_file);
    assert_eq!(config_mount["readOnly"].as_bool(), Some(true));
}

#[test]
fn daemonset_runs_without_capabilities_or_writable_root() {
    let docs = documents();
    let a = agent_pod(&docs);
    let sc = &a.container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert!(sc["capabilities"]["add"].is_null());
    let ds = find(&docs, "DaemonSet", "host-agent");
    let ns = ds.namespace().unwrap();
    find(&docs, "Namespace", ns);
    let sa = find(
        &docs,
        "ServiceAccount",
        a.pod["serviceAccountName"].as_str().unwrap(),
    );
    assert_eq!(sa.namespace(), Some(ns));
    assert_eq!(a.pod["automountServiceAccountToken"].as_bool(), Some(false));
}

#[test]
fn daemonset_probes_reach_the_status_listener() {
    let docs = documents();
    let a = agent_pod(&docs);
    let Listen::At(addr) = a.config.listen().unwrap() else {
        panic!("the probes need the status listener");
    };
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &a.container[probe]["httpGet"];
        assert_eq!(
            get["port"].as_u64(),
            Some(u64::from(addr.port())),
            "{probe}"
        );
        if addr.ip().is_loopback() {
            // The kubelet reaches the host's loopback only from the host's
            // network namespace.
            assert_eq!(a.pod["hostNetwork"].as_bool(), Some(true), "{probe}");
            assert_eq!(
                get["host"].as_str(),
                Some(addr.ip().to_string().as_str()),
                "{probe}"
            );
        }
    }
    assert_eq!(
        a.container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let declared = a.container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"].as_u64() == Some(u64::from(addr.port())));
    assert!(declared, "the status port is declared");
}

/// Starts `host-agent run` with a broker that is not there and returns it and
/// its status address.
fn start_agent_without_broker(dir: &Path) -> (std::process::Child, SocketAddr) {
    let config = dir.join("config.toml");
    std::fs::create_dir_all(dir.join("kata")).unwrap();
    std::fs::write(
        &config,
        format!(
            "kata_configs = [\"{}/configuration-*.toml\"]\nlisten = \"127.0.0.1:0\"\n\
             state_dir = \"{}\"\n[kbs]\nadmin_socket = \"{}\"\n",
            dir.join("kata").display(),
            dir.join("state").display(),
            dir.join("no-broker.sock").display()
        ),
    )
    .unwrap();
    let mut child = Process::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("host-agent: listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr.parse().unwrap()),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("host-agent run did not start listening");
        }
    }
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status_line = response.lines().next().unwrap_or_default();
    status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: {status_line:?}"))
}

#[test]
fn probe_paths_mean_what_the_daemonset_expects() {
    let docs = documents();
    let a = agent_pod(&docs);
    let readiness = a.container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let liveness = a.container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_agent_without_broker(dir.path());
    // Before the first registration the pod is not ready, but alive: a broker
    // that is down must not get the agent restarted.
    let ready = http_status(addr, readiness);
    let alive = http_status(addr, liveness);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready, 503, "GET {readiness} without a broker");
    assert_eq!(alive, 200, "GET {liveness} without a broker");
}

fn queue_sidecar(image: &str) -> std::process::Output {
    Process::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["knative", "queue-sidecar", "--image", image])
        .output()
        .unwrap()
}

#[test]
fn queue_sidecar_prints_config_deployment() {
    let image = format!("registry.example:5000/knative/queue@sha256:{HEX}");
    let out = queue_sidecar(&image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(v["apiVersion"].as_str(), Some("v1"));
    assert_eq!(v["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(v["metadata"]["name"].as_str(), Some(CONFIG_DEPLOYMENT));
    assert_eq!(v["metadata"]["namespace"].as_str(), Some(KNATIVE_NAMESPACE));
    let data = v["data"].as_mapping().unwrap();
    assert_eq!(data.len(), 1, "{text}");
    let printed = v["data"][QUEUE_SIDECAR_KEY].as_str().unwrap();
    assert_eq!(printed, image);
    let back = DigestReference::parse(printed).unwrap();
    assert_eq!(back.repository(), "registry.example:5000/knative/queue");
    assert_eq!(back.digest(), format!("sha256:{HEX}"));
}

#[test]
fn queue_sidecar_refuses_what_is_not_pinned_by_digest() {
    for (image, says) in [
        (
            "registry.example/knative/queue:v1.12",
            "not pinned by digest",
        ),
        ("registry.example/knative/queue", "not pinned by digest"),
        (
            "gcr.io/knative-releases/knative.dev/serving/cmd/queue:latest",
            "not pinned by digest",
        ),
        (
            &format!("registry.example/knative/queue@sha256:{}", &HEX[1..]),
            "63 hexadecimal digits",
        ),
        (
            &format!(
                "registry.example/knative/queue@sha256:{}",
                HEX.to_uppercase()
            ),
            "lowercase hexadecimal",
        ),
        (
            &format!("registry.example/knative/queue@sha512:{HEX}{HEX}"),
            "only sha256",
        ),
        (
            &format!("registry.example/knative/queue:v1@sha256:{HEX}"),
            "as well as a digest",
        ),
        (&format!("knative/queue@sha256:{HEX}"), "registry"),
        (
            &format!("registry.example/Knative/queue@sha256:{HEX}"),
            "lowercase",
        ),
    ] {
        let out = queue_sidecar(image);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{image} accepted");
        assert!(out.stdout.is_empty(), "{image}: printed something");
        assert!(stderr.contains("--image"), "{image}: {stderr}");
        assert!(stderr.contains(says), "{image}: {stderr}");
    }
}
