//! A network namespace per pod, as a CNI plugin gives one: each pod run as processes gets its own
//! namespace with its own loopback and an `eth0` on a bridge this machine owns, with an address
//! of the bridge's /24, so two pods can both listen on 8080 and `localhost` inside a pod is that
//! pod's. The host reaches every pod at its IP, and pods reach the host (the collector, the
//! simulated API server) at the bridge's address, [`Bridge::host_ip`]. Needs root and `ip`
//! (iproute2); [`Bridge::create`] says so when the host does not allow it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the pods' network cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pods cannot get network namespaces here ({0}); run as root on Linux with iproute2's `ip`, or without an isolated network (pods then share this machine's ports)"
)]
pub struct NetworkError(pub String);

/// The bridge every pod's `eth0` hangs off; removed (with every pod's namespace) on drop.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    prefix: [u8; 3],
    next: AtomicU32,
    namespaces: Mutex<Vec<String>>,
}

/// One pod's namespace: its name (for `ip netns exec`) and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The namespace's name.
    pub namespace: String,
    /// The pod's IP.
    pub ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let out =
        Command::new("ip").args(args).output().map_err(|e| NetworkError(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Bridge {
    /// A new bridge with a /24 of 10.0.0.0/8 picked at random, up, with its first address.
    pub fn create() -> Result<Self, NetworkError> {
        use rand::Rng;
        let mut rng = rand::rng();
        let tag: u32 = rng.random_range(0..0x00ff_ffff);
        let name = format!("fwbr{tag:06x}");
        let prefix = [10, rng.random_range(128..250), rng.random_range(0..255)];
        ip(&["link", "add", &name, "type", "bridge"])?;
        let bridge = Self { name, prefix, next: AtomicU32::new(2), namespaces: Mutex::new(Vec::new()) };
        ip(&["addr", "add", &format!("{}/24", bridge.host_ip()), "dev", &bridge.name])?;
        ip(&["link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }

    /// The host's address on the bridge: pods reach this machine's services there.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 1)
    }

    /// A namespace for one pod: loopback up, `eth0` on the bridge with the next address, the
    /// bridge as its default route.
    pub fn attach(&self) -> Result<PodNetwork, NetworkError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(n).ok().filter(|h| *h < 255).ok_or_else(|| NetworkError("the /24 is full".into()))?;
        let address = Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host);
        let tag = &self.name[4..];
        let namespace = format!("fwpod{tag}-{host}");
        let veth = format!("fwv{tag}{host:02x}");
        ip(&["netns", "add", &namespace])?;
        if let Ok(mut all) = self.namespaces.lock() {
            all.push(namespace.clone());
        }
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
        ip(&["link", "set", &veth, "master", &self.name, "up"])?;
        ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        ip(&["-n", &namespace, "route", "add", "default", "via", &self.host_ip().to_string()])?;
        Ok(PodNetwork { namespace, ip: address })
    }

    /// Remove a pod's namespace (its `eth0` pair goes with it).
    pub fn detach(&self, network: &PodNetwork) {
        let _removed = ip(&["netns", "del", &network.namespace]);
        if let Ok(mut all) = self.namespaces.lock() {
            all.retain(|n| n != &network.namespace);
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let left: Vec<String> = self.namespaces.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default();
        for namespace in left {
            let _removed = ip(&["netns", "del", &namespace]);
        }
        let _removed = ip(&["link", "del", &self.name]);
    }
}
