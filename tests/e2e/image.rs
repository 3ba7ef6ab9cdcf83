//! The container image `make image` builds (target/image/switchyard.oci.tar, which
//! tests/run.sh builds before the tests): its root filesystem, unpacked from the OCI archive's
//! layers, runs as the operator the way a pod would run it — in its own mount namespace, as the
//! image's numeric user, with a read-only root, /tmp on a tmpfs and the service account token
//! mounted where kube's in-cluster config reads it — until a Redis MessageBroker is Ready. The
//! image's config agrees with the Dockerfile's final stage and with the chart.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::Value;
use switchyard::api::MessageBroker;

use crate::deploy::{CHART, apply_chart_rbac, documents, helm};
use crate::support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ARCHIVE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/image/switchyard.oci.tar"
);
/// The chart's release namespace and ServiceAccount, whose token SWITCHYARD_OPERATOR_KUBECONFIG
/// holds.
const RELEASE_NAMESPACE: &str = "switchyard-system";
const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a host command; fail the test with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image in the OCI archive, its layers unpacked into `dir/rootfs`.
struct Image {
    /// The `org.opencontainers.image.ref.name` of its index entry.
    ref_name: String,
    /// The `config` object of the image configuration (User, Entrypoint, Cmd, ExposedPorts).
    config: Value,
    rootfs: PathBuf,
}

impl Image {
    fn unpack(dir: &Path) -> Self {
        assert!(
            Path::new(ARCHIVE).is_file(),
            "{ARCHIVE} is missing: build it with `make image` (make test does)"
        );
        let layout = dir.join("oci");
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&layout).expect("layout directory");
        std::fs::create_dir_all(&rootfs).expect("rootfs directory");
        run("tar", &["-xf", ARCHIVE, "-C", path(&layout)]);
        let json = |p: PathBuf| -> Value {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"))
        };
        let blob = |descriptor: &Value| -> PathBuf {
            let digest = descriptor["digest"].as_str().expect("descriptor digest");
            let (algorithm, hex) = digest.split_once(':').expect("algorithm:hex digest");
            layout.join("blobs").join(algorithm).join(hex)
        };
        let index = json(layout.join("index.json"));
        let manifests = index["manifests"].as_array().expect("index manifests");
        assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
        let ref_name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("the archive names its image")
            .to_string();
        let manifest = json(blob(&manifests[0]));
        let image_config = json(blob(&manifest["config"]));
        assert_eq!(image_config["os"], "linux");
        for layer in manifest["layers"].as_array().expect("manifest layers") {
            let media_type = layer["mediaType"].as_str().expect("layer media type");
            let flags = match media_type {
                "application/vnd.oci.image.layer.v1.tar+gzip" => "-xzf",
                "application/vnd.oci.image.layer.v1.tar" => "-xf",
                other => panic!("layer media type {other} not handled"),
            };
            let file = blob(layer);
            run(
                "tar",
                &[flags, path(&file), "-C", path(&rootfs), "--numeric-owner"],
            );
        }
        let whiteouts = run("find", &[path(&rootfs), "-name", ".wh.*"]);
        assert!(whiteouts.is_empty(), "whiteouts not handled: {whiteouts}");
        Image {
            ref_name,
            config: image_config["config"].clone(),
            rootfs,
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.config[key]
            .as_array()
            .unwrap_or_else(|| panic!("image config {key}: {}", self.config))
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    }

    /// The numeric `uid:gid` the image runs as.
    fn user(&self) -> (u32, u32) {
        let user = self.config["User"].as_str().expect("image config User");
        let (uid, gid) = user
            .split_once(':')
            .unwrap_or_else(|| panic!("User {user:?} is not uid:gid"));
        let number = |s: &str| {
            s.parse::<u32>()
                .unwrap_or_else(|_| panic!("User {user:?} is not numeric"))
        };
        (number(uid), number(gid))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The instructions of the Dockerfile's final stage, by keyword (the last of each), and its base.
fn dockerfile_final_stage() -> (String, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(format!("{ROOT}/config/manager/Dockerfile"))
        .expect("config/manager/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let base = lines[from]["FROM ".len()..].trim().to_string();
    let instructions = lines[from + 1..]
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    (base, instructions)
}

#[tokio::test]
async fn image_agrees_with_the_dockerfile_and_the_chart() {
    let scratch = Scratch::new("image-config");
    let image = Image::unpack(&scratch.0);
    let (uid, gid) = image.user();
    let entrypoint = image.strings("Entrypoint");
    let cmd = image.strings("Cmd");
    let ports: Vec<&String> = image.config["ExposedPorts"]
        .as_object()
        .expect("image config ExposedPorts")
        .keys()
        .collect();

    // The Dockerfile's final stage: FROM scratch with the same user, port, entrypoint and cmd.
    let (base, stage) = dockerfile_final_stage();
    assert_eq!(base, "scratch");
    let json_list = |k: &str| -> Vec<String> {
        serde_json::from_str(&stage[k]).unwrap_or_else(|e| panic!("Dockerfile {k}: {e}"))
    };
    assert_eq!(stage["USER"], format!("{uid}:{gid}"));
    assert_eq!(ports, [&format!("{}/tcp", stage["EXPOSE"])]);
    assert_eq!(json_list("ENTRYPOINT"), entrypoint);
    assert_eq!(json_list("CMD"), cmd);

    // The chart's default image is this one, run as its user, on its port, with its command.
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap())
            .expect("Chart.yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let rendered = helm(&[
        "template",
        "switchyard",
        CHART,
        "--show-only",
        "templates/deployment.yaml",
    ])
    .await;
    let chart_deployment = documents(&rendered).remove(0);
    let kustomize_deployment = documents(
        &std::fs::read_to_string(format!("{ROOT}/config/manager/deployment.yaml")).unwrap(),
    )
    .remove(0);
    for (what, deployment) in [
        ("chart", &chart_deployment),
        ("config/manager", &kustomize_deployment),
    ] {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["image"], image.ref_name.as_str(), "{what} image");
        assert_eq!(pod["securityContext"]["runAsUser"], uid, "{what} runAsUser");
        assert_eq!(
            pod["securityContext"]["runAsGroup"], gid,
            "{what} runAsGroup"
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["runAsNonRoot"], true);
        assert!(
            container["command"].is_null(),
            "{what} keeps the entrypoint"
        );
        assert_eq!(container["args"][0], cmd[0].as_str(), "{what} args");
        assert_eq!(
            format!("{}/tcp", container["ports"][0]["containerPort"]),
            *ports[0],
            "{what} port"
        );
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/tmp");
    }

    // The files: the entrypoint, the CA bundle, a name for the user, /tmp; no shell.
    let rootfs = &image.rootfs;
    let exe = rootfs.join(entrypoint[0].trim_start_matches('/'));
    let mode = exe.metadata().expect("entrypoint").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "entrypoint executable");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("CA bundle");
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 50);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(passwd.contains(&format!(":x:{uid}:{gid}:")), "{passwd}");
    assert!(rootfs.join("tmp").is_dir());
    let shells = run(
        "find",
        &[path(rootfs), "-name", "*sh", "-o", "-name", "busybox"],
    );
    assert!(shells.is_empty(), "a shell in the image: {shells}");
}

/// What the kubelet would mount for the chart's ServiceAccount: the operator's token, the API
/// server's CA and the namespace; and the API server's address, as KUBERNETES_SERVICE_HOST/PORT.
fn write_service_account(dir: &Path) -> (String, String) {
    let path = env_var("SWITCHYARD_OPERATOR_KUBECONFIG");
    let kubeconfig: Value =
        serde_norway::from_str(&std::fs::read_to_string(&path).expect("operator kubeconfig"))
            .expect("operator kubeconfig YAML");
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().expect("CA"))
        .expect("CA base64");
    let token = kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .expect("operator token");
    std::fs::create_dir_all(dir).expect("service account directory");
    std::fs::write(dir.join("ca.crt"), ca).expect("ca.crt");
    std::fs::write(dir.join("token"), token).expect("token");
    std::fs::write(dir.join("namespace"), RELEASE_NAMESPACE).expect("namespace");
    let server = cluster["server"].as_str().expect("server");
    let authority = server.strip_prefix("https://").expect("https server");
    let (host, port) = authority
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("host:port");
    (host.to_string(), port.to_string())
}

/// In a new mount namespace: the root filesystem bound onto itself, /proc, a minimal /dev, /tmp
/// as a tmpfs (the chart's emptyDir), the service account read-only, then the root read-only;
/// then, without new privileges, chroot into it as the image's user and exec the entrypoint.
const LAUNCH: &str = r#"set -eu
root=$1 sa=$2 user=$3 group=$4; shift 4
mount --bind "$root" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,mode=755,size=64k tmpfs "$root/dev"
for d in null zero random urandom; do
  touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
mount -t tmpfs -o nosuid,nodev,mode=1777,size=16m tmpfs "$root/tmp"
mount --bind "$sa" "$root/var/run/secrets/kubernetes.io/serviceaccount"
mount -o remount,bind,ro "$root/var/run/secrets/kubernetes.io/serviceaccount"
mount -o remount,bind,ro "$root"
exec setpriv --no-new-privs chroot --userspec="$user:$group" --groups="$group" "$root" "$@"
"#;

/// The operator running from the image's root filesystem.
struct Contained {
    child: tokio::process::Child,
    pid: u32,
    pod_name: String,
    lease: String,
    log: PathBuf,
    health: String,
}

impl Contained {
    async fn start(image: &Image, service_account: &Path, namespace: &str, lease: &str) -> Self {
        let (uid, gid) = image.user();
        let (host, port) = write_service_account(service_account);
        // What a runtime does before it makes the root read-only: the mount points.
        for dir in ["proc", "dev", "tmp", SERVICE_ACCOUNT_DIR] {
            std::fs::create_dir_all(image.rootfs.join(dir)).expect("mount point");
        }
        let metrics_port = free_port();
        let pod_name = unique("switchyard-image");
        let log = image.rootfs.parent().unwrap().join("operator.log");
        let out = std::fs::File::create(&log).expect("operator log");
        let err = out.try_clone().expect("operator log");
        // The image's entrypoint and cmd, then flags as the chart passes them.
        let mut argv = image.strings("Entrypoint");
        argv.extend(image.strings("Cmd"));
        argv.extend([
            format!("--namespace={namespace}"),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            "--resync=5s".into(),
            "--log-format=text".into(),
            "--leader-elect=true".into(),
            format!("--lease-name={lease}"),
            "--lease-duration=15s".into(),
        ]);
        let child = tokio::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                LAUNCH,
                "sh",
            ])
            .args([path(&image.rootfs), path(service_account)])
            .args([uid.to_string(), gid.to_string()])
            .args(&argv)
            // The pod's environment: the Deployment's variables, the kubelet's service address
            // and a runtime's default PATH (the image sets none).
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("KUBERNETES_SERVICE_HOST", host)
            .env("KUBERNETES_SERVICE_PORT", port)
            .env("POD_NAME", &pod_name)
            .env("POD_NAMESPACE", RELEASE_NAMESPACE)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("unshare starts");
        let pid = child.id().expect("pid");
        Contained {
            child,
            pid,
            pod_name,
            lease: lease.to_string(),
            log,
            health: format!("http://127.0.0.1:{metrics_port}"),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fail with the operator's log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the operator in the image exited with {status}:\n{}",
                self.log_tail()
            );
        }
    }

    async fn probe(&self, path: &str) -> bool {
        reqwest::get(format!("{}{path}", self.health))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The fields of /proc/PID/status.
    fn status(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc status")
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect()
    }

    /// Mount point → (filesystem type, per-mount options), as the process sees its mounts.
    fn mounts(&self) -> BTreeMap<String, (String, String)> {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid))
            .expect("/proc mountinfo")
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let sep = fields.iter().position(|f| *f == "-")?;
                Some((
                    fields[4].to_string(),
                    (fields[sep + 1].to_string(), fields[5].to_string()),
                ))
            })
            .collect()
    }

    /// SIGTERM, as the kubelet stops a pod; the operator must exit cleanly.
    async fn stop(mut self) {
        run("kill", &["-TERM", &self.pid.to_string()]);
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 20s of SIGTERM:\n{}", self.log_tail()))
            .expect("wait");
        assert!(status.success(), "exit {status}:\n{}", self.log_tail());
    }
}

#[tokio::test]
async fn image_runs_as_the_operator_read_only_until_a_broker_is_ready() {
    assert_eq!(
        run("id", &["-u"]).trim(),
        "0",
        "running the image needs root (mount namespaces, chroot)"
    );
    let (admin, ns) = setup("image").await;
    apply_chart_rbac(&admin).await;
    let scratch = Scratch::new("image-run");
    let image = Image::unpack(&scratch.0);
    let (uid, gid) = image.user();
    let mut op = Contained::start(
        &image,
        &scratch.0.join("serviceaccount"),
        &ns,
        &unique("switchyard-image"),
    )
    .await;

    // Up: the chart's liveness and readiness probes answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(op.probe("/healthz").await && op.probe("/readyz").await) {
        op.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz and /readyz did not answer within 30s:\n{}",
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The process is the image's user, with no capabilities and no way to gain any.
    let status = op.status();
    assert_eq!(status["Name"], "switchyard");
    assert_eq!(status["Uid"], format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status["Gid"], format!("{gid} {gid} {gid} {gid}"));
    assert_eq!(status["Groups"], gid.to_string());
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["NoNewPrivs"], "1");
    // Its root is the image, read-only; only /tmp is writable.
    let mounts = op.mounts();
    let (_, root_options) = &mounts["/"];
    assert!(
        root_options.split(',').any(|o| o == "ro"),
        "root mounted {root_options}: {mounts:?}"
    );
    let (tmp_type, tmp_options) = &mounts["/tmp"];
    assert_eq!(tmp_type, "tmpfs");
    assert!(tmp_options.split(',').any(|o| o == "rw"), "{tmp_options}");
    let (_, sa_options) = &mounts[&format!("/{SERVICE_ACCOUNT_DIR}")];
    assert!(sa_options.split(',').any(|o| o == "ro"), "{sa_options}");

    // A Redis MessageBroker, reconciled by the operator in the image, becomes Ready.
    let env = backend_env(&admin, &ns, "Redis").await;
    let manifest = format!(
        "{}spec:\n  deletionPolicy: Delete\n  topics:\n    - name: orders\n      subscriptions: [{{name: billing}}]\n  envs:\n    - {env}\n",
        mb_header("bus")
    );
    apply_mb(&admin, &ns, &manifest).await;
    let api: Api<MessageBroker> = Api::namespaced(admin.clone(), &ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mb = api.get("bus").await.expect("get MessageBroker");
        if condition_true(&mb, "Ready") {
            break;
        }
        op.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Ready within 60s; status: {}\noperator log:\n{}",
            serde_json::to_string_pretty(&mb.status).unwrap_or_default(),
            op.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And this process did it: it holds the Lease (identity POD_NAME_PID) and exports the
    // MessageBroker's series.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let lease = leases.get(&op.lease).await.expect("the operator's Lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, Some(format!("{}_{}", op.pod_name, op.pid)));
    let metrics = reqwest::get(format!("{}/metrics", op.health))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics text");
    assert!(
        metrics.contains(&format!("namespace=\"{ns}\"")),
        "no series for {ns} in /metrics"
    );

    // Deleting it lets the operator remove the streams (deletionPolicy Delete) and the finalizer.
    api.delete("bus", &Default::default())
        .await
        .expect("delete MessageBroker");
    wait_gone(&api, "bus", Duration::from_secs(30), "MessageBroker gone").await;
    let lease_name = op.lease.clone();
    op.stop().await;
    leases
        .delete(&lease_name, &Default::default())
        .await
        .expect("delete the Lease");
    // The mounts lived in the operator's mount namespace only, and went with it.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !host_mounts.contains(path(&image.rootfs)),
        "mounts left behind: {host_mounts}"
    );
}
