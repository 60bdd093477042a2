//! The Dockerfile and the Kubernetes manifests, checked against the binary
//! they run: every flag and variable they set must be one `rendezvous serve
//! --help` lists, the ports and probes must be the ones the server listens
//! and answers on, and the grace periods must be ordered so that shutdown
//! is never cut short. Renaming a flag fails here, not in a cluster.
//!
//! (hadolint and the Kubernetes schemas check the files' own syntax:
//! `scripts/check-deploy.sh`.)

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

/// What a subcommand's `--help` offers: its long flags and their variables.
#[derive(Debug)]
struct Help {
    flags: BTreeSet<String>,
    variables: BTreeSet<String>,
}

impl Help {
    fn of(subcommand: &str) -> Self {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rendezvous"))
            .args([subcommand, "--help"])
            // Values from this environment would show up in the help.
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let mut help = Self {
            flags: BTreeSet::new(),
            variables: BTreeSet::new(),
        };
        for line in text.lines() {
            let line = line.trim_start();
            let options = line.strip_prefix("-h, ").unwrap_or(line);
            if let Some(flag) = options.strip_prefix("--") {
                let end = flag.find([' ', '=', '<']).unwrap_or(flag.len());
                help.flags.insert(format!("--{}", &flag[..end]));
            }
            // On a line of its own in long help, at the end in short help.
            for (at, _) in line.match_indices("[env: ") {
                let env = &line[at + "[env: ".len()..];
                let end = env.find(['=', ']']).unwrap();
                help.variables.insert(env[..end].to_owned());
            }
        }
        assert!(help.flags.len() > 3, "parsed nothing from:\n{text}");
        help
    }

    fn assert_flag(&self, flag: &str, place: &str) {
        let name = flag.split('=').next().unwrap();
        assert!(
            self.flags.contains(name),
            "{place} sets {name}, which the binary does not have; it has {:?}",
            self.flags
        );
    }

    fn assert_variable(&self, name: &str, place: &str) {
        assert!(
            self.variables.contains(name),
            "{place} sets {name}, which the binary does not read; it reads {:?}",
            self.variables
        );
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn port_of(address: &str) -> u16 {
    let (host, port) = address.rsplit_once(':').unwrap();
    assert_eq!(
        host, "0.0.0.0",
        "{address}: in a container, listen on every interface"
    );
    port.parse().unwrap()
}

/// The Dockerfile's instructions, continuation lines joined, comments out.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (instruction, rest) = current.split_once(' ').unwrap();
                instructions.push((instruction.to_owned(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The arguments of an exec-form instruction, `["a", "b"]`.
fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: not exec form: {e}"))
}

#[test]
fn the_dockerfile_sets_only_what_the_binary_reads_and_exposes_its_ports() {
    let serve = Help::of("serve");
    let probe = Help::of("probe");
    let instructions = dockerfile();
    let all = |name: &str| {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, rest)| rest.as_str())
            .collect::<Vec<_>>()
    };

    let mut env = std::collections::BTreeMap::new();
    for line in all("ENV") {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').unwrap();
            serve.assert_variable(name, "the Dockerfile's ENV");
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    let grpc = port_of(&env["RENDEZVOUS_GRPC_ADDR"]);
    let http = port_of(&env["RENDEZVOUS_HTTP_ADDR"]);
    let exposed: Vec<u16> = all("EXPOSE")
        .iter()
        .flat_map(|line| line.split_whitespace())
        .map(|port| port.parse().unwrap())
        .collect();
    assert_eq!(exposed, [grpc, http]);

    let entrypoint = exec_form(all("ENTRYPOINT")[0]);
    let binary = entrypoint[0].clone();
    assert!(
        all("COPY")
            .iter()
            .any(|copy| copy.starts_with("--from=build") && copy.ends_with(&binary)),
        "the entrypoint {binary} is not what the build stage copies"
    );
    assert_eq!(exec_form(all("CMD")[0]), ["serve"]);

    // The health check: the binary's own probe, against the gRPC port.
    let check = all("HEALTHCHECK")[0];
    let command = exec_form(&check[check.find("CMD ").unwrap() + 4..]);
    assert_eq!(command[..2], [binary.as_str(), "probe"]);
    for flag in command[2..].iter().filter(|a| a.starts_with("--")) {
        probe.assert_flag(flag, "the Dockerfile's HEALTHCHECK");
    }
    let server = &command[command.iter().position(|a| a == "--server").unwrap() + 1];
    assert_eq!(server, &format!("http://127.0.0.1:{grpc}"));

    // Non-root, by number, so that Kubernetes can check runAsNonRoot.
    let user = all("USER")[0];
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
}

/// The manifests in `deploy/kubernetes`, each document of each file.
fn manifests() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut documents = Vec::new();
    for name in yaml_files(&dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            documents.push((name.clone(), value));
        }
    }
    documents
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

fn find<'a>(documents: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A container's environment, as name and value.
fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect()
}

fn value_of<'a>(env: &'a [(String, Value)], name: &str) -> &'a str {
    env.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{name} is not set"))
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap()
}

#[test]
fn the_manifests_set_only_what_the_binary_reads_and_probe_what_it_serves() {
    let serve = Help::of("serve");
    let documents = manifests();
    let deployment = find(&documents, "Deployment", "rendezvous");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // Flags and variables.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        serve.assert_flag(flag, "deployment.yaml's args");
    }
    let env = env_of(container);
    for (name, _) in &env {
        serve.assert_variable(name, "deployment.yaml's env");
    }

    // Ports: what the server listens on is what the pod declares and the
    // probes and the Service use.
    let grpc = port_of(value_of(&env, "RENDEZVOUS_GRPC_ADDR"));
    let http = port_of(value_of(&env, "RENDEZVOUS_HTTP_ADDR"));
    let declared: Vec<(&str, u64)> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(declared, [("grpc", grpc.into()), ("http", http.into())]);

    // Probes: gRPC health on the gRPC port; liveness asks about the whole
    // server, readiness about the rendezvous service itself.
    let liveness = &container["livenessProbe"]["grpc"];
    assert_eq!(liveness["port"], grpc);
    assert_eq!(liveness["service"], "");
    let readiness = &container["readinessProbe"]["grpc"];
    assert_eq!(readiness["port"], grpc);
    assert_eq!(
        readiness["service"],
        rendezvous::proto::sync_server::SERVICE_NAME
    );

    // Grace: the pod gets SIGKILL this long after its termination begins,
    // which is when preStop starts; the server needs the pause and its own
    // shutdown grace before then.
    let kill_after = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let pause = Duration::from_secs(
        container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap(),
    );
    let grace = duration(value_of(&env, "RENDEZVOUS_SHUTDOWN_GRACE"));
    assert!(
        pause + grace < kill_after,
        "preStop {pause:?} + --shutdown-grace {grace:?} must end before \
         terminationGracePeriodSeconds ({kill_after:?})"
    );

    // The Service: its ports reach the named container ports, and the gRPC
    // one says it speaks gRPC.
    let service = find(&documents, "Service", "rendezvous");
    let ports = service["spec"]["ports"].as_array().unwrap();
    let port = |name: &str| ports.iter().find(|p| p["name"] == name).unwrap();
    assert_eq!(port("grpc")["targetPort"], "grpc");
    assert_eq!(port("grpc")["appProtocol"], "grpc");
    assert_eq!(port("http")["targetPort"], "http");

    // The Service and the PDB select the Deployment's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    let budget = find(&documents, "PodDisruptionBudget", "rendezvous");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
}

#[test]
fn secrets_come_from_a_secret_and_redis_is_where_the_url_says() {
    let documents = manifests();
    let deployment = find(&documents, "Deployment", "rendezvous");
    let pod = &deployment["spec"]["template"]["spec"];
    let env = env_of(&pod["containers"][0]);

    // Tokens and the Redis password are files from a Secret's keys.
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    for variable in [
        "RENDEZVOUS_AUTH_TOKEN_FILE",
        "RENDEZVOUS_REDIS_PASSWORD_FILE",
    ] {
        let file = Path::new(value_of(&env, variable));
        let mount = mounts
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == file.parent().unwrap())
            .unwrap_or_else(|| panic!("nothing is mounted where {variable} points"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let items = volume["secret"]["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{variable}'s volume is not a Secret with items: {volume}"));
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            items.iter().any(|i| i["path"] == name),
            "{variable}: no key of the Secret becomes {name}"
        );
    }
    // Nothing secret inline: the URL has no password in it.
    let url = value_of(&env, "RENDEZVOUS_REDIS_URL");
    assert!(
        !url.contains('@'),
        "{url}: the password belongs in the Secret"
    );

    // The URL names the try-out Redis's Service and port.
    let redis = find(&documents, "Service", "rendezvous-redis");
    let port = redis["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(url, format!("redis://rendezvous-redis:{port}"));
    let redis_pod = &find(&documents, "Deployment", "rendezvous-redis")["spec"]["template"];
    let password = &redis_pod["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"];
    let volume = &pod["volumes"][0]["secret"];
    assert_eq!(password["name"], volume["secretName"]);
    assert_eq!(password["key"], "redis-password");
}

#[test]
fn the_kustomization_lists_every_manifest_and_names_the_image() {
    let dir = root().join("deploy/kubernetes");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let kustomization: Value = serde_yaml_ng::from_str(&text).unwrap();
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files = yaml_files(&dir);
    let present: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|name| *name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    let documents = manifests();
    let deployment = find(&documents, "Deployment", "rendezvous");
    let image = &deployment["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(&kustomization["images"][0]["name"], image);
}

/// The components for Redis under Sentinel and in a cluster replace the
/// Redis URL, and nothing else, with one the binary takes: it starts, and
/// says which kind of Redis it meets through.
#[tokio::test]
async fn the_sentinel_and_cluster_components_point_the_replicas_at_them() {
    let documents = manifests();
    let deployment = serde_json::to_value(find(&documents, "Deployment", "rendezvous")).unwrap();
    for (component, mode) in [("sentinel", "sentinel"), ("cluster", "cluster")] {
        let text = std::fs::read_to_string(
            root()
                .join("deploy/kubernetes")
                .join(component)
                .join("kustomization.yaml"),
        )
        .unwrap();
        let kustomization: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(kustomization["kind"], "Component", "{component}");
        let patches = kustomization["patches"].as_array().unwrap();
        assert_eq!(patches.len(), 1, "{component}");
        assert_eq!(patches[0]["target"]["kind"], "Deployment");
        assert_eq!(patches[0]["target"]["name"], "rendezvous");
        let ops: Value = serde_yaml_ng::from_str(patches[0]["patch"].as_str().unwrap()).unwrap();
        let [op] = ops.as_array().unwrap().as_slice() else {
            panic!("{component}: one operation");
        };
        assert_eq!(op["op"], "replace");
        let path = op["path"].as_str().unwrap();
        let variable = path.strip_suffix("/value").unwrap();
        assert_eq!(
            deployment.pointer(&format!("{variable}/name")),
            Some(&Value::from("RENDEZVOUS_REDIS_URL")),
            "{component}: {path}"
        );
        let url = op["value"].as_str().unwrap();
        let mut server = crate::common::Process::start(&["--redis-url", url]).await;
        assert_eq!(
            server.listening["fields"]["redis_mode"], mode,
            "{component}"
        );
        // Names that resolve only in the cluster: waiting, not refused.
        server.next("waiting for Redis").await;
    }
}
