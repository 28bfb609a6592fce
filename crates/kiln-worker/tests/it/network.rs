//! Networked steps run on the build network and reach only what is on it.
//!
//! The step is probed from inside: its routes (`/proc/net/route`; no test
//! traffic is ever sent to an address outside this machine), its
//! interfaces, a fetch from the Go proxy on the build network, and
//! connection attempts to a listener on the worker host (through the build
//! network's gateway address and Docker's default bridge) and to a
//! container on another Docker network.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kiln_config::ContainerLimits;
use kiln_testkit::goproxy::{BUSYBOX_IMAGE, GoProxy};
use kiln_worker::docker::{BuildNetwork, ContainerSpec, Engine, Exit};
use tokio_util::sync::CancellationToken;

use crate::farm::host_listener;

const PROBE: &str = r#"
port="$1"; shift
say() { echo "$1" >> /work/out/report; }
while read -r iface dest gw rest; do
  [ "$iface" = Iface ] || say "route=$dest/$gw"
done < /proc/net/route
say "interfaces=$(ls /sys/class/net | tr '\n' ' ')"
say "inet6=$(wc -l < /proc/net/if_inet6)"
# (busybox wget -T crashes; timeout bounds it instead)
if list=$(timeout 10 wget -q -O- http://goproxy:8080/example.com/kilnd/@v/list 2>&1); then
  say "proxy=$(echo $list | tr ' ' ,)"
else
  say "proxy=failed: $list"
fi
for target in "$@"; do
  msg=$(timeout 5 nc -w 2 "${target%:*}" "${target##*:}" </dev/null 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 143 ]; then say "tcp $target=connected"; else say "tcp $target=failed: $msg"; fi
done
say "done=yes"
"#;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A listener in a container on another Docker network (the default
/// bridge); removed when dropped.
struct Neighbour(String);

impl Neighbour {
    fn start() -> (Neighbour, String) {
        let name = format!("kiln-test-neighbour-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "kiln.test=network",
            "--network",
            "bridge",
            "--user",
            "65534:65534",
            BUSYBOX_IMAGE,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/",
        ]);
        let n = Neighbour(name);
        let ip = docker(&["inspect", "-f", "{{.NetworkSettings.Networks.bridge.IPAddress}}", &n.0]);
        (n, ip)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Run the probe in a fresh container as a step; the report as key=value.
async fn probe(engine: &Engine, network: Option<BuildNetwork>, targets: &[String]) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(1000), Some(1000)).unwrap();
    let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), PROBE.to_owned(), "probe".to_owned(), "0".to_owned()];
    argv.extend(targets.iter().cloned());
    let spec = ContainerSpec {
        image: BUSYBOX_IMAGE.into(),
        argv,
        env: vec![],
        network,
        timeout: Duration::from_secs(120),
        work_dir: dir.path().to_path_buf(),
        cache: None,
        limits: ContainerLimits {
            memory_mb: 64,
            cpus: 1.0,
            pids: 64,
            user: "1000:1000".into(),
            tmpfs_mb: 8,
            ..ContainerLimits::default()
        },
        labels: HashMap::from([("kiln.test".to_owned(), format!("network-{}", std::process::id()))]),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let run = engine.run(&spec, &tx, &CancellationToken::new()).await.unwrap();
    drop(tx);
    drain.await.unwrap();
    assert_eq!(run.exit, Exit::Code(0));
    let text = std::fs::read_to_string(out.join("report")).unwrap();
    let mut report = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap();
        report
            .entry(k.to_owned())
            .and_modify(|old: &mut String| old.push_str(&format!(" {v}")))
            .or_insert(v.to_owned());
    }
    assert_eq!(report.get("done").map(String::as_str), Some("yes"), "{text}");
    report
}

#[tokio::test]
async fn a_networked_step_reaches_the_build_network_and_nothing_else() {
    if !kiln_testkit::docker_available("a_networked_step_reaches_the_build_network_and_nothing_else") {
        return;
    }
    let proxy = GoProxy::start();
    let engine = Engine::connect().await.unwrap();
    let net = BuildNetwork { name: proxy.network.clone(), helper_image: BUSYBOX_IMAGE.into() };
    // The network the test made the way the worker does passes the worker's check.
    engine.ensure_build_network(&net, true).await.unwrap();
    let gateway = docker(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", &net.name]);
    let (port, connections) = host_listener().await;
    let (_neighbour, neighbour_ip) = Neighbour::start();
    // Controls: the host reaches both listeners, so a failure below is the step's isolation.
    let url = format!("http://{neighbour_ip}:8080/");
    let mut answered = false;
    for _ in 0..50 {
        // Any HTTP answer will do: the connection is what counts.
        answered = Command::new("curl").args(["-sS", "-m", "5", "-o", "/dev/null", &url]).status().unwrap().success();
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the neighbour container does not answer at {url}");
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections.swap(0, Ordering::SeqCst), 1);

    let targets = [format!("{gateway}:{port}"), format!("172.17.0.1:{port}"), format!("{neighbour_ip}:8080")];
    let report = probe(&engine, Some(net.clone()), &targets).await;
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in {report:?}"));

    // It fetches from the proxy on the build network…
    assert_eq!(get("proxy"), "v1.0.0,v1.1.0,v1.2.0-beta.1", "{report:?}");
    // …has one interface there, no IPv6, and a route to that subnet only.
    assert_eq!(get("interfaces").split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"], "{report:?}");
    assert_eq!(get("inet6"), "0");
    let routes: Vec<&str> = get("route").split_whitespace().collect();
    assert!(!routes.is_empty() && routes.iter().all(|r| !r.starts_with("00000000/")), "a default route: {routes:?}");
    // …and reaches neither the host (gateway address, default bridge) nor another network's container.
    for t in &targets {
        let line = get(&format!("tcp {t}"));
        assert!(line.starts_with("failed"), "{t}: {line}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the host's listener was reached");

    // A step without `network: true` has loopback only.
    let offline = probe(&engine, None, &[]).await;
    assert_eq!(offline["interfaces"].trim(), "lo", "{offline:?}");
    assert!(offline["proxy"].starts_with("failed"), "{offline:?}");
    assert!(!offline.contains_key("route"), "{offline:?}");

    // Nothing of the steps is left: no step or sandbox containers on the network.
    let label = format!("label=kiln.test=network-{}", std::process::id());
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "");
}

#[tokio::test]
async fn a_build_network_that_is_not_isolated_is_refused() {
    if !kiln_testkit::docker_available("a_build_network_that_is_not_isolated_is_refused") {
        return;
    }
    let engine = Engine::connect().await.unwrap();
    let name = format!("kiln-test-open-{}", std::process::id());
    let _ = Command::new("docker").args(["network", "rm", &name]).output();
    docker(&["network", "create", "--label", "kiln.test=network", &name]);
    let net = BuildNetwork { name: name.clone(), helper_image: BUSYBOX_IMAGE.into() };
    let err = engine.ensure_build_network(&net, true).await.unwrap_err().to_string();
    docker(&["network", "rm", &name]);
    assert!(err.contains(&format!("build network {name} is not isolated")), "{err}");
    assert!(err.contains("not internal") && err.contains("inhibit_ipv4"), "{err}");

    // A missing one is created isolated, and then passes.
    let created = BuildNetwork { name: format!("{name}-new"), helper_image: BUSYBOX_IMAGE.into() };
    engine.ensure_build_network(&created, true).await.unwrap();
    let internal = docker(&["network", "inspect", "-f", "{{.Internal}} {{.Options}}", &created.name]);
    docker(&["network", "rm", &created.name]);
    assert!(internal.starts_with("true ") && internal.contains("inhibit_ipv4:true"), "{internal}");
}
