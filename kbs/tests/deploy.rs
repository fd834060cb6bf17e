//! `deploy/kbs-replicas.yaml` against the broker it deploys: the Deployment
//! runs a `kbs` command line the broker's own parser accepts; every file that
//! command line names is the broker's own copy of a Secret's key, made by the
//! init container in the only form the broker accepts key and token files in
//! from a non-root user; the data directory and the admin socket are on
//! scratch volumes under a read-only root; the listeners are declared and
//! behind the Service; the probes ask the gRPC health service what it
//! answers; and rollouts and drains keep a replica serving. The parse of
//! every file under `deploy/` and the pinning of images by digest are
//! `host-agent/tests/deploy.rs`'s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use clap::Parser as _;
use kbs::cli::{Cli, OrNone};
use kbs::grpc::KeyBroker;
use kbs_proto::keybroker::key_broker_service_server::KeyBrokerServiceServer;
use serde::Deserialize;
use serde_yaml::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tonic::server::NamedService;

/// The files the broker reads, by option, and the Secret and key each one
/// must be a copy of.
const FILES: [(&str, &str, &str); 6] = [
    ("at-rest-key-file", "kbs-at-rest-key", "key"),
    ("database-password-file", "kbs-database", "password"),
    ("database-ca", "kbs-database", "ca.crt"),
    ("admin-token-file", "kbs-admin-token", "token"),
    ("admin-tls-cert", "kbs-admin-tls", "tls.crt"),
    ("admin-tls-key", "kbs-admin-tls", "tls.key"),
];

/// The documents of the manifest.
fn documents() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kbs-replicas.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The one document of `kind` named kbs.
fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some("kbs")
        })
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} kbs");
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The Deployment's pod, its two containers and the broker's command line.
struct Pod<'a> {
    spec: &'a Value,
    kbs: &'a Value,
    init: &'a Value,
    argv: Vec<String>,
}

impl<'a> Pod<'a> {
    fn of(docs: &'a [Value]) -> Pod<'a> {
        let spec = &find(docs, "Deployment")["spec"]["template"]["spec"];
        let one = |list: &'a Value, name: &str| -> &'a Value {
            let all = list.as_sequence().unwrap();
            assert_eq!(all.len(), 1, "{name}: one container");
            assert_eq!(all[0]["name"].as_str(), Some(name));
            &all[0]
        };
        let kbs = one(&spec["containers"], "kbs");
        let init = one(&spec["initContainers"], "secret-files");
        let mut argv = strings(&kbs["command"]);
        argv.extend(strings(&kbs["args"]));
        Pod {
            spec,
            kbs,
            init,
            argv,
        }
    }

    /// The value of `--name`, given as `--name=VALUE` or `--name VALUE`.
    fn flag(&self, name: &str) -> Option<&str> {
        let long = format!("--{name}");
        let with = format!("--{name}=");
        let mut args = self.argv.iter();
        while let Some(a) = args.next() {
            if *a == long {
                return args.next().map(String::as_str);
            }
            if let Some(value) = a.strip_prefix(&with) {
                return Some(value);
            }
        }
        None
    }

    fn volume(&self, name: &str) -> &'a Value {
        self.spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The mount of `container` holding `path` (the longest mount path that
    /// contains it) and its volume.
    fn mount_of(&self, container: &'a Value, path: &Path) -> (&'a Value, &'a Value) {
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        (mount, self.volume(mount["name"].as_str().unwrap()))
    }

    /// Where `container` mounts the volume `name`, if it does.
    fn mount_path(container: &Value, name: &str) -> Option<PathBuf> {
        container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .map(|m| PathBuf::from(m["mountPath"].as_str().unwrap()))
    }

    /// The container port named `name`.
    fn port(&self, name: &str) -> u16 {
        let port = self.kbs["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container port {name}"));
        port["containerPort"].as_u64().unwrap() as u16
    }

    fn containers(&self) -> [&'a Value; 2] {
        [self.init, self.kbs]
    }
}

/// The init container's `install -m MODE -t DIR SOURCE...`.
struct Install {
    mode: u32,
    dir: PathBuf,
    sources: Vec<PathBuf>,
}

fn install(init: &Value) -> Install {
    let mut argv = strings(&init["command"]);
    argv.extend(strings(&init["args"]));
    assert_eq!(
        Path::new(&argv[0]).file_name().and_then(|n| n.to_str()),
        Some("install"),
        "{argv:?}"
    );
    let (mut mode, mut dir, mut sources) = (None, None, Vec::new());
    let mut args = argv[1..].iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-m" => mode = Some(u32::from_str_radix(args.next().unwrap(), 8).unwrap()),
            "-t" => dir = Some(PathBuf::from(args.next().unwrap())),
            other if other.starts_with('-') => panic!("install option {other} not expected"),
            source => sources.push(PathBuf::from(source)),
        }
    }
    Install {
        mode: mode.expect("install -m MODE"),
        dir: dir.expect("install -t DIR"),
        sources,
    }
}

/// The Secret and key a projected volume puts at `rel` below its mount.
fn projected_secret(volume: &Value, rel: &str) -> (String, String) {
    for source in volume["projected"]["sources"].as_sequence().unwrap() {
        let secret = &source["secret"];
        assert!(!secret.is_null(), "only Secrets are projected: {source:?}");
        for item in secret["items"].as_sequence().unwrap() {
            if item["path"].as_str() == Some(rel) {
                return (
                    secret["name"].as_str().unwrap().to_string(),
                    item["key"].as_str().unwrap().to_string(),
                );
            }
        }
    }
    panic!("no Secret is projected at {rel}");
}

#[test]
fn the_deployment_runs_a_command_line_the_kbs_accepts() {
    let docs = documents();
    let pod = Pod::of(&docs);
    assert_eq!(
        Path::new(&pod.argv[0]).file_name().and_then(|n| n.to_str()),
        Some("kbs"),
        "{:?}",
        pod.argv
    );
    let cli = Cli::try_parse_from(&pod.argv).unwrap_or_else(|e| panic!("{:?}: {e}", pod.argv));
    assert!(cli.command.is_none(), "the broker serves: {:?}", pod.argv);
    for d in &docs {
        assert!(
            d["metadata"]["namespace"].is_null(),
            "the manifest names no namespace"
        );
    }
}

#[test]
fn the_database_url_comes_from_its_secret_and_the_password_from_a_file() {
    let docs = documents();
    let pod = Pod::of(&docs);
    // Not on the command line: from the Secret, through the environment.
    assert!(pod.flag("database").is_none(), "{:?}", pod.argv);
    let env = pod.kbs["env"].as_sequence().unwrap();
    let url = env
        .iter()
        .find(|e| e["name"].as_str() == Some("KBS_DATABASE"))
        .expect("KBS_DATABASE is set");
    let from = &url["valueFrom"]["secretKeyRef"];
    assert_eq!(from["name"].as_str(), Some("kbs-database"));
    assert_eq!(from["key"].as_str(), Some("url"));
    assert!(url["value"].is_null());
    // The password is a file (FILES), never a variable a child process or a
    // crash dump would inherit.
    assert!(env
        .iter()
        .all(|e| e["name"].as_str() != Some("KBS_DATABASE_PASSWORD")));
    assert!(pod.flag("database-password-file").is_some());
    // Service links would add KBS_* variables of the Service named kbs.
    assert_eq!(pod.spec["enableServiceLinks"].as_bool(), Some(false));
}

#[test]
fn every_file_the_kbs_reads_is_its_own_copy_of_a_secret_key() {
    let docs = documents();
    let pod = Pod::of(&docs);
    let install = install(pod.init);
    assert_eq!(install.mode, 0o400);
    assert_eq!(install.sources.len(), FILES.len(), "{:?}", install.sources);
    // The copies belong to the uid the broker runs as: both containers run
    // as the pod's user.
    let uid = pod.spec["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_ne!(uid, 0);
    for c in pod.containers() {
        let own = &c["securityContext"]["runAsUser"];
        assert!(own.is_null() || own.as_u64() == Some(uid), "{c:?}");
    }
    for (option, secret, key) in FILES {
        let path = PathBuf::from(
            pod.flag(option)
                .unwrap_or_else(|| panic!("--{option} is given")),
        );
        // In the broker's container: a memory-backed scratch volume, read-only.
        let (mount, volume) = pod.mount_of(pod.kbs, &path);
        assert_eq!(
            volume["emptyDir"]["medium"].as_str(),
            Some("Memory"),
            "--{option}"
        );
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "--{option}");
        assert_eq!(
            path.parent(),
            Some(Path::new(mount["mountPath"].as_str().unwrap())),
            "--{option}"
        );
        // Filled by the init container, which mounts the same volume at the
        // directory it installs into...
        let name = volume["name"].as_str().unwrap();
        assert_eq!(
            Pod::mount_path(pod.init, name).as_deref(),
            Some(install.dir.as_path()),
            "--{option}"
        );
        // ...from the Secret's key, under the same file name.
        let source = install
            .sources
            .iter()
            .find(|s| s.file_name() == path.file_name())
            .unwrap_or_else(|| panic!("--{option}: nothing installs {}", path.display()));
        let (source_mount, source_volume) = pod.mount_of(pod.init, source);
        let rel = source
            .strip_prefix(source_mount["mountPath"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            projected_secret(source_volume, rel.to_str().unwrap()),
            (secret.to_string(), key.to_string()),
            "--{option}"
        );
        // The broker's container never sees the Secrets themselves.
        let raw = source_volume["name"].as_str().unwrap();
        assert!(Pod::mount_path(pod.kbs, raw).is_none(), "{raw}");
    }
}

#[test]
fn the_mode_the_copies_get_is_the_one_the_kbs_accepts() {
    let docs = documents();
    let mode = install(Pod::of(&docs).init).mode;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    let key = dir.path().join("at-rest.key");
    std::fs::write(&token, "t".repeat(kbs::admin::MIN_TOKEN + 8)).unwrap();
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // As the init container leaves them: accepted.
    set(&token, mode);
    set(&key, mode);
    kbs::admin::AdminToken::load(&token).unwrap();
    kbs::store::AtRestKey::load(&key).unwrap();
    // As a Secret volume with fsGroup would give them (group-readable):
    // refused, which is why the Secrets are copied.
    set(&token, 0o440);
    set(&key, 0o440);
    assert!(kbs::admin::AdminToken::load(&token).is_err());
    assert!(kbs::store::AtRestKey::load(&key).is_err());
    assert!(
        find(&docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["fsGroup"]
            .is_null()
    );
}

#[test]
fn the_data_directory_and_admin_socket_are_on_scratch_volumes() {
    let docs = documents();
    let pod = Pod::of(&docs);
    let cli = Cli::try_parse_from(&pod.argv).unwrap();
    for c in pod.containers() {
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
    }

    // The data directory: below a writable scratch volume's mount point,
    // which (like an emptyDir's: 0777) the broker refuses; the directory it
    // creates there itself is accepted.
    let data_dir = &cli.serve.storage.data_dir;
    let (mount, volume) = pod.mount_of(pod.kbs, data_dir);
    assert!(volume["emptyDir"].is_mapping(), "{}", data_dir.display());
    assert_ne!(mount["readOnly"].as_bool(), Some(true));
    let rel = data_dir
        .strip_prefix(mount["mountPath"].as_str().unwrap())
        .unwrap();
    assert!(
        !rel.as_os_str().is_empty(),
        "the data directory is below the mount point"
    );
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let me = kbs::admin::own_uid();
    assert!(kbs::data_dir::prepare(scratch.path(), me).is_err());
    kbs::data_dir::prepare(&scratch.path().join(rel), me).unwrap();

    // The admin socket, for kubectl exec ... kbs admin.
    let OrNone(Some(socket)) = &cli.serve.admin_socket else {
        panic!("the admin socket is on");
    };
    let (mount, volume) = pod.mount_of(pod.kbs, socket.parent().unwrap());
    assert!(volume["emptyDir"].is_mapping(), "{}", socket.display());
    assert_ne!(mount["readOnly"].as_bool(), Some(true));
}

#[test]
fn the_listeners_are_declared_and_behind_the_service() {
    let docs = documents();
    let pod = Pod::of(&docs);
    let cli = Cli::try_parse_from(&pod.argv).unwrap();
    let service = find(&docs, "Service");
    let labels = &find(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects the pods");
    }
    let behind = |name: &str, port: u16| {
        let found = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["targetPort"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the Service has no port for {name}"));
        assert_eq!(found["port"].as_u64(), Some(u64::from(port)), "{name}");
    };

    // The keybroker port the shims and guests are told about.
    let listen = cli.serve.listen;
    assert!(listen.ip().is_unspecified(), "{listen}");
    assert_eq!(pod.port("keybroker"), listen.port());
    behind("keybroker", 44444);

    // The admin API: beyond loopback, so over TLS.
    let admin = cli
        .serve
        .admin_listen
        .expect("the TCP admin listener is on");
    assert!(admin.ip().is_unspecified(), "{admin}");
    assert!(cli.serve.admin_tls_cert.is_some() && cli.serve.admin_tls_key.is_some());
    assert!(cli.serve.admin_token_file.is_some());
    assert_eq!(pod.port("admin"), admin.port());
    behind("admin", admin.port());

    // Metrics, from outside the pod.
    let OrNone(Some(metrics)) = cli.serve.metrics_listen else {
        panic!("metrics are on");
    };
    assert!(metrics.ip().is_unspecified(), "{metrics}");
    assert_eq!(pod.port("metrics"), metrics.port());
    behind("metrics", metrics.port());
}

#[test]
fn the_probes_ask_grpc_health_on_the_keybroker_port() {
    let docs = documents();
    let pod = Pod::of(&docs);
    let cli = Cli::try_parse_from(&pod.argv).unwrap();
    let port = u64::from(cli.serve.listen.port());
    // Ready while the keybroker service is SERVING, which it is not while
    // the database cannot be written.
    let ready = &pod.kbs["readinessProbe"]["grpc"];
    assert_eq!(ready["port"].as_u64(), Some(port));
    assert_eq!(
        ready["service"].as_str(),
        Some(<KeyBrokerServiceServer<KeyBroker> as NamedService>::NAME)
    );
    // Started and alive by the server's overall health, which a database
    // outage does not change: replicas are not restarted for it.
    for probe in ["startupProbe", "livenessProbe"] {
        let grpc = &pod.kbs[probe]["grpc"];
        assert_eq!(grpc["port"].as_u64(), Some(port), "{probe}");
        assert!(
            grpc["service"].is_null() || grpc["service"].as_str() == Some(""),
            "{probe}"
        );
    }
}

#[test]
fn replicas_outlast_rollouts_and_drains_without_privileges() {
    let docs = documents();
    let deployment = find(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(spec["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0)
    );
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxSurge"].as_u64(),
        Some(1)
    );

    let pdb = find(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    assert_eq!(pdb["spec"]["selector"], spec["selector"]);

    // Spread over nodes where it can be, on the pods' own labels.
    let labels = &spec["template"]["metadata"]["labels"];
    let term = &spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
    for (k, v) in term["labelSelector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[k], v);
    }

    let pod = Pod::of(&docs);
    let sc = &pod.spec["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        pod.spec["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    let account = find(&docs, "ServiceAccount");
    assert_eq!(pod.spec["serviceAccountName"].as_str(), Some("kbs"));
    assert_eq!(
        account["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    for c in pod.containers() {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        assert!(sc["capabilities"]["add"].is_null(), "{name}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
        assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
    }
}
