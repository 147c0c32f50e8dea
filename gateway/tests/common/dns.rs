//! A real DNS server for the discovery tests: dnsmasq on a loopback port, authoritative for
//! `svc.test` (unknown names there are NXDOMAIN), answering A records from a hosts file the
//! test rewrites (dnsmasq reads it again on SIGHUP) and SRV records from its command line
//! (changed by a restart on the same port).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// An SRV record: name, target, port, priority, weight.
pub type Srv = (&'static str, &'static str, u16, u16, u16);

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Option<Child>,
    /// Its UDP and TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    srv: Vec<Srv>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (name, IPv4 address) and `srv`, with a TTL of 1 s.
    pub fn start(hosts: &[(&str, &str)], srv: &[Srv]) -> Dnsmasq {
        let mut dns = Dnsmasq {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            srv: srv.to_vec(),
        };
        dns.write_hosts(hosts);
        dns.spawn();
        dns
    }

    /// `IP:port` for `[discovery].resolvers`.
    pub fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, hosts: &[(&str, &str)]) {
        let partial = self.dir.path().join("hosts.new");
        let mut file = std::fs::File::create(&partial).unwrap();
        for (name, address) in hosts {
            writeln!(file, "{address} {name}").unwrap();
        }
        drop(file);
        std::fs::rename(partial, self.hosts_path()).unwrap();
    }

    fn spawn(&mut self) {
        // Not under `timeout` (which would forward SIGHUP and then kill it): it dies with
        // the test process instead, and on drop.
        let mut command = Command::new("dnsmasq");
        // SAFETY: prctl(2) in the child before exec; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--pid-file")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--local=/svc.test/")
            .arg("--local-ttl=1")
            .arg(format!("--addn-hosts={}", self.hosts_path().display()));
        // As root, stay root: dropped to `nobody`, it could not read the hosts file in the
        // test's folder again on SIGHUP. Otherwise it runs as the test's user.
        // SAFETY: geteuid(2) only reads the process's credentials.
        if unsafe { libc::geteuid() } == 0 {
            command.arg("--user=root");
        }
        for (name, target, port, priority, weight) in &self.srv {
            command.arg(format!(
                "--srv-host={name},{target},{port},{priority},{weight}"
            ));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed by `make deps` (dnsmasq-base)");
        self.child = Some(child);
        // Ready when it answers over TCP.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the A records; a running dnsmasq reads them again at once, a stopped one
    /// when it starts.
    pub fn set_hosts(&self, hosts: &[(&str, &str)]) {
        self.write_hosts(hosts);
        if let Some(child) = &self.child {
            // SAFETY: kill(2) signals a process; it touches no memory.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGHUP);
            }
        }
    }

    /// Stops the server: queries go unanswered (the port is closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with `srv` as its SRV records.
    pub fn restart(&mut self, srv: &[Srv]) {
        self.stop();
        self.srv = srv.to_vec();
        self.spawn();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
