//! The Go flow for real: the `kilnd` recipe (config.example.yml's `caddy`
//! recipe step for step) builds Go binaries with plugins from the project's
//! own module proxy (`testdata/go/`), through the real `kiln-api` and
//! `kiln-worker`, on the local Go image and an isolated build network.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use kiln_testkit::goproxy::GoProxy;

use crate::farm::ApiFarm;

/// The host's Go from Debian (`scripts/test-image go` installs it).
const HOST_GO: &str = "/usr/lib/go-1.19/bin/go";

/// A farm whose API resolves through `proxy` and whose worker builds on its network.
async fn farm(proxy: &GoProxy, extra: &[(&str, &str)]) -> ApiFarm {
    let env = proxy.env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    ApiFarm::with_worker(&vars).await
}

/// Download `query` from `/api/compat`: the key and the body. Asserts a 200.
async fn compat(f: &ApiFarm, query: &str) -> (String, Vec<u8>, String) {
    let r = f.get(&format!("/api/compat?recipe=kilnd&{query}")).await;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    assert_eq!(status, 200, "{query}: {}\n{}", String::from_utf8_lossy(&body), f.logs());
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    (h("x-kiln-build-key"), body, h("content-disposition"))
}

/// Save `bytes` as an executable and run it with `args`; its stdout.
fn run(bytes: &[u8], args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kilnd");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&path).args(args).output().unwrap();
    assert!(out.status.success(), "kilnd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `go version -m` of the host's Go over the binary.
fn go_version_m(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kilnd");
    std::fs::write(&path, bytes).unwrap();
    // `go version` passes over files that are not executable, silently.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(HOST_GO)
        .args(["version", "-m"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{HOST_GO} (golang-1.19-go, installed by scripts/test-image): {e}"));
    assert!(out.status.success(), "go version -m: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// What an executable's header says: format, machine, and for ELF whether
/// it asks for a program interpreter (i.e. is dynamically linked).
#[derive(Debug, PartialEq, Eq)]
enum Exe {
    Elf { machine: u16, arm_eabi: u32, interpreter: bool },
    Pe32Plus { machine: u16 },
    MachO64 { cpu: u32 },
}

fn exe(b: &[u8]) -> Exe {
    if b.starts_with(b"\x7fELF") {
        let wide = b[4] == 2;
        let machine = u16_at(b, 18);
        let (phoff, phentsize, phnum, flags) = if wide {
            (
                u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize,
                u16_at(b, 0x36),
                u16_at(b, 0x38),
                u32_at(b, 0x30),
            )
        } else {
            (u32_at(b, 0x1c) as usize, u16_at(b, 0x2a), u16_at(b, 0x2c), u32_at(b, 0x24))
        };
        const PT_INTERP: u32 = 3;
        let interpreter = (0..phnum as usize).any(|i| u32_at(b, phoff + i * phentsize as usize) == PT_INTERP);
        return Exe::Elf { machine, arm_eabi: flags >> 24, interpreter };
    }
    if b.starts_with(b"MZ") {
        let pe = u32_at(b, 0x3c) as usize;
        assert_eq!(&b[pe..pe + 4], b"PE\0\0");
        assert_eq!(u16_at(b, pe + 24), 0x20b, "PE32+ optional header");
        return Exe::Pe32Plus { machine: u16_at(b, pe + 4) };
    }
    assert_eq!(u32_at(b, 0), 0xfeed_facf, "not ELF, PE or 64-bit Mach-O: {:?}", &b[..16.min(b.len())]);
    Exe::MachO64 { cpu: u32_at(b, 4) }
}

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_ARM: u16 = 40;

/// How often the proxy on the build network served `path`.
fn fetched(proxy: &GoProxy, path: &str) -> usize {
    proxy.requests().iter().filter(|p| p.as_str() == path).count()
}

#[tokio::test]
async fn kilnd_builds_go_binaries_with_plugins_through_the_proxy() {
    if !kiln_testkit::docker_available("kilnd_builds_go_binaries_with_plugins_through_the_proxy") {
        return;
    }
    let proxy = GoProxy::start();
    let f = farm(&proxy, &[]).await;

    // A plugin at an exact version; the core's version is missing: latest.
    let (key, bin, disposition) = compat(&f, "os=linux&arch=amd64&p=example.com/plugins/echo@v1.0.0").await;
    assert_eq!(disposition, "attachment; filename=kilnd_linux_amd64_custom");
    assert_eq!(exe(&bin), Exe::Elf { machine: EM_X86_64, arm_eabi: 0, interpreter: false }, "a static x86-64 ELF");
    let modules = run(&bin, &["list-modules"]);
    for line in [
        "main kilnd (devel)",
        // v1.2.0-beta.1 is newer, but a prerelease.
        "core example.com/kilnd v1.1.0",
        "module echo example.com/plugins/echo v1.0.0: says what it hears (echo v1.0.0)",
        "module static example.com/kilnd v1.1.0: serves files (kilnd v1.1.0)",
    ] {
        assert!(modules.lines().any(|l| l == line), "{line:?} not in\n{modules}");
    }
    assert_eq!(run(&bin, &["version"]).trim(), "example.com/kilnd v1.1.0");
    let info = go_version_m(&bin);
    for want in [
        "\tpath\tkilnd\n",
        "\tdep\texample.com/kilnd\tv1.1.0\t",
        "\tdep\texample.com/plugins/echo\tv1.0.0\t",
        "\tbuild\t-trimpath=true\n",
        "\tbuild\tCGO_ENABLED=0\n",
        "\tbuild\tGOOS=linux\n",
    ] {
        assert!(info.contains(want), "{want:?} not in go version -m:\n{info}");
    }
    let build: serde_json::Value = f.get(&format!("/api/builds/{key}")).await.json().await.unwrap();
    assert_eq!(build["version"], "v1.1.0");
    let log1 = f.get(&format!("/api/builds/{key}/log")).await.text().await.unwrap();
    assert!(log1.contains("go: downloading example.com/kilnd v1.1.0"), "{log1}");
    assert_eq!(fetched(&proxy, "/example.com/kilnd/@v/v1.1.0.zip"), 1, "{:?}", proxy.requests());

    // `version=latest` and plugins without versions: the newest releases.
    // greet needs example.com/Kiln/words, fetched through the proxy (escaped).
    let (key, bin, _) =
        compat(&f, "os=linux&arch=amd64&version=latest&p=example.com/plugins/greet&p=example.com/plugins/echo").await;
    let modules = run(&bin, &["list-modules"]);
    for line in [
        "core example.com/kilnd v1.1.0",
        "module echo example.com/plugins/echo v1.1.0: says what it hears (echo v1.1.0)",
        "module greet example.com/plugins/greet v1.1.0: greets with hello (words v1.1.0)",
    ] {
        assert!(modules.lines().any(|l| l == line), "{line:?} not in\n{modules}");
    }
    let build: serde_json::Value = f.get(&format!("/api/builds/{key}")).await.json().await.unwrap();
    assert_eq!(build["version"], "v1.1.0");
    assert_eq!(build["plugins"][0]["version"], "v1.1.0", "{build}");
    assert_eq!(build["plugins"][1]["version"], "v1.1.0", "{build}");
    assert_eq!(fetched(&proxy, "/example.com/!kiln/words/@v/v1.1.0.zip"), 1, "{:?}", proxy.requests());

    // The module cache volume is shared: the core came from the first build's fetch.
    let log2 = f.get(&format!("/api/builds/{key}/log")).await.text().await.unwrap();
    assert!(log2.contains("go: downloading example.com/plugins/greet v1.1.0"), "{log2}");
    assert!(!log2.contains("go: downloading example.com/kilnd"), "the core was fetched again:\n{log2}");
    assert_eq!(fetched(&proxy, "/example.com/kilnd/@v/v1.1.0.zip"), 1, "{:?}", proxy.requests());

    // A replacement takes effect in the binary.
    let (_, bin, _) = compat(
        &f,
        "os=linux&arch=amd64&p=example.com/plugins/echo@v1.0.0&r=example.com/plugins/echo=example.com/plugins/echo-fork@v1.0.0",
    )
    .await;
    let modules = run(&bin, &["list-modules"]);
    let line = "module echo example.com/plugins/echo v1.0.0 => example.com/plugins/echo-fork v1.0.0: \
                says it twice (the echo-fork)";
    assert!(modules.lines().any(|l| l == line), "{line:?} not in\n{modules}");
    let info = go_version_m(&bin);
    assert!(info.contains("\t=>\texample.com/plugins/echo-fork\tv1.0.0\t"), "{info}");
}

#[tokio::test]
async fn kilnd_cross_compiles_for_every_kind_of_platform() {
    if !kiln_testkit::docker_available("kilnd_cross_compiles_for_every_kind_of_platform") {
        return;
    }
    let proxy = GoProxy::start();
    let f = farm(&proxy, &[("KILN_WORKER_CONCURRENCY", "2")]).await;
    let plugin = "p=example.com/plugins/echo@v1.1.0";
    let queries = ["os=linux&arch=arm64", "os=linux&arch=arm&arm=7", "os=windows&arch=amd64", "os=darwin&arch=arm64"]
        .map(|platform| format!("{platform}&{plugin}"));
    let (arm64, arm7, windows, darwin) = tokio::join!(
        compat(&f, &queries[0]),
        compat(&f, &queries[1]),
        compat(&f, &queries[2]),
        compat(&f, &queries[3])
    );
    assert_eq!(exe(&arm64.1), Exe::Elf { machine: EM_AARCH64, arm_eabi: 0, interpreter: false });
    // EABI version 5 in the top byte of e_flags, as `file` reports "EABI5".
    assert_eq!(exe(&arm7.1), Exe::Elf { machine: EM_ARM, arm_eabi: 5, interpreter: false });
    assert_eq!(arm7.2, "attachment; filename=kilnd_linux_arm7_custom");
    const IMAGE_FILE_MACHINE_AMD64: u16 = 0x8664;
    assert_eq!(exe(&windows.1), Exe::Pe32Plus { machine: IMAGE_FILE_MACHINE_AMD64 });
    assert_eq!(windows.2, "attachment; filename=kilnd_windows_amd64_custom.exe");
    const CPU_TYPE_ARM64: u32 = 0x0100_000c;
    assert_eq!(exe(&darwin.1), Exe::MachO64 { cpu: CPU_TYPE_ARM64 });
    // What each was built for is in its build info too.
    let info = go_version_m(&arm7.1);
    assert!(info.contains("\tbuild\tGOARCH=arm\n") && info.contains("\tbuild\tGOARM=7\n"), "{info}");
    assert!(go_version_m(&windows.1).contains("\tbuild\tGOOS=windows\n"));
}

#[tokio::test]
async fn a_plugin_that_does_not_compile_is_a_422_with_the_compiler_error() {
    if !kiln_testkit::docker_available("a_plugin_that_does_not_compile_is_a_422_with_the_compiler_error") {
        return;
    }
    let proxy = GoProxy::start();
    let ttl = 10;
    let f = farm(&proxy, &[("KILN_FAILURE_TTL", &ttl.to_string())]).await;
    let q = "/api/compat?recipe=kilnd&os=linux&arch=amd64&p=example.com/plugins/shout@v1.1.0";
    let first = f.get(q).await;
    assert_eq!(first.status(), 422, "{}", f.logs());
    let j: serde_json::Value = first.json().await.unwrap();
    assert_eq!(j["error"]["code"], "build_failed");
    let message = j["error"]["message"].as_str().unwrap();
    assert!(message.contains("step \"go build\" exited with code"), "{message}");
    assert!(message.contains("shout.go") && message.contains("cannot use \"eleven\""), "{message}");
    let log = f.get(j["error"]["log"].as_str().unwrap()).await.text().await.unwrap();
    for want in ["==> [1/5] main.go", "go: downloading example.com/plugins/shout v1.1.0", "cannot use \"eleven\""] {
        assert!(log.contains(want), "{want:?} not in the log:\n{log}");
    }

    // Answered from the failure, without building again, until the TTL passes.
    let again = f.get(q).await;
    assert_eq!(again.status(), 422);
    assert_eq!(f.attempt_count().await, 1);
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    assert_eq!(f.get(q).await.status(), 422);
    assert_eq!(f.attempt_count().await, 2);
}
