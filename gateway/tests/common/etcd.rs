//! A real etcd cluster for the fleet tests: three members on loopback ports, each in its own
//! data folder, killed on drop (and with the test process).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One member's ports.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A three-member etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members and waits until the cluster answers.
    pub fn start() -> EtcdCluster {
        let members = (1..=3)
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
        };
        for i in 0..3 {
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
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                member.client
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
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

    /// The client endpoints, as `[fleet].etcd` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Waits until a write through `etcdctl` succeeds.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoints().join(",")))
                .arg("--command-timeout=1s")
                .args(["put", "/meshgate-test/health", "ok"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("etcdctl is installed by `make deps` (etcd-client)");
            if status.success() {
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
        for i in 0..3 {
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
