//! `scripts/farm-hosts`: a multi-host farm to try by hand. Starts Postgres,
//! the store, the janitor, APIs behind nginx and worker hosts, each on a
//! host of its own, prints where they are, and tears everything down on
//! Ctrl-C or SIGTERM.
//!
//! `farm_hosts [APIS] [WORKERS]` (defaults 2 and 2).

use kiln_testkit::hosts::{HostFarm, Layout};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let apis: usize = args.get(1).map_or(Ok(2), |a| a.parse())?;
    let workers: usize = args.get(2).map_or(Ok(2), |a| a.parse())?;
    anyhow::ensure!((1..=26).contains(&apis) && workers <= 200, "1 to 26 APIs, at most 200 workers");
    if kiln_testkit::hosts::unavailable("farm_hosts") {
        anyhow::bail!("the multi-host farm cannot run here");
    }
    let farm = HostFarm::start(Layout { apis, workers, ..Layout::default() }).await;
    println!("nginx (the cache in front of the APIs): {}", farm.edge_url());
    for i in 0..apis {
        println!("kiln-api {}: {}", farm.api_label(i), farm.api_url(i));
    }
    for i in 0..workers {
        let (id, host) = farm.worker(i);
        println!("kiln-worker {id} on host {host} ({})", farm.addr(&host));
    }
    println!("Postgres: {}", farm.database_url());
    println!("logs and data: {}", farm.dir().display());
    println!(
        "try: curl -fo hello \"{}/api/compat?recipe=hello&os=linux&arch=amd64&p=example.com/greet\"",
        farm.edge_url()
    );
    println!("cut a host off: ip -n kiln{}-sw link set p-<host> down (and up); Ctrl-C stops the farm", farm.network());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(farm);
    Ok(())
}
