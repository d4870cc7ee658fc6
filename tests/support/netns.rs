//! Network namespaces made by a test and removed (with every process left
//! in them) when it ends: one with loopback only ([`Netns`], for tor and
//! fowl, which must reach nothing outside), or two "hosts" joined by a veth
//! pair ([`Hosts`]).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Network namespaces need root. Without it the test is skipped, visibly,
/// and under CI (where it runs as root) that is a failure.
pub fn root_or_skip(test: &str) -> bool {
    // /proc/self belongs to our effective user.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root for network namespaces, and CI is set"
    );
    eprintln!("SKIPPED {test}: needs root for network namespaces");
    false
}

/// Namespaces `a` and `b`, loopback up in each, joined by the veth pair
/// `va` (in `a`) and `vb` (in `b`), up but without addresses: the test adds
/// them (`add_addresses`), so it can start listeners before they exist.
/// Host `a` is 10.200.0.1 and fd20::1, host `b` 10.200.0.2 and fd20::2.
pub struct Hosts {
    pub a: String,
    pub b: String,
}

pub const A4: &str = "10.200.0.1";
pub const B4: &str = "10.200.0.2";
pub const A6: &str = "fd20::1";
pub const B6: &str = "fd20::2";

impl Hosts {
    pub fn new() -> Hosts {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let hosts = Hosts {
            a: format!("p2pa-{tag}"),
            b: format!("p2pb-{tag}"),
        };
        for ns in [&hosts.a, &hosts.b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Made right inside the namespaces, so the names clash with nothing.
        ip(&[
            "link", "add", "va", "netns", &hosts.a, "type", "veth", "peer", "name", "vb", "netns",
            &hosts.b,
        ]);
        ip(&["-n", &hosts.a, "link", "set", "va", "up"]);
        ip(&["-n", &hosts.b, "link", "set", "vb", "up"]);
        hosts
    }

    /// Give host `ns` (`a` or `b`) its addresses; `nodad` so IPv6 ones are
    /// usable at once (not tentative for 1-2 s).
    pub fn add_addresses(&self, ns: &str) {
        let (name, dev, v4, v6) = if ns == "a" {
            (&self.a, "va", A4, A6)
        } else {
            (&self.b, "vb", B4, B6)
        };
        ip(&["-n", name, "addr", "add", &format!("{v4}/24"), "dev", dev]);
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }

    /// Drop every packet between the two hosts, both ways (black-hole
    /// routes to the other host, in each), or let them through again.
    pub fn blackhole(&self, on: bool) {
        let verb = if on { "add" } else { "del" };
        for (ns, v4, v6) in [(&self.a, B4, B6), (&self.b, A4, A6)] {
            ip(&["-n", ns, "route", verb, "blackhole", &format!("{v4}/32")]);
            ip(&[
                "-n",
                ns,
                "-6",
                "route",
                verb,
                "blackhole",
                &format!("{v6}/128"),
            ]);
        }
    }

    /// `ip netns exec NS PROGRAM`: a command that runs inside host `ns`'s
    /// namespace (ip execs the program, so the PID is the program's).
    pub fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(ns)]).arg(program);
        cmd
    }

    pub fn name(&self, ns: &str) -> &str {
        if ns == "a" { &self.a } else { &self.b }
    }

    /// The TCP sockets listening in host `ns`, as `ss -ltnH` shows them.
    pub fn listening(&self, ns: &str) -> Vec<String> {
        listening_in(self.name(ns))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        remove(&self.a);
        remove(&self.b);
    }
}

/// One network namespace with loopback up and nothing else.
pub struct Netns(pub String);

impl Netns {
    /// A namespace called `p2ptor-<pid>-<n>`.
    pub fn new() -> Netns {
        Netns::named("p2ptor")
    }

    /// A namespace called `<prefix>-<pid>-<n>`.
    pub fn named(prefix: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NS PROGRAM` (ip execs it: the PID is the program's).
    pub fn exec(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }

    /// `["ip", "netns", "exec", NS]`: a prefix for commands given as words.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }

    /// Panics unless the namespace has no interface but `lo` and no route,
    /// IPv4 or IPv6, in any table, but through `lo`.
    pub fn assert_loopback_only(&self) {
        let links = ip_out(&["-n", &self.0, "-o", "link", "show"]);
        let other: Vec<&str> = links.lines().filter(|l| !l.contains(": lo:")).collect();
        assert!(
            other.is_empty(),
            "namespace {} has an interface other than lo: {other:?}",
            self.0
        );
        for family in ["-4", "-6"] {
            let routes = ip_out(&["-n", &self.0, family, "route", "show", "table", "all"]);
            let other: Vec<&str> = routes
                .lines()
                .filter(|l| !format!("{l} ").contains(" dev lo "))
                .collect();
            assert!(
                other.is_empty(),
                "namespace {} has a route not through lo: {other:?}",
                self.0
            );
        }
    }

    /// The TCP sockets listening in the namespace, as `ss -ltnH` shows them.
    pub fn listening(&self) -> Vec<String> {
        listening_in(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

/// Kill every process in namespace `ns` (whatever a test left running in
/// there is its own), then delete the namespace.
fn remove(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

fn listening_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltnH"])
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// `ip ARGS`, which must succeed; its stdout.
fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    ip_out(args);
}
