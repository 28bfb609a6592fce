//! Hosts of their own on one machine: Linux network namespaces joined by a
//! bridge, made with `ip netns` and veth pairs (Debian's iproute2; root).
//!
//! A [`Net`] is one private network `10.213.<n>.0/24`:
//!
//! ```text
//!   test process (root namespace) 10.213.n.1 ── kiln<n>-up
//!                                                  │ veth
//!   namespace kiln<n>-sw:  bridge br0 ── p-<host> ─┼── eth0 in kiln<n>-<host>  10.213.n.X
//!                                                  └── …
//! ```
//!
//! The bridge lives in a namespace of its own, so the root namespace's
//! firewall (Docker's `FORWARD DROP`) never sees the farm's traffic, and the
//! hosts have no default route: nothing they send can leave the machine.
//! A host made with [`HostSpec::reach`] gets a /32 address and routes to the
//! named hosts only (a worker reaches Postgres and the store, nothing else).
//! [`Net::cut`] takes a host's link down at the bridge (its packets go
//! nowhere, as when a cable is pulled) and [`Net::restore`] brings it back.
//! Each host retransmits TCP at least every 5 s (`tcp_rto_max_ms`, where the
//! kernel has it), so a host that comes back is heard within seconds.
//!
//! `n` is taken atomically (an owner file made with `O_EXCL` under
//! `/run/kiln-netns/`), so parallel test processes get different networks.
//! Dropping the [`Net`] kills every process left in its namespaces and
//! deletes them, also after a panic; [`Net::new`] first sweeps networks whose
//! owner process is gone.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, bail};

/// Where owner files live (a tmpfs, emptied at boot like `/run/netns`).
const OWNERS: &str = "/run/kiln-netns";
/// Every namespace and root link of these networks starts with this.
const PREFIX: &str = "kiln";

/// Run `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Can this process make network namespaces? When it cannot, says why.
pub fn unavailable() -> Option<String> {
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("no network namespaces on this system".into());
    }
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root (`ip netns add`)".into());
    }
    if Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// What a host is: its name and whom it may reach.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    /// The last octet of its address (2..=254; 1 is the test process).
    pub octet: u8,
    /// `None`: the whole network. `Some(hosts)`: those hosts only.
    pub reach: Option<Vec<String>>,
}

impl HostSpec {
    /// A host that reaches every other host.
    pub fn open(name: &str, octet: u8) -> HostSpec {
        HostSpec { name: name.into(), octet, reach: None }
    }

    /// A host that reaches the named hosts and nothing else.
    pub fn reach(name: &str, octet: u8, peers: &[&str]) -> HostSpec {
        HostSpec { name: name.into(), octet, reach: Some(peers.iter().map(|p| (*p).to_owned()).collect()) }
    }
}

/// One host of a [`Net`].
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs `program` on this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

/// A private network of hosts; torn down when dropped.
pub struct Net {
    n: u8,
    hosts: Mutex<Vec<Host>>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net").field("n", &self.n).finish_non_exhaustive()
    }
}

impl Net {
    /// A new network with its bridge and the test process's uplink
    /// (`10.213.<n>.1`). Sweeps stale networks of dead owners first.
    pub fn new() -> anyhow::Result<Net> {
        std::fs::create_dir_all(OWNERS).with_context(|| format!("creating {OWNERS}"))?;
        sweep();
        let me = owner_tag(std::process::id()).context("reading this process's start time")?;
        for n in 1..=254u8 {
            if root_has_subnet(n) {
                continue;
            }
            let owner = Path::new(OWNERS).join(format!("{n}.owner"));
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).create_new(true).open(&owner) else { continue };
            f.write_all(me.as_bytes())?;
            let net = Net { n, hosts: Mutex::new(Vec::new()) };
            net.make_switch()?;
            return Ok(net);
        }
        bail!("no free network: 254 Kiln test networks exist (see {OWNERS})")
    }

    /// The network's number (`10.213.<n>.0/24`).
    pub fn number(&self) -> u8 {
        self.n
    }

    fn ns(&self, host: &str) -> String {
        format!("{PREFIX}{}-{host}", self.n)
    }

    fn switch(&self) -> String {
        self.ns("sw")
    }

    fn uplink(&self) -> String {
        format!("{PREFIX}{}-up", self.n)
    }

    /// The address of octet `o` on this network.
    pub fn addr(&self, o: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, o)
    }

    /// The test process's own address on the network.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    fn make_switch(&self) -> anyhow::Result<()> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let up = self.uplink();
        ip(&["link", "add", &up, "type", "veth", "peer", "name", "p-up", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "p-up", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &up])?;
        ip(&["link", "set", &up, "up"])?;
        Ok(())
    }

    /// Make a host: its namespace, a veth into the bridge, its address and routes.
    pub fn add(&self, spec: &HostSpec) -> anyhow::Result<Host> {
        anyhow::ensure!((2..=254).contains(&spec.octet), "host octets are 2..=254");
        anyhow::ensure!(spec.name.len() <= 10 && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let ns = self.ns(&spec.name);
        let host = Host { name: spec.name.clone(), ns: ns.clone(), addr: self.addr(spec.octet) };
        ip(&["netns", "add", &ns])?;
        // Recorded at once, so a failure below still tears it down.
        self.hosts.lock().expect("hosts lock").push(host.clone());
        let port = port_name(&spec.name);
        ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &self.switch()])?;
        ip(&["-n", &self.switch(), "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        match &spec.reach {
            None => ip(&["-n", &ns, "addr", "add", &format!("{}/24", host.addr), "dev", "eth0"])?,
            Some(_) => ip(&["-n", &ns, "addr", "add", &format!("{}/32", host.addr), "dev", "eth0"])?,
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        if let Some(peers) = &spec.reach {
            let hosts = self.hosts.lock().expect("hosts lock").clone();
            for peer in peers {
                let p = hosts.iter().find(|h| &h.name == peer).with_context(|| format!("no host {peer} (yet)"))?;
                ip(&["-n", &ns, "route", "add", &format!("{}/32", p.addr), "dev", "eth0"])?;
            }
        }
        // Retransmit at least every 5 s (not 2 min), so a link that comes back
        // is used within seconds; a silent peer is still given up on only
        // after a minute.
        let _ = host.command("sh").args(["-c", "echo 5000 > /proc/sys/net/ipv4/tcp_rto_max_ms 2>/dev/null"]).status();
        Ok(host)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Host {
        let hosts = self.hosts.lock().expect("hosts lock");
        hosts.iter().find(|h| h.name == name).cloned().unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Take `host`'s link down at the bridge: it can neither send nor be reached.
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &port_name(host), "down"])
    }

    /// Bring `host`'s link back up.
    pub fn restore(&self, host: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &port_name(host), "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        teardown(self.n);
    }
}

/// The bridge port of a host (interface names have at most 15 bytes).
fn port_name(host: &str) -> String {
    format!("p-{host}")
}

/// `<pid> <start time>`: tells a live owner from a reused pid.
fn owner_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start = rest.split(' ').nth(19)?;
    Some(format!("{pid} {start}"))
}

fn owner_alive(tag: &str) -> bool {
    let Some(pid) = tag.split(' ').next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    owner_tag(pid).as_deref() == Some(tag.trim())
}

/// Does the root namespace already route this network (someone else's)?
fn root_has_subnet(n: u8) -> bool {
    let out = Command::new("ip").args(["-4", "route", "show", "root", &format!("10.213.{n}.0/24")]).output();
    out.map(|o| !o.stdout.is_empty()).unwrap_or(true)
}

/// The names of every namespace.
fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// The network number of a namespace of ours (`kiln<n>-<host>`).
fn number_of(ns: &str) -> Option<u8> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (n, host) = rest.split_once('-')?;
    (!host.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

/// Tear down networks whose owner is gone (and namespaces of ours without one).
fn sweep() {
    let mut stale = std::collections::BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(OWNERS) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name.strip_suffix(".owner").and_then(|n| n.parse::<u8>().ok()) else { continue };
            let tag = std::fs::read_to_string(e.path()).unwrap_or_default();
            // An empty file is one being written right now: not stale.
            if !tag.is_empty() && !owner_alive(&tag) {
                stale.insert(n);
            }
        }
    }
    for ns in namespaces() {
        if let Some(n) = number_of(&ns)
            && !Path::new(OWNERS).join(format!("{n}.owner")).exists()
        {
            stale.insert(n);
        }
    }
    for n in stale {
        eprintln!("kiln-testkit: removing stale test network 10.213.{n}.0/24 of a process that is gone");
        teardown(n);
    }
}

/// Kill what runs in network `n`'s namespaces, delete them, its uplink and its owner file.
fn teardown(n: u8) {
    let ours: Vec<String> = namespaces().into_iter().filter(|ns| number_of(ns) == Some(n)).collect();
    for _ in 0..50 {
        let mut left = 0;
        for ns in &ours {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            let pids = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for pid in pids.split_whitespace() {
                left += 1;
                let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
            }
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = ip(&["link", "del", &format!("{PREFIX}{n}-up")]);
    for ns in &ours {
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = std::fs::remove_file(Path::new(OWNERS).join(format!("{n}.owner")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_ours() {
        assert_eq!(number_of("kiln7-api-a"), Some(7));
        assert_eq!(number_of("kiln7-"), None);
        assert_eq!(number_of("kilnx-a"), None);
        assert_eq!(number_of("other"), None);
        assert_eq!(number_of("kiln300-a"), None);
    }

    #[test]
    fn owner_tags_tell_live_processes() {
        let me = owner_tag(std::process::id()).unwrap();
        assert!(owner_alive(&me));
        assert!(!owner_alive("999999999 1"));
        assert!(!owner_alive("garbage"));
    }
}
