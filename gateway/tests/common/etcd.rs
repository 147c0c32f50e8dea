//! A real etcd cluster for the fleet tests: three members on loopback ports, each in its own
//! data folder, killed on drop (and with the test process).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use super::free_port;
use super::pki::Leaf;

/// One member's ports.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// TLS for a cluster: etcd's certificate, and a client certificate for etcdctl, both from
/// `ca`; etcd asks clients for a certificate (`--client-cert-auth`).
pub struct EtcdTls {
    /// The CA bundle.
    pub ca: PathBuf,
    /// etcd's certificate (with 127.0.0.1 in its names).
    pub server: Leaf,
    /// A client certificate etcdctl presents.
    pub client: Leaf,
}

/// An etcd cluster of one or three members.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    tls: Option<EtcdTls>,
    /// `root`'s password once auth is enabled.
    password: Option<String>,
}

impl EtcdCluster {
    /// Starts three members and waits until the cluster answers.
    pub fn start() -> EtcdCluster {
        EtcdCluster::with_members(3, None)
    }

    /// Starts one member, over TLS when `tls` is given, and waits until it answers.
    pub fn single(tls: Option<EtcdTls>) -> EtcdCluster {
        EtcdCluster::with_members(1, tls)
    }

    fn with_members(count: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        let members = (1..=count)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            dir: tempfile::tempdir().unwrap(),
            tls,
            password: None,
        };
        for i in 0..count {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, index: usize, state: &str) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let member = &self.members[index];
        let data = self.dir.path().join(&member.name);
        let mut command = Command::new("etcd");
        // SAFETY: prctl(2) in the child before exec; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let scheme = self.scheme();
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server.cert.display()))
                .arg(format!("--key-file={}", tls.server.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .arg(format!(
                "--listen-client-urls={scheme}://127.0.0.1:{}",
                member.client
            ))
            .arg(format!(
                "--advertise-client-urls={scheme}://127.0.0.1:{}",
                member.client
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                member.peer
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                member.peer
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=meshgate-test")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed by `make deps` (etcd-server)");
        self.members[index].child = Some(child);
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client endpoints, as `[fleet].etcd` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// `etcdctl` with the cluster's endpoints, TLS and credentials.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg("--command-timeout=1s");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client.cert.display()))
                .arg(format!("--key={}", tls.client.key.display()));
        }
        if let Some(password) = &self.password {
            command.arg(format!("--user=root:{password}"));
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl is installed by `make deps` (etcd-client)")
    }

    /// Turns on etcd's user/password auth with user `root` and `password`.
    pub fn enable_auth(&mut self, password: &str) {
        let added = self.etcdctl(&["user", "add", &format!("root:{password}")]);
        assert!(added.status.success(), "{added:?}");
        let enabled = self.etcdctl(&["auth", "enable"]);
        assert!(enabled.status.success(), "{enabled:?}");
        self.password = Some(password.to_owned());
    }

    /// Waits until a write through `etcdctl` succeeds.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .etcdctl(&["put", "/meshgate-test/health", "ok"])
                .status
                .success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every member.
    pub fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts every member again on its data and waits until the cluster answers.
    pub fn restart(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i, "existing");
        }
        self.wait_healthy();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
