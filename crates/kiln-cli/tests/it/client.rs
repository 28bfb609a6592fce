//! `kiln build`, `status`, `log` and `download` against a farm of real
//! processes (Postgres, Docker, local storage), and their exit statuses.

use std::path::Path;
use std::process::Command;

use crate::farm::CliFarm;
use crate::{kiln, path, text};

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

/// Run a written `hello` script with `sh`; what it prints.
fn run_script(file: &Path) -> String {
    let out = Command::new("sh").arg(file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

#[tokio::test]
async fn build_writes_a_verified_binary_then_status_log_and_download() {
    need_docker!("build_writes_a_verified_binary_then_status_log_and_download");
    use std::os::unix::fs::PermissionsExt;
    let f = CliFarm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out =
        f.kiln_in(d, &["--json", "build", "hello", "--os", "linux", "--arch", "arm64", "--with", "example.com/shout"]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let j = json(&out);
    let key = j["key"].as_str().unwrap().to_owned();
    assert_eq!(j["state"], "succeeded");
    // Named like the compat API's file, in the current directory.
    let written = d.join("hello_linux_arm64");
    assert_eq!(Path::new(j["path"].as_str().unwrap()), Path::new("hello_linux_arm64"));
    assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o755);
    let printed = run_script(&written);
    assert!(printed.contains("hello from kiln v1.1.0 linux/arm64"), "{printed}");
    assert!(printed.contains("plugin example.com/shout@v1.0.0"), "{printed}");
    assert!(j["verified"]["trusted_comment"].as_str().unwrap().contains(&key), "{j}");
    // Plain progress lines on stderr when it is not a terminal.
    assert!(text(&out.stderr).contains(&format!("build {key}")), "{}", f.explain(&out));
    assert_eq!(files(d), ["hello_linux_arm64"], "no temporary files are left");

    // The same request again: answered at once, written where -o says, with the log.
    let again = f.kiln_in(
        d,
        &[
            "build",
            "hello",
            "--os",
            "linux",
            "--arch",
            "arm64",
            "--with",
            "example.com/shout@v1.0.0",
            "--log",
            "-o",
            "again",
        ],
    );
    assert_eq!(again.status.code(), Some(0), "{}", f.explain(&again));
    assert!(text(&again.stdout).contains("wrote again"), "{}", f.explain(&again));
    assert_eq!(std::fs::read(d.join("again")).unwrap(), std::fs::read(&written).unwrap());

    let out = f.kiln_in(d, &["status", &key]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let status = text(&out.stdout);
    for want in [key.as_str(), "succeeded", "hello v1.1.0", "linux/arm64", "example.com/shout@v1.0.0"] {
        assert!(status.contains(want), "{want:?} missing from:\n{status}");
    }
    let out = f.kiln_in(d, &["status", &key, "--json"]);
    assert_eq!(json(&out)["state"], "succeeded");
    assert_eq!(json(&out)["key"], key);

    let out = f.kiln_in(d, &["log", &key]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let log = text(&out.stdout);
    assert!(!log.is_empty(), "{}", f.explain(&out));
    let followed = f.kiln_in(d, &["log", &key, "--follow"]);
    assert_eq!(followed.status.code(), Some(0), "{}", f.explain(&followed));
    assert_eq!(text(&followed.stdout), log);
    let first = log.lines().next().unwrap();
    assert!(text(&again.stderr).contains(first), "--log shows the log: {}", f.explain(&again));

    // download: the binary, and the artifact that `kiln verify` and minisign accept.
    let out = f.kiln_in(d, &["download", &key, "-o", "downloaded"]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    assert!(run_script(&d.join("downloaded")).contains("hello from kiln v1.1.0 linux/arm64"));
    let public = f.farm.public_key_path();
    let out = f.kiln_in(d, &["download", &key, "--artifact", "--key", path(&public)]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let (tar, sig) = (d.join("hello_linux_arm64.tar"), d.join("hello_linux_arm64.tar.minisig"));
    let out = kiln(&["verify", path(&tar), path(&sig), "--key", path(&public)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("Build {key}")));

    // A key that did not sign it: nothing is written, not even a temporary file.
    let other = d.join("other.key");
    assert!(kiln(&["keygen", "-o", path(&other)]).status.success());
    let before = files(d);
    let out = f.kiln_in(d, &["download", &key, "-o", "refused", "--key", path(&d.join("other.key.pub"))]);
    assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("signature"), "{}", f.explain(&out));
    assert!(!d.join("refused").exists());
    assert_eq!(files(d), before);
}

#[tokio::test]
async fn a_failed_build_exits_1_with_the_error_and_the_log() {
    need_docker!("a_failed_build_exits_1_with_the_error_and_the_log");
    let f = CliFarm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = f.kiln_in(d, &["build", "fail", "--os", "linux", "--arch", "amd64", "--log"]);
    assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("intentional failure"), "{}", f.explain(&out));
    assert!(stderr.contains("exited with code 3"), "{}", f.explain(&out));
    let log_url = format!("log: {}/api/builds/", f.farm.url());
    assert!(stderr.contains(&log_url) && stderr.contains("/log\n"), "the log's URL: {}", f.explain(&out));
    assert_eq!(files(d), Vec::<String>::new());

    // Answered from the stored failure; --json says the same for scripts.
    let out = f.kiln_in(d, &["--json", "build", "fail", "--os", "linux", "--arch", "amd64"]);
    assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
    let j = json(&out);
    assert_eq!(j["exit_code"], 1);
    assert_eq!(j["error"]["code"], "build_failed");
    assert!(j["error"]["message"].as_str().unwrap().contains("intentional failure"), "{j}");
    let key = j["error"]["key"].as_str().unwrap().to_owned();

    let out = f.kiln_in(d, &["download", &key]);
    assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("intentional failure"), "{}", f.explain(&out));
    let out = f.kiln_in(d, &["status", &key]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    assert!(text(&out.stdout).contains("failed"), "{}", f.explain(&out));
    let out = f.kiln_in(d, &["log", &key]);
    assert!(text(&out.stdout).contains("intentional failure"), "{}", f.explain(&out));
    assert_eq!(files(d), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_request_exits_2_with_the_servers_code_and_message() {
    let f = CliFarm::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = f.kiln_in(d, &["build", "hello", "--os", "plan9", "--arch", "amd64"]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("plan9") && stderr.contains("HTTP 400"), "{}", f.explain(&out));

    let out = f.kiln_in(d, &["--json", "build", "hello", "--os", "linux", "--arch", "amd64", "--with", "evil.org/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    let j = json(&out);
    assert_eq!(j["status_code"], 400);
    assert!(j["error"]["message"].as_str().is_some_and(|m| m.contains("evil.org/x")), "{j}");
    assert!(j["error"]["id"].as_str().is_some_and(|id| !id.is_empty()), "{j}");

    let out = f.kiln_in(d, &["build", "nosuchrecipe", "--os", "linux", "--arch", "amd64"]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("nosuchrecipe"), "{}", f.explain(&out));

    let unknown = "0".repeat(64);
    for args in [vec!["status", &unknown], vec!["log", &unknown], vec!["download", &unknown]] {
        let out = f.kiln_in(d, &args);
        assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
        assert!(text(&out.stderr).contains("unknown_build"), "{}", f.explain(&out));
    }
    assert_eq!(files(d), Vec::<String>::new());
}

#[tokio::test]
async fn waiting_past_the_timeout_exits_3_and_the_build_goes_on() {
    // No worker: the build stays queued.
    let f = CliFarm::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let out = f.kiln_in(dir.path(), &["build", "sleep", "--os", "linux", "--arch", "amd64", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", f.explain(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("timed out") && stderr.contains("kiln status"), "{}", f.explain(&out));

    let key = stderr.split("waiting for build ").nth(1).unwrap().split(';').next().unwrap().to_owned();
    let out = f.kiln_in(dir.path(), &["download", &key]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("is queued"), "{}", f.explain(&out));
}

#[test]
fn no_server_exits_3() {
    let key = "0".repeat(64);
    for args in [
        vec!["build", "hello", "--os", "linux", "--arch", "amd64"],
        vec!["status", &key],
        vec!["log", &key],
        vec!["download", &key],
    ] {
        let mut all = vec!["--server", "http://127.0.0.1:1"];
        all.extend(&args);
        let out = kiln(&all);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("cannot reach the Kiln server"), "{}", text(&out.stderr));
    }
}

#[test]
fn malformed_arguments_are_refused_before_any_request() {
    let out = kiln(&["status", "not-a-key", "--server", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("64 lowercase hex"), "{}", text(&out.stderr));
    let out = kiln(&["build", "hello", "--arch", "amd64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--os"), "{}", text(&out.stderr));
    // A --key that is no key is refused before the server is asked.
    let out = kiln(&[
        "build",
        "hello",
        "--os",
        "linux",
        "--arch",
        "amd64",
        "--key",
        "/no/such.pub",
        "--server",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("neither a minisign public key"), "{}", text(&out.stderr));
}

/// The file under `dir` (at any depth) whose path ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find(&path, suffix) {
                return Some(found);
            }
        } else if path.to_string_lossy().ends_with(suffix) {
            return Some(path);
        }
    }
    None
}

#[tokio::test]
async fn an_artifact_altered_in_the_store_is_never_written() {
    need_docker!("an_artifact_altered_in_the_store_is_never_written");
    let f = CliFarm::start(true).await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
    let build: serde_json::Value =
        http.post(format!("{}/api/builds", f.farm.url())).json(&body).send().await.unwrap().json().await.unwrap();
    let key = build["key"].as_str().unwrap().to_owned();
    let mut state = build["state"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        if state != "queued" && state != "running" {
            break;
        }
        let url = format!("{}/api/builds/{key}?wait=30", f.farm.url());
        let b: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
        state = b["state"].as_str().unwrap().to_owned();
    }
    assert_eq!(state, "succeeded", "{}", f.logs());

    // Alter one byte of the stored TAR (inside the binary, same length) before it is ever served.
    let stored = find(f.farm.data.path(), &format!("{key}/artifact.tar")).expect("the stored artifact");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[520] ^= 0x20;
    std::fs::write(&stored, bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [vec!["download", &key, "-o", "bin"], vec!["download", &key, "--artifact", "-o", "bin.tar"]] {
        let out = f.kiln_in(d, &args);
        assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("does not carry a good signature") && stderr.contains("nothing was written"),
            "{stderr}"
        );
    }
    assert_eq!(files(d), Vec::<String>::new());
}
