//! A second "host" for tests: this test binary run again as a child process
//! (one named test, with a role variable set) that loads the module on its
//! own and takes commands on stdin, one per line, answering each on stdout
//! after `B> `. The child's side is a test function that does nothing
//! unless its role variable is set.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::TestToken;

pub struct Host {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Host {
    /// Run test `test` of this binary as the child, with `role` set, the
    /// token's SoftHSM2, configuration `conf` and the test clock.
    pub fn start(test: &str, role: &str, t: &TestToken, conf: &Path) -> Host {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture"])
            .env(role, "1")
            .env("SOFTHSM2_CONF", &t.softhsm_conf)
            .env("HSM_ENVELOPE_CONF", conf)
            .env("HSM_ENVELOPE_TEST_CLOCK", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        Host { child, to, from }
    }

    /// Sends `cmd`, returns the child's answer (the text after `B> `).
    pub fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.to, "{cmd}").unwrap();
        self.to.flush().unwrap();
        loop {
            let mut line = String::new();
            let n = self.from.read_line(&mut line).unwrap();
            assert!(n > 0, "the child host ended before answering {cmd:?}");
            if let Some(answer) = line.trim_end().strip_prefix("B> ") {
                return answer.to_string();
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = self.child.wait();
    }
}
